"""Ingest benchmark: a generated stream into Kafka through the contract, and read back.

Generates ``--events`` synthetic events (not timed), replays them into a fresh topic through the
validating, idempotent producer (timed), then consumes the topic from the start and counts unique
event ids (timed). Prints one JSON line:
{"events", "seconds", "events_per_s", "lost", "duplicates", "produce_s", "consume_s", ...}.
Uses the running platform's broker if it answers, otherwise starts a throwaway one.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import uuid

import orjson

from lambdarec.data.generator import GeneratorConfig, iter_event_batches
from lambdarec.harness.platform import kafka_broker
from lambdarec.streaming.kafka import (
    EventProducer,
    TopicSpec,
    consume,
    delete_topics,
    ensure_topics,
    make_consumer,
)
from lambdarec.streaming.replay import replay


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--partitions", type=int, default=3)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    if args.events < 1:
        parser.error("--events must be at least 1")
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)

    config = GeneratorConfig(
        n_events=args.events,
        n_users=max(100, args.events // 50),
        n_items=max(1000, args.events // 20),
        seed=args.seed,
        days=7,
    )
    print(f"generating ~{args.events:,} events ...", file=sys.stderr)
    frames = [b.to_pandas() for b in iter_event_batches(config, batch_rows=50_000)]
    n = sum(len(f) for f in frames)

    with kafka_broker() as settings:
        topic = f"bench.ingest.{uuid.uuid4().hex[:8]}"
        ensure_topics(settings, extra=[TopicSpec(topic, args.partitions)])
        try:
            producer = EventProducer(settings, topic=topic, dead_letter_topic=topic + ".dlq")
            t0 = time.monotonic()
            result = replay(frames, settings=settings, producer=producer, total=n)
            produce_s = time.monotonic() - t0

            consumer = make_consumer(
                f"bench-{uuid.uuid4().hex[:8]}",
                [topic],
                settings,
                **{"fetch.max.bytes": 64 * 1024 * 1024},
            )
            seen: set[bytes] = set()
            read = 0
            t1 = time.monotonic()
            for msg in consume(consumer, max_messages=n, idle_timeout_s=15, batch=10_000):
                read += 1
                seen.add(orjson.loads(msg.value())["event_id"].encode())
            consume_s = time.monotonic() - t1
            consumer.close()
        finally:
            delete_topics([topic], settings)

    seconds = produce_s + consume_s
    print(
        json.dumps(
            {
                "events": n,
                "seconds": round(seconds, 2),
                "events_per_s": round(n / seconds, 1),
                "lost": n - len(seen),
                "duplicates": read - len(seen),
                "dead_lettered": result.dead_lettered,
                "produce_s": round(produce_s, 2),
                "consume_s": round(consume_s, 2),
                "produce_events_per_s": round(n / produce_s, 1),
                "consume_events_per_s": round(n / consume_s, 1),
                "partitions": args.partitions,
            }
        )
    )


if __name__ == "__main__":
    main()
