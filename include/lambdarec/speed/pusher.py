"""The feature pusher: session features and trending items from Kafka into Feast's online store.

The speed-layer Flink job writes one JSON row per event to the compacted session-features topic
(key: session_id) and one per item and window to the trending topic (key: item_id). This process
reads each in micro-batches (up to ``max_rows`` rows or ``max_wait_ms``, whichever comes first;
one consumer per topic, so a burst of trending rows never delays a session update),
keeps the newest row per key of each batch (older rows of the same key would be overwritten in the
same push anyway) and pushes them through the Feast push sources
(:func:`lambdarec.features.store.push_session_features` / ``push_trending_items``).

Offsets are committed after a successful push, so a crash re-pushes at most one batch: pushes are
idempotent (the same row for the same key). ``python -m lambdarec.speed.pusher --help``.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from lambdarec.config import get_settings
from lambdarec.tables import SESSION_FEATURES, TRENDING_ITEMS, FeatureTable

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

    from confluent_kafka import Message

    from lambdarec.config import Settings
    from lambdarec.streaming.kafka import TopicSpec

log = logging.getLogger(__name__)

GROUP_ID = "lambdarec-feature-pusher"
HEARTBEAT_S = 1.0
PUSH_ATTEMPTS = 3
SLOW_PUSH_MS = 250.0
CHUNK_PAUSE_S = 0.002
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


@dataclass
class PushStats:
    batches: int = 0
    messages: int = 0
    session_rows: int = 0
    trending_rows: int = 0
    bad_messages: int = 0
    failed_rows: int = 0
    push_ms: list[float] = field(default_factory=list, repr=False)

    def summary(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k != "push_ms"}
        if self.push_ms:
            ordered = sorted(self.push_ms)
            out["push_ms_p50"] = round(ordered[len(ordered) // 2], 2)
            out["push_ms_p99"] = round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 2)
        return out


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
        chunk_rows: int = 0,
        from_beginning: bool = True,
    ) -> None:
        self.settings = settings or get_settings()
        self.group_id = group_id
        self.max_rows = max_rows
        self.max_wait_s = max_wait_ms / 1000.0
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

    # -- lifecycle -------------------------------------------------------------------------
    def open(self) -> None:
        """Create the topics, load the registry and subscribe (``run`` does it if needed)."""
        from lambdarec.features.store import get_store
        from lambdarec.streaming.kafka import ensure_topics, make_consumer

        ensure_topics(self.settings, extra=speed_topics(self.settings))
        get_store(self.settings)  # load the registry before the first batch, not during it
        self._consumer = make_consumer(
            self.group_id,
            list(self.topics),
            self.settings,
            **{
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest" if self.from_beginning else "latest",
                "fetch.wait.max.ms": 10,
                "isolation.level": "read_uncommitted",  # the job writes at-least-once, no txns
            },
        )

    def stop(self) -> None:
        self._stop.set()

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None

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
            time.sleep(min(left, 0.002))
        return batch

    def push_batch(self, messages: list[Message]) -> int:
        """Push the newest row per key of ``messages`` (grouped by view); returns rows pushed."""
        newest: dict[str, dict[bytes | None, dict[str, Any]]] = {}
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
            except orjson.JSONDecodeError:
                self.stats.bad_messages += 1
                continue
            newest.setdefault(view, {})[msg.key()] = row
        pushed = 0
        for view, rows in newest.items():
            began = time.perf_counter()
            pushed += self._push(view, list(rows.values()))
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

    def _push(self, view: str, rows: list[dict[str, Any]]) -> int:
        """Push in chunks of ``chunk_rows`` (all at once when 0), each with a few retries (a
        busy SQLite, a Redis restart); a chunk that still fails is given up (and counted).

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

    def _push_chunk(self, view: str, rows: list[dict[str, Any]]) -> int:
        for attempt in range(PUSH_ATTEMPTS):
            try:
                with _PUSH_LOCK:
                    return online_write(view, rows, self.settings)
            except Exception:  # noqa: BLE001 - logged; the next batch carries newer rows
                if attempt == PUSH_ATTEMPTS - 1:
                    log.exception("giving up a %s batch of %d rows", view, len(rows))
                    self.stats.failed_rows += len(rows)
                    return 0
                time.sleep(0.2 * 2**attempt)
        return 0

    def run_once(self) -> int:
        """One micro-batch: collect, push, commit. Returns the messages handled."""
        if self._consumer is None:
            self.open()
        messages = self._collect()
        if messages:
            self.push_batch(messages)
            self._consumer.commit(asynchronous=True)
            self.stats.batches += 1
        return len(messages)

    def run(self, *, idle_exit_s: float | None = None, heartbeat: bool = False) -> PushStats:
        """Push until :meth:`stop` (or, with ``idle_exit_s``, until nothing came for that long)."""
        last_data = last_beat = time.monotonic()
        beat = heartbeat_path(self.settings) if heartbeat else None
        try:
            while not self._stop.is_set():
                if self.run_once():
                    last_data = time.monotonic()
                elif idle_exit_s is not None and time.monotonic() - last_data > idle_exit_s:
                    break
                if beat is not None and time.monotonic() - last_beat > HEARTBEAT_S:
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
    from lambdarec.features.store import cached_definition, get_store

    table = SESSION_FEATURES if view == SESSION_FEATURES.name else TRENDING_ITEMS
    fs = get_store(settings)
    definition = cached_definition(fs, "view", view)
    data: list[Any] = [_row_protos(table, row) for row in rows]
    fs._get_provider().online_write_batch(fs.config, definition, data, progress=None)  # noqa: SLF001
    return len(data)


def _row_protos(table: FeatureTable, row: dict[str, Any]) -> tuple[Any, dict[str, Any], Any, None]:
    """(entity key, feature values, event time, None) of one JSON row, as Feast stores them."""
    from datetime import datetime

    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import StringList, Value

    missing = [c for c in table.columns if c not in row]
    if missing:
        raise ValueError(f"{table.name} row lacks column(s) {', '.join(missing)}: {row}")
    (key,) = table.keys
    values: dict[str, Any] = {}
    for name, kind in table.columns.items():
        if name in (key, "event_timestamp"):
            continue
        value = row[name]
        if value is None:
            values[name] = Value()
        elif kind == "string":
            values[name] = Value(string_val=str(value))
        elif kind == "int64":
            values[name] = Value(int64_val=int(value))
        elif kind == "double":
            values[name] = Value(double_val=float(value))
        elif kind == "array<string>":
            values[name] = Value(string_list_val=StringList(val=[str(v) for v in value]))
        else:  # a new column type: add its proto field here
            raise TypeError(f"{table.name}.{name}: no proto mapping for {kind}")
    entity = EntityKey(join_keys=[key], entity_values=[Value(string_val=str(row[key]))])
    # Flink writes ISO-8601 UTC ("...T12:00:00.123Z", the millisecond part dropped when zero).
    ts = datetime.fromisoformat(str(row["event_timestamp"]))
    return entity, values, ts, None


#: Session rows are what freshness is about: small batches, pushed at once. Trending rows come
#: in bursts (one per active item when a minute's windows close) and change slowly: big batches,
#: newest per item, written 200 rows (~20 ms) at a time so they never hold a session batch back.
SESSION_BATCH: dict[str, Any] = {"max_rows": 2000, "max_wait_ms": 0.0}
TRENDING_BATCH: dict[str, Any] = {"max_rows": 20_000, "max_wait_ms": 1000.0, "chunk_rows": 200}


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
