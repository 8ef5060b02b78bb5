"""POST /events on a real (private) Kafka broker: accepted events land on the topic, a batch with
one invalid event produces nothing; a served list leaves an impression record."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import orjson
import pytest

from lambdarec.harness.platform import private_platform
from lambdarec.harness.waiting import eventually
from lambdarec.recommend.snapshot import Snapshot
from lambdarec.streaming.kafka import consume, ensure_topics, make_consumer, topic_size
from serving import create_app
from serving.recommender import Recommender
from serving.sinks import ImpressionSink

if TYPE_CHECKING:
    from collections.abc import Iterator

    from flask.testing import FlaskClient

    from lambdarec.config import Settings

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def broker() -> Iterator[Settings]:
    with private_platform(["kafka"]) as settings:
        ensure_topics(settings)
        yield settings


@pytest.fixture(scope="module")
def app_parts(broker: Settings) -> Iterator[tuple[FlaskClient, ImpressionSink]]:
    items = {f"i{n}": f"c{n % 5}" for n in range(100)}
    recommender = Recommender(
        Snapshot.from_items(items, [(i, 100.0 - n) for n, i in enumerate(items)])
    )
    sink = ImpressionSink(broker)
    app = create_app(broker, recommender, impressions=sink)
    yield app.test_client(), sink
    sink.close()


def _event(n: int, **overrides: Any) -> dict[str, Any]:
    ts = datetime.now(UTC) - timedelta(seconds=n)
    return {
        "event_id": f"ev-{n}",
        "user_id": f"u{n % 7}",
        "session_id": f"s{n % 7}",
        "item_id": f"i{n % 100}",
        "event_type": "view",
        "ts": ts.isoformat(),
        **overrides,
    }


def test_events_reach_the_topic_and_invalid_batches_produce_nothing(
    broker: Settings, app_parts: tuple[FlaskClient, ImpressionSink]
) -> None:
    client, _ = app_parts
    before = topic_size(broker, broker.topic_events)
    resp = client.post("/events", json=[_event(n) for n in range(50)])
    assert resp.status_code == 202, resp.data
    assert resp.get_json() == {"accepted": 50}
    resp = client.post(
        "/events",
        # Its own session: s1 belongs to u1 since the batch above (another user's would be 409).
        json=_event(50, event_type="purchase", item_id="i0", user_id="buyer", session_id="s-b"),
    )
    assert resp.status_code == 202
    # acks=all before 202: the events are on the topic when the answer arrives.
    assert topic_size(broker, broker.topic_events) == before + 51

    bad = [_event(100), _event(101, item_id=""), _event(102)]
    resp = client.post("/events", json=bad)
    assert resp.status_code == 400
    assert resp.get_json()["error"]["index"] == 1
    assert resp.get_json()["error"]["field"] == "item_id"
    resp = client.post("/events", data=b"[{", content_type="application/json")
    assert resp.status_code == 400
    time.sleep(0.5)
    assert topic_size(broker, broker.topic_events) == before + 51
    assert topic_size(broker, broker.topic_dead_letter) == 0

    # The purchase just posted never comes back for that user.
    served = client.get("/recommend?user_id=buyer&k=20").get_json()["items"]
    assert "i0" not in {i["item_id"] for i in served}


def test_recommend_logs_an_impression(
    broker: Settings, app_parts: tuple[FlaskClient, ImpressionSink]
) -> None:
    client, sink = app_parts
    body = client.get("/recommend?user_id=imp-user&session_id=s-imp&k=5").get_json()
    sink.close()
    size = eventually(
        lambda: topic_size(broker, broker.topic_impressions),
        15,
        interval_s=0.2,
        message="an impression on the impressions topic",
    )
    consumer = make_consumer("impression-check", [broker.topic_impressions], broker)
    try:  # the idle timeout covers the consumer group's join
        records = [
            orjson.loads(m.value()) for m in consume(consumer, max_messages=size, idle_timeout_s=15)
        ]
    finally:
        consumer.close()
    mine = [r for r in records if r["request_id"] == body["request_id"]]
    assert len(mine) == 1
    rec = mine[0]
    assert rec["variant"] == body["variant"]
    assert [i["item_id"] for i in rec["items"]] == [i["item_id"] for i in body["items"]]
    assert [i["position"] for i in rec["items"]] == list(range(5))
    assert "features" in rec
