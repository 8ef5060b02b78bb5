"""The click-event contract: one schema for every producer and consumer.

An event is a shopper's action on an item. On the wire (Kafka, HTTP) it is a JSON object; in the
lake it is a row of the canonical event table (see :data:`CANONICAL_COLUMNS`). The JSON Schema
exported by :func:`json_schema` (``lambdarec schema export``) is generated from the same model, so
the Flask endpoint, the replayer, the Flink job and the loaders cannot drift apart.

Invalid input never disappears: :func:`parse_event` returns either an :class:`Event` or an
:class:`Invalid` naming the field and the problem, which producers turn into a 400 or a
dead-letter record (:func:`dead_letter_record`).
"""

from __future__ import annotations

import json
import math
import re
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_serializer,
    field_validator,
)

if TYPE_CHECKING:
    import pyarrow as pa

SCHEMA_VERSION = 1

# The contract's rules, written once: the model below, the JSON Schema generated from it, the
# replayer, the loaders and serving's request validation all read them from here. The Flink job
# parses events in the JVM (include/flink/java/io/lambdarec/flink/ParseEvent.java) with its own
# copy; tests/unit/test_contract.py fails when that copy and these values differ.

#: Ids are 1..MAX_ID_LEN of these characters (JSON Schema / ECMA syntax, hence ``$``: in Python
#: match with ``ID_PATTERN.fullmatch``, as ``$`` also matches before a trailing newline).
ID_REGEX = r"^[A-Za-z0-9_.:\-]+$"
ID_PATTERN = re.compile(ID_REGEX)
#: Upper bound for any id, so a malicious or broken client cannot blow up keys and state.
MAX_ID_LEN = 64
MAX_CATEGORY_LEN = 128
#: Prices are in ``[0, MAX_PRICE]``.
MAX_PRICE = 10_000_000
MAX_CONTEXT_KEYS = 32
MAX_CONTEXT_KEY_LEN = 64
MAX_CONTEXT_VALUE_LEN = 512
#: ``context.request_id``: the ``request_id`` of the /recommend answer whose list was clicked (a
#: uuid4 hex); with ``context.position``, the item's 0-based place in it. Attribution reads both.
REQUEST_ID_REGEX = r"^[0-9a-f]{32}$"
REQUEST_ID_PATTERN = re.compile(REQUEST_ID_REGEX)
#: Events stamped further than this in the future are rejected (clock skew allowance).
MAX_FUTURE_SKEW = timedelta(minutes=5)
#: Events stamped before this are rejected: no clickstream is older; a zero, a default date or
#: seconds read as milliseconds is. The one rule of the API, the loaders and the Flink job:
#: ``MIN_TS <= ts <= now + MAX_FUTURE_SKEW``.
MIN_TS = datetime(2000, 1, 1, tzinfo=UTC)
MIN_TS_MS = int(MIN_TS.timestamp() * 1000)
#: How long after an event's first copy another copy (same ``event_id``) may still come: serving's
#: producer gives up on a delivery after 30 s, and answers 503 with Retry-After 2 s, so a client
#: retrying a batch resends within it. Consumers remember an id at least this long (the speed
#: layer's --dedup-ttl-s); a copy sent later is a new event to them (the lake keeps one anyway).
RETRY_HORIZON = timedelta(minutes=2)


class EventType(StrEnum):
    VIEW = "view"
    ADD_TO_CART = "add_to_cart"
    REMOVE_FROM_CART = "remove_from_cart"
    PURCHASE = "purchase"


Id = Annotated[
    str,
    Field(min_length=1, max_length=MAX_ID_LEN, pattern=ID_REGEX),
]
ContextValue = str | int | float | bool


