"""What the speed layer must produce, computed independently of it with pandas: each session's
features after its last event, read back from the online store and compared field by field.

Shared by the speed layer's integration tests and the fault drills (:mod:`lambdarec.harness.drills`).
Events must be in the order they were produced (a session's events in event-time order, keyed by
user, as the replayer sends them).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from lambdarec.harness.waiting import eventually

if TYPE_CHECKING:
    from lambdarec.config import Settings

LAST_N = 10  # SessionFeatures.LAST_N
WINDOW = pd.Timedelta(minutes=30)
FEATURES = [
    "last_viewed_items",
    "last_carted_items",
    "last_purchased_items",
    "n_views",
    "n_carts",
    "n_removes",
    "n_purchases",
    "n_events_30min",
    "session_category",
    "session_avg_price",
    "seconds_since_prev_event",
]


def expected_session_features(events: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """Each session's features after its last event (events in the order they were produced)."""
    out: dict[str, dict[str, Any]] = {}
    for session_id, g in events.groupby("session_id", sort=False):
        kinds = g["event_type"]
        views = g[kinds == "view"]
        categories = views["category"].dropna().tolist()
        top = None
        counts: dict[str, int] = {}
        for category in categories:  # most viewed, ties to the one viewed last
            counts[category] = counts.get(category, 0) + 1
            if top is None or counts[category] >= counts[top]:
                top = category
        ts = g["ts"]
        last = ts.iloc[-1]
        prices = g["price"].dropna()
        out[str(session_id)] = {
            "last_viewed_items": views["item_id"].tolist()[::-1][:LAST_N],
            "last_carted_items": g[kinds == "add_to_cart"]["item_id"].tolist()[::-1][:LAST_N],
            "last_purchased_items": g[kinds == "purchase"]["item_id"].tolist()[::-1][:LAST_N],
            "n_views": int((kinds == "view").sum()),
            "n_carts": int((kinds == "add_to_cart").sum()),
            "n_removes": int((kinds == "remove_from_cart").sum()),
            "n_purchases": int((kinds == "purchase").sum()),
            "n_events_30min": int(((ts >= last - WINDOW) & (ts <= last)).sum()),
            "session_category": top,
            "session_avg_price": float(prices.mean()) if len(prices) else None,
            "seconds_since_prev_event": (
                (last - ts.iloc[-2]).total_seconds() if len(g) > 1 else None
            ),
        }
    return out


def online(settings: Settings, session_ids: list[str]) -> dict[str, dict[str, Any]]:
    from lambdarec.features.store import get_online_features

    refs = [f"session_features:{name}" for name in FEATURES]
    got = get_online_features(refs, [{"session_id": s} for s in session_ids], settings)
    return {
        sid: {name: got[f"session_features__{name}"][i] for name in FEATURES}
        for i, sid in enumerate(got["session_id"])
    }


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return a is not None and b is not None and abs(a - b) < 1e-6
    if isinstance(a, list | tuple | np.ndarray) or isinstance(b, list | tuple | np.ndarray):
        return a is not None and b is not None and list(a) == list(b)
    return a == b


def mismatches(
    expected: dict[str, dict[str, Any]], got: dict[str, dict[str, Any]]
) -> dict[str, dict[str, tuple[Any, Any]]]:
    bad = {}
    for sid, want in expected.items():
        have = got.get(sid, {})
        diff = {k: (v, have.get(k)) for k, v in want.items() if not _same(v, have.get(k))}
        if diff:
            bad[sid] = diff
    return bad


def wait_online(
    settings: Settings, expected: dict[str, dict[str, Any]], timeout_s: float, what: str
) -> float:
    """Seconds until the online store holds ``expected``; fails after ``timeout_s`` with what
    still differs."""
    began = time.monotonic()

    def differences() -> dict[str, dict[str, tuple[Any, Any]]]:
        return mismatches(expected, online(settings, list(expected)))

    eventually(
        lambda: not differences(),
        timeout_s,
        interval_s=0.02,
        message=lambda: f"{what} online and exact; they differ: {differences()}",
    )
    return time.monotonic() - began


def renamed(events: pd.DataFrame, tag: str) -> pd.DataFrame:
    """The same events under other ids (new events, users and sessions for the job)."""
    out = events.copy()
    for column in ("event_id", "user_id", "session_id"):
        out[column] = out[column] + f"-{tag}"
    return out
