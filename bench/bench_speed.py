"""Speed-layer throughput benchmark: how many events per second the Flink job sustains.

Starts a throwaway broker and the speed-layer job (all outputs, or ``--outputs``), then produces
``--rate`` events/s of real Taobao events (re-keyed copies, so the job sees fresh sessions) for
``--seconds``. The job writes one session-features record per event, so the features topic's
size shows how far it has processed (checkpoints, every ``--checkpoint-interval-s``, the job's
default 10 s, snapshot all session state meanwhile: their cost is part of the rate);
``lag_after_s`` is how long after the producer stopped the job took to process everything. A
rate is held when ``lag_after_s`` stays within 2% of the run (the lag did not grow) and the
consumer offsets of every event were committed; the sustained figure is events / (seconds +
lag_after_s). Prints one JSON line: {"events_per_s_sustained", "lag_after_s", "rate_eps",
"events", "backlog_eps", ...}.

On one 2-core machine the Python producer, the broker and the job share the cores, so an offered
rate also measures the producer. By default (``--rate auto``) the benchmark first measures the
job's capacity on a backlog: ``--backlog`` events are produced before the job starts, and
``backlog_eps`` is its reading rate from its first committed offsets to its last (start-up
excluded), with the broker beside it as in production and the producer idle. Then, on a fresh
broker and job, it offers ``--auto-share`` of that rate for ``--warmup-s`` (then waits for the
job to catch up) and for ``--seconds``: the JSON line's ``events_per_s_sustained`` and
``lag_after_s`` are the measured seconds'. A rate that is not held is tried again a step lower
(``--attempts``, ``--step-down``); ``tried`` lists each attempt.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import pandas as pd

from lambdarec.data.loaders import load_taobao
from lambdarec.harness.platform import private_platform
from lambdarec.harness.speed import speed_job
from lambdarec.speed.control import GROUP_ID
from lambdarec.streaming.replay import encode_events

if TYPE_CHECKING:
    from collections.abc import Callable


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


TS_FIELD = b'"ts":"'
TS_LEN = len("2017-09-11T08:16:39.000Z")


def _now_stamp() -> bytes:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3].encode() + b"Z"


def produce(
    settings: object,
    pairs: list,
    wanted: int,
    rate: float,
    *,
    stamp_now: bool = True,
    label: str = "c",
) -> tuple[int, float]:
    """Produce ``wanted`` re-keyed copies of ``pairs`` at ``rate`` events/s (0: as fast as the
    producer goes); returns (sent, seconds). With ``stamp_now`` each event's time is the moment it
    is produced (to the millisecond, refreshed every 1,000 events), as on a live site: event time
    advances with the load and the trending windows aggregate it. Without it, every copy replays
    the recorded 2017 times, so after the first copy the windows drop the events as late.
    ``label`` starts each copy's id tag (another label, other sessions and event ids)."""
    from tqdm import tqdm

    from lambdarec.streaming.kafka import make_producer

    producer = make_producer(settings)
    topic = settings.topic_events  # type: ignore[attr-defined]
    start = time.monotonic()
    sent = 0
    copy = 0
    bar = tqdm(
        total=wanted, unit="ev", unit_scale=True, desc="produce", file=sys.stderr, mininterval=2
    )
    while sent < wanted:
        tag = f"-{label}{copy}".encode()
        for key, value in pairs:
            if sent >= wanted:
                break
            # Fresh ids per copy: the tag ends the event_id (before "user_id") and the
            # session_id (before "item_id"); users and items stay those of the data.
            value = value.replace(b'","user_id"', tag + b'","user_id"', 1)
            value = value.replace(b'","item_id"', tag + b'","item_id"', 1)
            if sent % 1000 == 0:
                if rate:
                    ahead = start + sent / rate - time.monotonic()
                    if ahead > 0:
                        time.sleep(ahead)
                stamp = _now_stamp()
            if stamp_now:
                at = value.find(TS_FIELD) + len(TS_FIELD)
                value = value[:at] + stamp + value[at + TS_LEN :]
            while True:
                try:
                    producer.produce(topic, value, key=key + tag)
                    break
                except BufferError:
                    producer.poll(0.05)
            producer.poll(0)
            sent += 1
            if sent % 10_000 == 0:
                bar.update(10_000)
        copy += 1
    producer.flush(120)
    bar.close()
    return sent, time.monotonic() - start


