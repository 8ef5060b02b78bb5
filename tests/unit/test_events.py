"""The event contract: what passes, what fails and how the failure is named."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import jsonschema
import pytest

from lambdarec.events import (
    Event,
    EventType,
    Invalid,
    dead_letter_record,
    format_ts,
    json_schema,
    parse_event,
)

GOOD = {
    "event_id": "e-1",
    "user_id": "u1",
    "session_id": "s1",
    "item_id": "i1",
    "event_type": "view",
    "category": "shoes",
    "price": 19.99,
    "ts": "2024-05-01T12:00:00.000Z",
}


def test_valid_event_round_trips_through_json() -> None:
    event = parse_event(json.dumps(GOOD))
    assert isinstance(event, Event)
    assert event.event_type is EventType.VIEW
    again = parse_event(event.to_json())
    assert again == event
    assert event.key == b"u1"


def test_wire_ts_is_utc_with_milliseconds() -> None:
    event = parse_event({**GOOD, "ts": "2024-05-01T14:00:00.123456+02:00"})
    assert isinstance(event, Event)
    assert json.loads(event.to_json())["ts"] == "2024-05-01T12:00:00.123Z"
    assert format_ts(datetime(2024, 1, 2, 3, 4, 5, 6000, tzinfo=UTC)) == "2024-01-02T03:04:05.006Z"


@pytest.mark.parametrize(
    ("payload", "field", "words"),
    [
        ("{not json", "$", "malformed JSON"),
        ("[1, 2]", "$", "JSON object"),
        (b"\xff\xfe", "$", "UTF-8"),
        ({k: v for k, v in GOOD.items() if k != "item_id"}, "item_id", "missing"),
        ({**GOOD, "event_type": "click"}, "event_type", "view, add_to_cart"),
        ({**GOOD, "price": -1}, "price", "greater than or equal"),
        ({**GOOD, "user_id": "x" * 65}, "user_id", "at most 64"),
        ({**GOOD, "user_id": ""}, "user_id", "at least 1"),
        ({**GOOD, "user_id": "a b"}, "user_id", "pattern"),
        ({**GOOD, "colour": "red"}, "colour", "unknown field"),
        ({**GOOD, "ts": "2024-05-01T12:00:00"}, "ts", "time zone"),
        ({**GOOD, "ts": "yesterday"}, "ts", "datetime"),
    ],
)
def test_invalid_events_name_the_field(payload: object, field: str, words: str) -> None:
    raw = payload if isinstance(payload, str | bytes) else json.dumps(payload)
    result = parse_event(raw)
    assert isinstance(result, Invalid)
    assert result.field == field
    assert words in result.reason


def test_far_future_timestamp_is_rejected_but_small_skew_is_not() -> None:
    now = datetime(2024, 5, 1, 12, tzinfo=UTC)
    soon = {**GOOD, "ts": format_ts(now + timedelta(minutes=1))}
    later = {**GOOD, "ts": format_ts(now + timedelta(hours=1))}
    assert isinstance(parse_event(soon, now=now), Event)
    result = parse_event(later, now=now)
    assert isinstance(result, Invalid) and result.field == "ts" and "future" in result.reason


@pytest.mark.parametrize("ts", ["0999-01-01T00:00:00.000Z", "1970-01-01T00:00:00.000Z"])
def test_timestamps_before_2000_are_rejected(ts: str) -> None:
    """The API used to answer 202 to these, and the speed layer dead-lettered them later."""
    result = parse_event({**GOOD, "ts": ts})
    assert isinstance(result, Invalid) and result.field == "ts"
    assert "before 2000-01-01T00:00:00.000Z" in result.reason
    assert isinstance(parse_event({**GOOD, "ts": "2000-01-01T00:00:00.000Z"}), Event)


def test_nan_price_is_rejected() -> None:
    result = parse_event({**GOOD, "price": float("nan")})
    assert isinstance(result, Invalid) and result.field == "price"


def test_dead_letter_record_keeps_the_raw_input_whole() -> None:
    raw = b'{"event_id": "x", "broken'
    problem = parse_event(raw)
    assert isinstance(problem, Invalid)
    record = dead_letter_record(raw, problem, source="test")
    assert record["raw"] == raw.decode()
    assert record["field"] == "$" and "malformed JSON" in record["reason"]
    assert record["source"] == "test"


def test_exported_json_schema_agrees_with_the_model() -> None:
    schema = json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    assert not list(validator.iter_errors(json.loads(parse_event(GOOD).to_json())))  # type: ignore[union-attr]
    assert list(validator.iter_errors({**GOOD, "event_type": "click"}))
    assert list(validator.iter_errors({**GOOD, "extra": 1}))
    assert set(schema["required"]) == {
        "event_id",
        "user_id",
        "session_id",
        "item_id",
        "event_type",
        "ts",
    }


def test_committed_json_schema_is_the_generated_one() -> None:
    from pathlib import Path

    import lambdarec

    committed = Path(lambdarec.__file__).parent / "schemas" / "event.schema.json"
    assert json.loads(committed.read_text()) == json_schema(), (
        "the committed event JSON Schema is stale; run `lambdarec schema export`"
    )
