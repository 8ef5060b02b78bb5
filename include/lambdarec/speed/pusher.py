"""The feature pusher: session features and trending items from Kafka into Feast's online store.

The speed-layer Flink job writes one JSON row per event to the compacted session-features topic
(key: session_id) and one per item and window to the trending topic (key: item_id). This process
reads each in micro-batches (up to ``max_rows`` rows or ``max_wait_ms``, whichever comes first;
one consumer per topic, so a burst of trending rows never delays a session update),
keeps the newest row per key of each batch (older rows of the same key would be overwritten in the
same push anyway) and pushes them through the Feast push sources
(:func:`lambdarec.features.store.push_session_features` / ``push_trending_items``).

Delivery is at-least-once: offsets are committed only after every row of the batch is in the
store or, for a row that cannot be stored (not JSON, a missing column, a bad value), in the
dead-letter topic with its reason (that row alone: the rest of its batch is pushed). While the
store refuses writes (Redis down, SQLite locked) the batch is retried with exponential back-off
(``RETRY_FIRST_S`` doubling up to ``RETRY_MAX_S``) for as long as it takes; nothing more is
consumed meanwhile (memory stays bounded by the batch) and nothing is committed, so a crash or a
stop re-pushes at most the uncommitted batch: pushes are idempotent (the same row for the same
key). ``python -m lambdarec.speed.pusher --help``.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson

from lambdarec.config import get_settings
from lambdarec.tables import SESSION_FEATURES, TRENDING_ITEMS, FeatureTable

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence
    from pathlib import Path

    from confluent_kafka import Message

    from lambdarec.config import Settings
    from lambdarec.streaming.kafka import TopicSpec

log = logging.getLogger(__name__)

GROUP_ID = "lambdarec-feature-pusher"
HEARTBEAT_S = 1.0
#: Back-off between tries of a push the store refuses: doubles from the first to the cap, and
#: the tries go on until the store takes the rows (or the pusher is stopped).
RETRY_FIRST_S = 0.2
RETRY_MAX_S = 10.0
#: How long the consumer may go without polling (the back-off does not poll) before the group
#: counts it gone: a store outage up to this long keeps the partitions assigned.
MAX_POLL_INTERVAL_MS = 3_600_000
SLOW_PUSH_MS = 250.0
#: The consumer's prefetch bound, KiB: several of the largest batches (2,000 session rows of
#: ~0.5 KiB), so a backlog still arrives in full batches.
PREFETCH_KB = 8192
#: The smallest fetch the broker answers before ``fetch.wait.max.ms`` (10 ms) passes, bytes: about
#: 128 session rows.
FETCH_MIN_BYTES = 65536
#: The ``source`` of the pusher's dead letters.
DEAD_LETTER_SOURCE = "feature-pusher"
CHUNK_PAUSE_S = 0.002
#: Freshness counts a session row whose event is at most this old when it is written: older rows
#: are a backlog or a replay (the demo's history), whose age says nothing of the speed layer's.
LIVE_S = 300.0
#: The newest freshness samples the heartbeat's p50/p99 are taken over.
FRESH_SAMPLES = 2000
#: Feast's SQLite online store shares one connection per store: one push at a time per process.
_PUSH_LOCK = threading.Lock()


def speed_topics(settings: Settings) -> list[TopicSpec]:
    """Topics the speed layer adds to the platform's own (created with ``ensure_topics``)."""
    from lambdarec.streaming.kafka import TopicSpec

    return [
        TopicSpec(
            settings.topic_trending_items,
            settings.topic_partitions,
            {"cleanup.policy": "compact", "min.compaction.lag.ms": "60000"},
        )
    ]


def heartbeat_path(settings: Settings) -> Path:
    return settings.run_dir / "feature-pusher.heartbeat"


class Stopped(Exception):
    """The pusher was stopped while a push was being retried: its batch is not committed."""


@dataclass
class PushStats:
    batches: int = 0
    messages: int = 0
    session_rows: int = 0
    trending_rows: int = 0
    #: Rows sent to the dead-letter topic (each with its reason), none lost.
    dead_letters: int = 0
    #: Failed tries of a push (each retried after a back-off).
    retries: int = 0
    #: Seconds the store refused writes, summed over outages.
    store_down_s: float = 0.0
    #: Messages behind the newest of the assigned partitions (at the last heartbeat).
    lag: int = 0
    push_ms: list[float] = field(default_factory=list, repr=False)
    #: Feature freshness, ms: a live session row's event time to its write into the store.
    fresh_ms: deque[float] = field(default_factory=lambda: deque(maxlen=FRESH_SAMPLES), repr=False)

    def observe_freshness(self, event_times: Sequence[datetime]) -> None:
        now = datetime.now(UTC)
        for ts in event_times:
            age_ms = (now - ts).total_seconds() * 1000
            if 0 <= age_ms <= LIVE_S * 1000:
                self.fresh_ms.append(age_ms)

    def summary(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k not in ("push_ms", "fresh_ms")}
        if self.push_ms:
            out.update(_p50_p99("push_ms", self.push_ms, 2))
        if self.fresh_ms:
            out["fresh_ms_n"] = len(self.fresh_ms)
            out.update(_p50_p99("fresh_ms", self.fresh_ms, 1))
        return out


