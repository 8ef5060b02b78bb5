"""Training/serving skew: do the features serving used equal what training would have seen?

For a seeded sample of impressions, the feature vector serving logged (``features``: Feast online
features, ``<view>__<feature>``) is rebuilt point-in-time from Feast's offline store at the
impression's ``ts`` (:func:`lambdarec.features.store.get_historical_features`, the same call that
builds training sets) and compared value by value. A mismatch means training and serving disagree
about the same instant: a stale or future online value, a wrong window, a transformation that
differs between the paths.

Equality: both missing; or equal strings; or numbers within ``rel_tol=1e-6, abs_tol=1e-9``
(float64 round trips through Parquet, SQLite and JSON); or equal lists element by element.
Caveat: speed-layer features (``session_features__*``) are pushed online within about a second of
an event; an impression served in that second legitimately sees the previous row, so a small
mismatch rate on them is expected, while the batch features should match exactly.
"""

from __future__ import annotations

import logging
import math
import random
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from collections.abc import Sequence

    from lambdarec.config import Settings

log = logging.getLogger(__name__)

#: Mismatching examples kept per feature in the report.
EXAMPLES = 3


def _norm(value: Any) -> Any:
    """A comparable Python value: None for NaN/NaT/None, lists for arrays, plain scalars."""
    if value is None:
        return None
    if isinstance(value, np.ndarray | list | tuple):
        return [_norm(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    if hasattr(value, "isoformat"):  # timestamps
        try:
            import pandas as pd

            if pd.isna(value):
                return None
        except (TypeError, ValueError):
            pass
        return value.isoformat()
    return value


def values_match(served: Any, rebuilt: Any) -> bool:
    a, b = _norm(served), _norm(rebuilt)
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, list) or isinstance(b, list):
        return (
            isinstance(a, list)
            and isinstance(b, list)
            and len(a) == len(b)
            and all(values_match(x, y) for x, y in zip(a, b, strict=True))
        )
    if isinstance(a, bool | int | float) and isinstance(b, bool | int | float):
        return math.isclose(float(a), float(b), rel_tol=1e-6, abs_tol=1e-9)
    return str(a) == str(b)


def check_skew(
    impressions: Sequence[dict[str, Any]],
    settings: Settings,
    *,
    sample: int | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Mismatch rate per served feature over a sample of ``impressions`` (see the module doc).

    Returns ``{"n_sampled", "features": {name: {"n", "mismatches", "rate", "examples"}},
    "max_rate", "mismatched_features"}``; nothing sampled gives ``n_sampled == 0``.
    """
    import pandas as pd

    from lambdarec.features.store import get_historical_features

    n = settings.drift_skew_sample if sample is None else sample
    if n < 0:
        raise ValueError(f"sample must be >= 0, got {n}")
    usable = [imp for imp in impressions if imp.get("features") and imp.get("user_id")]
    if len(usable) > n:
        usable = random.Random(seed).sample(usable, n)
    result: dict[str, Any] = {
        "n_sampled": len(usable),
        "features": {},
        "max_rate": 0.0,
        "mismatched_features": [],
    }
    if not usable:
        return result
    names = sorted({k for imp in usable for k in imp["features"] if "__" in k})
    entity = pd.DataFrame(
        {
            "user_id": [str(imp["user_id"]) for imp in usable],
            "session_id": [str(imp.get("session_id") or "") for imp in usable],
            "event_timestamp": pd.to_datetime(
                [imp["ts"] for imp in usable], utc=True, format="ISO8601"
            ),
        }
    )
    refs = [name.replace("__", ":", 1) for name in names]
    rebuilt = get_historical_features(entity, refs, settings)
    for name in names:
        column = rebuilt[name] if name in rebuilt.columns else pd.Series([None] * len(usable))
        bad = []
        for i, imp in enumerate(usable):
            served = imp["features"].get(name)
            again = column.iloc[i]
            if not values_match(served, again):
                bad.append(
                    {
                        "request_id": imp.get("request_id"),
                        "user_id": imp.get("user_id"),
                        "ts": imp.get("ts"),
                        "served": _norm(served),
                        "rebuilt": _norm(again),
                    }
                )
        rate = len(bad) / len(usable)
        result["features"][name] = {
            "n": len(usable),
            "mismatches": len(bad),
            "rate": rate,
            "examples": bad[:EXAMPLES],
        }
    rates = {k: v["rate"] for k, v in result["features"].items()}
    result["max_rate"] = max(rates.values(), default=0.0)
    result["mismatched_features"] = sorted(k for k, r in rates.items() if r > 0)
    log.info(
        "skew check: %d impressions, %d features, mismatching: %s",
        len(usable),
        len(names),
        result["mismatched_features"] or "none",
    )
    return result