class Event(BaseModel):
    """One click event. Unknown fields are rejected, so a typo never passes silently."""

    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=False)

    event_id: Id = Field(description="Unique id; consumers deduplicate on it (idempotency).")
    user_id: Id = Field(description="Shopper id (anonymous shoppers get a device/cookie id).")
    session_id: Id = Field(description="Browsing session id.")
    item_id: Id = Field(description="Product id.")
    event_type: EventType
    category: str | None = Field(None, min_length=1, max_length=MAX_CATEGORY_LEN)
    price: float | None = Field(None, ge=0, le=MAX_PRICE, description="Unit price.")
    ts: datetime = Field(description="Event time, ISO-8601 with time zone (UTC on the wire).")
    context: dict[str, ContextValue] | None = Field(
        None,
        description="Optional free context (device, page, referrer...). A click on a "
        "recommended item echoes the list it came from: `request_id` (the /recommend answer's "
        "request_id, 32 lowercase hex characters) and `position` (the item's 0-based position "
        "in it, an integer >= 0); both are checked when present.",
        max_length=MAX_CONTEXT_KEYS,
    )
    schema_version: int = Field(SCHEMA_VERSION, ge=1, le=SCHEMA_VERSION)

    @field_validator("price")
    @classmethod
    def _finite_price(cls, value: float | None) -> float | None:
        if value is not None and not math.isfinite(value):
            raise ValueError("price must be a finite number")
        return value

    @field_validator("ts")
    @classmethod
    def _aware_utc(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("ts needs a time zone, e.g. 2024-05-01T12:00:00.000Z")
        return value.astimezone(UTC)

    @field_validator("context")
    @classmethod
    def _small_context(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is None:
            return value
        for key, item in value.items():
            if not key or len(key) > MAX_CONTEXT_KEY_LEN:
                raise ValueError(f"context keys must be 1-{MAX_CONTEXT_KEY_LEN} characters")
            if isinstance(item, str) and len(item) > MAX_CONTEXT_VALUE_LEN:
                raise ValueError(
                    f"context[{key!r}] is longer than {MAX_CONTEXT_VALUE_LEN} characters"
                )
        request_id = value.get("request_id")
        if request_id is not None and not (
            isinstance(request_id, str) and REQUEST_ID_PATTERN.fullmatch(request_id)
        ):
            raise ValueError(
                "context.request_id: must be 32 lowercase hex characters; echo the request_id "
                "of the /recommend answer unchanged"
            )
        position = value.get("position")
        if position is not None and (
            isinstance(position, bool) or not isinstance(position, int) or position < 0
        ):
            raise ValueError(
                "context.position: must be an integer >= 0; echo the item's position from the "
                "/recommend answer (0 is the first)"
            )
        return value

    @field_serializer("ts")
    def _ts_wire(self, value: datetime) -> str:
        return format_ts(value)

    def to_json(self) -> bytes:
        return self.model_dump_json(exclude_none=True).encode()

    @property
    def key(self) -> bytes:
        """Kafka message key: events are keyed by user so one user's events stay in order."""
        return self.user_id.encode()


class Invalid(BaseModel):
    """Why an input is not a valid event: the field (or ``$`` for the whole input) and reason."""

    model_config = ConfigDict(frozen=True)

    field: str
    reason: str

    def __str__(self) -> str:
        return f"{self.field}: {self.reason}"


def format_ts(value: datetime) -> str:
    """UTC ISO-8601 with milliseconds and a ``Z``: the wire format of ``ts``."""
    return (
        value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"
    )


def _first_error(exc: ValidationError) -> Invalid:
    err = exc.errors(include_url=False)[0]
    loc = ".".join(str(p) for p in err.get("loc", ())) or "$"
    kind = err.get("type", "")
    if kind == "extra_forbidden":
        return Invalid(field=loc, reason="unknown field; remove it (see the event JSON Schema)")
    if kind == "missing":
        return Invalid(field=loc, reason="required field is missing")
    if loc == "event_type" and kind == "enum":
        allowed = ", ".join(e.value for e in EventType)
        return Invalid(field=loc, reason=f"unknown event type; use one of {allowed}")
    msg = err.get("msg", "invalid value")
    msg = msg.removeprefix("Value error, ")
    inner, sep, reason = msg.partition(": ")
    if sep and inner.startswith(f"{loc}."):  # a validator naming a part of its field
        return Invalid(field=inner, reason=reason)
    return Invalid(field=loc, reason=msg)


def parse_event(
    raw: bytes | str | dict[str, Any], *, now: datetime | None = None
) -> Event | Invalid:
    """Validate one event from JSON bytes/text or a decoded object.

    ``now`` (default: the wall clock) bounds how far in the future ``ts`` may be; pass ``None``
    through to check against the current time.
    """
    try:
        if isinstance(raw, dict):
            event = Event.model_validate(raw)
        else:
            if isinstance(raw, bytes | bytearray):
                try:
                    raw = raw.decode("utf-8")
                except UnicodeDecodeError:
                    return Invalid(field="$", reason="not UTF-8 text")
            try:
                obj = json.loads(raw)
            except json.JSONDecodeError as exc:
                return Invalid(field="$", reason=f"malformed JSON: {exc.msg} at position {exc.pos}")
            if not isinstance(obj, dict):
                return Invalid(field="$", reason="an event must be a JSON object")
            event = Event.model_validate(obj)
    except ValidationError as exc:
        return _first_error(exc)
    limit = (now or datetime.now(UTC)) + MAX_FUTURE_SKEW
    if event.ts > limit:
        return Invalid(
            field="ts",
            reason=f"{format_ts(event.ts)} is in the future (more than "
            f"{int(MAX_FUTURE_SKEW.total_seconds())} s ahead of {format_ts(limit - MAX_FUTURE_SKEW)}); "
            "check the producer's clock",
        )
    if event.ts < MIN_TS:
        return Invalid(
            field="ts",
            reason=f"{event.ts.isoformat()} is before {format_ts(MIN_TS)}; send the event's time "
            "(UTC, ISO-8601)",
        )
    return event


def dead_letter_record(
    raw: bytes | str, problem: Invalid, *, source: str, now: datetime | None = None
) -> dict[str, Any]:
    """The dead-letter payload for an input that failed validation: the raw input is kept whole."""
    if isinstance(raw, bytes | bytearray):
        text = raw.decode("utf-8", errors="backslashreplace")
    else:
        text = raw
    return {
        "reason": str(problem),
        "field": problem.field,
        "source": source,
        "received_at": format_ts(now or datetime.now(UTC)),
        "raw": text,
    }


def json_schema() -> dict[str, Any]:
    """The event contract as JSON Schema (draft 2020-12), generated from :class:`Event`."""
    schema = Event.model_json_schema(mode="serialization")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = f"lambdarec/event/v{SCHEMA_VERSION}"
    schema["title"] = "lambdarec click event"
    return schema


#: Columns (and Arrow types) of the canonical event table used by the lake and the loaders.
CANONICAL_COLUMNS: dict[str, str] = {
    "event_id": "string",
    "user_id": "string",
    "session_id": "string",
    "item_id": "string",
    "event_type": "string",
    "category": "string",
    "price": "float64",
    "ts": "timestamp[ms, tz=UTC]",
}


def canonical_arrow_schema() -> pa.Schema:
    """The canonical event table as an Arrow schema (lake files, loader output)."""
    import pyarrow as pa

    return pa.schema(
        [
            pa.field("event_id", pa.string(), nullable=False),
            pa.field("user_id", pa.string(), nullable=False),
            pa.field("session_id", pa.string(), nullable=False),
            pa.field("item_id", pa.string(), nullable=False),
            pa.field("event_type", pa.string(), nullable=False),
            pa.field("category", pa.string()),
            pa.field("price", pa.float64()),
            pa.field("ts", pa.timestamp("ms", tz="UTC"), nullable=False),
        ]
    )
