"""
### drift_monitoring

Once a day, day D (UTC) at D+1 01:00 UTC (after `daily_feature_pipeline` put D's events in the
lake), compares live traffic with what the champion model was trained on (logic in
`include/lambdarec/monitoring/`). A day with no events in the lake is skipped, with the reason.

1. **measure_drift** — loads the champion's reference profile (an MLflow artifact of its training
   run), reads day D's events from the lake and impressions from the impressions topic, and
   computes PSI and KL divergence per feature (event price, category, type and hour; the served
   feature vector; the model's scores; the recommended items' popularity) over bins fixed from
   the reference. Runs the training/serving skew check on a sample of impressions (features
   rebuilt point-in-time from Feast's offline store). Writes `reports/drift/D/result.json` and
   `report.html` (linked from the reports site's index, `lambdarec platform status`), and logs
   the metrics to MLflow (`lambdarec/drift`).
2. **retraining_needed** — short-circuits unless a feature is at PSI >= 0.25 ("act",
   `LAMBDAREC_DRIFT_PSI_ACT`) and the guard allows it: no drift-triggered retraining within the
   cooldown (`LAMBDAREC_DRIFT_RETRAIN_COOLDOWN_DAYS`, 7 days) and no retraining run queued or
   running. PSI >= 0.1 ("watch") is reported only.
3. **trigger_retraining** — triggers `weekly_model_retraining` (`LAMBDAREC_DRIFT_RETRAIN_DAG_ID`; run id `drift__D`, so a re-run of
   the day cannot trigger twice), then **record_trigger** writes the ledger the guard reads.

Needs a champion with a reference profile (`ModelRegistry.log_run(..., reference_profile=...)`).
Before any model is promoted (a new deployment, or every retraining so far served the
baselines) the run is skipped with that reason; a champion without a profile (nor a data range to
rebuild one from) fails measure_drift, which says so.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import CronDataIntervalTimetable, dag, task

from lambdarec.config import get_settings


@dag(
    dag_id="drift_monitoring",
    # Day D at D+1 01:00 UTC, after daily_feature_pipeline (D+1 00:15, minutes long) wrote D's
    # events to the lake; `ds` is D for this run and for `dag.test(logical_date=D)` alike.
    schedule=CronDataIntervalTimetable("0 1 * * *", timezone="UTC"),
    start_date=pendulum.datetime(2000, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args={"owner": "lambdarec", "retries": 1, "retry_delay": timedelta(minutes=2)},
    tags=["lambdarec", "monitoring", "drift"],
    doc_md=__doc__,
)
def drift_monitoring() -> None:
    @task
    def measure_drift(ds: str | None = None) -> dict:
        from airflow.exceptions import AirflowSkipException

        from lambdarec.monitoring.profile import NoChampionError
        from lambdarec.monitoring.run import run_drift
        from lambdarec.pipelines.daily import no_events

        empty = no_events(ds or "")
        if empty:
            raise AirflowSkipException(empty)
        try:
            return run_drift(ds or "")
        except NoChampionError as error:  # nothing to compare with yet: not a failure
            raise AirflowSkipException(str(error)) from None

    @task.short_circuit
    def retraining_needed(summary: dict, ti=None) -> bool:  # ti: the running task instance
        from lambdarec.monitoring.run import retraining_guard

        return retraining_guard(summary, ti)

    @task
    def record_trigger(summary: dict, ds: str | None = None) -> dict:
        from lambdarec.monitoring.run import record_trigger

        return record_trigger(summary, f"drift__{ds}")

    summary = measure_drift()
    trigger_retraining = TriggerDagRunOperator(
        task_id="trigger_retraining",
        trigger_dag_id=get_settings().drift_retrain_dag_id,
        trigger_run_id="drift__{{ ds }}",
        conf={"reason": "drift", "day": "{{ ds }}"},
        skip_when_already_exists=True,
    )
    retraining_needed(summary) >> trigger_retraining >> record_trigger(summary)


drift_monitoring()
