"""The session tables in numpy: sequential rules, session-kNN's two indexes, users' recent items.

One definition, three engines: the daily Spark job (``include/spark/daily_features.py``) and the
DuckDB reference (:mod:`lambdarec.batch.duckdb_reference`) compute the same rows over the lake's
30-day window, and this module computes them in memory for offline evaluation (from a training
split's :class:`~lambdarec.models.data.Interactions`) and for tests; the Spark integration test
checks the three agree exactly (scores within 1e-9). Rows come back in the columns of
:mod:`lambdarec.tables`; :func:`memory_views` turns them into the views
``lambdarec.recommend.memory.MemoryFeatures`` reads.

Input: events grouped by session (for sequence data a user's whole sequence is one session),
ordered by time (ties by event id), consecutive repeats of the same item collapsed (as
``lambdarec.models.data.build_from_events`` collapses them), all event types.

* **sequential_rules** (entity item): for each session position i and each j in i+1..i+W
  (W = ``window``, LAMBDAREC_SR_WINDOW), the rule a=s_i -> b=s_j (a != b) gets weight 1/(j-i);
  per item a keep the ``top_n`` (DEFAULT_TOP_N) next items by total weight desc, ties by item id;
  columns ``next_items`` and ``next_weights`` (the raw weights). A pair's weight is summed as the
  integer ``sum(lcm(1..W) // (j-i))`` and divided by ``lcm(1..W)`` once
  (:func:`~lambdarec.batch.spec.rule_units`), so every engine ranks on exact integers and gives
  the same bits.
* **session_items** (entity session): the session's distinct items, most recent first (by each
  item's last occurrence), at most ``max_items`` (DEFAULT_MAX_ITEMS), and its last event time.
* **item_sessions** (entity item): per item the ``sample`` (LAMBDAREC_SKNN_SAMPLE) most recent
  sessions whose session_items hold it, by the session's last event time desc, ties by session
  id; with each session's last event time (epoch ms), so a request can pick its most recent
  candidate neighbours without reading every session.
* **user_recent_items** (entity user): the user's last ``max_items`` (50) distinct items, most
  recent first (by each item's last occurrence, over all the user's sessions).

Item, session and user ids are strings and compare as strings (byte order), as in SQL.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import pandas as pd

from lambdarec.batch.spec import (
    DEFAULT_MAX_ITEMS,
    DEFAULT_SKNN_SAMPLE,
    DEFAULT_SR_WINDOW,
    DEFAULT_TOP_N,
    rule_units,
    window_bounds,
)
from lambdarec.tables import ITEM_SESSIONS, SEQUENTIAL_RULES, SESSION_ITEMS, USER_RECENT_ITEMS

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from datetime import date, datetime

#: The tables this module builds, in the order of lambdarec.tables.
SESSION_TABLES = (SEQUENTIAL_RULES, SESSION_ITEMS, ITEM_SESSIONS, USER_RECENT_ITEMS)


def _codes(values: Any) -> tuple[np.ndarray, np.ndarray]:
    """Dense codes in sorted (string) order, and the sorted distinct values."""
    codes, uniques = pd.factorize(pd.Series(values, dtype=object).astype(str), sort=True)
    return codes.astype(np.int64), np.asarray(uniques, dtype=object)


def _groups(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Starts and ends of the runs of equal values in sorted ``keys``."""
    if len(keys) == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    return starts, np.r_[starts[1:], len(keys)]


def _rank_in_group(keys: np.ndarray) -> np.ndarray:
    """0, 1, 2... within each run of equal values of sorted ``keys``."""
    starts, ends = _groups(keys)
    return np.arange(len(keys)) - np.repeat(starts, ends - starts)


def _stamp(event_timestamp: datetime | None, n: int) -> pd.Series:
    value = pd.NaT if event_timestamp is None else pd.Timestamp(event_timestamp)
    return pd.Series([value] * n, dtype="datetime64[us, UTC]")


