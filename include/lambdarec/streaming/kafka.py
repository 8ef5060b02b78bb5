"""Kafka clients with the project's guarantees built in.

- Topics are declared once (:func:`topic_specs`) and created idempotently (:func:`ensure_topics`).
- The producer is idempotent with ``acks=all``; events are keyed by user so each user's events stay
  in order within a partition.
- :class:`EventProducer` validates every input against the event contract: valid events go to the
  events topic, invalid ones to the dead-letter topic with the reason. Nothing is dropped silently:
  a delivery failure raises at :meth:`EventProducer.flush`.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from lambdarec.config import Settings, get_settings
from lambdarec.events import Event, Invalid, dead_letter_record, parse_event

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

    from confluent_kafka import Consumer, Message, Producer

log = logging.getLogger(__name__)
#: librdkafka's own log lines (retries, connection refused while a broker starts) go through
#: Python logging instead of raw stderr, so they can be filtered like everything else.
client_log = logging.getLogger("lambdarec.kafka.client")


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    config: dict[str, str] = field(default_factory=dict)


def topic_specs(settings: Settings | None = None) -> list[TopicSpec]:
    """Every topic the platform needs, with its partitioning and retention."""
    s = settings or get_settings()
    week_ms = str(7 * 24 * 3600 * 1000)
    return [
        TopicSpec(s.topic_events, s.topic_partitions, {"retention.ms": week_ms}),
        # The dead-letter topic keeps what failed for a month: someone has to look at it.
        TopicSpec(s.topic_dead_letter, s.topic_partitions, {"retention.ms": str(30 * 86400000)}),
        # Latest session features per session key: compaction keeps only the newest value.
        TopicSpec(
            s.topic_session_features,
            s.topic_partitions,
            {"cleanup.policy": "compact", "min.compaction.lag.ms": "60000"},
        ),
        TopicSpec(s.topic_impressions, s.topic_partitions, {"retention.ms": week_ms}),
        TopicSpec(s.topic_attributed, s.topic_partitions, {"retention.ms": week_ms}),
    ]


def security_config(settings: Settings | None = None) -> dict[str, Any]:
    """librdkafka's authentication settings: SASL when ``kafka_sasl_username`` is set (the
    deployment's SCRAM user), nothing otherwise (the local broker is plaintext on loopback).
    Every client of the project merges this into its configuration."""
    s = settings or get_settings()
    if not s.kafka_sasl_username:
        return {}
    config = {
        "security.protocol": s.kafka_security_protocol,
        "sasl.mechanisms": s.kafka_sasl_mechanism,
        "sasl.username": s.kafka_sasl_username,
        "sasl.password": s.kafka_sasl_password.get_secret_value(),
    }
    if s.kafka_security_protocol == "SASL_SSL" and s.kafka_ssl_ca_location:
        ca = Path(s.kafka_ssl_ca_location)
        if not ca.is_file():
            raise ValueError(
                f"LAMBDAREC_KAFKA_SSL_CA_LOCATION={ca} is not a file: point it at the brokers' "
                "CA certificate (PEM), or leave it empty to use the system's trust store"
            )
        config["ssl.ca.location"] = str(ca)
    return config


def admin_client(settings: Settings | None = None) -> Any:
    from confluent_kafka.admin import AdminClient

    s = settings or get_settings()
    conf: dict[str, Any] = {
        "bootstrap.servers": s.bootstrap_servers,
        "logger": client_log,
        **security_config(s),
    }
    return AdminClient(conf)


def ensure_topics(
    settings: Settings | None = None, extra: Iterable[TopicSpec] = (), timeout_s: float = 30.0
) -> list[str]:
    """Create the project's topics that do not exist yet; returns the names created."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import NewTopic

    s = settings or get_settings()
    admin = admin_client(s)
    existing = set(admin.list_topics(timeout=timeout_s).topics)
    wanted = [t for t in [*topic_specs(s), *extra] if t.name not in existing]
    if not wanted:
        return []
    futures = admin.create_topics(
        [
            NewTopic(
                t.name,
                num_partitions=t.partitions,
                replication_factor=s.topic_replication,
                config=t.config,
            )
            for t in wanted
        ],
        operation_timeout=timeout_s,
    )
    created = []
    for name, fut in futures.items():
        try:
            fut.result()
            created.append(name)
        except KafkaException as exc:
            if exc.args and exc.args[0].code() == 36:  # TOPIC_ALREADY_EXISTS: a concurrent creator
                continue
            raise
    log.info("created topics: %s", ", ".join(created))
    return created