def job_options(args: argparse.Namespace) -> list[str]:
    extra = ["--starting-offsets", "earliest"]
    extra += ["--checkpoint-interval-s", str(args.checkpoint_interval_s)]
    extra += ["--parallelism", str(args.parallelism)]
    if args.outputs:
        extra += ["--outputs", args.outputs]
    return extra


def run_backlog(args: argparse.Namespace, pairs: list, events: int) -> dict[str, object]:
    """Produce ``events`` first, then time the job reading them (its own capacity)."""
    from lambdarec.streaming.kafka import ensure_topics

    with private_platform(
        ["kafka"],
        start_timeout_s=240,
        flink_heap=args.flink_heap,
        flink_state_backend=args.state_backend,
    ) as settings:
        topic, partitions = settings.topic_events, settings.topic_partitions
        ensure_topics(settings)
        sent, produced_s = produce(settings, pairs, events, 0.0, stamp_now=args.event_time == "now")
        with speed_job(settings, job_options(args)):
            # From the first committed offsets (the job is up and has checkpointed once) to the
            # commit that covers the last event: the job's own reading rate, start-up excluded
            # (conservative: the drain ends up to one interval before that commit).
            first = (0.0, -1)
            done = 0
            began = time.monotonic()
            while True:
                done = committed(settings, GROUP_ID, topic, partitions)
                now = time.monotonic()
                if done > 0 and first[1] < 0:
                    first = (now, done)
                if done >= sent or now - began > args.max_wait_s:
                    break
                time.sleep(0.5)
    drain_s = max(now - first[0], 1e-9)
    return {
        "backlog_eps": round((done - first[1]) / drain_s, 1),
        "backlog_events": sent,
        "backlog_read": done,
        "drain_s": round(drain_s, 1),
    }


def run_offered(args: argparse.Namespace, pairs: list, rate: float) -> dict[str, object]:
    """Offer ``rate`` events/s for ``--seconds`` to the running job; how long it lags after.

    The job writes one session-features record per valid event (all of these are valid), so the
    features topic's size says how many events it has processed, as it happens; the committed
    offsets move only on checkpoints (every ``--checkpoint-interval-s``) and would add up to one
    interval of apparent lag.
    """
    from lambdarec.streaming.kafka import topic_size

    with private_platform(
        ["kafka"],
        start_timeout_s=240,
        flink_heap=args.flink_heap,
        flink_state_backend=args.state_backend,
    ) as settings:
        topic, partitions = settings.topic_events, settings.topic_partitions
        features = settings.topic_session_features
        with speed_job(settings, job_options(args)):
            warm_lag = 0.0
            if args.warmup_s > 0:  # the JVM compiles the job's code paths on first use
                warm, _ = produce(
                    settings,
                    pairs,
                    int(rate * args.warmup_s),
                    rate,
                    stamp_now=args.event_time == "now",
                    label="w",
                )
                _, warm_lag = _wait_for(
                    lambda: topic_size(settings, features), warm, args.max_wait_s
                )
            base = topic_size(settings, features)
            sent, produced_s = produce(
                settings, pairs, int(rate * args.seconds), rate, stamp_now=args.event_time == "now"
            )
            processed, waited = _wait_for(
                lambda: topic_size(settings, features) - base, sent, args.max_wait_s
            )
            # and the offsets of all of them committed by a checkpoint
            done, _ = _wait_for(
                lambda: committed(settings, GROUP_ID, topic, partitions) - base,
                sent,
                args.max_wait_s,
                every_s=0.5,
            )
    lag_after_s = round(max(0.0, waited), 1)
    return {
        "events_per_s_sustained": round(min(processed, sent) / (produced_s + lag_after_s), 1),
        "lag_after_s": lag_after_s,
        # Held: everything processed within 2% of the run's length after the producer stopped.
        "held": processed >= sent and done >= sent and lag_after_s <= 0.02 * produced_s,
        "rate_eps": rate,
        "offered_eps": round(sent / produced_s, 1),
        "events": sent,
        "processed": processed,
        "read": done,
        "seconds": round(produced_s, 1),
        "warmup_s": args.warmup_s,
        "warmup_lag_after_s": round(warm_lag, 1),
    }


