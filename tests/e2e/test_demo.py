"""The demo's path on a private platform: services up, data into the lake, replayed into Kafka."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

from lambdarec.data import lake
from lambdarec.demo import run_demo
from lambdarec.platform import manager
from lambdarec.platform.testing import link_kafka_jars, private_settings

pytestmark = [pytest.mark.e2e, pytest.mark.integration]


def test_demo_generates_the_lake_and_replays_every_event_into_kafka() -> None:
    state = Path(tempfile.mkdtemp(prefix="lambdarec-demo-"))
    settings = private_settings(state)
    link_kafka_jars(settings)
    try:
        figures = run_demo(users=300, items=800, days=2, seed=5, services=["kafka", "redis"],
                           settings=settings)
        counts = lake.date_counts(settings.lake_dir)
        assert [d.isoformat() for d in sorted(counts)] == figures["days"]
        assert figures["events"] == sum(counts.values()) > 1000
        replayed = figures["replay"]
        assert isinstance(replayed, dict)
        assert replayed["produced"] == figures["events"]
        assert replayed["dead_lettered"] == 0
        assert figures["topic_events_added"] == figures["events"]
        assert {s.name for s in manager.status(settings=settings) if s.is_up} >= {"kafka", "redis"}
    finally:
        manager.down(settings=settings)
        shutil.rmtree(state, ignore_errors=True)
