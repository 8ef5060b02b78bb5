"""
### weekly_model_retraining

Retrains the two-stage recommender once a week, Sundays at 02:00 UTC (and whenever `drift_monitoring` triggers it, by
this dag id). Every step is a program, `include/models/retrain.py <step> --run-dir DIR`, launched by
`ModelStepOperator`; the logic lives in `lambdarec.models.retrain`, and only the run folder
(`<state_dir>/models/runs/<run id>/`) passes between tasks.

1. **build_datasets** — examples from `params.dataset` (default: the lake) with a temporal split;
   the user features come from Feast (`get_historical_features`, point in time) when
   `params.feast`. With `params.only_new_data` (default) the run is skipped, with the reason in
   the log, when the champion was trained and evaluated on this same data (no event since).
2. **train_two_tower** — the retriever (TFRS, in-batch softmax with logQ, early stopping).
3. **train_deepfm** — the ranker, on the retriever's candidates for validation queries (at most
   `params.ranker_epochs` epochs; early stopping on validation decides).
4. **evaluate_and_promote** — full ranking on the test split against popular / co-occurrence /
   ALS; both models are logged to MLflow and registered; each becomes `champion` only if it beats
   the current champion on the same evaluation, otherwise `challenger`, and the log, the MLflow
   run and `decision.json` say why.
5. **export_embeddings** — the promoted two-tower's item vectors to a new Milvus collection
   recording its registry version, the reload marker naming that version, then the serving alias
   switched (`lambdarec.retrieval.index`): never a switch without a marker; skipped when nothing
   was promoted.
6. **notify_serving** — writes the reload marker `<state_dir>/serving/reload.json` when the gate
   chose to serve without models (the export step already wrote it when it published); every
   serving process watches it and loads the query tower of the version the index serves.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import Param, dag

from lambdarec_airflow.training import ModelStepOperator

RUN_DIR = "{{ run_id }}"  # resolved under <state_dir>/models/runs/ by the operator


@dag(
    dag_id="weekly_model_retraining",
    # Sundays 02:00 UTC, after Saturday's daily_feature_pipeline (00:15) and drift_monitoring
    # (01:00): the week's last day is in the lake and Feast. The run does not depend on its date.
    schedule="0 2 * * 0",
    start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args={"owner": "lambdarec", "retries": 1, "retry_delay": timedelta(minutes=5)},
    params={
        "dataset": Param("lake", type="string", description="lake | taobao | diginetica | a file"),
        "feast": Param(
            True, type="boolean", description="User features from Feast (temporal data)"
        ),
        "max_train": Param(0, type="integer", minimum=0, description="Two-tower pairs (0: all)"),
        "epochs": Param(8, type="integer", minimum=1, description="Two-tower epochs"),
        "ranker_epochs": Param(
            20, type="integer", minimum=1, description="DeepFM epochs at most (early stopping)"
        ),
        "min_delta": Param(0.0, type="number", description="Margin over the champion to promote"),
        "only_new_data": Param(
            True,
            type="boolean",
            description="Skip when the champion was trained on this same data (no event since)",
        ),
    },
    tags=["lambdarec", "models", "retraining"],
    doc_md=__doc__,
)
def weekly_model_retraining() -> None:
    build = ModelStepOperator(
        task_id="build_datasets",
        step="build",
        run_dir=RUN_DIR,
        options={
            "dataset": "{{ params.dataset }}",
            "feast": "{{ params.feast }}",
            "only_new_data": "{{ params.only_new_data }}",
        },
    )
    two_tower = ModelStepOperator(
        task_id="train_two_tower",
        step="train-two-tower",
        run_dir=RUN_DIR,
        options={"max_train": "{{ params.max_train }}", "epochs": "{{ params.epochs }}"},
        execution_timeout=timedelta(hours=4),
    )
    deepfm = ModelStepOperator(
        task_id="train_deepfm",
        step="train-deepfm",
        run_dir=RUN_DIR,
        options={"epochs": "{{ params.ranker_epochs }}"},
        execution_timeout=timedelta(hours=2),
    )
    evaluate = ModelStepOperator(
        task_id="evaluate_and_promote",
        step="evaluate",
        run_dir=RUN_DIR,
        options={"min_delta": "{{ params.min_delta }}"},
    )
    export = ModelStepOperator(task_id="export_embeddings", step="export", run_dir=RUN_DIR)
    notify = ModelStepOperator(
        task_id="notify_serving", step="notify", run_dir=RUN_DIR, trigger_rule="none_failed"
    )
    build >> two_tower >> deepfm >> evaluate >> export >> notify


weekly_model_retraining()
