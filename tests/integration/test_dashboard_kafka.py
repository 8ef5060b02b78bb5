"""The operator dashboard's Kafka figures against a real broker: events posted to /events are
counted as produced and, with no speed layer consuming them, as its consumer lag; a message in
the dead-letter topic is counted; events in per second follow the topic's growth."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import pytest

from lambdarec.harness.platform import private_platform
from lambdarec.recommend.snapshot import Snapshot
from lambdarec.streaming.kafka import ensure_topics, make_producer
from serving import create_app
from serving.pages import dashboard
from serving.recommender import Recommender

if TYPE_CHECKING:
    from collections.abc import Iterator

    from lambdarec.config import Settings

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def broker() -> Iterator[Settings]:
    with private_platform(["kafka"]) as settings:
        ensure_topics(settings)
        yield settings


def _events(n: int) -> list[dict[str, Any]]:
    return [
        {
            "event_id": uuid.uuid4().hex,
            "user_id": "u1",
            "session_id": "s1",
            "item_id": f"i{k}",
            "event_type": "view",
            "ts": datetime.now(UTC).isoformat(),
        }
        for k in range(n)
    ]


def test_dashboard_counts_produced_events_lag_and_dead_letters(broker: Settings) -> None:
    app = create_app(broker, Recommender(Snapshot.from_items({"i1": "c1"}, [("i1", 1.0)])))
    client = app.test_client()
    assert client.post("/events", json=_events(25)).status_code == 202
    producer = make_producer(broker)
    producer.produce(broker.topic_dead_letter, b'{"reason": "test"}')
    assert producer.flush(10) == 0

    first = client.get("/dashboard/data").get_json()["events"]
    assert first == {
        "ok": True,
        "events_offset": 25,
        "lag": 25,  # no speed layer here: nothing committed
        "dead_letters": 1,
        "per_s": None,  # one reading: no rate yet
    }, first
    time.sleep(dashboard.MIN_READING_S + 0.2)
    assert client.post("/events", json=_events(10)).status_code == 202
    second = client.get("/dashboard/data").get_json()["events"]
    assert second["events_offset"] == 35 and second["lag"] == 35
    assert second["per_s"] is not None and second["per_s"] > 0
