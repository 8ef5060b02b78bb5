"""Exposure as training signal: the lists serving showed, and what came of them, for the ranker.

Serving logs every list it shows as an impression; the attribution job writes its rows to the lake
(``impressions``: one row per item shown, with its ``position``) beside the events it attributed to
them (``attributed``), :mod:`lambdarec.attribution`. :func:`exposure_table` joins the two: per item
shown, whether it was clicked (a ``view``, ``add_to_cart`` or ``purchase`` attributed to that
request and item) and the strongest outcome's training weight.

:func:`attach_exposure` adds them to the ranker's training queries (the validation split's
examples, :mod:`lambdarec.models.deepfm`). An impression belongs to the first query of the same
user at or after it, within the attribution window: that query's history is the session as it
was when the list was shown (no event came between). For such a query:

* the items shown become candidates of its list (those no source proposed are appended, with no
  source score), each with its shown ``position``; every other candidate gets the neutral one;
* its positive is the first item clicked from the impression (weighted by its strongest outcome);
  an impression without a click keeps the query's own next item (what the shopper did instead),
  so every item shown and not clicked is a negative of the list.

A user's first query after two impressions takes the later one (the list the shopper saw last).
Items the dataset does not know (newer than its catalog) are left out.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from lambdarec.models.data import EVENT_WEIGHTS

if TYPE_CHECKING:
    from datetime import date
    from pathlib import Path

    from lambdarec.config import Settings
    from lambdarec.models.data import Dataset, Examples
    from lambdarec.models.deepfm import CandidateLists

log = logging.getLogger(__name__)

#: The attributed events that make an item shown a click (a removal from the cart does not).
CLICKS = ("view", "add_to_cart", "purchase")
IMPRESSION_COLUMNS = ("request_id", "ts", "user_id", "item_id", "position")
ATTRIBUTED_COLUMNS = ("request_id", "item_id", "event_ts", "event_type")
#: The columns of :func:`exposure_table`.
COLUMNS = ("request_id", "ts", "user_id", "item_id", "position", "clicked", "click_ts", "weight")


class ExposureError(ValueError):
    """Impressions or outcomes the ranker's training cannot read; the message names the fix."""


def _ms(column: pd.Series) -> np.ndarray:
    """Epoch milliseconds of a timestamp column (tz-aware, naive UTC or already integers)."""
    if pd.api.types.is_datetime64_any_dtype(column):
        values = column.dt.tz_convert("UTC") if column.dt.tz is not None else column
        return values.to_numpy(dtype="datetime64[ms]").astype(np.int64)
    return column.to_numpy(dtype=np.int64)


