"""
### speed_layer

Keeps the speed layer running and reports how far behind it is, every 10 minutes:

1. **ensure_running** — `SpeedLayerOperator` on the `flink_default` connection: host `local`
   runs the job on the local PyFlink mini-cluster (the platform's `speed-layer` and
   `feature-pusher` services); a JobManager's REST host and port submits the same job file to a
   Flink session cluster. It submits the job only when it is not running (it then resumes from
   its newest checkpoint), waits until every task runs, and cancels the job if the task is killed.
2. **consumer_lag** — events on the events topic that the job has not yet committed (per
   partition; offsets are committed on each checkpoint). Fails when the lag is at or above
   `LAMBDAREC_SPEED_LAG_ALERT` (default 100,000), so an alert fires while the job falls behind.
   Also reports the dead-letter count (invalid events, each kept with its reason on
   `lambdarec.events.dlq`); per-operator counters are in the Flink UI (`numRecordsOut` of the
   `dead_letter` sink, `numLateRecordsDropped` of the trending window).

The DAG is active as soon as Airflow parses it (unlike the batch DAGs, which start paused): it is
the local platform's second line of supervision, after the `speed-layer` service's own supervisor
(which restarts a dead job process within seconds, from its checkpoint).

What the job computes (session features, trending items, dead letters, the raw archive) is
described in `include/flink/speed_layer.py`.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import dag, task

from lambdarec_airflow.flink import SpeedLayerOperator


@dag(
    dag_id="speed_layer",
    schedule=timedelta(minutes=10),
    start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    is_paused_upon_creation=False,
    default_args={"owner": "lambdarec", "retries": 1, "retry_delay": timedelta(seconds=30)},
    tags=["lambdarec", "speed", "flink"],
    doc_md=__doc__,
)
def speed_layer() -> None:
    @task
    def consumer_lag() -> dict:
        from lambdarec.config import get_settings
        from lambdarec.speed.control import consumer_lag as lag

        settings = get_settings()
        report = lag(settings)
        print(f"speed layer consumer lag: {report}")
        if report["lag"] >= settings.speed_lag_alert:
            raise RuntimeError(
                f"the speed layer is {report['lag']:,} events behind {report['topic']} "
                f"(alert at {settings.speed_lag_alert:,}): check its throughput in the Flink UI"
            )
        return report

    SpeedLayerOperator(task_id="ensure_running") >> consumer_lag()


speed_layer()
