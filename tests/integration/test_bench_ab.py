"""``bench/bench_ab.py --quick`` end to end: a private Kafka, the batch tables online, a champion
trained by the retraining's steps, gunicorn serving it per phase, simulated shoppers through the
HTTP API, and the A/B readout's statistics on what they saw (about 3 minutes alone).

The quick run is too small for the benchmark's verdicts (``make bench-ab`` measures those at the
demo's budget); what it must show: the JSON line has its shape, every request was answered, each
A/A p-value is a probability, and in the detection run the champion's CTR is above the
popularity baseline's.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

#: The quick run takes about 3 minutes alone; beside the other worker of ``make test``, more.
pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(1800)]

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def result() -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "bench_ab.py"), "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1700,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    print(done.stdout)  # the JSON line, in pytest's report of a failing test
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1, f"stdout holds more than the JSON line: {done.stdout[-2000:]}"
    out: dict[str, Any] = json.loads(lines[0])
    return out


def test_the_json_line_has_both_phases(result: dict[str, Any]) -> None:
    assert result["quick"] is True
    assert {"budget", "data", "setup_s", "elapsed_s", "detection", "aa"} <= set(result)
    assert result["elapsed_s"] >= result["setup_s"] > 0
    detection, aa = result["detection"], result["aa"]
    assert {"detected", "ctr_at_k", "conversion", "variants", "answers"} <= set(detection)
    assert isinstance(detection["detected"], bool)
    for metric in ("ctr_at_k", "conversion"):
        test = detection[metric]
        assert {"control", "treatment", "lift", "lift_ci", "p_value", "verdict"} <= set(test)
    assert set(detection["variants"]) == {"control", "treatment"}
    # Each policy answered its own variant's shoppers, and requests were answered (a timeout
    # or two on a busy machine aside).
    assert set(detection["answers"]) == {"popular", "pipeline"}
    assert detection["variants"]["control"]["lists"] == detection["answers"]["popular"]["lists"]
    assert sum(detection["errors"].values()) <= 0.01 * detection["requests"]
    assert aa["seeds"] == 2 == len(aa["p_ctr"]) == len(aa["p_conversion"]) == len(aa["runs"])
    assert 0 <= aa["aa_flags_ctr"] <= 2 and 0 <= aa["aa_flags_conversion"] <= 2


def test_a_a_p_values_are_probabilities(result: dict[str, Any]) -> None:
    aa = result["aa"]
    assert set(aa["answers"]) == {"pipeline"}  # both variants run the champion
    for run in aa["runs"]:
        assert run["lists"] > 0 and min(run["users"].values()) > 0, run
        assert run["errors"] <= 0.01 * run["lists"], run
        for key in ("p_ctr", "p_conversion"):
            assert 0.0 <= run[key] <= 1.0, run
    flagged = sum(p < result["alpha"] for p in aa["p_ctr"])
    assert flagged == aa["aa_flags_ctr"]


def test_the_champion_is_clicked_more_than_the_popular_list(result: dict[str, Any]) -> None:
    ctr = result["detection"]["ctr_at_k"]
    assert ctr["treatment"] > ctr["control"] > 0, ctr
    assert ctr["lift"] > 0