def _check(frame: pd.DataFrame, columns: tuple[str, ...], what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ExposureError(
            f"{what} lacks column(s) {missing}; give the lake table the attribution job writes "
            "(lambdarec.attribution.SCHEMAS)"
        )


def exposure_table(impressions: pd.DataFrame, attributed: pd.DataFrame) -> pd.DataFrame:
    """One row per (request, item shown): :data:`COLUMNS`, by time then position. ``clicked``:
    an event of :data:`CLICKS` was attributed to that request and item; ``click_ts`` the first
    such event's time (-1 without); ``weight`` the strongest one's training weight (0 without)."""
    _check(impressions, IMPRESSION_COLUMNS, "impressions")
    _check(attributed, ATTRIBUTED_COLUMNS, "attributed")
    shown = pd.DataFrame(
        {
            "request_id": impressions["request_id"].astype(str).to_numpy(),
            "ts": _ms(impressions["ts"]),
            "user_id": impressions["user_id"].astype(str).to_numpy(),
            "item_id": impressions["item_id"].astype(str).to_numpy(),
            "position": impressions["position"].to_numpy(dtype=np.int64),
        }
    )
    if (shown["position"] < 0).any():
        raise ExposureError("impressions hold a negative position; positions start at 0")
    shown = shown.drop_duplicates(["request_id", "item_id"], keep="first")
    clicks = attributed[attributed["event_type"].astype(str).isin(CLICKS)]
    outcome = (
        pd.DataFrame(
            {
                "request_id": clicks["request_id"].astype(str).to_numpy(),
                "item_id": clicks["item_id"].astype(str).to_numpy(),
                "click_ts": _ms(clicks["event_ts"]),
                "weight": clicks["event_type"].astype(str).map(EVENT_WEIGHTS).to_numpy(np.float32),
            }
        )
        .groupby(["request_id", "item_id"], as_index=False)
        .agg(click_ts=("click_ts", "min"), weight=("weight", "max"))
    )
    out = shown.merge(outcome, on=["request_id", "item_id"], how="left")
    out["clicked"] = out["click_ts"].notna()
    out["click_ts"] = out["click_ts"].fillna(-1).astype(np.int64)
    out["weight"] = out["weight"].fillna(0.0).astype(np.float32)
    out = out.sort_values(["ts", "request_id", "position"], kind="stable").reset_index(drop=True)
    return out[list(COLUMNS)]


def read_exposure(lake_dir: str | Path, start: date, end: date) -> pd.DataFrame:
    """:func:`exposure_table` of the lake's ``impressions`` and ``attributed`` of days
    ``start``..``end`` (empty when the lake holds none)."""
    from lambdarec.attribution import read

    impressions = read(lake_dir, "impressions", start, end).to_pandas()
    attributed = read(lake_dir, "attributed", start, end).to_pandas()
    return exposure_table(impressions, attributed)


@dataclass(frozen=True)
class Attached:
    """The training queries and their lists with the impressions attached (see the module doc)."""

    ex: Examples
    lists: CandidateLists
    stats: dict[str, Any]


def _match(dataset: Dataset, ex: Examples, requests: pd.DataFrame, window_ms: int) -> pd.DataFrame:
    """(query, request_id): each impression's first query of the same user at or after it, within
    ``window_ms``; a query after several impressions takes the latest."""
    known = np.flatnonzero(ex.user > 0)
    queries = pd.DataFrame(
        {
            "query": known,
            "user_id": dataset.user_ids[ex.user[known] - 1].astype(str),
            "ts": ex.ts[known].astype(np.int64),
        }
    ).sort_values("ts", kind="stable")
    requests = requests.sort_values("ts", kind="stable")
    matched = pd.merge_asof(
        queries,
        requests.rename(columns={"ts": "request_ts"}),
        left_on="ts",
        right_on="request_ts",
        by="user_id",
        direction="backward",
        tolerance=window_ms,
        allow_exact_matches=True,
    ).dropna(subset=["request_id"])
    # The first query after an impression is the session as the list found it; a later one has
    # had an event since.
    matched = matched.sort_values(["ts", "query"], kind="stable")
    return matched.drop_duplicates("request_id", keep="first")[["query", "request_id"]]


def attach_exposure(
    dataset: Dataset,
    ex: Examples,
    lists: CandidateLists,
    table: pd.DataFrame,
    *,
    window_ms: int,
) -> Attached:
    """The queries ``ex`` and their candidate ``lists`` with the impressions of ``table``
    (:func:`exposure_table`) attached: lists gain ``shown``, matched queries their positive (see
    the module doc). ``stats`` counts what was used."""
    if window_ms <= 0:
        raise ExposureError(f"window_ms {window_ms} must be positive (the attribution window)")
    _check(table, COLUMNS, "the exposure table")
    position_of = {str(item): n for n, item in enumerate(dataset.catalog.item_ids)}
    table = table.assign(cand=table["item_id"].map(position_of))
    unknown = int(table["cand"].isna().sum())
    table = table.dropna(subset=["cand"]).astype({"cand": np.int64})
    requests = table.drop_duplicates("request_id")[["request_id", "user_id", "ts"]]
    pairs = _match(dataset, ex, requests, window_ms)
    by_request = {rid: rows for rid, rows in table.groupby("request_id", sort=False)}

    n, width = lists.cand.shape
    cand, scores, ranks = lists.cand.copy(), lists.scores.copy(), lists.ranks.copy()
    shown = np.full((n, width), -1, dtype=np.int64)
    target, weight = ex.target.copy(), ex.weight.copy()
    appended = clicked_lists = 0

    def widen(extra: int) -> None:
        nonlocal cand, scores, ranks, shown, width
        cand = np.pad(cand, ((0, 0), (0, extra)), constant_values=-1)
        scores = np.pad(scores, ((0, 0), (0, extra), (0, 0)), constant_values=np.nan)
        ranks = np.pad(ranks, ((0, 0), (0, extra), (0, 0)), constant_values=np.nan)
        shown = np.pad(shown, ((0, 0), (0, extra)), constant_values=-1)
        width += extra

    for q, rid in zip(pairs["query"].tolist(), pairs["request_id"].tolist(), strict=True):
        rows = by_request[rid]
        columns = {int(c): j for j, c in enumerate(cand[q]) if c >= 0}
        free = int((cand[q] >= 0).sum())
        missing = [int(c) for c in rows["cand"] if int(c) not in columns]
        if free + len(missing) > width:
            widen(free + len(missing) - width)
        for c in missing:
            cand[q, free] = c
            columns[c] = free
            free += 1
        appended += len(missing)
        for c, p in zip(rows["cand"].tolist(), rows["position"].tolist(), strict=True):
            shown[q, columns[int(c)]] = int(p)
        clicks = rows[rows["clicked"]].sort_values(["click_ts", "position"], kind="stable")
        if len(clicks):
            first = clicks.iloc[0]
            target[q], weight[q] = int(first["cand"]), np.float32(first["weight"])
            clicked_lists += 1

    stats = {
        "impressions": int(requests.shape[0]),
        "items_shown": int(len(table)),
        "items_unknown": unknown,
        "queries_matched": int(len(pairs)),
        "lists_clicked": clicked_lists,
        "items_appended": appended,
    }
    log.info("exposure: %s", stats)
    out_lists = replace(lists, cand=cand, scores=scores, ranks=ranks, shown=shown)
    return Attached(replace(ex, target=target, weight=weight), out_lists, stats)


def training_exposure(
    dataset: Dataset, ex: Examples, lists: CandidateLists, settings: Settings | None = None
) -> Attached | None:
    """The lake's impressions of the queries' days attached to them (:func:`attach_exposure`);
    None when ``LAMBDAREC_EXPOSURE_NEGATIVES`` is off, the queries have no time or no user, or no
    impression matches one (the ranker then trains as it did without impressions)."""
    from datetime import UTC, datetime

    from lambdarec.config import get_settings

    s = settings if settings is not None else get_settings()
    if not s.exposure_negatives:
        log.info("exposure: LAMBDAREC_EXPOSURE_NEGATIVES is off, impressions not used")
        return None
    if not len(ex) or dataset.split.get("kind") != "temporal" or not dataset.has_users:
        return None

    def day(ms: int) -> date:
        return datetime.fromtimestamp(ms / 1000, UTC).date()

    table = read_exposure(s.lake_dir, day(int(ex.ts.min())), day(int(ex.ts.max())))
    if table.empty:
        log.info("exposure: no impressions in the lake for the ranker's queries")
        return None
    attached = attach_exposure(dataset, ex, lists, table, window_ms=s.attribution_window_s * 1000)
    return attached if attached.stats["queries_matched"] else None


__all__ = [
    "CLICKS",
    "COLUMNS",
    "Attached",
    "ExposureError",
    "attach_exposure",
    "exposure_table",
    "read_exposure",
    "training_exposure",
]