def build_tables(
    session_ids: Sequence[Any] | np.ndarray,
    item_ids: Sequence[Any] | np.ndarray,
    ts: Sequence[int] | np.ndarray,
    *,
    user_ids: Sequence[Any] | np.ndarray | None = None,
    event_ids: Sequence[Any] | np.ndarray | None = None,
    window: int = DEFAULT_SR_WINDOW,
    top_n: int = DEFAULT_TOP_N,
    max_items: int = DEFAULT_MAX_ITEMS,
    sample: int = DEFAULT_SKNN_SAMPLE,
    event_timestamp: datetime | None = None,
) -> dict[str, pd.DataFrame]:
    """The session tables of these events (one row per event: its session, item, time in epoch
    ms and, optionally, user and event id; without event ids the row order breaks time ties).

    Returns frames in the columns of :mod:`lambdarec.tables`, sorted by key, with
    ``event_timestamp`` set to ``event_timestamp`` (NaT when None); ``user_recent_items`` only
    when ``user_ids`` are given.
    """
    if top_n < 1 or max_items < 1 or sample < 1:
        raise ValueError("need top_n >= 1, max_items >= 1 and sample >= 1")
    units = rule_units(window)
    ts = np.asarray(ts, dtype=np.int64)
    n = len(ts)
    if len(session_ids) != n or len(item_ids) != n:
        raise ValueError(f"{len(session_ids)} sessions and {len(item_ids)} items for {n} times")
    s, session_names = _codes(session_ids)
    item, item_names = _codes(item_ids)
    eid = np.arange(n, dtype=np.int64) if event_ids is None else _codes(event_ids)[0]

    order = np.lexsort((eid, ts, s))
    s, it, t = s[order], item[order], ts[order]
    # Each session's last event, before collapsing drops the tail of a run of repeats.
    _, session_end = _groups(s)
    last_ms = np.zeros(len(session_names), dtype=np.int64)
    last_ms[s[session_end - 1]] = t[session_end - 1]
    keep = np.ones(n, dtype=bool)
    keep[1:] = (s[1:] != s[:-1]) | (it[1:] != it[:-1])
    s, it = s[keep], it[keep]

    sessions, pair_session, pair_item = _session_items(
        s, it, last_ms, session_names, item_names, max_items
    )
    out = {
        SEQUENTIAL_RULES.name: _sequential_rules(s, it, item_names, window, units, top_n),
        SESSION_ITEMS.name: sessions,
        ITEM_SESSIONS.name: _item_sessions(
            pair_session, pair_item, last_ms, session_names, item_names, sample
        ),
    }
    if user_ids is not None:
        u, user_names = _codes(user_ids)
        by_user = np.lexsort((eid, ts, u))
        out[USER_RECENT_ITEMS.name] = _recent_items(
            u[by_user], item[by_user], user_names, item_names, max_items
        )
    for table in SESSION_TABLES:
        if table.name in out:
            frame = out[table.name]
            frame.insert(1, "event_timestamp", _stamp(event_timestamp, len(frame)))
            out[table.name] = frame[list(table.columns)]
    return out


