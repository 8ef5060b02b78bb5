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

import contextlib
import json
import logging
import signal
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
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


class _Verdict:
    """A drill's result: its fields and whether it passed, as one JSON-ready dict."""

    @property
    def passed(self) -> bool:
        raise NotImplementedError

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}  # type: ignore[call-overload]


@dataclass
class DrillResult(_Verdict):
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


# -- the daily DAG run twice ---------------------------------------------------------------------


@dataclass
class RerunResult(_Verdict):
    """What a second run of the daily DAG for the same day changed (nothing, when it passes)."""

    day: str
    succeeded: bool
    tables: int = 0
    rows: int = 0
    online_rows: int = 0
    #: Tables whose rows differ between the runs (contents compared, sorted by their keys).
    tables_changed: list[str] = field(default_factory=list)
    #: Online rows whose values differ between the runs, per feature view.
    online_changed: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return self.succeeded and not self.tables_changed and not self.online_changed


def _feature_tables(settings: Settings, day: str) -> dict[str, Any]:
    """Each batch feature table's rows of ``day`` (an Arrow table sorted by its keys)."""
    import pyarrow.parquet as pq

    from lambdarec.tables import FEATURE_TABLES

    out = {}
    for table in FEATURE_TABLES:
        folder = table.partition(settings.lake_dir, day)
        files = sorted(folder.glob("*.parquet")) if folder.is_dir() else []
        if files:
            rows = pq.ParquetDataset(files).read()
            out[table.name] = rows.sort_by([(k, "ascending") for k in table.keys])
    return out


def _online_rows(settings: Settings, tables: dict[str, Any]) -> dict[str, dict[str, list[Any]]]:
    """The online store's values for every key of each table (its feature view of that name)."""
    from lambdarec.features.store import get_online_features
    from lambdarec.tables import FEATURE_TABLES

    specs = {t.name: t for t in FEATURE_TABLES}
    out: dict[str, dict[str, list[Any]]] = {}
    for name, rows in tables.items():
        spec = specs[name]
        features = [c for c in spec.columns if c not in spec.keys and c != "event_timestamp"]
        keys = rows.select(list(spec.keys)).to_pylist()
        merged: dict[str, list[Any]] = {}
        for i in range(0, len(keys), 2000):
            got = get_online_features(
                [f"{name}:{f}" for f in features], keys[i : i + 2000], settings
            )
            for column, values in got.items():
                merged.setdefault(column, []).extend(values)
        out[name] = merged
    return out


def _same_value(a: Any, b: Any) -> bool:
    """Equal, NaN equal to NaN (a missing average stays missing)."""
    if isinstance(a, float) and isinstance(b, float) and a != a and b != b:
        return True
    return bool(a == b)


def daily_rerun_drill(
    settings: Settings,
    day: str,
    run: Callable[[str, str, Settings], Any] | None = None,
) -> RerunResult:
    """Run the daily DAG for ``day`` again (it ran once already) and compare its feature tables and
    online rows with the first run's: a retried or re-triggered day must change nothing."""
    from lambdarec.platform.dag_run import run_dag_test

    run = run or run_dag_test
    began = time.monotonic()
    before = _feature_tables(settings, day)
    online_before = _online_rows(settings, before)
    outcome = run("daily_feature_pipeline", day, settings)
    result = RerunResult(day, bool(getattr(outcome, "success", False)))
    after = _feature_tables(settings, day)
    online_after = _online_rows(settings, after)
    result.tables = len(after)
    result.rows = sum(t.num_rows for t in after.values())
    result.tables_changed = sorted(
        name
        for name in before.keys() | after.keys()
        if name not in before or name not in after or not before[name].equals(after[name])
    )
    for name, columns in online_after.items():
        old = online_before.get(name, {})
        rows = len(next(iter(columns.values()), []))
        result.online_rows += rows
        changed = [False] * rows
        for column, values in columns.items():
            previous = old.get(column)
            for i in range(rows):
                if previous is None or not _same_value(previous[i], values[i]):
                    changed[i] = True
        if any(changed):
            result.online_changed[name] = sum(changed)
    result.seconds = round(time.monotonic() - began, 1)
    return result


# -- the lake's disk full ------------------------------------------------------------------------

#: The drill's small file system: the stored day fits, the load does not.
DISK_MB = 1