def _wait_for(
    count: Callable[[], int], wanted: int, max_wait_s: float, every_s: float = 0.2
) -> tuple[int, float]:
    """Poll ``count`` until it reaches ``wanted`` or ``max_wait_s`` passes; (count, seconds)."""
    began = time.monotonic()
    while True:
        got = count()
        waited = time.monotonic() - began
        if got >= wanted or waited > max_wait_s:
            return got, waited
        time.sleep(every_s)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--rate",
        default="auto",
        help="Offered events per second, or 'auto': measure the job's capacity on a backlog "
        "first, then offer --auto-share of it (and report both).",
    )
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument(
        "--warmup-s",
        type=float,
        default=30.0,
        help="Before the measured --seconds, offer the same rate this long and let the job catch "
        "up (JIT compilation of a fresh JVM), as a long-running job would be.",
    )
    parser.add_argument(
        "--backlog",
        type=int,
        default=5_500_000,
        help="Events produced before the job starts for the capacity measurement (enough for "
        "2 minutes of reading); 0 with a numeric --rate: offered rate only.",
    )
    parser.add_argument("--auto-share", type=float, default=0.9)
    parser.add_argument(
        "--attempts",
        type=int,
        default=3,
        help="With --rate auto: offered runs at most; a rate that is not held is retried at "
        "--step-down of it (the backlog figure varies by ~10%% from run to run here).",
    )
    parser.add_argument("--step-down", type=float, default=0.93)
    parser.add_argument(
        "--event-time",
        choices=("now", "recorded"),
        default="now",
        help="Each event's ts: the moment it is produced (a live site) or the data's own 2017 "
        "times, replayed again by every copy.",
    )
    parser.add_argument("--outputs", default="", help="The job's --outputs (default: all).")
    parser.add_argument("--checkpoint-interval-s", type=float, default=10.0)
    parser.add_argument(
        "--flink-heap",
        default="4g",
        help="The mini-cluster's heap (LAMBDAREC_FLINK_HEAP): session state lives there, about "
        "1 KB per session, and at these rates the sessions of 2 minutes outgrow the 1g default.",
    )
    parser.add_argument("--parallelism", type=int, default=1)
    parser.add_argument("--state-backend", choices=("hashmap", "rocksdb"), default="hashmap")
    parser.add_argument("--max-wait-s", type=float, default=600.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    if args.rate != "auto":
        try:
            rate = float(args.rate)
        except ValueError:
            parser.error(f"--rate {args.rate!r}: give events per second (e.g. 20000) or 'auto'")
    elif not args.backlog:
        parser.error("--rate auto measures a backlog first: give --backlog > 0")

    base = load_taobao()
    pairs, _ = encode_events(base)
    print(f"{len(pairs):,} Taobao events as the pattern", file=sys.stderr)
    figures: dict[str, object] = {}
    if args.backlog:
        figures.update(run_backlog(args, pairs, args.backlog))
        print(f"capacity on a backlog: {figures}", file=sys.stderr)
    if args.rate == "auto":
        rate = round(float(figures["backlog_eps"]) * args.auto_share, -2)  # type: ignore[arg-type]
    if args.rate != "auto" or args.backlog:
        tried = []
        for attempt in range(1 if args.rate != "auto" else max(1, args.attempts)):
            if attempt:
                rate = round(rate * args.step_down, -2)
                print(f"not held; trying {rate:.0f} events/s", file=sys.stderr)
            offered = run_offered(args, pairs, rate)
            tried.append({k: offered[k] for k in ("rate_eps", "held", "lag_after_s")})
            if offered["held"]:
                break
        figures.update(offered, tried=tried)
    figures.update(
        outputs=args.outputs or "all",
        parallelism=args.parallelism,
        checkpoint_interval_s=args.checkpoint_interval_s,
        flink_heap=args.flink_heap,
        state_backend=args.state_backend,
        event_time=args.event_time,
    )
    print(json.dumps(figures))


if __name__ == "__main__":
    pd.options.mode.copy_on_write = True
    main()
