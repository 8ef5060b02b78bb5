"""``POST /events``: one event or a batch, validated against the event contract, then produced.

A batch is all or nothing: the first invalid event refuses the whole request (400 naming its
index and field) and nothing is produced, so a client can fix and resend the batch as a whole;
event ids make a resend idempotent downstream. A batch with an event on a session bound to
another user (:mod:`serving.sessions`) is refused whole with 409. Accepted means acknowledged by Kafka (acks=all);
with the broker down the answer is 503 with ``Retry-After``, never a silent drop.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import orjson
from flask import Blueprint, jsonify, request

from lambdarec.events import EventType
from serving.access import guarded
from serving.apidoc import KEYED, documented, refusals
from serving.apidoc import Response as Described
from serving.schemas import Accepted, Error, EventBatch
from serving.sinks import KafkaUnavailable
from serving.state import state
from serving.validation import MAX_BODY_BYTES, RequestError, parse_events

if TYPE_CHECKING:
    from flask.typing import ResponseReturnValue

bp = Blueprint("events", __name__)


@bp.post("/events")
@documented(
    json=EventBatch,
    security=KEYED,
    resp=Described(
        HTTP_202=(Accepted, "Acknowledged by Kafka."),
        HTTP_400=(Error, "Malformed JSON or an invalid event (its index and field)."),
        **refusals("events"),
        HTTP_413=(Error, f"Body above {MAX_BODY_BYTES} bytes."),
        HTTP_415=(Error, "Not application/json."),
        HTTP_503=(Error, "Kafka unavailable; retry after the Retry-After seconds."),
    ),
)
@guarded("events")
def post_events() -> ResponseReturnValue:
    """One event or a batch of them (the body's schema gives the batch size), to Kafka.

    All or nothing: the first invalid event refuses the whole batch (the error gives its index
    and field) and nothing is produced; so does an event on a session bound to another user
    (409). A click on a recommended item should echo its list in `context`: `request_id` (the
    /recommend answer's, 32 lowercase hex characters) and `position` (the item's 0-based
    position, an integer >= 0), so the click is attributed to that list and its A/B variant;
    either, when present and malformed, is a 400 naming it.
    """
    s = state()
    if request.mimetype != "application/json":
        raise RequestError("$", "send the events as application/json", status=415)
    raw = request.get_data(cache=False)
    try:
        payload = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        s.metrics.events.labels("malformed").inc()
        raise RequestError("$", f"malformed JSON: {exc}"[:300]) from None
    try:
        events = parse_events(payload)
    except RequestError:
        s.metrics.events.labels("invalid").inc()
        raise
    if s.sessions.claim([(e.session_id, e.user_id) for e in events], s.recommender.session_owners):
        s.metrics.session_conflicts.inc()
        s.metrics.events.labels("session_conflict").inc()
        raise RequestError(
            "session_id",
            "belongs to another user; start a new session id for this user",
            status=409,
        )
    try:
        s.events.send(events)
    except KafkaUnavailable as exc:
        s.metrics.events.labels("unavailable").inc(len(events))
        response = jsonify({"error": {"field": "$", "message": str(exc)}})
        response.status_code = 503
        response.headers["Retry-After"] = "2"
        return response
    for event in events:
        if event.event_type == EventType.PURCHASE:
            s.recommender.purchases.add(event.user_id, event.item_id)
    s.metrics.events.labels("accepted").inc(len(events))
    return jsonify({"accepted": len(events)}), 202
