"""Request validation at the edge: every input is checked here before any dependency is called.

Errors are :class:`RequestError` (HTTP status, field, message); the app turns them into
``{"error": {"field", "message"}}``. The id charset and length are the event contract's, so an id
accepted by ``POST /events`` is accepted by ``GET /recommend`` and the other way round.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lambdarec.events import ID_PATTERN, MAX_ID_LEN, Event, Invalid, parse_event
from lambdarec.recommend.types import Query

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

K_DEFAULT = 10
K_MAX = 100
EXCLUDE_MAX = 200
EVENTS_MAX = 500
#: Request bodies above this are refused with 413 before they are parsed.
MAX_BODY_BYTES = 1_000_000

RECOMMEND_PARAMS = ("user_id", "session_id", "k", "exclude")


class RequestError(Exception):
    """A request the API refuses; ``field`` is ``$`` when the whole input is at fault."""

    def __init__(
        self, field: str, message: str, status: int = 400, index: int | None = None
    ) -> None:
        super().__init__(message)
        self.field = field
        self.message = message
        self.status = status
        self.index = index

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"field": self.field, "message": self.message}
        if self.index is not None:
            error["index"] = self.index
        return {"error": error}


def check_id(field: str, value: str) -> str:
    if not value:
        raise RequestError(field, "must not be empty")
    if len(value) > MAX_ID_LEN:
        raise RequestError(field, f"is {len(value)} characters; at most {MAX_ID_LEN} allowed")
    if not ID_PATTERN.fullmatch(value):
        raise RequestError(field, "may only hold letters, digits and _ . : -")
    return value


def parse_recommend(args: Mapping[str, Sequence[str]]) -> Query:
    """Validate the query string of ``GET /recommend`` (``args`` maps a name to all its values)."""
    unknown = sorted(set(args) - set(RECOMMEND_PARAMS))
    if unknown:
        name = unknown[0][:64]
        raise RequestError(name, f"unknown query parameter; allowed: {', '.join(RECOMMEND_PARAMS)}")
    for name, values in args.items():
        if len(values) > 1:
            raise RequestError(name, "given more than once")

    def one(name: str) -> str | None:
        values = args.get(name)
        return values[0] if values else None

    user_id = one("user_id")
    if user_id is None:
        raise RequestError("user_id", "required")
    check_id("user_id", user_id)
    session_id = one("session_id")
    if session_id is not None:
        check_id("session_id", session_id)
    raw_k = one("k")
    k = K_DEFAULT
    if raw_k is not None:
        if not raw_k.isascii() or not raw_k.isdigit() or len(raw_k) > 3:
            raise RequestError("k", f"must be an integer from 1 to {K_MAX}")
        k = int(raw_k)
        if not 1 <= k <= K_MAX:
            raise RequestError("k", f"must be an integer from 1 to {K_MAX}")
    exclude: tuple[str, ...] = ()
    raw_exclude = one("exclude")
    if raw_exclude:
        parts = raw_exclude.split(",")
        if len(parts) > EXCLUDE_MAX:
            raise RequestError("exclude", f"{len(parts)} ids; at most {EXCLUDE_MAX} allowed")
        for i, part in enumerate(parts):
            check_id(f"exclude[{i}]", part)
        exclude = tuple(dict.fromkeys(parts))
    return Query(user_id, session_id, k, exclude)


def parse_events(payload: object) -> list[Event]:
    """Validate a decoded ``POST /events`` body: one event object or a list of 1..500.

    The whole batch is refused at the first invalid event (the error names its index and field),
    so a client never has to work out which part of a batch was taken.
    """
    if isinstance(payload, dict):
        items: list[Any] = [payload]
        single = True
    elif isinstance(payload, list):
        if not payload:
            raise RequestError("$", "an empty list; send 1 to 500 events")
        if len(payload) > EVENTS_MAX:
            raise RequestError("$", f"{len(payload)} events; at most {EVENTS_MAX} per request")
        items, single = payload, False
    else:
        raise RequestError("$", "the body must be an event object or a list of events")
    events: list[Event] = []
    for i, item in enumerate(items):
        index = None if single else i
        if not isinstance(item, dict):
            raise RequestError("$", "an event must be a JSON object", index=index)
        result = parse_event(item)
        if isinstance(result, Invalid):
            raise RequestError(result.field, result.reason, index=index)
        events.append(result)
    return events
