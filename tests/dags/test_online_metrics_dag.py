"""The online_metrics DAG: its tasks, their order, the schedule, and the day both tasks use.

DagBag integrity (import errors, parse time, heavy imports, tags, retries) is covered for every
DAG file by test_dag_integrity.py; this checks this DAG's own wiring in a fresh interpreter, as
Airflow parses it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

DAG_FILE = Path(__file__).resolve().parents[2] / "dags" / "online_metrics.py"

PROBE = textwrap.dedent(
    """
    import json, sys
    from airflow.dag_processing.dagbag import DagBag
    bag = DagBag(dag_folder=sys.argv[1])
    dag = bag.dags["online_metrics"]
    tasks = {}
    for t in dag.tasks:
        tasks[t.task_id] = {
            "type": type(t).__name__,
            "downstream": sorted(t.downstream_task_ids),
            "retries": t.retries,
            "day": getattr(t, "day", None),
            "op_args": [str(a) for a in getattr(t, "op_args", [])],
        }
    print(json.dumps({
        "errors": {k: str(v) for k, v in bag.import_errors.items()},
        "schedule": type(dag.timetable).__name__ + " " + dag.timetable.expression,
        "catchup": dag.catchup,
        "max_active_runs": dag.max_active_runs,
        "tags": sorted(dag.tags),
        "tasks": tasks,
    }))
    """
)


@pytest.fixture(scope="module")
def parsed() -> dict:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(DAG_FILE)],
        capture_output=True,
        text=True,
        timeout=180,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_dag_imports_and_runs_daily(parsed: dict) -> None:
    assert parsed["errors"] == {}
    assert parsed["schedule"] == "CronDataIntervalTimetable 30 0 * * *"  # tests/dags/test_schedules
    assert parsed["catchup"] is False and parsed["max_active_runs"] == 1
    assert {"monitoring", "ab"} <= set(parsed["tags"])


def test_compaction_then_the_spark_job_then_the_guardrail_then_mlflow(parsed: dict) -> None:
    tasks = parsed["tasks"]
    assert set(tasks) == {
        "compact_attribution",
        "spark_online_metrics",
        "apply_guardrail",
        "log_to_mlflow",
    }
    assert tasks["compact_attribution"]["downstream"] == ["spark_online_metrics"]
    assert tasks["spark_online_metrics"]["type"] == "OnlineMetricsSparkOperator"
    assert tasks["spark_online_metrics"]["downstream"] == ["apply_guardrail"]
    assert tasks["apply_guardrail"]["downstream"] == ["log_to_mlflow"]
    assert tasks["log_to_mlflow"]["downstream"] == []
    assert all(t["retries"] >= 1 for t in tasks.values())


def test_every_task_reads_the_runs_day(parsed: dict) -> None:
    tasks = parsed["tasks"]
    day = tasks["spark_online_metrics"]["day"]
    assert day == "{{ ds }}"  # the logical date: day D, scheduled or dag.test(logical_date=D)
    assert tasks["apply_guardrail"]["op_args"] == [day]
    assert tasks["compact_attribution"]["op_args"] == [day]
    assert tasks["log_to_mlflow"]["op_args"] == [day]
