"""Speed-layer throughput benchmark: how many events per second the Flink job sustains.

Starts a throwaway broker and the speed-layer job (all outputs, or ``--outputs``), then produces
``--rate`` events/s of real Taobao events (re-keyed copies, so the job sees fresh sessions) for
``--seconds``. The job's consumer-group offsets, committed on each checkpoint (every 2 s here),
show how far it has read; ``lag_after_s`` is how long after the producer stopped the job took to
read everything. A rate is held when ``lag_after_s`` stays within a few checkpoints; the sustained
figure is events / (seconds + lag_after_s). Prints one JSON line:
{"events_per_s_sustained", "lag_after_s", "rate_eps", "events", ...}.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time

import pandas as pd

from lambdarec.data.loaders import load_taobao
from lambdarec.platform.testing import private_platform
from lambdarec.speed.control import GROUP_ID
from lambdarec.speed.runner import speed_job
from lambdarec.streaming.replay import encode_events


def committed(settings: object, group: str, topic: str, partitions: int) -> int:
    """Offsets the job has committed on ``topic`` (summed over partitions; -1 if unknown)."""
    from confluent_kafka import Consumer, KafkaException, TopicPartition

    probe = Consumer(
        {
            "bootstrap.servers": settings.bootstrap_servers,  # type: ignore[attr-defined]
            "group.id": group,
            "enable.auto.commit": False,
        }
    )
    try:
        parts = [TopicPartition(topic, p) for p in range(partitions)]
        for _ in range(20):
            try:
                return sum(max(tp.offset, 0) for tp in probe.committed(parts, timeout=10))
            except KafkaException:  # coordinator not ready yet
                time.sleep(0.5)
        return -1
    finally:
        probe.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rate", type=float, default=50_000.0, help="Offered events per second.")
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--outputs", default="", help="The job's --outputs (default: all).")
    parser.add_argument("--parallelism", type=int, default=1)
    parser.add_argument("--max-wait-s", type=float, default=600.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)

    base = load_taobao()
    pairs, _ = encode_events(base)
    wanted = int(args.rate * args.seconds)
    print(f"{len(pairs):,} Taobao events as the pattern, {wanted:,} to send", file=sys.stderr)

    extra = ["--starting-offsets", "earliest", "--checkpoint-interval-s", "2"]
    extra += ["--parallelism", str(args.parallelism)]
    if args.outputs:
        extra += ["--outputs", args.outputs]
    with private_platform(["kafka"], start_timeout_s=240) as settings, speed_job(settings, extra):
        from lambdarec.streaming.kafka import make_producer

        producer = make_producer(settings)
        start = time.monotonic()
        sent = 0
        copy = 0
        while sent < wanted:
            tag = f"-c{copy}".encode()
            for key, value in pairs:
                if sent >= wanted:
                    break
                # Fresh ids per copy: new sessions and events, same shape and timing.
                value = value.replace(b'","user_id"', tag + b'","user_id"', 1)
                value = value.replace(b'","item_id"', tag + b'","item_id"', 1)
                due = start + sent / args.rate
                if sent % 1000 == 0 and due > time.monotonic():
                    time.sleep(due - time.monotonic())
                while True:
                    try:
                        producer.produce(settings.topic_events, value, key=key + tag)
                        break
                    except BufferError:
                        producer.poll(0.05)
                producer.poll(0)
                sent += 1
            copy += 1
        producer.flush(120)
        produced_s = time.monotonic() - start
        group = GROUP_ID
        while True:
            done = committed(settings, group, settings.topic_events, settings.topic_partitions)
            waited = time.monotonic() - start - produced_s
            if done >= sent or waited > args.max_wait_s:
                break
            time.sleep(1)
    lag_after_s = round(max(0.0, waited), 1)
    print(
        json.dumps(
            {
                "events_per_s_sustained": round(min(done, sent) / (produced_s + lag_after_s), 1),
                "lag_after_s": lag_after_s,
                "rate_eps": args.rate,
                "offered_eps": round(sent / produced_s, 1),
                "events": sent,
                "read": done,
                "seconds": round(produced_s, 1),
                "outputs": args.outputs or "all",
                "parallelism": args.parallelism,
            }
        )
    )


if __name__ == "__main__":
    pd.options.mode.copy_on_write = True
    main()
