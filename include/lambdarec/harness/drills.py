"""Fault drills: break a real engine while events flow, repair it, and count what was lost.

Each drill runs on a private platform (its own state folder and loopback ports) with the real
engines: a Kafka broker, the speed-layer job under the platform's supervisor, the feature pusher,
the online store. Real Taobao events (copies of ``../shared/data``'s subset under new ids) are
replayed at a steady rate, and while they flow the drill's faults strike one after the other:

* ``broker``: the Kafka broker is SIGKILLed and started again after ``outage_s``;
* ``job``: the job's processes (PyFlink's driver and its JVM) are SIGKILLed; the supervisor must
  restart it from its newest checkpoint;
* ``store``: the online store (Redis) is stopped for ``outage_s`` and started again; the pusher
  must hold its offsets and retry.

Then the drill waits (bounded) until the stream is through and counts, never just "no crash":

* ``events_lost``: produced events missing from the raw archive (by ``event_id``);
* ``duplicates``: archive rows beyond one per ``event_id``;
* ``updates_lost``: sessions whose online features differ from an independent pandas computation
  over the same events (:mod:`lambdarec.harness.expected`);
* ``recovery_s``: seconds from the last repair until all of the above were right.

``make bench-faults`` runs each fault alone at full length (200k events, 30 s outages);
``tests/integration/test_fault_drills.py`` runs them in a short form within ``make test``.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import pandas as pd

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

    from lambdarec.config import Settings
    from lambdarec.harness.speed import SpeedJob

log = logging.getLogger(__name__)

#: In the order a combined drill strikes them: the longest repair (a job restart) last.
FAULTS = ("store", "broker", "job")
CHECKPOINT_INTERVAL_S = 2.0


@dataclass
class DrillResult:
    name: str
    events: int
    produced: int = 0
    events_lost: int = 0
    duplicates: int = 0
    updates_lost: int = 0
    recovery_s: float | None = None
    seconds: float = 0.0
    #: Each fault as it struck: its name, the events sent and the seconds since the stream began.
    timeline: list[tuple[str, int, float]] = field(default_factory=list)
    #: What went wrong beyond the counts (a step that timed out, a restore that did not happen).
    problems: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return (
            self.produced == self.events
            and self.events_lost == 0
            and self.duplicates == 0
            and self.updates_lost == 0
            and not self.problems
        )

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}


def taobao_stream(n: int) -> pd.DataFrame:
    """``n`` real Taobao events: copies of the subset under new ids, each copy in time order."""
    from lambdarec.data.loaders import load_taobao
    from lambdarec.harness.expected import renamed

    base = load_taobao().sort_values("ts", kind="stable").reset_index(drop=True)
    copies: list[pd.DataFrame] = []
    count = 0
    while count < n:
        part = renamed(base, f"d{len(copies)}").iloc[: n - count]
        copies.append(part)
        count += len(part)
    return pd.concat(copies, ignore_index=True)


def _wait(predicate: Callable[[], bool], timeout_s: float, interval_s: float = 1.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while True:
        if predicate():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(interval_s)


def _paced(events: pd.DataFrame, rate: float, sent: list[int]) -> Iterator[pd.DataFrame]:
    """``events`` in chunks of a tenth of a second each at ``rate`` events/s; ``sent`` counts."""
    chunk = max(1, int(rate / 10))
    began = time.monotonic()
    for start in range(0, len(events), chunk):
        ahead = began + start / rate - time.monotonic()
        if ahead > 0:
            time.sleep(ahead)
        frame = events.iloc[start : start + chunk]
        sent[0] = start + len(frame)
        yield frame


# -- the faults ----------------------------------------------------------------------------------


def _broker(settings: Settings, job: SpeedJob, outage_s: float) -> None:
    import os

    from lambdarec.platform import manager, processes

    process = processes.running(settings, "kafka")
    if process is None:
        raise RuntimeError("the drill's Kafka broker is not running")
    os.killpg(process.pid, signal.SIGKILL)
    _wait(lambda: processes.running(settings, "kafka") is None, 30, 0.2)
    time.sleep(outage_s)
    manager.up(["kafka"], settings=settings, timeout_s=240)


def _job(settings: Settings, job: SpeedJob, outage_s: float) -> None:
    from lambdarec.harness.speed import wait_running

    restores = job.log.read_text(errors="replace").count("resuming from")
    if job.crash() == 0:
        raise RuntimeError("the job had no process to kill")
    wait_running(job, settings, timeout_s=240)
    if job.log.read_text(errors="replace").count("resuming from") <= restores:
        raise RuntimeError("the supervisor restarted the job but it did not restore a checkpoint")


def _store(settings: Settings, job: SpeedJob, outage_s: float) -> None:
    from lambdarec.platform import manager

    manager.down(["redis"], settings=settings)
    time.sleep(outage_s)
    manager.up(["redis"], settings=settings, timeout_s=120)


_FAULT_FUNCTIONS: dict[str, Callable[[Settings, SpeedJob, float], None]] = {
    "broker": _broker,
    "job": _job,
    "store": _store,
}


# -- the drill -----------------------------------------------------------------------------------


def _wrong_sessions(settings: Settings, expected: dict[str, dict[str, Any]]) -> int:
    from lambdarec.harness.expected import mismatches, online

    sessions = list(expected)
    got: dict[str, dict[str, Any]] = {}
    for i in range(0, len(sessions), 2000):
        got.update(online(settings, sessions[i : i + 2000]))
    return len(mismatches(expected, got))


def stream_drill(
    faults: Sequence[str],
    *,
    events: int = 200_000,
    rate: float = 5_000.0,
    outage_s: float = 30.0,
    timeout_s: float = 600.0,
    name: str | None = None,
) -> DrillResult:
    """Replay ``events`` at ``rate``/s, strike each of ``faults`` in turn while they flow, repair,
    and count what was lost (see the module docstring)."""
    from lambdarec.data import archive
    from lambdarec.features.store import apply
    from lambdarec.harness.expected import expected_session_features
    from lambdarec.harness.platform import private_platform
    from lambdarec.harness.speed import committed, pusher_threads, start_job, wait_running
    from lambdarec.streaming.replay import replay

    unknown = [f for f in faults if f not in FAULTS]
    if unknown:
        raise ValueError(f"unknown fault(s) {unknown}; choose from {', '.join(FAULTS)}")
    result = DrillResult(name or "+".join(faults), events)
    began = time.monotonic()
    stream = taobao_stream(events)
    expected = expected_session_features(stream)
    services = ["kafka", "redis"] if "store" in faults else ["kafka"]
    store = "redis" if "store" in faults else "sqlite"
    extra = [
        "--starting-offsets",
        "earliest",
        "--checkpoint-interval-s",
        str(CHECKPOINT_INTERVAL_S),
    ]
    with private_platform(services, start_timeout_s=240, online_store=store) as settings:
        apply(settings)
        with pusher_threads(settings):
            job = start_job(settings, extra, supervised=True)
            try:
                wait_running(job, settings, timeout_s=240)
                sent = [0]
                produced: list[int] = []
                failed: list[str] = []

                def produce() -> None:
                    try:
                        frames = _paced(stream, rate, sent)
                        produced.append(replay(frames, settings=settings, progress=False).produced)
                    except Exception as error:  # reported as the drill's problem
                        failed.append(f"the replay failed: {error}")

                producer = threading.Thread(target=produce, name="drill-replay")
                producer.start()
                streaming = repaired = time.monotonic()
                for k, fault in enumerate(faults, start=1):
                    # Strike once the stream is part-way through (and a checkpoint has committed).
                    mark = events * k // (len(faults) + 1)

                    def reached(mark: int = mark) -> bool:
                        return sent[0] >= mark and committed(settings) > 0

                    if not _wait(reached, 300, 0.2):
                        result.problems.append(f"the stream did not reach {mark:,} events")
                        break
                    if sent[0] >= events:
                        result.problems.append(
                            f"the stream ended before the {fault} fault struck: lower the rate "
                            "or add events"
                        )
                        break
                    at = round(time.monotonic() - streaming, 1)
                    result.timeline.append((fault, sent[0], at))
                    log.info("drill: %s fault at %d events sent, %.1f s", fault, sent[0], at)
                    try:
                        _FAULT_FUNCTIONS[fault](settings, job, outage_s)
                    except Exception as error:
                        result.problems.append(f"{fault}: {error}")
                    repaired = time.monotonic()
                producer.join(timeout=timeout_s)
                result.problems += failed
                result.produced = produced[0] if produced else 0
                if producer.is_alive():
                    result.problems.append(f"the replay did not finish within {timeout_s:.0f} s")

                if not _wait(
                    lambda: (
                        committed(settings) >= events
                        and archive.distinct_ids(settings.archive_dir) >= events
                    ),
                    timeout_s,
                ):
                    result.problems.append(f"not every event was archived within {timeout_s:.0f} s")
                time.sleep(CHECKPOINT_INTERVAL_S + 1)  # one more checkpoint: extra copies show
                distinct = archive.distinct_ids(settings.archive_dir)
                result.events_lost = max(events - distinct, 0)
                result.duplicates = archive.count(settings.archive_dir) - distinct

                wrong = [len(expected)]

                def online_exact() -> bool:
                    wrong[0] = _wrong_sessions(settings, expected)
                    return wrong[0] == 0

                _wait(online_exact, timeout_s, 2.0)
                result.updates_lost = wrong[0]
                result.recovery_s = round(time.monotonic() - repaired, 1)
                if not result.passed:
                    result.problems.append(f"job log tail:\n{job.tail(20)}")
            finally:
                job.kill(signal.SIGTERM)
    result.seconds = round(time.monotonic() - began, 1)
    return result
