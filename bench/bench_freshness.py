"""Freshness benchmark: from producing an event to its effect being readable online.

Starts a throwaway broker, the speed-layer job on the mini-cluster and the feature pusher (its own
process, as on the platform), with Feast's online store in a tmp state folder. Produces view
events stamped "now" at a steady ``--rate`` over ``--sessions`` sessions; after ``--warmup-s``,
every ``--probe-every``-th event is a probe: the time from handing it to the producer until the
online store shows its session's view count including it (polled every few ms). Prints one JSON
line: {"rate_eps", "events", "p50_ms", "p99_ms", "lost", ...}; ``lost`` counts probes never seen
within ``--timeout-s``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import random
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime

import orjson

from lambdarec.events import format_ts
from lambdarec.features.store import apply, get_online_features
from lambdarec.harness.platform import private_platform
from lambdarec.harness.speed import speed_job
from lambdarec.harness.waiting import eventually
from lambdarec.platform.base import settings_env
from lambdarec.streaming.kafka import make_producer


class Prober:
    """Tracks probes per session and resolves them from the online store in a thread."""

    def __init__(self, settings: object) -> None:
        self.settings = settings
        self.topic = TopicProbe(settings)
        self.pending: dict[str, list[tuple[int, float]]] = {}
        self.latencies_ms: list[float] = []
        self.timeline: list[tuple[float, float]] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        # The first read loads Feast's registry and opens the store (~1 s): a one-time cost of
        # the prober, not the freshness of an event, so it is paid before any probe.
        get_online_features(["session_features:n_views"], [{"session_id": "s0"}], settings)  # type: ignore[arg-type]

    def add(self, session_id: str, count: int, sent: float) -> None:
        with self.lock:
            self.pending.setdefault(session_id, []).append((count, sent))
        self.topic.add(session_id, count, sent)

    def outstanding(self) -> int:
        with self.lock:
            return sum(len(v) for v in self.pending.values())

    def _loop(self) -> None:
        while not self.stop.is_set():
            with self.lock:
                sessions = list(self.pending)
            if not sessions:
                time.sleep(0.01)
                continue
            t_read = time.monotonic()
            got = get_online_features(
                ["session_features:n_views"],
                [{"session_id": s} for s in sessions],
                self.settings,  # type: ignore[arg-type]
            )
            if time.monotonic() - t_read > 0.2:
                print(
                    f"  slow read at {time.time():.1f}: {(time.monotonic() - t_read) * 1000:.0f} ms "
                    f"for {len(sessions)} sessions",
                    file=sys.stderr,
                )
            now = time.monotonic()
            with self.lock:
                for sid, views in zip(
                    got["session_id"], got["session_features__n_views"], strict=True
                ):
                    probes = self.pending.get(sid)
                    if not probes or views is None:
                        continue
                    left = []
                    for count, sent in probes:
                        if views >= count:
                            self.latencies_ms.append((now - sent) * 1000)
                            self.timeline.append((sent, (now - sent) * 1000))
                        else:
                            left.append((count, sent))
                    if left:
                        self.pending[sid] = left
                    else:
                        del self.pending[sid]
            time.sleep(0.01)


class TopicProbe:
    """The same probes, resolved when the job's row reaches the features topic: the Flink part
    of the latency (the rest is the pusher and the online store)."""

    def __init__(self, settings: object) -> None:
        from lambdarec.streaming.kafka import make_consumer

        self.consumer = make_consumer(
            "bench-freshness-topic-probe",
            [settings.topic_session_features],  # type: ignore[attr-defined]
            settings,  # type: ignore[arg-type]
            **{"auto.offset.reset": "latest", "fetch.wait.max.ms": 5, "enable.auto.commit": False},
        )
        self.pending: dict[str, list[tuple[int, float]]] = {}
        self.latencies_ms: list[float] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def add(self, session_id: str, count: int, sent: float) -> None:
        with self.lock:
            self.pending.setdefault(session_id, []).append((count, sent))

    def _loop(self) -> None:
        while not self.stop.is_set():
            messages = self.consumer.consume(num_messages=1000, timeout=0.05)
            now = time.monotonic()
            with self.lock:
                for msg in messages:
                    if msg.error() is not None or msg.value() is None:
                        continue
                    row = orjson.loads(msg.value())
                    probes = self.pending.get(row["session_id"])
                    if not probes:
                        continue
                    left = []
                    for count, sent in probes:
                        if row["n_views"] >= count:
                            self.latencies_ms.append((now - sent) * 1000)
                        else:
                            left.append((count, sent))
                    self.pending[row["session_id"]] = left
        self.consumer.close()


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rate", type=float, default=1000.0, help="Events per second.")
    parser.add_argument("--seconds", type=float, default=60.0, help="Measured duration.")
    parser.add_argument("--warmup-s", type=float, default=30.0)
    parser.add_argument("--sessions", type=int, default=2000)
    parser.add_argument("--probe-every", type=int, default=10)
    parser.add_argument("--timeout-s", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    rng = random.Random(args.seed)

    with private_platform(["kafka"], start_timeout_s=240) as settings:
        apply(settings)
        env = {**os.environ, **settings_env(settings)}
        with speed_job(settings, ["--starting-offsets", "earliest"]):
            pusher = subprocess.Popen(  # noqa: S603 - our own module
                [sys.executable, "-m", "lambdarec.speed.pusher"],
                env=env,
                start_new_session=True,
                stdout=subprocess.DEVNULL,
                stderr=(settings.log_dir / "feature-pusher.log").open("ab"),
            )
            try:
                result = _run(args, settings, rng)
                for line in (settings.log_dir / "feature-pusher.log").read_text().splitlines():
                    if "slow push" in line:
                        print("  pusher:", line, file=sys.stderr)
                beat = settings.run_dir / "feature-pusher.heartbeat"
                if beat.is_file():
                    print(f"  pusher: {beat.read_text()}", file=sys.stderr)
            finally:
                os.killpg(pusher.pid, signal.SIGTERM)
                pusher.wait(timeout=30)
    print(json.dumps(result))


def _run(args: argparse.Namespace, settings: object, rng: random.Random) -> dict[str, object]:
    producer = make_producer(settings, **{"linger.ms": 1})  # type: ignore[arg-type]
    prober = Prober(settings)
    prober.thread.start()
    counts = [0] * args.sessions
    total = args.warmup_s + args.seconds
    interval = 1.0 / args.rate
    start = time.monotonic()
    sent = probes = 0
    measuring_from = start + args.warmup_s
    while True:
        due = start + sent * interval
        now = time.monotonic()
        if due - start >= total:
            break
        if due > now:
            time.sleep(due - now)
        s = rng.randrange(args.sessions)
        counts[s] += 1
        event = {
            "event_id": f"f{sent}",
            "user_id": f"u{s}",
            "session_id": f"s{s}",
            "item_id": f"i{rng.randrange(5000)}",
            "event_type": "view",
            "category": f"c{rng.randrange(50)}",
            "price": 9.5,
            "ts": format_ts(datetime.now(UTC)),
            "schema_version": 1,
        }
        handed = time.monotonic()
        producer.produce(settings.topic_events, orjson.dumps(event), key=f"u{s}".encode())  # type: ignore[attr-defined]
        producer.poll(0)
        if handed >= measuring_from and sent % args.probe_every == 0:
            prober.add(f"s{s}", counts[s], handed)
            probes += 1
        sent += 1
    producer.flush(30)
    elapsed = time.monotonic() - start
    with contextlib.suppress(TimeoutError):  # probes still unanswered are reported as lost
        eventually(lambda: not prober.outstanding(), args.timeout_s, interval_s=0.05)
    prober.stop.set()
    prober.thread.join(timeout=5)
    prober.topic.stop.set()
    prober.topic.thread.join(timeout=5)
    lat = prober.latencies_ms
    flink = prober.topic.latencies_ms
    # Where the tail comes from: p50/p99 per 5 s of sending (stderr), and the pusher's own figures.
    if prober.timeline:
        t0 = min(t for t, _ in prober.timeline)
        buckets: dict[int, list[float]] = {}
        for t, ms in prober.timeline:
            buckets.setdefault(int((t - t0) // 5), []).append(ms)
        for k in sorted(buckets):
            print(
                f"  t+{5 * k:3d}s p50 {_percentile(buckets[k], 0.5)} ms, "
                f"p99 {_percentile(buckets[k], 0.99)} ms",
                file=sys.stderr,
            )
    return {
        "rate_eps": args.rate,
        "events": sent,
        "p50_ms": _percentile(lat, 0.50),
        "p99_ms": _percentile(lat, 0.99),
        "lost": prober.outstanding(),
        "probes": probes,
        "max_ms": round(max(lat), 1) if lat else None,
        "to_features_topic_p50_ms": _percentile(flink, 0.50),
        "to_features_topic_p99_ms": _percentile(flink, 0.99),
        "achieved_eps": round(sent / elapsed, 1),
        "warmup_s": args.warmup_s,
        "seconds": args.seconds,
    }


if __name__ == "__main__":
    main()
