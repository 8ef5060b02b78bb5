"""Run a DAG for one data interval with ``dag.test()``, with the platform's Airflow config.

``make demo`` and the integration tests use this to run the real DAG file (the same tasks,
operators and spark-submit the scheduler would run) without waiting for the scheduler. It runs in a
subprocess so Airflow reads the project's configuration (``AIRFLOW_HOME`` under the state folder,
the dags/plugins folders, the ``spark_default`` connection) and not the caller's.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import date
from typing import TYPE_CHECKING

from lambdarec.config import get_settings
from lambdarec.platform.airflow import airflow_process_env, prepare_airflow

if TYPE_CHECKING:
    from lambdarec.config import Settings

_PROBE = """
import json, sys
import pendulum
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(sys.argv[1])
if bag.import_errors:
    print(json.dumps({"import_errors": {k: str(v) for k, v in bag.import_errors.items()}}))
    sys.exit(2)
dag = bag.get_dag(sys.argv[2])
run = dag.test(logical_date=pendulum.parse(sys.argv[3]), run_conf=json.loads(sys.argv[4]) or None)
tis = run.get_task_instances()
states = {ti.task_id: str(ti.state) for ti in tis}
seconds = {ti.task_id: round(ti.duration, 1) for ti in tis if ti.duration is not None}
print("LAMBDAREC_DAG_RESULT " + json.dumps({"state": str(run.state), "tasks": states, "seconds": seconds}))
"""


@dataclass(frozen=True)
class DagTestResult:
    dag_id: str
    day: str
    state: str
    tasks: dict[str, str]
    log: str
    #: Each task's run time (seconds), for the tasks that ran.
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def success(self) -> bool:
        return self.state == "success"


def run_dag_test(
    dag_id: str,
    day: date | str,
    settings: Settings | None = None,
    *,
    conf: dict[str, object] | None = None,
    timeout_s: float = 1800,
) -> DagTestResult:
    """``dag.test()`` of ``dag_id`` for the data interval starting ``day`` (00:00 UTC), with the
    run's ``conf`` (the DAG's params) when given."""
    s = settings or get_settings()
    prepare_airflow(s)  # metadata DB migrated once
    env = airflow_process_env(s)
    day_text = day.isoformat() if isinstance(day, date) else date.fromisoformat(day).isoformat()
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            _PROBE,
            str(s.home / "dags"),
            dag_id,
            f"{day_text}T00:00:00+00:00",
            json.dumps(conf or {}),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    output = done.stdout + done.stderr
    for line in reversed(done.stdout.splitlines()):
        if line.startswith("LAMBDAREC_DAG_RESULT "):
            result = json.loads(line.removeprefix("LAMBDAREC_DAG_RESULT "))
            if not result["tasks"]:
                raise RuntimeError(
                    f"dag.test() of {dag_id} for {day_text} ran no task: is the day before the "
                    "DAG's start_date?"
                )
            return DagTestResult(
                dag_id,
                day_text,
                result["state"],
                result["tasks"],
                output,
                result.get("seconds", {}),
            )
    tail = "\n".join(output.strip().splitlines()[-40:])
    raise RuntimeError(f"dag.test() of {dag_id} for {day_text} did not finish:\n{tail}")
