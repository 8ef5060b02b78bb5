"""lambdarec imports Feast without the Prometheus variables its import sets.

``import feast`` points ``PROMETHEUS_MULTIPROCESS_DIR`` and ``PROMETHEUS_MULTIPROC_DIR`` at a new
``feast_metrics_*`` directory under the temporary folder when they are unset: prometheus_client
went multiprocess, child processes inherited the variables and Airflow's task processes (they end
with ``os._exit``) left the directory behind. Each case imports Feast the way lambdarec does in a
fresh process whose temporary folder is the test's own, then ends it as a task process does.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from pathlib import Path

VARIABLES = ("PROMETHEUS_MULTIPROCESS_DIR", "PROMETHEUS_MULTIPROC_DIR")

CHILD = textwrap.dedent(
    """
    import glob, json, os, sys, tempfile

    from lambdarec.features.feastlib import import_feast

    import_feast()
    import feast  # noqa: F401 - what lambdarec then imports
    from prometheus_client import CollectorRegistry, Counter

    # In-process values: two registries (two serving apps) do not share a metric's count.
    first, second = CollectorRegistry(), CollectorRegistry()
    Counter("probe_total", "probe", registry=first).inc(3)
    Counter("probe_total", "probe", registry=second)
    print(json.dumps({
        "environ": {name: os.environ.get(name) for name in sys.argv[1:]},
        "dirs": glob.glob(os.path.join(tempfile.gettempdir(), "feast_metrics_*")),
        "second": second.get_sample_value("probe_total"),
    }))
    sys.stdout.flush()
    os._exit(0)  # as Airflow's task processes end: no atexit handlers
    """
)


def _import_in_child(tmp_path: Path, **variables: str) -> dict[str, object]:
    env = {k: v for k, v in os.environ.items() if k not in VARIABLES}
    env.update(variables, TMPDIR=str(tmp_path))
    out = subprocess.run(
        [sys.executable, "-c", CHILD, *VARIABLES],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def _left(tmp_path: Path) -> list[str]:
    return sorted(p.name for p in tmp_path.glob("feast_metrics_*"))


def test_importing_feast_leaves_no_variable_nor_directory(tmp_path: Path) -> None:
    seen = _import_in_child(tmp_path)
    assert seen["environ"] == dict.fromkeys(VARIABLES)
    assert seen["dirs"] == []
    assert seen["second"] == 0.0
    assert _left(tmp_path) == []


@pytest.mark.parametrize("variable", VARIABLES)
def test_a_variable_the_caller_set_is_kept(tmp_path: Path, variable: str) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    seen = _import_in_child(tmp_path, **{variable: str(mine)})
    assert seen["environ"] == {name: str(mine) if name == variable else None for name in VARIABLES}
    assert seen["dirs"] == []
    assert mine.is_dir()
    assert _left(tmp_path) == []
