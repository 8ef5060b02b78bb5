"""
### online_metrics

Once a day, day D (UTC) at D+1 00:30 UTC (the run's logical date is D), reads out the A/B test and
guards it (logic in `include/lambdarec/monitoring/`):

1. **compact_attribution** — folds day D of the attribution job's archive
   (`<lake>/attribution-archive/`, written by the platform's `attribution` service) into the lake's
   `impressions` and `attributed` tables, one row per key (a redelivered row counted once); a day
   with nothing archived leaves the tables as they are (the readout then says what is missing).
2. **spark_online_metrics** — `include/spark/online_metrics.py` via spark-submit on the
   `spark_default` connection: the lake's `impressions` and `attributed` tables over the window
   ending with D (`LAMBDAREC_AB_WINDOW_DAYS`, 14) aggregated per (day, variant, user); CTR@10,
   add-to-cart rate, conversion and revenue per 1,000 impressions per variant with 95%
   intervals clustered by user, each variant tested against control (the first variant of
   `LAMBDAREC_AB_VARIANTS`), coverage of the catalog. Writes `reports/ab/D/readout.json` and
   `readout.html` (linked from the reports site's index).
3. **apply_guardrail** — a variant whose conversion is below control's with p <
   `LAMBDAREC_AB_GUARDRAIL_P` (0.01), with at least `LAMBDAREC_AB_MIN_LISTS` lists in both, is set
   to weight 0 in `<state_dir>/ab/variants.json`; serving re-reads that file within a second and
   serves control to the variant's users, no restart. The decision is shown in the report.
   The guardrail never switches a variant back on: delete or edit the file to do that.
4. **log_to_mlflow** — the online metrics of each variant that serves the champion (policy
   `pipeline` or `no_ranker`) logged on the champion's MLflow run as
   `online.<variant>.<metric>`, one point per day; the champion's offline metrics (its
   evaluation) written beside the readout (`offline.json`) and shown in the report. Skipped, with
   the reason, when no champion is registered.

Re-running a day rewrites its readout and leaves an already switched-off variant as it is.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import CronDataIntervalTimetable, dag, task

from lambdarec_airflow.online_metrics import OnlineMetricsSparkOperator

# Day D for the scheduled run at D+1 00:30 and for `dag.test(logical_date=D)` alike.
DAY = "{{ ds }}"


@dag(
    dag_id="online_metrics",
    # Day D at D+1 00:30 UTC, once the attribution job has committed D's last rows.
    schedule=CronDataIntervalTimetable("30 0 * * *", timezone="UTC"),
    start_date=pendulum.datetime(2000, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args={"owner": "lambdarec", "retries": 1, "retry_delay": timedelta(minutes=2)},
    tags=["lambdarec", "monitoring", "ab"],
    doc_md=__doc__,
)
def online_metrics() -> None:
    @task
    def compact_attribution(day: str) -> list[dict]:
        from lambdarec.attribution import archive_root, compact
        from lambdarec.config import get_settings

        settings = get_settings()
        return [
            compact(archive_root(settings), settings.lake_dir, table, day).as_dict()
            for table in ("impressions", "attributed")
        ]

    @task
    def apply_guardrail(day: str) -> dict:
        from lambdarec.monitoring.guardrail import run_guardrail

        return run_guardrail(day)

    @task
    def log_to_mlflow(day: str) -> dict:
        from lambdarec.monitoring.ab_mlflow import log_readout

        return log_readout(day)

    # Both tasks read the same day: the template is rendered in the task's arguments too.
    spark = OnlineMetricsSparkOperator(task_id="spark_online_metrics", day=DAY)
    compact_attribution(DAY) >> spark >> apply_guardrail(DAY) >> log_to_mlflow(DAY)


online_metrics()
