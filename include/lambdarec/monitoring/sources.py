"""The current data drift monitoring compares with the reference: events and impressions.

* events: the lake's canonical events of the window (``lake/events/date=.../``), reduced to the
  monitored columns by :func:`event_features`;
* impressions: what serving logged on ``settings.topic_impressions`` (serving/ab.py: request id,
  ts, user, session, variant, items with positions and scores, the feature vector served), read
  from Kafka by :func:`read_impressions` for the window.

:func:`current_frames` turns both into the frames of a profile's groups (events, served, model);
a trainer builds the reference with the same functions over its training period, so both sides
are measured alike.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any

import numpy as np

from lambdarec.tables import as_day

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    import pandas as pd

    from lambdarec.config import Settings

log = logging.getLogger(__name__)

#: Columns of the canonical event table that are monitored (plus the derived ``hour``).
EVENT_COLUMNS = ("price", "category", "event_type")


def window(day: date | str, days: int = 1) -> tuple[datetime, datetime]:
    """``[start, end)`` in UTC: the ``days`` days ending with ``day`` (inclusive)."""
    d = as_day(day)
    end = datetime(d.year, d.month, d.day, tzinfo=UTC) + timedelta(days=1)
    return end - timedelta(days=days), end


def event_features(events: pd.DataFrame) -> pd.DataFrame:
    """The monitored event columns: price, category, event_type and the UTC hour of day."""
    import pandas as pd

    missing = [c for c in (*EVENT_COLUMNS, "ts") if c not in events.columns]
    if missing:
        raise ValueError(f"events lack column(s) {missing}; pass the canonical event table")
    out = events[list(EVENT_COLUMNS)].copy()
    out["event_type"] = out["event_type"].astype(str)
    out["hour"] = pd.to_datetime(events["ts"], utc=True).dt.hour.astype("int64")
    return out.reset_index(drop=True)


def read_events(settings: Settings, start: datetime, end: datetime) -> pd.DataFrame:
    """Canonical events with ``start <= ts < end`` from the lake (an empty frame if none)."""
    import pandas as pd

    from lambdarec.data import lake

    last = (end - timedelta(microseconds=1)).date()
    frame = lake.read_events(settings.lake_dir, start.date(), last)
    if frame.empty:
        log.warning("no events in the lake %s for %s .. %s", settings.lake_dir, start, end)
    frame["ts"] = pd.to_datetime(frame["ts"], utc=True)
    return frame[(frame["ts"] >= start) & (frame["ts"] < end)].reset_index(drop=True)


def read_impressions(
    settings: Settings,
    start: datetime,
    end: datetime,
    *,
    slack: timedelta = timedelta(hours=1),
    timeout_s: float = 600.0,
) -> list[dict[str, Any]]:
    """Impression records whose ``ts`` is in ``[start, end)`` from the impressions topic.

    Each partition is read from the first offset logged at ``start - slack`` (Kafka's own
    timestamps: when serving produced the record) up to its end offset at the time of the call,
    so a busy topic cannot keep the task reading forever; records are kept by their own ``ts``.
    Every record of the window passes through this process: at millions of impressions a day,
    archive the topic to the lake and sample from there instead.
    """
    import orjson
    from confluent_kafka import Consumer, KafkaException, TopicPartition

    from lambdarec.streaming.kafka import client_log, security_config

    topic = settings.topic_impressions
    consumer = Consumer(
        {
            "bootstrap.servers": settings.bootstrap_servers,
            "group.id": "lambdarec-drift-monitoring",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "logger": client_log,
            "client.id": "lambdarec-drift-monitoring",
            **security_config(settings),
        }
    )
    records: list[dict[str, Any]] = []
    try:
        meta = consumer.list_topics(topic, timeout=10)
        info = meta.topics.get(topic)
        if info is None or info.error is not None or not info.partitions:
            log.warning("impressions topic %s not found: no impressions", topic)
            return records
        since_ms = int((start - slack).timestamp() * 1000)
        wanted = [TopicPartition(topic, p, since_ms) for p in sorted(info.partitions)]
        starts = consumer.offsets_for_times(wanted, timeout=10)
        todo: dict[int, int] = {}
        assign = []
        for tp in starts:
            low, high = consumer.get_watermark_offsets(
                TopicPartition(topic, tp.partition), timeout=10
            )
            first = tp.offset if tp.offset >= 0 else high  # -1: nothing logged since then
            if first < high:
                todo[tp.partition] = high
                assign.append(TopicPartition(topic, tp.partition, max(first, low)))
        if not assign:
            return records
        consumer.assign(assign)
        t_start, t_end = start.timestamp(), end.timestamp()
        deadline = time.monotonic() + timeout_s
        while todo:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"reading {topic} took over {timeout_s:.0f} s with partitions "
                    f"{sorted(todo)} unfinished; is the broker at {settings.bootstrap_servers} up?"
                )
            for msg in consumer.consume(500, timeout=1.0):
                if msg.error():
                    raise KafkaException(msg.error())
                try:
                    record = orjson.loads(msg.value() or b"null")
                    ts = datetime.fromisoformat(str(record["ts"]).replace("Z", "+00:00"))
                except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                    continue  # not an impression record; serving writes only valid ones
                if t_start <= ts.timestamp() < t_end:
                    records.append(record)
            # Positions, not the last offset seen: offsets may have gaps (transaction markers).
            positions = consumer.position([TopicPartition(topic, p) for p in todo])
            for tp in positions:
                if tp.offset >= todo[tp.partition]:
                    del todo[tp.partition]
    finally:
        consumer.close()
    log.info("read %d impressions of %s .. %s from %s", len(records), start, end, topic)
    return records


def popularity_percentile(items: Sequence[str], events: pd.DataFrame) -> np.ndarray:
    """Each item's popularity percentile in ``events``: the share of the items in ``events`` with
    at most its event count (1.0 = the most popular); items without events get 0."""
    if len(events) == 0:
        return np.zeros(len(items))
    counts = events["item_id"].astype(str).value_counts()
    values = np.sort(counts.to_numpy())
    mine = np.array([counts.get(str(i), 0) for i in items], dtype=float)
    return np.where(mine > 0, np.searchsorted(values, mine, side="right") / len(values), 0.0)


def served_frame(impressions: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """One row per impression: the scalar features of the vector served (lists dropped)."""
    import pandas as pd

    rows = []
    for imp in impressions:
        feats = imp.get("features") or {}
        rows.append({k: v for k, v in feats.items() if not isinstance(v, list | dict)})
    return pd.DataFrame(rows)


def model_frame(impressions: Iterable[dict[str, Any]], events: pd.DataFrame) -> pd.DataFrame:
    """One row per recommended item: its ``score``, and its ``popularity`` percentile among the
    items of the events of the impression's UTC day (per day, so a reference built over a week
    and a one-day window measure popularity alike)."""
    import pandas as pd

    days: list[str] = []
    items: list[str] = []
    scores: list[float] = []
    for imp in impressions:
        day = str(imp.get("ts", ""))[:10]
        for it in imp.get("items") or ():
            days.append(day)
            items.append(str(it.get("item_id")))
            scores.append(float(it["score"]) if it.get("score") is not None else np.nan)
    popularity = np.zeros(len(items))
    if items and len(events):
        event_days = pd.to_datetime(events["ts"], utc=True).dt.strftime("%Y-%m-%d").to_numpy()
        day_arr = np.asarray(days)
        for day in np.unique(day_arr):
            mask = day_arr == day
            chosen = [i for i, m in zip(items, mask, strict=True) if m]
            popularity[mask] = popularity_percentile(chosen, events[event_days == day])
    return pd.DataFrame({"score": np.asarray(scores, dtype=float), "popularity": popularity})


def current_frames(
    events: pd.DataFrame, impressions: Sequence[dict[str, Any]]
) -> dict[str, pd.DataFrame]:
    """The frames of a profile's groups for one period: events, served, model."""
    return {
        "events": event_features(events),
        "served": served_frame(impressions),
        "model": model_frame(impressions, events),
    }