def _disk_full_inside(lake_dir: str, events: int) -> dict[str, Any]:
    """The drill's body, in a private mount namespace with ``lake_dir`` a ``DISK_MB`` tmpfs."""
    from lambdarec.data import lake

    stream = taobao_stream(events)
    day = stream["ts"].dt.date.mode().iloc[0]
    first_day = stream[stream["ts"].dt.date == day].head(2000)
    lake.write_events(first_day, lake_dir)
    before = lake.date_counts(lake_dir)
    stored = lake.read_events(lake_dir, day, day)
    error = ""
    try:
        lake.merge_events(stream, lake_dir)
    except lake.LakeError as exc:
        error = str(exc)
    except OSError as exc:  # the bug the drill is for: a raw OSError, or worse, half a lake
        error = f"unhandled {type(exc).__name__}: {exc}"
    after = lake.date_counts(lake_dir)
    same = lake.read_events(lake_dir, day, day).equals(stored)
    root = Path(lake_dir)
    leftovers = sorted(
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.is_file() and (p.name.startswith(".") or "_staging" in p.parts)
    )
    usable = True
    try:  # the lake works again once the load is gone (nothing was left filling the disk)
        lake.merge_events(stream.head(100), lake_dir)
    except (lake.LakeError, OSError):
        usable = False
    return {
        "error": error,
        "dates_before": {str(k): v for k, v in before.items()},
        "dates_after": {str(k): v for k, v in after.items()},
        "stored_day_unchanged": bool(same),
        "leftovers": leftovers,
        "usable_after": usable,
    }


@dataclass
class DiskFullResult(_Verdict):
    error: str = ""
    dates_before: dict[str, int] = field(default_factory=dict)
    dates_after: dict[str, int] = field(default_factory=dict)
    stored_day_unchanged: bool = False
    leftovers: list[str] = field(default_factory=list)
    usable_after: bool = False
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def clear_error(self) -> bool:
        """One line that says the lake's disk is full."""
        return self.error.startswith("the lake's disk is full") and "\n" not in self.error

    @property
    def passed(self) -> bool:
        return (
            self.clear_error
            and self.dates_after == self.dates_before
            and self.stored_day_unchanged
            and not self.leftovers
            and self.usable_after
            and not self.problems
        )


