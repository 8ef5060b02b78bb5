"""Where serving writes: accepted events and impression records, both to Kafka.

:class:`EventSink` produces what ``POST /events`` accepted and waits for Kafka's acknowledgement
(acks=all): accepted means stored, and a broker that does not answer makes the request fail with
503, never a silent drop. :class:`ImpressionSink` logs every list ``/recommend`` showed on
``settings.topic_impressions`` (request id, variant, items, features), so clicks can be joined
back for online metrics and training/serving skew checks; it never blocks or fails a request.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from lambdarec.config import Settings
    from lambdarec.events import Event
    from serving.metrics import Metrics

log = logging.getLogger(__name__)


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


class ImpressionSink:
    """Produces impression records to Kafka without ever blocking or failing a request.

    The producer is created on first use; a full local queue or a down broker drops the record
    (counted in ``lambdarec_serving_impressions_total{outcome="dropped"}``).
    """

    def __init__(self, settings: Settings, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics
        self._producer: Any = None
        self._lock = threading.Lock()

    def _get(self) -> Any:
        if self._producer is None:
            with self._lock:
                if self._producer is None:
                    from lambdarec.streaming.kafka import make_producer

                    self._producer = make_producer(
                        self.settings,
                        **{
                            "client.id": "lambdarec-serving-impressions",
                            "enable.idempotence": False,
                            "acks": "1",
                            # Batches of up to 100 ms: with 5 ms, about one produce request
                            # per impression cost the broker 1.7 ms of CPU per request at
                            # 100 req/s, 1.1 ms with 100 (bench-serving, 100k items).
                            "linger.ms": 100,
                            "queue.buffering.max.messages": 100_000,
                            "message.timeout.ms": 30_000,
                        },
                    )
        return self._producer

    def _count(self, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.impressions.labels(outcome).inc()

    def _delivered(self, err: Any, _msg: Any) -> None:
        self._count("delivered" if err is None else "failed")

    def emit(self, record: dict[str, Any]) -> None:
        try:
            producer = self._get()
            producer.produce(
                self.settings.topic_impressions,
                value=orjson.dumps(record, default=str),
                key=str(record.get("user_id", "")).encode(),
                on_delivery=self._delivered,
            )
            producer.poll(0)
            self._count("queued")
        except Exception as exc:  # noqa: BLE001 - impressions must never fail a request
            self._count("dropped")
            log.debug("impression dropped: %s", exc)

    def close(self, timeout_s: float = 2.0) -> None:
        if self._producer is not None:
            self._producer.flush(timeout_s)