def delete_topics(names: Iterable[str], settings: Settings | None = None) -> None:
    admin = admin_client(settings)
    for fut in admin.delete_topics(list(names), operation_timeout=30).values():
        fut.result()


def make_producer(settings: Settings | None = None, **overrides: Any) -> Producer:
    """An idempotent, acks=all producer tuned for throughput (batched, lz4)."""
    from confluent_kafka import Producer

    s = settings or get_settings()
    conf: dict[str, Any] = {
        "bootstrap.servers": s.bootstrap_servers,
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 5,
        "batch.size": 1_000_000,
        "compression.type": "lz4",
        "queue.buffering.max.messages": 500_000,
        "queue.buffering.max.kbytes": 512 * 1024,
        "client.id": "lambdarec-producer",
        "logger": client_log,
        **security_config(s),
    }
    conf.update(overrides)
    return Producer(conf)


def make_consumer(
    group_id: str, topics: list[str], settings: Settings | None = None, **overrides: Any
) -> Consumer:
    """A consumer that starts from the earliest offset of a new group and commits as it goes."""
    from confluent_kafka import Consumer

    s = settings or get_settings()
    conf: dict[str, Any] = {
        "bootstrap.servers": s.bootstrap_servers,
        "group.id": group_id,
        "auto.offset.reset": "earliest",
        "enable.auto.commit": True,
        "isolation.level": "read_committed",
        "fetch.min.bytes": 1,
        "client.id": f"lambdarec-{group_id}",
        "logger": client_log,
        **security_config(s),
    }
    conf.update(overrides)
    consumer = Consumer(conf)
    consumer.subscribe(topics)
    return consumer


class DeliveryError(RuntimeError):
    """Some messages were not acknowledged by the broker."""


@dataclass
class ProduceStats:
    accepted: int = 0
    dead_lettered: int = 0
    delivered: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)