def _p50_p99(name: str, values: Iterable[float], digits: int) -> dict[str, float]:
    """``<name>_p50`` and ``<name>_p99`` of ``values`` (nearest rank), rounded to ``digits``."""
    ordered = sorted(values)
    return {
        f"{name}_p50": round(ordered[len(ordered) // 2], digits),
        f"{name}_p99": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], digits),
    }


class FeaturePusher:
    """Consume the speed layer's topics and push to the online store in micro-batches."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        views: Sequence[str] = (SESSION_FEATURES.name, TRENDING_ITEMS.name),
        group_id: str = GROUP_ID,
        max_rows: int = 500,
        max_wait_ms: float = 0.0,
        fetch_wait_ms: int = 10,
        chunk_rows: int = 0,
        from_beginning: bool = True,
    ) -> None:
        self.settings = settings or get_settings()
        self.group_id = group_id
        self.max_rows = max_rows
        self.max_wait_s = max_wait_ms / 1000.0
        self.fetch_wait_ms = fetch_wait_ms
        self.chunk_rows = chunk_rows
        self.from_beginning = from_beginning
        self.stats = PushStats()
        every = {
            self.settings.topic_session_features: SESSION_FEATURES.name,
            self.settings.topic_trending_items: TRENDING_ITEMS.name,
        }
        self.topics = {topic: view for topic, view in every.items() if view in views}
        self._stop = threading.Event()
        self._consumer: Any = None
        self._dead_letters: Any = None

    # -- lifecycle -------------------------------------------------------------------------
    def open(self) -> None:
        """Create the topics, load the registry and subscribe (``run`` does it if needed)."""
        from lambdarec.features.store import missing_views
        from lambdarec.streaming.kafka import ensure_topics, make_consumer

        # Load the registry before the first batch, not during it; a view it lacks is a
        # configuration error, not an outage to retry through: every push would be refused.
        absent = missing_views(list(self.topics.values()), self.settings)
        if absent:
            raise RuntimeError(
                f"the Feast registry has no {', '.join(absent)} view: apply the feature repo "
                "first (`lambdarec features apply`; `lambdarec platform up feature-pusher` does it)"
            )
        ensure_topics(self.settings, extra=speed_topics(self.settings))
        self._consumer = make_consumer(
            self.group_id,
            list(self.topics),
            self.settings,
            **{
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest" if self.from_beginning else "latest",
                # The broker answers a fetch once it holds FETCH_MIN_BYTES or after
                # fetch_wait_ms (10 ms; trending rows, batched for a second, 100 ms): with
                # the default (1 byte) a steady stream was fetched a few rows per request, as
                # fast as round trips allow, the broker's CPU per event.
                "fetch.wait.max.ms": self.fetch_wait_ms,
                "fetch.min.bytes": FETCH_MIN_BYTES,
                "isolation.level": "read_uncommitted",  # the job writes at-least-once, no txns
                "max.poll.interval.ms": MAX_POLL_INTERVAL_MS,
                # What librdkafka prefetches while a push is retried (nothing is polled then):
                # its default, 64 MiB per consumer, grew the process by that much in an outage.
                "queued.max.messages.kbytes": PREFETCH_KB,
            },
        )

    def stop(self) -> None:
        self._stop.set()

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None
        if self._dead_letters is not None:
            self._dead_letters.flush(10)
            self._dead_letters = None

    # -- work ------------------------------------------------------------------------------
    def _collect(self) -> list[Message]:
        """The first message as soon as it arrives, everything already queued behind it (up to
        ``max_rows``), then more for at most ``max_wait_s`` (0: none).

        Adaptive batching: while a push runs, new rows queue up and the next batch takes them
        at once, so a batch grows with the load and adds no wait of its own. (``consume()`` with
        a timeout blocks until ``num_messages`` are there or the timeout passes: waiting for
        the first message with it cost up to its whole timeout per batch.)
        """
        consumer = self._consumer
        first = consumer.poll(0.2)
        if first is None:
            return []
        batch = [first]
        deadline = time.monotonic() + self.max_wait_s
        while len(batch) < self.max_rows:
            more = consumer.consume(num_messages=self.max_rows - len(batch), timeout=0)
            if more:
                batch.extend(more)
                continue
            left = deadline - time.monotonic()
            if left <= 0:
                break
            # A fiftieth of the wait between looks (2 ms at least): a trending batch waits a
            # second, and looking every 2 ms of it kept a core's few percent busy for nothing.
            time.sleep(min(left, max(0.002, self.max_wait_s / 50)))
        return batch

    def push_batch(self, messages: list[Message]) -> int:
        """Push the newest row per key of ``messages`` (grouped by view); returns rows pushed.

        A message that is not a row the store can take goes to the dead-letter topic alone. A
        push the store refuses is retried until it succeeds (:meth:`_push_chunk`); raises
        :class:`Stopped` when the pusher is stopped meanwhile (the batch is then not committed).
        """
        newest: dict[str, dict[bytes | None, Checked]] = {}
        for msg in messages:
            if msg.error() is not None:
                continue
            self.stats.messages += 1
            view = self.topics.get(msg.topic() or "")
            value = msg.value()
            if view is None or value is None:
                continue
            try:
                row = orjson.loads(value)
                if not isinstance(row, dict):
                    raise ValueError("not a JSON object")
                item = _row_values(_table(view), row)
            except (orjson.JSONDecodeError, ValueError, TypeError, KeyError) as exc:
                self._dead_letter(msg, view, exc)
                continue
            newest.setdefault(view, {})[msg.key()] = item
        pushed = 0
        for view, rows in newest.items():
            table = _table(view)
            protos = [_protos(table, row) for row in rows.values()]
            began = time.perf_counter()
            pushed += self._push(view, protos)
            took_ms = (time.perf_counter() - began) * 1000
            self.stats.push_ms.append(took_ms)
            if took_ms > SLOW_PUSH_MS:
                log.info("slow push: %d %s rows in %.0f ms", len(rows), view, took_ms)
            if len(self.stats.push_ms) > 100_000:
                del self.stats.push_ms[:50_000]
            if view == SESSION_FEATURES.name:
                self.stats.session_rows += len(rows)
            else:
                self.stats.trending_rows += len(rows)
        return pushed

    def _dead_letter(self, msg: Message, view: str, problem: Exception) -> None:
        """Send one message the store cannot take to the dead-letter topic, with its reason."""
        from lambdarec.events import Invalid, dead_letter_record
        from lambdarec.streaming.kafka import make_producer

        if self._dead_letters is None:
            self._dead_letters = make_producer(self.settings)
        reason = f"{view} row: {problem}"
        record = dead_letter_record(
            msg.value() or b"", Invalid(field="$", reason=reason), source=DEAD_LETTER_SOURCE
        )
        self._dead_letters.produce(self.settings.topic_dead_letter, orjson.dumps(record))
        self.stats.dead_letters += 1
        log.warning("dead-lettered a %s message (offset %s): %s", view, msg.offset(), reason)

    def _push(self, view: str, rows: list[tuple[Any, ...]]) -> int:
        """Push in chunks of ``chunk_rows`` (all at once when 0).

        The online store takes one write at a time (``_PUSH_LOCK``): a trending burst (one row
        per active item when a minute's windows close, thousands of rows) written in one go held
        it for a second and stalled every session update behind it, the freshness tail. In
        chunks, a session batch waits for one chunk at most.
        """
        step = self.chunk_rows or len(rows) or 1
        pushed = 0
        for start in range(0, len(rows), step):
            chunk = rows[start : start + step]
            pushed += self._push_chunk(view, chunk)
            if start + step < len(rows):
                time.sleep(CHUNK_PAUSE_S)  # hand the lock to a waiting session batch
        return pushed

    def _push_chunk(self, view: str, rows: list[tuple[Any, ...]]) -> int:
        """Write ``rows``, retrying with exponential back-off until the store takes them."""
        delay, down_since = RETRY_FIRST_S, None
        while True:
            try:
                with _PUSH_LOCK:
                    written = write_rows(view, rows, self.settings)
            except Exception as exc:  # noqa: BLE001 - any store error: retried, never skipped
                if self._stop.is_set():
                    raise Stopped(f"stopped while a {view} push was failing: {exc}") from exc
                self.stats.retries += 1
                if down_since is None:
                    down_since = time.monotonic()
                    log.warning(
                        "the online store refused %d %s rows (%s: %s); retrying with back-off, "
                        "nothing consumed or committed meanwhile",
                        len(rows),
                        view,
                        type(exc).__name__,
                        exc,
                    )
                self._stop.wait(delay)
                delay = min(delay * 2, RETRY_MAX_S)
                continue
            if down_since is not None:
                down = time.monotonic() - down_since
                self.stats.store_down_s += down
                log.warning("the online store took the %s rows after %.1f s", view, down)
            if view == SESSION_FEATURES.name:
                self.stats.observe_freshness([row[2] for row in rows])
            return written

    def lag(self) -> int:
        """Messages behind the newest of the assigned partitions (the broker's last answer)."""
        consumer, total = self._consumer, 0
        if consumer is None:
            return 0
        for tp in consumer.position(consumer.assignment()):
            _, high = consumer.get_watermark_offsets(tp, cached=True)
            if high >= 0 and tp.offset >= 0:
                total += max(high - tp.offset, 0)
        return total

    def run_once(self) -> int:
        """One micro-batch: collect, push, commit. Returns the messages handled."""
        if self._consumer is None:
            self.open()
        messages = self._collect()
        if messages:
            self.push_batch(messages)
            if self._dead_letters is not None and self._dead_letters.flush(30):
                raise RuntimeError("dead letters not delivered in 30 s; offsets not committed")
            self._consumer.commit(asynchronous=True)  # only now: every row is stored or dead
            self.stats.batches += 1
        return len(messages)

    def run(self, *, idle_exit_s: float | None = None, heartbeat: bool = False) -> PushStats:
        """Push until :meth:`stop` (or, with ``idle_exit_s``, until nothing came for that long)."""
        last_data = last_beat = time.monotonic()
        beat = heartbeat_path(self.settings) if heartbeat else None
        try:
            while not self._stop.is_set():
                try:
                    handled = self.run_once()
                except Stopped as exc:
                    log.warning("%s; its batch will be pushed again on the next start", exc)
                    break
                if handled:
                    last_data = time.monotonic()
                elif idle_exit_s is not None and time.monotonic() - last_data > idle_exit_s:
                    break
                if beat is not None and time.monotonic() - last_beat > HEARTBEAT_S:
                    with contextlib.suppress(Exception):  # a metric: never stops the pushes
                        self.stats.lag = self.lag()
                    beat.parent.mkdir(parents=True, exist_ok=True)
                    beat.write_text(orjson.dumps(self.stats.summary()).decode())
                    last_beat = time.monotonic()
        finally:
            self.close()
        return self.stats


def online_write(view: str, rows: list[dict[str, Any]], settings: Settings) -> int:
    """Write rows of a push view (the job's JSON rows) to the online store: what
    ``store.push(..., to="online")`` does, without its per-call registry scan and its pandas and
    Arrow round trip.

    Feast's push lists every feature view and service of the registry to find the views behind
    the push source (~40 ms of protobuf decoding per call, 80% of a push here), then converts the
    frame to Arrow and each value to a proto through its generic type map; the pusher knows its
    view (resolved once a minute) and its types, and builds the protos directly (about half the
    CPU of a push, which is what bounds freshness on a busy machine).
    """
    table = _table(view)
    return write_rows(view, [_row_protos(table, row) for row in rows], settings)


def write_rows(view: str, rows: Sequence[tuple[Any, ...]], settings: Settings) -> int:
    """Write rows already converted by :func:`_row_protos` to the online store."""
    from lambdarec.features.store import cached_definition, get_store

    fs = get_store(settings)
    definition = cached_definition(fs, "view", view)
    fs._get_provider().online_write_batch(fs.config, definition, list(rows), progress=None)  # noqa: SLF001
    return len(rows)


def _table(view: str) -> FeatureTable:
    return SESSION_FEATURES if view == SESSION_FEATURES.name else TRENDING_ITEMS


def _row_protos(table: FeatureTable, row: dict[str, Any]) -> tuple[Any, dict[str, Any], Any, None]:
    """(entity key, feature values, event time, None) of one JSON row, as Feast stores them."""
    return _protos(table, _row_values(table, row))


#: One row checked and converted to Python values: (key, {feature: value}, event time).
Checked = tuple[str, dict[str, Any], datetime]


def _row_values(table: FeatureTable, row: dict[str, Any]) -> Checked:
    """The row's key, values converted to their column types, and event time; raises
    ``ValueError``/``TypeError`` for a row the store cannot take (the dead letter's reason)."""
    missing = [c for c in table.columns if c not in row]
    if missing:
        raise ValueError(f"lacks column(s) {', '.join(missing)}")
    (key,) = table.keys
    values: dict[str, Any] = {}
    for name, kind in table.columns.items():
        if name in (key, "event_timestamp"):
            continue
        value = row[name]
        if value is None:
            values[name] = None
        elif kind == "string":
            values[name] = str(value)
        elif kind == "int64":
            values[name] = int(value)
        elif kind == "double":
            values[name] = float(value)
        elif kind == "array<string>":
            values[name] = [str(v) for v in value]
        else:  # a new column type: add its conversion here and its proto field in _protos
            raise TypeError(f"{table.name}.{name}: no proto mapping for {kind}")
    # Flink writes ISO-8601 UTC ("...T12:00:00.123Z", the millisecond part dropped when zero).
    ts = datetime.fromisoformat(str(row["event_timestamp"]))
    return str(row[key]), values, ts


def _protos(table: FeatureTable, checked: Checked) -> tuple[Any, dict[str, Any], Any, None]:
    """The Feast write row of a checked row (built for the rows written only: the newest per
    key of a batch; the protos cost more than the checks)."""
    from lambdarec.features.feastlib import import_feast

    import_feast()
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import StringList, Value

    key_value, values, ts = checked
    protos: dict[str, Any] = {}
    for name, value in values.items():
        kind = table.columns[name]
        if value is None:
            protos[name] = Value()
        elif kind == "string":
            protos[name] = Value(string_val=value)
        elif kind == "int64":
            protos[name] = Value(int64_val=value)
        elif kind == "double":
            protos[name] = Value(double_val=value)
        else:
            protos[name] = Value(string_list_val=StringList(val=value))
    (key,) = table.keys
    entity = EntityKey(join_keys=[key], entity_values=[Value(string_val=key_value)])
    return entity, protos, ts, None


#: Session rows are what freshness is about: small batches, pushed at once. Trending rows come
#: in bursts (one per active item when a minute's windows close) and change slowly: big batches,
#: newest per item, written 200 rows (~20 ms) at a time so they never hold a session batch back.
SESSION_BATCH: dict[str, Any] = {"max_rows": 2000, "max_wait_ms": 0.0}
TRENDING_BATCH: dict[str, Any] = {
    "max_rows": 20_000,
    "max_wait_ms": 1000.0,
    "chunk_rows": 200,
    "fetch_wait_ms": 100,
}


def default_pushers(
    settings: Settings, *, group_id: str = GROUP_ID, from_beginning: bool = True
) -> list[FeaturePusher]:
    """One pusher per view, each with its own consumer, so a trending burst never delays a
    session update."""
    return [
        FeaturePusher(
            settings,
            views=(view,),
            group_id=f"{group_id}.{view}",
            from_beginning=from_beginning,
            **batch,
        )
        for view, batch in (
            (SESSION_FEATURES.name, SESSION_BATCH),
            (TRENDING_ITEMS.name, TRENDING_BATCH),
        )
    ]


def is_healthy(settings: Settings, max_age_s: float = 10.0) -> bool:
    """Whether a pusher run with ``heartbeat=True`` beat within ``max_age_s``."""
    try:
        return time.time() - heartbeat_path(settings).stat().st_mtime < max_age_s
    except OSError:
        return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lambdarec.speed.pusher",
        description="Push the speed layer's session features and trending items into the Feast "
        "online store, in micro-batches.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--max-rows", type=int, default=2000, help="Session rows per micro-batch.")
    parser.add_argument(
        "--max-wait-ms", type=float, default=0.0, help="Extra wait to fill a session batch."
    )
    parser.add_argument("--group-id", default=GROUP_ID)
    parser.add_argument("--latest", action="store_true", help="A new group starts at the end.")
    parser.add_argument("--idle-exit-s", type=float, default=None, help="Exit when idle this long.")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    settings = get_settings()
    pushers = default_pushers(settings, group_id=args.group_id, from_beginning=not args.latest)
    pushers[0].max_rows, pushers[0].max_wait_s = args.max_rows, args.max_wait_ms / 1000.0

    def stop(*_: object) -> None:
        for pusher in pushers:
            pusher.stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    threads = [
        threading.Thread(
            target=p.run,
            kwargs={"idle_exit_s": args.idle_exit_s, "heartbeat": i == 0},
            name=f"pusher-{i}",
        )
        for i, p in enumerate(pushers)
    ]
    for pusher in pushers:
        pusher.open()
        log.info("pushing %s to the online store", ", ".join(pusher.topics))
    for thread in threads:
        thread.start()
    for thread in threads:
        while thread.is_alive():
            thread.join(timeout=0.5)
    log.info("stopped: %s", [p.stats.summary() for p in pushers])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
