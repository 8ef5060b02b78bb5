"""DagBag integrity: every DAG imports cleanly, without heavy imports, with retries and tags.

Parse time is kept low by what a DAG file may import (``HEAVY``), not by a timed assertion: a
wall-clock limit fails on a loaded machine (the suite runs two lanes on two cores)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

DAGS_DIR = Path(__file__).resolve().parents[2] / "dags"
DAG_FILES = sorted(p for p in DAGS_DIR.glob("*.py") if not p.name.startswith("_"))

#: Modules a DAG file must not import at parse time (Airflow best practices: expensive imports
#: belong inside tasks).
HEAVY = [
    "tensorflow",
    "pyspark",
    "pymilvus",
    "mlflow",
    "great_expectations",
    "feast",
    "pandas",
    "torch",
    "sklearn",
    "duckdb",
    "pyflink",
    "confluent_kafka",
]

#: One interpreter imports Airflow once, then forks a child per DAG file: each child parses its
#: file alone and reports what the parse imported beyond Airflow itself (a clean interpreter per
#: file, without importing Airflow five times).
PROBE = textwrap.dedent(
    """
    import json, os, sys
    from airflow.dag_processing.dagbag import DagBag
    before = set(sys.modules)
    for path in sys.argv[1:]:
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read)
            try:
                bag = DagBag(dag_folder=path)
                loaded = sorted({m.split(".")[0] for m in set(sys.modules) - before})
                dags = {}
                for dag_id, dag in bag.dags.items():
                    dags[dag_id] = {
                        "tags": sorted(dag.tags or []),
                        "doc": bool(dag.doc_md),
                        "paused_upon_creation": dag.is_paused_upon_creation,
                        "tasks": {t.task_id: t.retries for t in dag.tasks},
                    }
                out = {"errors": {k: str(v) for k, v in bag.import_errors.items()},
                       "loaded": loaded, "dags": dags}
            except BaseException as error:
                out = {"errors": {path: repr(error)}, "loaded": [], "dags": {}}
            with os.fdopen(write, "w") as pipe:
                pipe.write(json.dumps(out))
            os._exit(0)
        os.close(write)
        with os.fdopen(read) as pipe:
            text = pipe.read()
        os.waitpid(pid, 0)
        print("LAMBDAREC_PARSED " + json.dumps({"path": path, "result": json.loads(text)}))
    """
)


@pytest.fixture(scope="module")
def parsed_files() -> dict[str, dict]:
    """Every DAG file's parse: path -> {errors, loaded, dags}."""
    if not DAG_FILES:
        pytest.fail(f"no DAG files in {DAGS_DIR}")
    out = subprocess.run(
        [sys.executable, "-c", PROBE, *map(str, DAG_FILES)],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    results = {}
    for line in out.stdout.splitlines():
        if line.startswith("LAMBDAREC_PARSED "):
            one = json.loads(line.removeprefix("LAMBDAREC_PARSED "))
            results[one["path"]] = one["result"]
    assert set(results) == {str(p) for p in DAG_FILES}, out.stderr[-2000:]
    return results


@pytest.fixture(
    params=[str(p) for p in DAG_FILES] or [None], ids=[p.name for p in DAG_FILES] or ["no-dags"]
)
def parsed(request: pytest.FixtureRequest, parsed_files: dict[str, dict]) -> dict:
    return parsed_files[request.param]


def test_dag_file_imports_without_errors(parsed: dict) -> None:
    assert parsed["errors"] == {}
    assert parsed["dags"], "the file defines no DAG"


def test_no_heavy_import_at_parse_time(parsed: dict) -> None:
    heavy = sorted(set(parsed["loaded"]) & set(HEAVY))
    assert not heavy, f"imported at parse time: {heavy}; import them inside the task"


def test_every_dag_has_tags_docs_and_retries(parsed: dict) -> None:
    for dag_id, dag in parsed["dags"].items():
        assert dag["tags"], f"{dag_id} has no tags"
        assert dag["doc"], f"{dag_id} has no doc_md"
        no_retry = [t for t, retries in dag["tasks"].items() if not retries]
        assert not no_retry, f"{dag_id}: tasks without retries: {no_retry}"


#: DAGs that run as soon as Airflow parses them: the speed layer's supervision must not wait for
#: someone to unpause it. Every other DAG starts paused (Airflow's default).
ACTIVE = {"speed_layer"}


def test_only_the_speed_layer_starts_active(parsed: dict) -> None:
    for dag_id, dag in parsed["dags"].items():
        active = dag["paused_upon_creation"] is False
        assert active == (dag_id in ACTIVE), (
            f"{dag_id}: is_paused_upon_creation={dag['paused_upon_creation']}"
        )
