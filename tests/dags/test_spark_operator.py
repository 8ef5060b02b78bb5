"""The daily Spark task is sized for the master its connection names: the ``spark_default``
connection decides where spark-submit sends the job, so the driver heap, executor sizing and
bind address follow it, also when LAMBDAREC_SPARK_MASTER says otherwise."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import TYPE_CHECKING

from lambdarec.harness.platform import private_settings
from lambdarec.platform.airflow import airflow_process_env

if TYPE_CHECKING:
    from pathlib import Path

PROBE = """
import json
from lambdarec_airflow.online_metrics import OnlineMetricsSparkOperator
from lambdarec_airflow.operators import DailyFeaturesSparkOperator
jobs = {
    "daily": DailyFeaturesSparkOperator(task_id="daily", day="2024-01-05").job(),
    "readout": OnlineMetricsSparkOperator(task_id="readout", day="2024-01-05").job(),
}
print("JOBS " + json.dumps({
    name: {"master": job.master, "driver_memory": job.driver_memory, "conf": job.conf,
           "env": job.env_vars, "application": job.application}
    for name, job in jobs.items()
}))
"""


def _jobs(tmp_path: Path, connection_master: str, settings_master: str) -> tuple[dict, str]:
    """Each operator's job (the daily features, the A/B readout), and the probe's output."""
    settings = private_settings(tmp_path, spark_master=settings_master)
    env = {
        **airflow_process_env(settings),
        "AIRFLOW_CONN_SPARK_DEFAULT": json.dumps({"conn_type": "spark", "host": connection_master}),
        "LAMBDAREC_SPARK_MASTER": settings_master,
    }
    done = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    line = next(ln for ln in done.stdout.splitlines() if ln.startswith("JOBS "))
    return json.loads(line.removeprefix("JOBS ")), done.stdout + done.stderr


def test_the_jobs_follow_the_connections_cluster_master(tmp_path: Path) -> None:
    jobs, log = _jobs(tmp_path, "spark://spark-master:7077", "local[*]")
    assert jobs["daily"]["application"].endswith("daily_features.py")
    assert jobs["readout"]["application"].endswith("online_metrics.py")
    for job in jobs.values():
        assert job["master"] == "spark://spark-master:7077"
        assert job["driver_memory"] == "1g"  # a planner's heap, not local mode's 4g
        assert job["conf"]["spark.executor.memory"] == "1g"
        assert "SPARK_LOCAL_IP" not in job["env"]  # executors elsewhere must reach the driver
    assert "set both to the same master" in log


def test_the_local_default_is_unchanged(tmp_path: Path) -> None:
    jobs, log = _jobs(tmp_path, "local[*]", "local[*]")
    for job in jobs.values():
        assert job["master"] == "local[*]"
        assert job["driver_memory"] == "4g"
        assert "spark.executor.memory" not in job["conf"]
    assert "same master" not in log
