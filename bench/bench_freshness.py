"""Freshness benchmark: from producing an event to its effect being readable online.

Starts a throwaway broker, the speed-layer job on the mini-cluster and the feature pusher (its own
process, as on the platform), with Feast's online store in a tmp state folder. Produces view
events stamped "now" at a steady ``--rate`` over ``--sessions`` sessions; after ``--warmup-s``,
``--probes-per-s`` events a second are probes: each the time from handing it to the producer until the
online store shows its session's view count including it (polled every few ms). Prints one JSON
line: {"rate_eps", "events", "p50_ms", "p99_ms", "lost", "cpu_ms_per_1k_events", ...}; ``lost``
counts probes never seen within ``--timeout-s``. ``cpu_ms_per_1k_events`` is the CPU (user +
system, ms) each process spent per 1,000 events of the measured seconds: ``bench`` (the producer
and the probes), ``kafka``, ``flink`` (the job's driver and JVM), ``pusher``, ``redis`` and
``machine`` (every process on the machine: on a shared one, the rest is the neighbours').

``--find-max`` searches the highest steady rate whose freshness p99 stays within ``--p99-ms``
with no probe lost and the offered rate achieved: from ``--start-rate`` doubling while it holds
(at most ``--max-rate``) or halving while it fails (at least ``--min-rate``), then
``--bisect-steps`` bisections, each step ``--step-warmup-s`` plus
``--seconds`` on the same broker, job and pusher (the first step also warms the JVM for
``--warmup-s``), each with fresh sessions. The JSON line: {"online_store",
"max_eps_p99_500ms", "steps": [...], "cpu_ms_per_1k_events" (at the max step),
"idle_cpu_ms_per_s" (each process's CPU with no events: the fixed part), ...}.
``--online-store redis`` starts a private redis-server beside the broker.
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
from lambdarec.features.store import apply, read_online
from lambdarec.harness.capacity import ProcessCpu, highest_rate
from lambdarec.harness.platform import private_platform
from lambdarec.harness.speed import speed_job
from lambdarec.harness.waiting import eventually
from lambdarec.platform import manager
from lambdarec.platform.base import settings_env
from lambdarec.streaming.kafka import make_producer

#: Sessions the prober reads per poll at most (the longest pending first).
READ_AT_MOST = 100


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
        # the prober, not the freshness of an event, so it is paid before any probe. The reads
        # are serving's (read_online): the SDK's get_online_features cost ~1 core at 2,000
        # events/s here, which starved the path it measures.
        read_online(["session_features:n_views"], [{"session_id": "s0"}], settings)  # type: ignore[arg-type]

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
                # The oldest READ_AT_MOST: when the path lags, hundreds of sessions pend and
                # reading them all every few ms took a core from the path under test (their
                # latency is seconds by then: the step fails either way).
                sessions = list(self.pending)[:READ_AT_MOST]
            if not sessions:
                time.sleep(0.01)
                continue
            t_read = time.monotonic()
            got = read_online(
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
            # At most half a core: a read as long as the pause after it, 10 ms at least.
            time.sleep(max(0.01, now - t_read))


class TopicProbe:
    """The same probes, resolved when the job's row reaches the features topic: the Flink part
    of the latency (the rest is the pusher and the online store)."""

    def __init__(self, settings: object) -> None:
        from lambdarec.streaming.kafka import make_consumer

        self.consumer = make_consumer(
            "bench-freshness-topic-probe",
            [settings.topic_session_features],  # type: ignore[attr-defined]
            settings,  # type: ignore[arg-type]
            **{
                "auto.offset.reset": "latest",
                # Up to 20 ms of resolution, not one fetch request per few rows: the broker's
                # CPU is part of what the benchmark measures.
                "fetch.wait.max.ms": 20,
                "fetch.min.bytes": 262144,
                "enable.auto.commit": False,
            },
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
                    # The key is the session id: only a probed session's row is decoded.
                    probes = self.pending.get((msg.key() or b"").decode())
                    if not probes:
                        continue
                    row = orjson.loads(msg.value())
                    left = []
                    for count, sent in probes:
                        if row["n_views"] >= count:
                            self.latencies_ms.append((now - sent) * 1000)
                        else:
                            left.append((count, sent))
                    if left:
                        self.pending[row["session_id"]] = left
                    else:
                        del self.pending[row["session_id"]]
        self.consumer.close()


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)


#: The freshness p99 bound of ``--find-max`` (the issue's figure), ms; ``--p99-ms`` changes it.
P99_BOUND_MS = 500.0
#: A step holds only when the producer achieved at least this share of the offered rate (below
#: it, the bench process itself is the limit and the step says nothing of the path).
ACHIEVED_SHARE = 0.97


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rate", type=float, default=1000.0, help="Events per second.")
    parser.add_argument(
        "--seconds",
        type=float,
        default=None,
        help="Measured duration (default 60 s; with --find-max, each step's: 20 s).",
    )
    parser.add_argument("--warmup-s", type=float, default=30.0)
    parser.add_argument("--sessions", type=int, default=2000)
    parser.add_argument(
        "--probes-per-s",
        type=float,
        default=100.0,
        help="Probes per second (every rate/N-th event): the probes' reads stay the same load at "
        "every rate.",
    )
    parser.add_argument("--timeout-s", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--online-store", choices=("sqlite", "redis"), default="sqlite")
    parser.add_argument(
        "--find-max",
        action="store_true",
        help="Search the highest rate with freshness p99 <= --p99-ms (see above).",
    )
    parser.add_argument("--start-rate", type=float, default=1000.0, help="--find-max's first rate.")
    parser.add_argument(
        "--min-rate",
        type=float,
        default=250.0,
        help="--find-max halves a failing first rate down to this at most.",
    )
    parser.add_argument("--max-rate", type=float, default=64000.0, help="--find-max's ceiling.")
    parser.add_argument("--bisect-steps", type=int, default=3)
    parser.add_argument(
        "--idle-s",
        type=float,
        default=10.0,
        help="--find-max first reads each process's CPU this long with no events (0: skip).",
    )
    parser.add_argument("--step-warmup-s", type=float, default=5.0)
    parser.add_argument("--p99-ms", type=float, default=P99_BOUND_MS)
    args = parser.parse_args()
    if args.find_max and not 0 < args.min_rate <= args.start_rate <= args.max_rate:
        parser.error(
            f"--min-rate {args.min_rate:g}, --start-rate {args.start_rate:g}, --max-rate "
            f"{args.max_rate:g}: give 0 < min <= start <= max"
        )
    if args.seconds is None:
        args.seconds = 20.0 if args.find_max else 60.0
    if args.rate <= 0 or args.seconds <= 0 or args.probes_per_s <= 0:
        parser.error("--rate, --seconds and --probes-per-s must be positive")
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)

    services = ["kafka", "redis"] if args.online_store == "redis" else ["kafka"]
    with private_platform(
        services, start_timeout_s=240, online_store=args.online_store
    ) as settings:
        apply(settings)
        env = {**os.environ, **settings_env(settings)}
        with speed_job(settings, ["--starting-offsets", "earliest"]) as job:
            pusher = subprocess.Popen(  # noqa: S603 - our own module
                [sys.executable, "-m", "lambdarec.speed.pusher"],
                env=env,
                start_new_session=True,
                stdout=subprocess.DEVNULL,
                stderr=(settings.log_dir / "feature-pusher.log").open("ab"),
            )
            try:
                roots = {"bench": os.getpid(), "flink": job.process.pid, "pusher": pusher.pid}
                for row in manager.status(services, settings=settings):
                    if row.pid is not None:
                        roots[row.name] = row.pid
                bench = Bench(args, settings, ProcessCpu(roots))
                if args.find_max:
                    result = _find_max(args, bench)
                else:
                    result = bench.step(args.rate, args.warmup_s, args.seconds)
                for line in (settings.log_dir / "feature-pusher.log").read_text().splitlines():
                    if "slow push" in line:
                        print("  pusher:", line, file=sys.stderr)
                beat = settings.run_dir / "feature-pusher.heartbeat"
                if beat.is_file():
                    print(f"  pusher: {beat.read_text()}", file=sys.stderr)
            finally:
                os.killpg(pusher.pid, signal.SIGTERM)
                pusher.wait(timeout=30)
    result = {"online_store": args.online_store, **result}
    print(json.dumps(result))


def _find_max(args: argparse.Namespace, bench: Bench) -> dict[str, object]:
    steps: list[dict[str, object]] = []
    idle: dict[str, float] = {}
    if args.idle_s > 0:
        # After the pusher's start-up (Feast's import and registry: ~1 core for seconds).
        beat = bench.settings.run_dir / "feature-pusher.heartbeat"  # type: ignore[attr-defined]
        with contextlib.suppress(TimeoutError):
            eventually(beat.is_file, 120, interval_s=0.2)
        idle = bench.idle(args.idle_s)
    print(f"idle: CPU ms per second {json.dumps(idle)}", file=sys.stderr)

    def trial(rate: float) -> bool:
        warmup = args.warmup_s if not steps else args.step_warmup_s
        step = bench.step(rate, warmup, args.seconds)
        p99 = step["p99_ms"]
        step["held"] = (
            p99 is not None
            and p99 <= args.p99_ms  # type: ignore[operator]
            and not step["lost"]
            and step["achieved_eps"] >= ACHIEVED_SHARE * rate  # type: ignore[operator]
        )
        steps.append(step)
        print(f"step: {json.dumps(step)}", file=sys.stderr)
        if not step["held"]:
            bench.settle()  # a backlog left by a failed step must not burden the next one
        return bool(step["held"])

    best = highest_rate(
        trial,
        args.start_rate,
        args.max_rate,
        floor=args.min_rate,
        bisect_steps=args.bisect_steps,
    )
    at_best = next((s for s in steps if s["held"] and s["rate_eps"] == best), {})
    return {
        "max_eps_p99_500ms" if args.p99_ms == P99_BOUND_MS else "max_eps": best,
        "p99_bound_ms": args.p99_ms,
        "cpu_ms_per_1k_events": at_best.get("cpu_ms_per_1k_events"),
        "p50_ms": at_best.get("p50_ms"),
        "p99_ms": at_best.get("p99_ms"),
        "steps": steps,
        "idle_cpu_ms_per_s": idle,
        "sessions": args.sessions,
        "step_s": args.seconds,
        "step_warmup_s": args.step_warmup_s,
        "machine_cores": os.cpu_count(),
    }


class Bench:
    """The running path (broker, job, pusher) and a producer; one :meth:`step` per rate."""

    def __init__(self, args: argparse.Namespace, settings: object, cpu: ProcessCpu) -> None:
        self.args = args
        self.settings = settings
        self.cpu = cpu
        self.rng = random.Random(args.seed)
        # make_producer's linger (5 ms): at 1 ms the broker took a request per millisecond.
        self.producer = make_producer(settings)  # type: ignore[arg-type]
        self.steps = 0

    def idle(self, seconds: float) -> dict[str, float]:
        """CPU ms per second of each process with no events offered: the path's fixed cost,
        which the per-event figures of a low rate include."""
        self.cpu.start()
        time.sleep(seconds)
        return {name: round(used * 1000 / seconds, 1) for name, used in self.cpu.stop().items()}

    def settle(self, timeout_s: float = 180.0) -> None:
        """Wait until an event produced now is readable online (the path has no backlog)."""
        tag = f"settle{self.steps}"
        sessions = [f"{tag}-{k}" for k in range(16)]  # keys over every partition, most likely
        for n, sid in enumerate(sessions):
            self.producer.produce(
                self.settings.topic_events,  # type: ignore[attr-defined]
                orjson.dumps(_event(f"{tag}-e{n}", sid, sid, "i0", "c0", _now())),
                key=sid.encode(),
            )
        self.producer.flush(30)
        began = time.monotonic()

        def seen() -> bool:
            got = read_online(
                ["session_features:n_views"],
                [{"session_id": s} for s in sessions],
                self.settings,  # type: ignore[arg-type]
            )
            return all(v is not None for v in got["session_features__n_views"])

        with contextlib.suppress(TimeoutError):
            eventually(seen, timeout_s, interval_s=0.2)
        print(f"  settled in {time.monotonic() - began:.1f} s", file=sys.stderr)

    def step(self, rate: float, warmup_s: float, seconds: float) -> dict[str, object]:
        """Offer ``rate`` for ``warmup_s`` + ``seconds``; freshness and CPU of the measured part."""
        args, settings, producer, rng = self.args, self.settings, self.producer, self.rng
        self.steps += 1
        tag = f"r{self.steps}"  # fresh sessions per step: their counts start at 0
        probe_every = max(1, round(rate / args.probes_per_s))
        print(f"rate {rate:.0f} events/s ({warmup_s:g} s warm-up, {seconds:g} s)", file=sys.stderr)
        prober = Prober(settings)
        prober.thread.start()
        counts = [0] * args.sessions
        total = warmup_s + seconds
        interval = 1.0 / rate
        start = time.monotonic()
        sent = probes = measured = 0
        measuring_from = start + warmup_s
        measuring = False
        stamp_ms, stamp = -1, ""
        while True:
            due = start + sent * interval
            now = time.monotonic()
            if due - start >= total:
                break
            if due - now > 0.001:  # one sleep per millisecond ahead, not one per event
                time.sleep(due - now)
            s = rng.randrange(args.sessions)
            counts[s] += 1
            ms = time.time_ns() // 1_000_000
            if ms != stamp_ms:  # the event time "now", to the millisecond it carries
                stamp_ms, stamp = ms, _now()
            user = f"u{tag}-{s}"
            event = _event(
                f"f{tag}-{sent}",
                user,
                f"s{tag}-{s}",
                f"i{rng.randrange(5000)}",
                f"c{rng.randrange(50)}",
                stamp,
            )
            handed = time.monotonic()
            if not measuring and handed >= measuring_from:
                measuring = True
                self.cpu.start()
            while True:
                try:
                    producer.produce(settings.topic_events, orjson.dumps(event), key=user.encode())  # type: ignore[attr-defined]
                    break
                except BufferError:
                    producer.poll(0.01)
            producer.poll(0)
            if measuring:
                measured += 1
                if sent % probe_every == 0:
                    prober.add(f"s{tag}-{s}", counts[s], handed)
                    probes += 1
            sent += 1
        measured_s = time.monotonic() - measuring_from
        # The CPU of the sending seconds: in a step that holds, the path processes what is sent
        # as it is sent (a step that lags fails anyway, whatever its CPU).
        cpu = self.cpu.stop() if measuring else {}
        producer.flush(30)
        with contextlib.suppress(TimeoutError):  # probes still unanswered are reported as lost
            eventually(lambda: not prober.outstanding(), args.timeout_s, interval_s=0.05)
        prober.stop.set()
        prober.thread.join(timeout=5)
        prober.topic.stop.set()
        prober.topic.thread.join(timeout=5)
        lat = prober.latencies_ms
        flink = prober.topic.latencies_ms
        # Where the tail comes from: p50/p99 per 5 s of sending (stderr).
        if prober.timeline:
            t0 = min(t for t, _ in prober.timeline)
            buckets: dict[int, list[float]] = {}
            for t, ms_ in prober.timeline:
                buckets.setdefault(int((t - t0) // 5), []).append(ms_)
            for k in sorted(buckets):
                print(
                    f"  t+{5 * k:3d}s p50 {_percentile(buckets[k], 0.5)} ms, "
                    f"p99 {_percentile(buckets[k], 0.99)} ms",
                    file=sys.stderr,
                )
        return {
            "rate_eps": rate,
            "achieved_eps": round(measured / max(measured_s, 1e-9), 1),
            "events": sent,
            "p50_ms": _percentile(lat, 0.50),
            "p99_ms": _percentile(lat, 0.99),
            "lost": prober.outstanding(),
            "probes": probes,
            "max_ms": round(max(lat), 1) if lat else None,
            "to_features_topic_p50_ms": _percentile(flink, 0.50),
            "to_features_topic_p99_ms": _percentile(flink, 0.99),
            "cpu_ms_per_1k_events": {
                name: round(used * 1e6 / max(measured, 1), 1) for name, used in cpu.items()
            },
            "warmup_s": warmup_s,
            "seconds": seconds,
        }


def _now() -> str:
    return format_ts(datetime.now(UTC))


def _event(
    event_id: str, user: str, session: str, item: str, category: str, ts: str
) -> dict[str, object]:
    return {
        "event_id": event_id,
        "user_id": user,
        "session_id": session,
        "item_id": item,
        "event_type": "view",
        "category": category,
        "price": 9.5,
        "ts": ts,
        "schema_version": 1,
    }


if __name__ == "__main__":
    main()
