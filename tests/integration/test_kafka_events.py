"""The event contract on the real broker: round trips, per-key order, dead-letter routing."""

from __future__ import annotations

import uuid
from collections import defaultdict
from typing import TYPE_CHECKING

import orjson
import pytest

from lambdarec.events import Event, Invalid
from lambdarec.streaming.kafka import (
    EventProducer,
    TopicSpec,
    consume,
    delete_topics,
    ensure_topics,
    make_consumer,
    topic_size,
)
from lambdarec.streaming.replay import replay

if TYPE_CHECKING:
    from lambdarec.config import Settings

pytestmark = pytest.mark.integration


@pytest.fixture
def topics(kafka_settings: Settings):
    """A private events/dead-letter topic pair per test, deleted afterwards."""
    tag = uuid.uuid4().hex[:8]
    events, dlq = f"test.events.{tag}", f"test.dlq.{tag}"
    ensure_topics(kafka_settings, extra=[TopicSpec(events, 3), TopicSpec(dlq, 1)])
    yield events, dlq
    delete_topics([events, dlq], kafka_settings)


def _read_all(settings: Settings, topic: str, expected: int) -> list:
    """Read ``expected`` messages, and check the topic holds exactly that many (no duplicates)."""
    consumer = make_consumer(f"test-{uuid.uuid4().hex[:8]}", [topic], settings)
    try:
        messages = list(consume(consumer, max_messages=expected, idle_timeout_s=10))
        assert topic_size(settings, topic) == expected, "the topic holds extra messages"
        return messages
    finally:
        consumer.close()


def test_10k_generated_events_round_trip_in_order_without_duplicates(
    kafka_settings: Settings, topics: tuple[str, str], small_events
) -> None:
    events_topic, dlq_topic = topics
    df = small_events.head(10_000)
    assert len(df) == 10_000
    producer = EventProducer(kafka_settings, topic=events_topic, dead_letter_topic=dlq_topic)
    result = replay([df], settings=kafka_settings, producer=producer, progress=False)
    assert result.produced == 10_000 and result.dead_lettered == 0

    messages = _read_all(kafka_settings, events_topic, 10_000)
    assert len(messages) == 10_000
    ids = [orjson.loads(m.value())["event_id"] for m in messages]
    assert len(set(ids)) == 10_000, "duplicates on the topic"
    assert set(ids) == set(df["event_id"])

    # Per key (user) the broker must hand events back in the order they were produced.
    sent: dict[str, list[str]] = defaultdict(list)
    for uid, eid in zip(
        df.sort_values("ts", kind="stable")["user_id"],
        df.sort_values("ts", kind="stable")["event_id"],
        strict=True,
    ):
        sent[uid].append(eid)
    got: dict[str, list[str]] = defaultdict(list)
    for m in messages:
        assert m.key() is not None
        got[m.key().decode()].append(orjson.loads(m.value())["event_id"])
    assert got == sent
    # Everything read back is a valid event under the contract.
    assert all(isinstance(Event.model_validate_json(m.value()), Event) for m in messages[:500])


BAD_PAYLOADS = [
    (b'{"event_id": "x1", "user_id": ', "$", "malformed JSON"),
    (b'"just a string"', "$", "JSON object"),
    (
        b'{"event_id":"x2","user_id":"u","session_id":"s","item_id":"i","event_type":"click","ts":"2024-01-01T00:00:00Z"}',
        "event_type",
        "unknown event type",
    ),
    (
        b'{"event_id":"x3","user_id":"u","session_id":"s","item_id":"i","event_type":"view"}',
        "ts",
        "missing",
    ),
    (
        b'{"event_id":"x4","user_id":"u","session_id":"s","item_id":"i","event_type":"view","ts":"2024-01-01T00:00:00Z","price":-5}',
        "price",
        "greater than",
    ),
    (
        b'{"event_id":"x5","user_id":"u","session_id":"s","item_id":"i","event_type":"view","ts":"2999-01-01T00:00:00Z"}',
        "ts",
        "future",
    ),
    (
        b'{"event_id":"x6","user_id":"u","session_id":"s","item_id":"i","event_type":"view","ts":"2024-01-01T00:00:00Z","hack":1}',
        "hack",
        "unknown field",
    ),
]


def test_malformed_events_land_on_dead_letter_with_their_reason(
    kafka_settings: Settings, topics: tuple[str, str]
) -> None:
    events_topic, dlq_topic = topics
    good = [
        orjson.dumps(
            {
                "event_id": f"ok{i}",
                "user_id": f"u{i % 3}",
                "session_id": "s",
                "item_id": f"i{i}",
                "event_type": "view",
                "ts": "2024-01-01T00:00:00Z",
            }
        )
        for i in range(50)
    ]
    with EventProducer(kafka_settings, topic=events_topic, dead_letter_topic=dlq_topic) as producer:
        for raw in good[:25]:
            assert isinstance(producer.send_raw(raw), Event)
        for raw, _, _ in BAD_PAYLOADS:
            assert isinstance(producer.send_raw(raw), Invalid)
        for raw in good[25:]:
            producer.send_raw(raw)
    assert producer.stats.accepted == 50 and producer.stats.dead_lettered == len(BAD_PAYLOADS)

    dead = [
        orjson.loads(m.value()) for m in _read_all(kafka_settings, dlq_topic, len(BAD_PAYLOADS))
    ]
    assert len(dead) == len(BAD_PAYLOADS)
    by_raw = {d["raw"]: d for d in dead}
    for raw, field, words in BAD_PAYLOADS:
        record = by_raw[raw.decode()]
        assert record["field"] == field
        assert words in record["reason"]
        assert record["source"] == "producer"
    valid = _read_all(kafka_settings, events_topic, 50)
    assert sorted(orjson.loads(m.value())["event_id"] for m in valid) == sorted(
        f"ok{i}" for i in range(50)
    )
