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
    raw_k = one("k")
    k: int | None = None
    if raw_k is not None:
        if not raw_k.isascii() or not raw_k.isdigit() or len(raw_k) > 3:
            raise RequestError("k", f"must be an integer from 1 to {K_MAX}")
        k = int(raw_k)
    raw_exclude = one("exclude")
    return _query(user_id, one("session_id"), k, raw_exclude.split(",") if raw_exclude else [])


def parse_recommend_body(payload: object) -> Query:
    """Validate a decoded ``POST /recommend`` body: the GET form's fields as a JSON object, with
    ``exclude`` a list of ids (the GET form's request line is cut near 62 of them)."""
    if not isinstance(payload, dict):
        raise RequestError("$", 'the body must be a JSON object like {"user_id": "u1"}')
    unknown = sorted(set(payload) - set(RECOMMEND_PARAMS))
    if unknown:
        raise RequestError(
            str(unknown[0])[:64], f"unknown field; allowed: {', '.join(RECOMMEND_PARAMS)}"
        )
    for name in ("user_id", "session_id"):
        if name in payload and not isinstance(payload[name], str):
            raise RequestError(name, "must be a string id")
    k = payload.get("k")
    if k is not None and (isinstance(k, bool) or not isinstance(k, int)):
        raise RequestError("k", f"must be an integer from 1 to {K_MAX}")
    exclude = payload.get("exclude", [])
    if not isinstance(exclude, list):
        raise RequestError("exclude", "must be a list of item ids")
    for i, part in enumerate(exclude[: EXCLUDE_MAX + 1]):
        if not isinstance(part, str):
            raise RequestError(f"exclude[{i}]", "must be a string id")
    return _query(payload.get("user_id"), payload.get("session_id"), k, exclude)


def _query(
    user_id: str | None, session_id: str | None, k: int | None, exclude: Sequence[str]
) -> Query:
    """The checks both forms of /recommend share."""
    if user_id is None:
        raise RequestError("user_id", "required")
    check_id("user_id", user_id)
    if session_id is not None:
        check_id("session_id", session_id)
    if k is None:
        k = K_DEFAULT
    elif not 1 <= k <= K_MAX:
        raise RequestError("k", f"must be an integer from 1 to {K_MAX}")
    if len(exclude) > EXCLUDE_MAX:
        raise RequestError("exclude", f"{len(exclude)} ids; at most {EXCLUDE_MAX} allowed")
    for i, part in enumerate(exclude):
        check_id(f"exclude[{i}]", part)
    return Query(user_id, session_id, k, tuple(dict.fromkeys(exclude)))


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