class EventProducer:
    """Validates events against the contract and produces them; invalid ones go to dead-letter.

    Use as a context manager (it flushes on exit) or call :meth:`flush` yourself; ``flush`` raises
    :class:`DeliveryError` if the broker did not acknowledge every message.
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        topic: str | None = None,
        dead_letter_topic: str | None = None,
        source: str = "producer",
        producer: Producer | None = None,
    ) -> None:
        self.settings = settings or get_settings()
        self.topic = topic or self.settings.topic_events
        self.dead_letter_topic = dead_letter_topic or self.settings.topic_dead_letter
        self.source = source
        self.stats = ProduceStats()
        self._producer = producer or make_producer(self.settings)

    # -- delivery bookkeeping ---------------------------------------------------------------
    def _on_delivery(self, err: Any, msg: Message) -> None:
        if err is None:
            self.stats.delivered += 1
        else:
            self.stats.failed += 1
            if len(self.stats.errors) < 20:
                self.stats.errors.append(f"{msg.topic()}: {err}")

    def _produce(self, topic: str, value: bytes, key: bytes | None) -> None:
        while True:
            try:
                self._producer.produce(topic, value=value, key=key, on_delivery=self._on_delivery)
                break
            except BufferError:
                # Local queue full: serve delivery reports until there is room again.
                self._producer.poll(0.05)
        self._producer.poll(0)

    # -- public API ---------------------------------------------------------------------------
    def send(self, event: Event) -> None:
        """Produce an already validated event."""
        self._produce(self.topic, event.to_json(), event.key)
        self.stats.accepted += 1

    def send_raw(self, raw: bytes | str | dict[str, Any]) -> Event | Invalid:
        """Validate ``raw``; produce it to the events topic or, with its reason, to dead-letter."""
        result = parse_event(raw)
        if isinstance(result, Event):
            self.send(result)
        else:
            self.dead_letter(raw, result)
        return result

    def dead_letter(self, raw: bytes | str | dict[str, Any], problem: Invalid) -> None:
        text = orjson.dumps(raw).decode() if isinstance(raw, dict) else raw
        record = dead_letter_record(text, problem, source=self.source)
        self._produce(self.dead_letter_topic, orjson.dumps(record), None)
        self.stats.dead_lettered += 1

    def send_json_lines(self, rows: Iterable[tuple[bytes, bytes]]) -> None:
        """Produce pre-serialised, pre-validated ``(key, value)`` pairs (the replayer's fast path)."""
        for key, value in rows:
            self._produce(self.topic, value, key)
            self.stats.accepted += 1

    def flush(self, timeout_s: float = 60.0) -> ProduceStats:
        remaining = self._producer.flush(timeout_s)
        if remaining or self.stats.failed:
            raise DeliveryError(
                f"{self.stats.failed} messages failed and {remaining} are still queued after "
                f"{timeout_s:.0f} s (first errors: {self.stats.errors[:3]}); "
                f"is the broker at {self.settings.bootstrap_servers} up? "
                "(`lambdarec platform status`)"
            )
        return self.stats

    def __enter__(self) -> EventProducer:
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self.flush()
        else:
            self._producer.flush(10)


def consume(
    consumer: Consumer,
    *,
    max_messages: int | None = None,
    idle_timeout_s: float = 5.0,
    batch: int = 1000,
) -> Iterator[Message]:
    """Yield messages until ``max_messages`` are read or nothing arrives for ``idle_timeout_s``."""
    from confluent_kafka import KafkaError, KafkaException

    seen = 0
    last = time.monotonic()
    while max_messages is None or seen < max_messages:
        msgs = consumer.consume(num_messages=batch, timeout=0.5)
        if not msgs:
            if time.monotonic() - last > idle_timeout_s:
                return
            continue
        last = time.monotonic()
        for msg in msgs:
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    continue
                raise KafkaException(err)
            seen += 1
            yield msg
            if max_messages is not None and seen >= max_messages:
                return


@contextlib.contextmanager
def probe_consumer(
    settings: Settings | None = None, group_id: str = "lambdarec-probe"
) -> Iterator[Consumer]:
    """A consumer that never subscribes nor commits, for metadata, watermarks and a group's
    committed offsets (``group_id``: the group to read them of), closed on exit."""
    from confluent_kafka import Consumer

    s = settings or get_settings()
    probe = Consumer(
        {
            "bootstrap.servers": s.bootstrap_servers,
            "group.id": group_id,
            "enable.auto.commit": False,
            "logger": client_log,
            **security_config(s),
        }
    )
    try:
        yield probe
    finally:
        probe.close()


#: Error codes of a group coordinator that moves or loads (a broker restarted, a new group).
COORDINATOR_MOVES = (14, 15, 16)  # COORDINATOR_LOAD_IN_PROGRESS, _NOT_AVAILABLE, NOT_COORDINATOR


def committed_offsets(
    probe: Consumer,
    topic: str,
    partitions: Iterable[int],
    timeout_s: float = 10.0,
    attempts: int = 10,
) -> dict[int, int]:
    """The probe's group's committed offset per partition of ``topic`` (negative: none yet),
    retrying while the group coordinator moves or loads (right after a broker start): those
    errors say nothing of the offsets."""
    from confluent_kafka import KafkaException, TopicPartition

    parts = [TopicPartition(topic, p) for p in partitions]
    for attempt in range(attempts):
        try:
            return {tp.partition: tp.offset for tp in probe.committed(parts, timeout=timeout_s)}
        except KafkaException as error:
            kafka_error = error.args[0]
            transient = kafka_error.retriable() or kafka_error.code() in COORDINATOR_MOVES
            if attempt == attempts - 1 or not transient:
                raise
            time.sleep(1.0)
    raise AssertionError("unreachable")


def topic_size(settings: Settings | None, topic: str, timeout_s: float = 10.0) -> int:
    """Messages currently in ``topic``: the sum over partitions of (high - low) watermarks."""
    from confluent_kafka import TopicPartition

    with probe_consumer(settings, "lambdarec-size-probe") as probe:
        partitions = probe.list_topics(topic, timeout=timeout_s).topics[topic].partitions
        total = 0
        for p in partitions:
            low, high = probe.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout_s)
            total += high - low
        return total


def wait_for_broker(settings: Settings | None = None, timeout_s: float = 30.0) -> bool:
    """True once the broker answers a metadata request."""
    s = settings or get_settings()
    deadline = time.monotonic() + timeout_s
    admin = admin_client(s)
    while time.monotonic() < deadline:
        try:
            admin.list_topics(timeout=2)
            return True
        except Exception:  # noqa: BLE001 - any failure means "not yet"
            time.sleep(0.5)
    return False
