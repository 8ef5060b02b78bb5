"""
### daily_feature_pipeline

The batch layer, once a day: day D (UTC) at D+1 00:15 UTC (the run's logical date is D):

0. **compact_archive** — folds day D of the speed layer's raw archive (`lake/archive/date=D/`,
   the Parquet files Flink commits on checkpoints) into the lake's `events/date=D/`: typed,
   deduplicated by event id, sorted, the partition replaced atomically. A day with no archive
   (a backfill written straight to the lake) is left as it is; a day with no events at all is
   skipped, with the reason (the platform idle that day), instead of failing its first gate.
1. **validate_raw_events** — Great Expectations gate on the lake's events of day D (keys not null,
   unique event ids, known event types, sane prices, timestamps inside the day, row count close
   to the previous day's).
2. **spark_daily_features** — `include/spark/daily_features.py` via spark-submit on the
   `spark_default` connection (`local[*]` by default): 30-day user history, 1/7/30-day item
   statistics, item-to-item co-occurrence and category popularity, written to
   `lake/features/<table>/date=D/` (re-running a day overwrites that partition only).
3. **validate_<table>** — one gate per feature table (key uniqueness, nulls, ranges, row-count
   change, freshness).
4. **materialize** — loads day D's feature rows into Feast's online store. It runs only when every
   gate passed: a bad day never reaches serving, the online store keeps the last good features.
   A failed gate fails its task at once (no retries: retrying cannot fix data) and the run.
5. **embed_new_items** — after `materialize`: the catalog's items the serving two-tower has no
   vector for (new since its training data) are embedded by its item tower from their category
   and price (numpy, no TensorFlow) and upserted into the collection behind the serving alias,
   so they can be retrieved the day they appear instead of after the weekly retraining
   (`lambdarec.retrieval.cold_start.add_new_items`; skipped without a published champion).
6. **data_docs** — runs after the gates whether they passed or not; logs the Data Docs index (also linked from `lambdarec platform
   status`), where each failed expectation is shown with the values that failed it.

Backfill: `airflow backfill create --dag-id daily_feature_pipeline --from-date 2024-01-01
--to-date 2024-01-07`, or `dag.test()` per day as `make demo` does. The DAG is created paused;
the local platform unpauses it (`lambdarec platform up`, the end of `make demo`;
`LAMBDAREC_DAGS_PAUSED=1` keeps it paused). It does not catch up: once unpaused, the scheduler
runs the last complete day, then each new day.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import CronDataIntervalTimetable, dag, task

from lambdarec.tables import FEATURE_TABLES
from lambdarec_airflow.operators import DailyFeaturesSparkOperator

# The run's logical date: day D for the scheduled run at D+1 00:15 (a data-interval timetable)
# and for `dag.test(logical_date=D)` alike (its inferred interval would be the day before).
DAY = "{{ ds }}"


@dag(
    dag_id="daily_feature_pipeline",
    # Day D at D+1 00:15 UTC: the speed layer has committed D's last events to the archive by
    # then (files land on checkpoints, seconds apart). A cron string alone would make Airflow 3 run
    # D at D 00:00 with D as its day: a day that has just begun.
    schedule=CronDataIntervalTimetable("15 0 * * *", timezone="UTC"),
    # Early, so any historical dataset can be backfilled (tasks are not created for days before
    # start_date); catchup is off, so the scheduler does not walk these years by itself.
    start_date=pendulum.datetime(2000, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args={"owner": "lambdarec", "retries": 2, "retry_delay": timedelta(minutes=1)},
    tags=["lambdarec", "batch", "features"],
    doc_md=__doc__,
)
def daily_feature_pipeline() -> None:
    @task
    def compact_archive(ds: str | None = None) -> dict:
        from airflow.exceptions import AirflowSkipException

        from lambdarec.pipelines.daily import compact_archive as compact
        from lambdarec.pipelines.daily import no_events

        compacted = compact(ds or "")
        empty = no_events(ds or "")
        if empty:
            raise AirflowSkipException(empty)
        return compacted

    @task
    def validate_raw_events(ds: str | None = None) -> dict:
        from lambdarec_airflow.gates import run_gate

        return run_gate("raw_events", ds or "")

    @task
    def validate_table(table: str, ds: str | None = None) -> dict:
        from lambdarec_airflow.gates import run_gate

        return run_gate(table, ds or "")

    @task
    def materialize(ds: str | None = None) -> list[str]:
        from lambdarec.pipelines.daily import apply_feature_repo, materialize_day

        apply_feature_repo()
        return materialize_day(ds or "")

    @task
    def embed_new_items() -> dict:
        from lambdarec.retrieval.cold_start import add_new_items

        return add_new_items()

    @task(trigger_rule="all_done")
    def data_docs() -> str:
        from lambdarec.pipelines.daily import data_docs_index

        return data_docs_index()

    spark = DailyFeaturesSparkOperator(task_id="spark_daily_features", day=DAY)
    gates = [validate_table.override(task_id=f"validate_{t.name}")(t.name) for t in FEATURE_TABLES]
    raw = validate_raw_events()
    compact_archive() >> raw >> spark >> gates >> materialize() >> embed_new_items()
    # Data Docs after every gate, pass or fail; a leaf beside materialize, so a failed gate still
    # fails the run.
    [raw, *gates] >> data_docs()


daily_feature_pipeline()
