"""The scheduled DAGs run each day after that day ended, on the day that ended.

Airflow 3 reads a bare cron string as a trigger timetable (the run at D 00:00 has D as its
logical date and an empty interval): a daily job templated on that date would process a day that
has just begun. The daily DAGs use data-interval timetables instead, so the run for day D comes
after D, with D as its logical date (``ds``), as ``dag.test(logical_date=D)`` has it; staggered
so drift monitoring follows the batch layer and the weekly retraining follows both."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

DAGS = Path(__file__).resolve().parents[2] / "dags"

PROBE = textwrap.dedent(
    """
    import json, sys
    import pendulum
    from airflow.dag_processing.dagbag import DagBag
    from airflow.timetables.base import DataInterval, TimeRestriction
    from airflow.timetables.interval import CronDataIntervalTimetable

    bag = DagBag(dag_folder=sys.argv[1])
    out = {"errors": {k: str(v) for k, v in bag.import_errors.items()}, "dags": {}}
    for dag_id, dag in sorted(bag.dags.items()):
        timetable = dag.timetable
        row = {
            "timetable": type(timetable).__name__,
            "expression": getattr(timetable, "expression", None),
            "catchup": dag.catchup,
            "paused_upon_creation": dag.is_paused_upon_creation,
        }
        if row["timetable"] == "CronDataIntervalTimetable":
            # The scheduler's own timetable of that expression: the run after day 2024-01-01's.
            core = CronDataIntervalTimetable(timetable.expression, "UTC")
            first = core.next_dagrun_info(
                last_automated_data_interval=None,
                restriction=TimeRestriction(
                    earliest=pendulum.datetime(2024, 1, 1, tz="UTC"), latest=None, catchup=True
                ),
            )
            second = core.next_dagrun_info(
                last_automated_data_interval=first.data_interval,
                restriction=TimeRestriction(earliest=None, latest=None, catchup=True),
            )
            row["runs"] = [
                {"ds": i.logical_date.to_date_string(), "run_after": i.run_after.isoformat()}
                for i in (first, second)
            ]
        out["dags"][dag_id] = row
    print(json.dumps(out))
    """
)


@pytest.fixture(scope="module")
def dags() -> dict:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(DAGS)],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    parsed = json.loads(done.stdout.strip().splitlines()[-1])
    assert parsed["errors"] == {}
    return parsed["dags"]


@pytest.mark.parametrize(
    ("dag_id", "at"),
    [
        ("daily_feature_pipeline", "00:15"),
        ("online_metrics", "00:30"),
        ("drift_monitoring", "01:00"),
    ],
)
def test_a_daily_dag_processes_day_d_after_it_ended(dags: dict, dag_id: str, at: str) -> None:
    row = dags[dag_id]
    assert row["timetable"] == "CronDataIntervalTimetable"
    assert row["catchup"] is False
    # Created paused: the platform unpauses them (lambdarec platform up, the demo's end).
    assert row["paused_upon_creation"] in (None, True)
    assert row["runs"] == [
        {"ds": "2024-01-01", "run_after": f"2024-01-02T{at}:00+00:00"},
        {"ds": "2024-01-02", "run_after": f"2024-01-03T{at}:00+00:00"},
    ]


def test_drift_follows_the_batch_layer_and_the_retraining_follows_both(dags: dict) -> None:
    weekly = dags["weekly_model_retraining"]
    assert weekly["timetable"] == "CronTriggerTimetable"
    assert weekly["expression"] == "0 2 * * 0"  # Sunday 02:00, after Saturday's 00:15 and 01:00
    assert weekly["paused_upon_creation"] in (None, True)
    assert dags["speed_layer"]["paused_upon_creation"] is False