def _sequential_rules(
    s: np.ndarray, it: np.ndarray, names: np.ndarray, window: int, units: int, top_n: int
) -> pd.DataFrame:
    n_items = max(len(names), 1)
    keys, gains = [], []
    for d in range(1, window + 1):
        if d >= len(s):
            break
        pair = (s[d:] == s[:-d]) & (it[d:] != it[:-d])
        keys.append(it[:-d][pair] * n_items + it[d:][pair])
        gains.append(np.full(int(pair.sum()), units // d, dtype=np.int64))
    key = np.concatenate(keys) if keys else np.zeros(0, dtype=np.int64)
    gain = np.concatenate(gains) if gains else np.zeros(0, dtype=np.int64)
    by_key = np.argsort(key, kind="stable")
    key, gain = key[by_key], gain[by_key]
    starts, _ = _groups(key)
    pair_key = key[starts]
    total = np.add.reduceat(gain, starts) if len(starts) else gain
    a, b = pair_key // n_items, pair_key % n_items
    # Best first within a: weight desc, then next item id (codes are in id order).
    best = np.lexsort((b, -total, a))
    a, b, total = a[best], b[best], total[best]
    top = _rank_in_group(a) < top_n
    a, b, total = a[top], b[top], total[top]
    weights = total.astype(np.float64) / units
    lo, hi = _groups(a)
    return pd.DataFrame(
        {
            "item_id": names[a[lo]],
            "next_items": [names[b[x:y]].tolist() for x, y in zip(lo, hi, strict=True)],
            "next_weights": [weights[x:y].tolist() for x, y in zip(lo, hi, strict=True)],
        }
    )


def _session_items(
    s: np.ndarray,
    it: np.ndarray,
    last_ms: np.ndarray,
    session_names: np.ndarray,
    item_names: np.ndarray,
    max_items: int,
) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """session_items from rows in (session, time, event id) order and each session's last event
    time; also its kept (session, item) pairs, sorted by session."""
    n_items = max(len(item_names), 1)
    # The last occurrence of each (session, item): the first one read backwards.
    _, first_back = np.unique((s * n_items + it)[::-1], return_index=True)
    last = len(s) - 1 - first_back
    newest = np.lexsort((-last, s[last]))
    ps, pi = s[last][newest], it[last][newest]
    kept = _rank_in_group(ps) < max_items
    ps, pi = ps[kept], pi[kept]
    lo, hi = _groups(ps)
    frame = pd.DataFrame(
        {
            "session_id": session_names[ps[lo]],
            "items": [item_names[pi[x:y]].tolist() for x, y in zip(lo, hi, strict=True)],
            "last_event_ts": pd.to_datetime(last_ms[ps[lo]], unit="ms", utc=True).astype(
                "datetime64[us, UTC]"
            ),
        }
    )
    return frame, ps, pi


def _item_sessions(
    ps: np.ndarray,
    pi: np.ndarray,
    last_ms: np.ndarray,
    session_names: np.ndarray,
    item_names: np.ndarray,
    sample: int,
) -> pd.DataFrame:
    """item_sessions from session_items' (session, item) pairs."""
    ms = last_ms[ps]
    # Newest sessions first within an item, ties by session id (codes are in id order).
    order = np.lexsort((ps, -ms, pi))
    pi, ps, ms = pi[order], ps[order], ms[order]
    kept = _rank_in_group(pi) < sample
    pi, ps, ms = pi[kept], ps[kept], ms[kept]
    lo, hi = _groups(pi)
    return pd.DataFrame(
        {
            "item_id": item_names[pi[lo]],
            "sessions": [session_names[ps[x:y]].tolist() for x, y in zip(lo, hi, strict=True)],
            "last_event_ms": [ms[x:y].tolist() for x, y in zip(lo, hi, strict=True)],
        }
    )


def _recent_items(
    u: np.ndarray, it: np.ndarray, user_names: np.ndarray, item_names: np.ndarray, max_items: int
) -> pd.DataFrame:
    """Rows are in (user, time, event id) order."""
    n_items = max(len(item_names), 1)
    _, first_back = np.unique((u * n_items + it)[::-1], return_index=True)
    last = len(u) - 1 - first_back
    newest = np.lexsort((-last, u[last]))
    pu, pi = u[last][newest], it[last][newest]
    kept = _rank_in_group(pu) < max_items
    pu, pi = pu[kept], pi[kept]
    lo, hi = _groups(pu)
    return pd.DataFrame(
        {
            "user_id": user_names[pu[lo]],
            "items": [item_names[pi[x:y]].tolist() for x, y in zip(lo, hi, strict=True)],
        }
    )


def tables_from_events(
    events: pd.DataFrame, day: date | str | None = None, **params: Any
) -> dict[str, pd.DataFrame]:
    """The session tables of a canonical event frame (``event_id``, ``user_id``,
    ``session_id``, ``item_id``, ``ts``).

    With ``day``, only the 30-day window ending with that day counts and every row is stamped
    with its end, exactly as the daily job writes that day; without, every event counts and
    ``event_timestamp`` is NaT. ``params`` go to :func:`build_tables`.
    """
    ts = pd.to_datetime(events["ts"], utc=True)
    stamp = None
    if day is not None:
        bounds = window_bounds(day)
        inside = ((ts >= bounds["start_30d"]) & (ts < bounds["end"])).to_numpy()
        events, ts = events[inside], ts[inside]
        stamp = bounds["end"]
    return build_tables(
        events["session_id"].to_numpy(dtype=object),
        events["item_id"].to_numpy(dtype=object),
        ts.astype("datetime64[ms, UTC]").astype("int64").to_numpy(),
        user_ids=events["user_id"].to_numpy(dtype=object),
        event_ids=events["event_id"].to_numpy(dtype=object),
        event_timestamp=stamp,
        **params,
    )


class Interactions(Protocol):
    """Column arrays of interactions (``lambdarec.models.data.Interactions`` has them)."""

    group: np.ndarray
    user: np.ndarray
    item: np.ndarray
    ts: np.ndarray


def tables_from_interactions(
    interactions: Interactions, item_ids: Sequence[Any] | np.ndarray, **params: Any
) -> dict[str, pd.DataFrame]:
    """The session tables of training interactions (``lambdarec.models.data.Interactions``):
    session ``str(group)``, item ``item_ids[item]`` (the catalog's ids), user ``str(user)``,
    time ``ts``; the row order breaks time ties (it is the order of the sessions' events).
    ``params`` go to :func:`build_tables`."""
    names = np.asarray(item_ids, dtype=object).astype(str)
    return build_tables(
        interactions.group.astype(str).astype(object),
        names[np.asarray(interactions.item, dtype=np.int64)],
        np.asarray(interactions.ts, dtype=np.int64),
        user_ids=interactions.user.astype(str).astype(object),
        **params,
    )


def memory_views(
    tables: Mapping[str, pd.DataFrame],
) -> dict[str, dict[str, dict[str, Any]]]:
    """``{view: {entity_key: {feature: value}}}``, what ``MemoryFeatures(views=...)`` takes:
    every column but the key and ``event_timestamp``, arrays as lists."""
    views: dict[str, dict[str, dict[str, Any]]] = {}
    specs = {t.name: t for t in SESSION_TABLES}
    for name, frame in tables.items():
        (key,) = specs[name].keys
        features = [c for c in frame.columns if c not in (key, "event_timestamp")]
        columns = {c: frame[c].tolist() for c in features}
        views[name] = {
            str(k): {c: _plain(columns[c][row]) for c in features}
            for row, k in enumerate(frame[key].tolist())
        }
    return views


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, np.ndarray) else value
