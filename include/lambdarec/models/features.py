"""Training features from the feature store, point-in-time correct, the same ones serving reads.

Serving builds the two-tower query from the ``retrieval_v1`` feature service: the session's recent
items (``session_features``, pushed by the speed layer) and the user's event count, the 30-day
count of the daily batch job (``user_history_30d.n_events_30d``) plus the session's events so far,
as the second ``counts`` input. Training takes the batch part from Feast as well:
:func:`attach_batch_features` replaces each example's ``user_events`` (an in-sample count) with
``n_events_30d`` as Feast returns it for the example's user at the example's time (the latest daily
row stamped before it, within the view's TTL; none -> 0) plus the example's session length. The session part is rebuilt from the events themselves: the push view keeps only the
latest row per session online, and its offline log exists only where the speed layer ran.

Users unknown at training time (index 0) keep 0: their raw id is not kept in the examples.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from lambdarec.config import Settings
    from lambdarec.models.data import Dataset, Examples

log = logging.getLogger(__name__)

#: The batch feature the query tower's user count comes from (the one serving reads).
USER_EVENTS_REF = "user_history_30d:n_events_30d"
#: The feature services the two models read online.
SERVICES = ("retrieval_v1", "ranking_v1")


def feature_service_versions(settings: Settings | None = None) -> dict[str, str]:
    """A version per feature service: a short hash of its sorted ``view:feature`` references, so
    a run records exactly which feature set it was trained for."""
    from lambdarec.features.store import get_store

    fs = get_store(settings)
    out: dict[str, str] = {}
    for name in SERVICES:
        service = fs.get_feature_service(name)
        refs = sorted(
            f"{proj.name}:{feat.name}"
            for proj in service.feature_view_projections
            for feat in proj.features
        )
        out[name] = hashlib.sha1(json.dumps(refs).encode()).hexdigest()[:10]
    return out


def _user_events(ex: Examples, user_ids: np.ndarray, settings: Settings | None) -> np.ndarray:
    import pandas as pd

    from lambdarec.features.store import get_historical_features

    known = np.flatnonzero(ex.user > 0)
    out = np.zeros(len(ex), dtype=np.int64)
    if not len(known):
        return out
    rows = pd.DataFrame(
        {
            "user_id": user_ids[ex.user[known] - 1].astype(str),
            "event_timestamp": pd.to_datetime(ex.ts[known], unit="ms", utc=True),
        }
    )
    # One lookup per distinct (user, instant): Feast's file offline store answers only one of
    # several identical entity rows (the others came back null: 0.5% of a Taobao slice, whose
    # timestamps are whole seconds).
    entity = rows.drop_duplicates().reset_index(drop=True)
    got = get_historical_features(entity, [USER_EVENTS_REF], settings)
    entity["value"] = pd.to_numeric(got[USER_EVENTS_REF.replace(":", "__")], errors="coerce")
    values = rows.merge(entity, on=["user_id", "event_timestamp"], how="left")["value"]
    out[known] = values.fillna(0).to_numpy(dtype=np.float64).astype(np.int64)
    return out


def attach_batch_features(dataset: Dataset, settings: Settings | None = None) -> Dataset:
    """The dataset with every split's ``user_events`` read from Feast (see the module doc)."""
    if not dataset.has_users or dataset.split.get("kind") != "temporal":
        raise ValueError(f"{dataset.name}: no users or no timestamps, nothing to look up in Feast")
    parts = {}
    for name in ("train", "valid", "test"):
        ex = getattr(dataset, name)
        values = _user_events(ex, dataset.user_ids, settings)
        log.info(
            "%s: %d rows, n_events_30d found for %.1f%%",
            name,
            len(ex),
            100.0 * float((values > 0).mean()) if len(ex) else 0.0,
        )
        # Serving counts the user's events as the daily job's 30 days plus the session's so far
        # (the speed layer): the same sum here.
        parts[name] = replace(ex, user_events=values + ex.session_len)
    split = {**dataset.split, "user_events": f"feast {USER_EVENTS_REF}"}
    return replace(dataset, split=split, **parts)


__all__ = ["SERVICES", "USER_EVENTS_REF", "attach_batch_features", "feature_service_versions"]