def disk_full_drill(events: int = 200_000) -> DiskFullResult:
    """Merge ``events`` into a lake on a ``DISK_MB`` file system that holds one small day: the
    write must fail with one clear line and leave the lake exactly as it was (no partial date, no
    staging files), and usable.

    The small file system is a tmpfs in a private mount namespace (``unshare --user --mount``, no
    root needed, nothing left mounted whatever happens), the drill's body a child process in it.
    """
    import json
    import shutil
    import subprocess
    import sys
    import tempfile

    began = time.monotonic()
    result = DiskFullResult()
    unshare = shutil.which("unshare")
    if unshare is None:
        result.problems.append("`unshare` (util-linux) is missing: apt-get install util-linux")
        return result
    with tempfile.TemporaryDirectory(prefix="lambdarec-diskfull-") as folder:
        body = (
            "import json, sys; from lambdarec.harness.drills import _disk_full_inside; "
            "print(json.dumps(_disk_full_inside(sys.argv[1], int(sys.argv[2]))))"
        )
        script = (
            f'mount -t tmpfs -o size={DISK_MB}m lambdarec-drill "$1" && exec "$2" -c "$3" "$1" "$4"'
        )
        done = subprocess.run(  # noqa: S603 - our own command line
            [unshare, "--user", "--map-root-user", "--mount", "sh", "-c", script, "drill"]
            + [folder, sys.executable, body, str(events)],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
    if done.returncode != 0 or not done.stdout.strip():
        tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
        result.problems.append(f"the drill's process failed ({done.returncode}): {tail}")
    else:
        values = json.loads(done.stdout.strip().splitlines()[-1])
        for key, value in values.items():
            setattr(result, key, value)
    result.seconds = round(time.monotonic() - began, 1)
    return result


# -- the soak ------------------------------------------------------------------------------------


@dataclass
class SoakResult(_Verdict):
    seconds: float
    rps: float
    requests: int = 0
    #: ``/recommend`` requests per second achieved (each waits for the previous answer).
    achieved_rps: float = 0.0
    events_posted: int = 0
    #: Events the speed layer had committed when the run ended (+ at most a minute).
    events_through: int = 0
    #: Answers that were not 200 (``/recommend``) or 202 (``/events``), and failed connections.
    errors: int = 0
    #: Resident memory (MiB) of each watched process group after the warm-up and at the end.
    rss_warm_mib: dict[str, float] = field(default_factory=dict)
    rss_end_mib: dict[str, float] = field(default_factory=dict)
    growth_pct: dict[str, float] = field(default_factory=dict)
    #: Resident MiB over the run, one sample a minute: [seconds, {process: MiB}] (the curve
    #: behind the two figures above: a step at each burst, or a steady climb).
    rss_series: list[tuple[int, dict[str, float]]] = field(default_factory=list)
    #: The session pusher's last heartbeat: batches, rows, retries, seconds the store refused.
    pusher_stats: dict[str, object] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    #: The most resident memory may grow after the warm-up.
    LIMIT_PCT = 5.0

    @property
    def passed(self) -> bool:
        return (
            self.errors == 0
            and self.events_through >= self.events_posted
            and bool(self.growth_pct)
            and all(g < self.LIMIT_PCT for g in self.growth_pct.values())
            and int(self.pusher_stats.get("session_rows", 0)) > 0  # type: ignore[call-overload]
            and self.pusher_stats.get("retries") == 0
            and not self.problems
        )


def _rss_mib(settings: Settings) -> dict[str, float]:
    """Resident MiB of serving (gunicorn's workers, summed) and of the feature pusher."""
    from lambdarec.platform import processes

    out = {}
    serving = processes.running(settings, "serving")
    if serving is not None:
        workers = serving.children() or [serving]
        out["serving"] = sum(w.memory_info().rss for w in workers) / 2**20
    pusher = processes.running(settings, "feature-pusher")
    if pusher is not None:
        with_children = [pusher, *pusher.children(recursive=True)]
        out["feature-pusher"] = sum(p.memory_info().rss for p in with_children) / 2**20
    return out


def soak_drill(
    seconds: float = 1800.0, rps: float = 50.0, warmup_s: float | None = None
) -> SoakResult:
    """``rps`` ``/recommend`` requests per second against the platform's gunicorn serving for
    ``seconds``, each after posting one click of its session to ``/events`` (so events flow
    through Kafka, the supervised speed layer and the feature pusher into the online store), and
    the resident memory of serving and of the pusher sampled: after the warm-up (a quarter of the
    run, at least 30 s) it must grow less than 5%."""
    import requests

    from lambdarec.harness.platform import private_platform
    from lambdarec.harness.speed import committed
    from lambdarec.speed.pusher import heartbeat_path
    from lambdarec.streaming.replay import _row_dict

    result = SoakResult(seconds, rps)
    warmup = warmup_s if warmup_s is not None else max(30.0, seconds / 4)
    base = taobao_stream(20_000)
    rows = [_row_dict(r) for r in base.to_dict("records")]
    services = ["kafka", "speed-layer", "feature-pusher", "serving"]
    with private_platform(services, start_timeout_s=300) as settings:
        url = f"http://{settings.bind_host}:{settings.serving_port}"
        http = requests.Session()
        _wait(lambda: http.get(f"{url}/health", timeout=5).ok, 120)
        samples: list[tuple[float, dict[str, float]]] = []
        began = time.monotonic()
        n = 0
        next_sample = began
        while (now := time.monotonic()) - began < seconds:
            row = dict(rows[n % len(rows)])
            row["event_id"] = f"soak-{n}"
            row["session_id"] = f"{row['session_id']}-{n // len(rows)}"
            row["ts"] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + "Z"
            try:
                posted = http.post(f"{url}/events", json=row, timeout=10)
                result.events_posted += posted.status_code == 202
                result.errors += posted.status_code != 202
                answer = http.get(
                    f"{url}/recommend",
                    params={"user_id": row["user_id"], "session_id": row["session_id"]},
                    timeout=10,
                )
                result.requests += 1
                result.errors += answer.status_code != 200
            except requests.RequestException as error:
                result.errors += 1
                if len(result.problems) < 5:
                    result.problems.append(f"request failed: {error}")
            n += 1
            if now >= next_sample:
                samples.append((now - began, _rss_mib(settings)))
                next_sample += 5.0
            ahead = began + n / rps - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
        samples.append((time.monotonic() - began, _rss_mib(settings)))
        result.achieved_rps = round(result.requests / (time.monotonic() - began), 1)
        through = [0]

        def flowed() -> bool:
            through[0] = committed(settings)
            return through[0] >= result.events_posted

        _wait(flowed, 60, 2.0)
        result.events_through = through[0]
        with contextlib.suppress(OSError, ValueError):
            result.pusher_stats = json.loads(heartbeat_path(settings).read_text())
    after_warmup = [s for t, s in samples if t >= warmup]
    if len(after_warmup) < 2:
        result.problems.append(f"too few samples after the {warmup:.0f} s warm-up")
        return result
    result.rss_series = [
        (round(t), {k: round(v, 1) for k, v in s.items()})
        for i, (t, s) in enumerate(samples)
        if i % 12 == 0 or i == len(samples) - 1
    ]
    warm, end = after_warmup[0], after_warmup[-1]
    result.rss_warm_mib = {k: round(v, 1) for k, v in warm.items()}
    result.rss_end_mib = {k: round(v, 1) for k, v in end.items()}
    result.growth_pct = {
        k: round(100 * (end[k] - warm[k]) / warm[k], 2) for k in warm if k in end and warm[k]
    }
    if set(result.growth_pct) != {"serving", "feature-pusher"}:
        result.problems.append(f"processes not found: only {sorted(result.growth_pct)}")
    return result


# -- Milvus down during a publish ----------------------------------------------------------------


@dataclass
class PublishResult(_Verdict):
    """A publish interrupted by the Milvus server's death, and what serving finds afterwards."""

    #: What the publish raised (its type and first line): a clean failure is one.
    error: str = ""
    #: Seconds from the kill until the publish returned or raised (None: it hung past the bound).
    ended_after_s: float | None = None
    serving_before: int | None = None
    serving_after: int | None = None
    #: Whether a search through the alias, once the server is back, finds the old version's items.
    answers_after: bool = False
    #: Versions left beside the serving one (a half-written collection the publish could not drop
    #: while the server was down; the next publish's clean-up removes it).
    leftovers: list[int] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return (
            self.ended_after_s is not None
            and self.serving_after is not None
            and self.serving_after == self.serving_before
            and self.answers_after
            and not self.problems
        )


def milvus_publish_drill(items: int = 300_000, dim: int = 32) -> PublishResult:
    """Publish ``items`` vectors to the Milvus server and SIGKILL the server half-way through the
    insert; the publish must end (fail cleanly or finish) within a bound, and once the server is
    back the alias must still name the old version, which answers searches."""
    import os

    import numpy as np

    from lambdarec.harness.platform import private_platform
    from lambdarec.platform import manager, processes
    from lambdarec.retrieval.index import IndexConfig, VectorIndex

    began = time.monotonic()
    result = PublishResult()
    rng = np.random.default_rng(7)

    def vectors(n: int) -> np.ndarray:
        matrix = rng.standard_normal((n, dim)).astype(np.float32)
        return matrix / np.linalg.norm(matrix, axis=1, keepdims=True)

    old = vectors(2000)
    old_ids = [f"old{n}" for n in range(len(old))]
    with private_platform(["milvus"]) as settings:
        config = IndexConfig(uri=settings.milvus_uri, keep=2, prefix="drill_items")
        with VectorIndex(config) as index:
            result.serving_before = index.publish(old_ids, old, model_version="1", progress=False)
        new = vectors(items)
        ended: list[float] = []
        killed = [0.0]

        def publish() -> None:
            try:
                with VectorIndex(config) as writer:
                    writer.publish(
                        [f"new{n}" for n in range(items)], new, model_version="2", progress=False
                    )
            except Exception as error:  # the drill reports what a clean failure looks like
                first = (str(error).strip().splitlines() or [""])[0]
                result.error = f"{type(error).__name__}: {first}"[:300]
            ended.append(time.monotonic())

        thread = threading.Thread(target=publish, name="drill-publish")
        thread.start()
        with VectorIndex(config) as probe:
            _wait(lambda: len(probe.versions()) > 1 or not thread.is_alive(), 120, 0.2)
        time.sleep(1.0)  # into the insert
        server = processes.running(settings, "milvus")
        if server is None or not thread.is_alive():
            result.problems.append("the publish finished before the server could be killed")
        else:
            os.killpg(server.pid, signal.SIGKILL)
            killed[0] = time.monotonic()
            _wait(lambda: processes.running(settings, "milvus") is None, 30, 0.2)
        thread.join(timeout=300)
        if ended and killed[0]:
            result.ended_after_s = round(ended[0] - killed[0], 1)
        manager.up(["milvus"], settings=settings, timeout_s=300)
        with VectorIndex(config) as index:
            result.serving_after = index.serving_version()
            index.ensure_loaded()
            hits = index.search(old[:5], k=1)
            result.answers_after = [h[0][0] for h in hits if h] == old_ids[:5]
            result.leftovers = [v for v in index.versions() if v != result.serving_after]
    result.seconds = round(time.monotonic() - began, 1)
    return result
