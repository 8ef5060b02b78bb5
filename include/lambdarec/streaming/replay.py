"""Replay a canonical event table into Kafka in event-time order.

``speed=None`` sends as fast as the broker takes it; ``speed=1`` keeps the original pacing
(real time); ``speed=60`` plays one hour of events in one minute. Rows are validated against the
event contract with vectorised checks; a row that fails goes to the dead-letter topic with the
exact reason from :func:`lambdarec.events.parse_event`, so nothing is dropped silently.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

from lambdarec.config import Settings, get_settings
from lambdarec.events import (
    ID_REGEX,
    MAX_CATEGORY_LEN,
    MAX_ID_LEN,
    MAX_PRICE,
    SCHEMA_VERSION,
    EventType,
    Invalid,
    parse_event,
)
from lambdarec.streaming.kafka import EventProducer

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

    import pandas as pd

log = logging.getLogger(__name__)

_EVENT_TYPES = [e.value for e in EventType]
REQUIRED = ["event_id", "user_id", "session_id", "item_id", "event_type", "ts"]


@dataclass
class ReplayResult:
    rows: int = 0
    produced: int = 0
    dead_lettered: int = 0
    seconds: float = 0.0

    @property
    def events_per_s(self) -> float:
        return self.produced / self.seconds if self.seconds else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "events_per_s": round(self.events_per_s, 1)}


def _valid_mask(df: pd.DataFrame) -> np.ndarray:
    """Rows that certainly satisfy the event contract (the rest take the exact, slow check)."""
    ok = np.ones(len(df), dtype=bool)
    for col in ("event_id", "user_id", "session_id", "item_id"):
        ids = df[col].astype("string")
        ok &= (
            (ids.str.fullmatch(ID_REGEX) & (ids.str.len() <= MAX_ID_LEN))
            .fillna(False)
            .to_numpy(bool)
        )
    ok &= df["event_type"].isin(_EVENT_TYPES).to_numpy(bool)
    ok &= df["ts"].notna().to_numpy(bool)
    if "price" in df:
        price = df["price"].to_numpy(dtype="float64", na_value=np.nan)
        ok &= np.isnan(price) | (np.isfinite(price) & (price >= 0) & (price <= MAX_PRICE))
    if "category" in df:
        cat = df["category"].astype("string")
        ok &= (cat.isna() | cat.str.len().between(1, MAX_CATEGORY_LEN)).fillna(False).to_numpy(bool)
    return ok


def _row_dict(row: dict[str, Any]) -> dict[str, Any]:
    """One table row as the JSON object a producer would send (nulls dropped)."""
    out: dict[str, Any] = {}
    for key, value in row.items():
        if key not in (
            "event_id",
            "user_id",
            "session_id",
            "item_id",
            "event_type",
            "category",
            "price",
            "ts",
        ):
            continue
        if value is None or (isinstance(value, float) and np.isnan(value)):
            continue
        if key == "ts":
            value = value.isoformat() if hasattr(value, "isoformat") else str(value)
        out[key] = value
    return out


def encode_events(df: pd.DataFrame) -> tuple[list[tuple[bytes, bytes]], list[tuple[str, Invalid]]]:
    """Serialise a canonical frame to ``(key, json)`` pairs; invalid rows come back separately."""
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise ValueError(
            f"the event table lacks column(s) {missing}; it has {list(df.columns)}. "
            "Load data through lambdarec.data.loaders to get the canonical table."
        )
    ok = _valid_mask(df)
    good = df[ok]
    ts = np.datetime_as_string(
        good["ts"].dt.tz_convert("UTC").dt.tz_localize(None).to_numpy("datetime64[ms]"), unit="ms"
    )
    has_cat = "category" in good
    has_price = "price" in good
    cats = (
        good["category"].astype(object).where(good["category"].notna(), None).tolist()
        if has_cat
        else None
    )
    prices = good["price"].astype("float64").tolist() if has_price else None
    pairs: list[tuple[bytes, bytes]] = []
    cols = zip(
        good["event_id"].tolist(),
        good["user_id"].tolist(),
        good["session_id"].tolist(),
        good["item_id"].tolist(),
        good["event_type"].tolist(),
        ts.tolist(),
        strict=True,
    )
    for i, (eid, uid, sid, iid, etype, t) in enumerate(cols):
        obj: dict[str, Any] = {
            "event_id": eid,
            "user_id": uid,
            "session_id": sid,
            "item_id": iid,
            "event_type": etype,
        }
        if cats is not None and cats[i] is not None:
            obj["category"] = cats[i]
        if prices is not None and prices[i] == prices[i]:  # not NaN
            obj["price"] = prices[i]
        obj["ts"] = t + "Z"
        obj["schema_version"] = SCHEMA_VERSION
        pairs.append((uid.encode(), orjson.dumps(obj)))
    bad: list[tuple[str, Invalid]] = []
    if not ok.all():
        for row in df[~ok].to_dict("records"):
            obj = _row_dict(row)
            problem = parse_event(obj)
            if not isinstance(problem, Invalid):  # passed the exact check after all
                problem = Invalid(field="$", reason="row failed the replayer's pre-check")
            bad.append((orjson.dumps(obj, default=str).decode(), problem))
    return pairs, bad


def _paced(
    pairs: list[tuple[bytes, bytes]], offsets_s: np.ndarray, start_wall: float, speed: float
) -> Iterator[tuple[bytes, bytes]]:
    for pair, offset in zip(pairs, offsets_s, strict=True):
        delay = start_wall + offset / speed - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        yield pair


def replay(
    frames: Iterable[pd.DataFrame],
    *,
    settings: Settings | None = None,
    topic: str | None = None,
    speed: float | None = None,
    total: int | None = None,
    progress: bool = True,
    producer: EventProducer | None = None,
) -> ReplayResult:
    """Send canonical event frames (each sorted by ts, frames in time order) into Kafka."""
    from tqdm import tqdm

    if speed is not None and speed <= 0:
        raise ValueError(
            f"speed must be > 0 (1 = real time) or None for as fast as possible, got {speed}"
        )
    s = settings or get_settings()
    out = producer or EventProducer(s, topic=topic, source="replayer")
    result = ReplayResult()
    start = time.monotonic()
    first_ts: Any = None
    bar = tqdm(total=total, unit="ev", desc="replay", disable=not progress, mininterval=0.5)
    try:
        for frame in frames:
            if frame.empty:
                continue
            frame = frame.sort_values("ts", kind="stable")
            pairs, bad = encode_events(frame)
            for raw, problem in bad:
                out.dead_letter(raw, problem)
            if speed is None:
                out.send_json_lines(pairs)
            else:
                if first_ts is None:
                    first_ts = frame["ts"].iloc[0]
                good_ts = frame["ts"][_valid_mask(frame)]
                offsets = (good_ts - first_ts).dt.total_seconds().to_numpy()
                out.send_json_lines(_paced(pairs, offsets, start, speed))
            result.rows += len(frame)
            bar.update(len(frame))
        out.flush()
    finally:
        bar.close()
    result.produced = out.stats.accepted
    result.dead_lettered = out.stats.dead_lettered
    result.seconds = time.monotonic() - start
    log.info(
        "replayed %d rows: %d events, %d dead-lettered in %.1f s",
        result.rows,
        result.produced,
        result.dead_lettered,
        result.seconds,
    )
    return result
