"""``POST /events``: one event or a batch, validated against the event contract, then produced.

A batch is all or nothing: the first invalid event refuses the whole request (400 naming its
index and field) and nothing is produced, so a client can fix and resend the batch as a whole;
event ids make a resend idempotent downstream. Accepted means acknowledged by Kafka (acks=all);
with the broker down the answer is 503 with ``Retry-After``, never a silent drop.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any

import orjson
from flask import Blueprint, jsonify, request

from lambdarec.events import EventType
from serving.state import state
from serving.validation import RequestError, parse_events

if TYPE_CHECKING:
    from flask.typing import ResponseReturnValue

    from lambdarec.config import Settings
    from lambdarec.events import Event
    from serving.metrics import Metrics

log = logging.getLogger(__name__)
bp = Blueprint("events", __name__)


class KafkaUnavailable(RuntimeError):
    pass


class EventSink:
    """A shared producer for accepted events; after a failed flush it backs off, then retries
    with a fresh producer (a producer whose messages timed out may be unusable)."""

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics | None = None,
        *,
        flush_timeout_s: float = 5.0,
        backoff_s: float = 2.0,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.flush_timeout_s = flush_timeout_s
        self.backoff_s = backoff_s
        self._producer: Any = None
        self._lock = threading.Lock()
        self._down_until = 0.0

    def _get(self) -> Any:
        with self._lock:
            if self._producer is None:
                from lambdarec.streaming.kafka import make_producer

                self._producer = make_producer(
                    self.settings,
                    **{
                        "client.id": "lambdarec-serving-events",
                        "linger.ms": 1,
                        "message.timeout.ms": 30_000,
                    },
                )
            return self._producer

    def send(self, events: list[Event]) -> None:
        from lambdarec.streaming.kafka import DeliveryError, EventProducer

        if time.monotonic() < self._down_until:
            raise KafkaUnavailable("Kafka was unreachable a moment ago; retry shortly")
        producer = self._get()
        out = EventProducer(self.settings, producer=producer, source="serving")
        for event in events:
            out.send(event)
        try:
            out.flush(self.flush_timeout_s)
        except DeliveryError as exc:
            self._down_until = time.monotonic() + self.backoff_s
            with self._lock:
                if self._producer is producer:
                    self._producer = None
            # What is still queued would arrive after we answered 503: drop it, the client resends.
            try:
                producer.purge(in_queue=True)
                producer.poll(0)
            except Exception:  # noqa: BLE001 - the producer is being discarded anyway
                pass
            log.warning("events not delivered: %s", exc)
            raise KafkaUnavailable(
                f"Kafka at {self.settings.bootstrap_servers} did not acknowledge the events "
                f"within {self.flush_timeout_s:g} s; retry shortly"
            ) from None

    def ping(self, timeout_s: float = 1.0) -> None:
        from lambdarec.streaming.kafka import admin_client

        admin_client(self.settings).list_topics(timeout=timeout_s)


@bp.post("/events")
def post_events() -> ResponseReturnValue:
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
