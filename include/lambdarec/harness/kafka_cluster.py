"""A three-node Kafka cluster on free loopback ports, and the broker-loss drill (issue #25).

:func:`loopback_kafka` starts :class:`lambdarec.platform.kafka_cluster.KafkaCluster` in a state
folder with free ports and creates the project's topics replicated on every node
(``ensure_topics`` with the cluster's settings, as a deployment does). :func:`broker_loss_drill`
replays generated events through the project's own producer (idempotent, ``acks=all``) at a
steady rate, SIGKILLs one node half-way, lets the producer go on against the other two, then
reads the events topic back from the start (read_committed): every event must be there exactly
once.
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from lambdarec.harness.platform import free_ports
from lambdarec.platform.kafka_cluster import KafkaCluster

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    import pandas as pd
    from confluent_kafka import Message

    from lambdarec.config import Settings


@contextlib.contextmanager
def loopback_kafka(settings: Settings, home: Path, *, nodes: int = 3) -> Iterator[KafkaCluster]:
    """A running ``nodes``-node cluster under ``home`` with the project's topics on it."""
    from lambdarec.streaming.kafka import ensure_topics

    cluster = KafkaCluster(settings, home, free_ports(2 * nodes), nodes=nodes)
    with cluster:
        ensure_topics(cluster.settings())
        yield cluster


@dataclass
class BrokerDrill:
    produced: int
    read_back: int
    distinct: int
    killed_node: int
    killed_after_s: float
    replay_seconds: float
    brokers_after_kill: list[int]

    @property
    def events_lost(self) -> int:
        return self.produced - self.distinct

    @property
    def duplicates(self) -> int:
        return self.read_back - self.distinct


def read_from_start(
    settings: Settings, topic: str, idle_timeout_s: float = 10.0
) -> Iterator[Message]:
    """Every message of ``topic`` from the start (read_committed), through a throwaway consumer
    group that commits nothing; ends once no message came for ``idle_timeout_s``."""
    import uuid

    from lambdarec.streaming.kafka import consume, make_consumer

    consumer = make_consumer(
        f"lambdarec-drill-{uuid.uuid4().hex[:8]}",
        [topic],
        settings,
        **{"enable.auto.commit": False},
    )
    try:
        yield from consume(consumer, idle_timeout_s=idle_timeout_s)
    finally:
        consumer.close()


def read_event_ids(settings: Settings, idle_timeout_s: float = 10.0) -> list[str]:
    """Every event id in the events topic, from the start, read_committed."""
    import orjson

    return [
        orjson.loads(msg.value() or b"{}").get("event_id")
        for msg in read_from_start(settings, settings.topic_events, idle_timeout_s)
    ]


def broker_loss_drill(
    cluster: KafkaCluster, events: pd.DataFrame, *, rate: float, victim: int
) -> BrokerDrill:
    """Replay ``events`` at ``rate`` events/s; SIGKILL node ``victim`` half-way through."""
    from lambdarec.streaming.replay import replay

    settings = cluster.settings()
    span_s = len(events) / rate
    killed_at: list[float] = []
    began = time.monotonic()

    def kill_half_way() -> None:
        time.sleep(span_s / 2)
        cluster.kill(victim)
        killed_at.append(time.monotonic() - began)

    killer = threading.Thread(target=kill_half_way, daemon=True)
    # The events' own timestamps pace the replay: stretch them to span the wanted seconds.
    frame = events.sort_values("ts", kind="stable").reset_index(drop=True)
    real_span = (frame["ts"].iloc[-1] - frame["ts"].iloc[0]).total_seconds() or 1.0
    killer.start()
    result = replay([frame], settings=settings, speed=real_span / span_s, progress=False)
    killer.join()
    brokers = sorted(cluster.brokers())
    ids = read_event_ids(settings)
    return BrokerDrill(
        produced=result.produced,
        read_back=len(ids),
        distinct=len(set(ids)),
        killed_node=victim,
        killed_after_s=killed_at[0] if killed_at else -1.0,
        replay_seconds=result.seconds,
        brokers_after_kill=brokers,
    )
