"""The demo's path on a private platform: services up, the clickstream replayed into Kafka, the
speed layer archiving it into the lake and pushing session features, the batch layer per day, the
retraining DAG, then the app serving a list that changes after a few posted clicks."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

from lambdarec.data import lake
from lambdarec.demo import run_demo
from lambdarec.harness.platform import link_kafka_jars, private_settings
from lambdarec.platform import manager

pytestmark = [pytest.mark.e2e, pytest.mark.integration]


def test_demo_replays_into_kafka_and_the_speed_layer_archive_becomes_the_lake() -> None:
    state = Path(tempfile.mkdtemp(prefix="lambdarec-demo-"))
    # MLflow in a SQLite file (make demo starts the MLflow server; its tracking is the same).
    settings = private_settings(state, mlflow_tracking_uri=f"sqlite:///{state / 'mlflow.db'}")
    link_kafka_jars(settings)
    try:
        figures = run_demo(
            users=300,
            items=800,
            days=3,
            seed=5,
            services=["kafka", "redis", "speed-layer", "feature-pusher"],
            settings=settings,
            model_epochs=2,
        )
        counts = lake.date_counts(settings.lake_dir)
        assert [d.isoformat() for d in sorted(counts)] == figures["days"]
        assert figures["events"] == sum(counts.values()) > 1000
        replayed = figures["replay"]
        assert isinstance(replayed, dict)
        assert replayed["produced"] == figures["events"]
        assert replayed["dead_lettered"] == 0
        assert figures["topic_events_added"] == figures["events"]
        # Every event went through Flink into the archive, then compaction into the lake.
        assert figures["archived"] == figures["events"]
        assert set(figures["daily_feature_pipeline"].values()) == {"success"}  # type: ignore[union-attr]
        session = figures["session_sample"]
        assert isinstance(session, dict) and session["session_features__n_views"][0] > 0
        # The retraining DAG promoted a first champion (there was none), published it, and the
        # app serves it: the list changes after the posted clicks and the purchase is gone.
        assert set(figures["weekly_model_retraining"].values()) == {"success"}  # type: ignore[union-attr]
        served = figures["serving"]
        assert isinstance(served, dict)
        assert served["after"] != served["before"]
        assert served["bought"] not in served["after"]
        assert len(served["after"]) == 10
        assert not {"model", "index", "online_store"} & set(served["degraded_after"])
        assert {s.name for s in manager.status(settings=settings) if s.is_up} >= {
            "kafka",
            "redis",
            "speed-layer",
            "serving",
        }
    finally:
        manager.down(settings=settings)
        shutil.rmtree(state, ignore_errors=True)
