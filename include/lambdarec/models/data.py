"""Training and evaluation examples for next-item prediction, from canonical events or SR-GNN.

An example is (context, next item): the context is what is known just before the shopper's next
interaction: the user, the last ``max_len`` items of the history (most recent first, padded with
-1), the history's category (the category of its last item) and counts (interactions so far in the
history, interactions of the user before). Items are *catalog indices* ``0..n_items-1``; the
catalog is every item in the data, so evaluation ranks the whole catalog, including items never
seen in training (they can only be reached through side features).

Consecutive repeats of the same item are collapsed into one interaction (weight = the strongest
event type of the run), otherwise "predict the item you are looking at" dominates every metric.
Features (popularity, co-occurrence, ALS) are fitted on training interactions only.

Three evaluation protocols (:data:`PROTOCOLS`), chosen by :func:`load_dataset`'s ``protocol``:

* ``temporal`` (:func:`build_from_events`): split by the time of the target event: the last
  ``test_days`` days are the test set, the ``valid_days`` before them the validation set, the rest
  training. The history is the session's earlier items.
* ``session``: split by session: sessions that end in the last ``test_days`` days are test
  sessions, those that end in the ``valid_days`` before validation sessions, the rest training;
  every prefix of a test session is a query. SR-GNN data (:func:`build_from_srgnn`) keeps the
  published split: training sessions are expanded into every prefix (the last ``valid_share`` of
  sessions, in file order, become the validation set) and the test prefixes are used as given.
* ``loo`` (leave one out): one sequence per user (every session, consecutive repeats collapsed);
  the last item is the test target, the second-last the validation target, the rest training
  history. Training examples are the prefixes of the training part (targets from the second item
  to the third-last); the validation query's history is the training part, the test query's also
  holds the validation item. A user with fewer than 3 items has no query: all of it is training.

With ``mask_seen`` (the default for ``loo``) each validation and test query carries the items it
has seen (:attr:`Examples.seen`: for ``loo`` the user's whole history, otherwise the query's own
session prefix), which the evaluation removes from its ranking (:func:`metrics.mask_seen`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp

from lambdarec.inference.vocabulary import (
    N_PRICE_BUCKETS,
    ItemVocabulary,
    price_buckets,
    price_edges,
)

if TYPE_CHECKING:
    from datetime import timedelta

    from lambdarec.data.loaders import SrgnnSplit

log = logging.getLogger(__name__)

DAY_MS = 86_400_000
#: Training weight per event type (the strongest event of a collapsed run counts).
EVENT_WEIGHTS: dict[str, float] = {
    "view": 1.0,
    "remove_from_cart": 1.0,
    "add_to_cart": 2.0,
    "purchase": 3.0,
}
MAX_LEN = 10

Protocol = Literal["loo", "session", "temporal"]
PROTOCOLS: tuple[Protocol, ...] = ("loo", "session", "temporal")
#: Below this many test queries the metrics are noise (a loud warning, not an error).
MIN_TEST_QUERIES = 1_000
#: Datasets known by name (besides a file path).
DATASETS = ("diginetica", "taobao", "amazon-sports", "amazon-toys", "synthetic", "lake")


class DatasetError(ValueError):
    """The data cannot become a dataset as asked (unknown name, a split that cannot be made).

    The message is one line and names the evaluation options that would fix it.
    """


@dataclass
class Examples:
    """Column arrays of (context, target) examples; ``hist`` is most recent first, -1 padded."""

    user: np.ndarray  # int64 user index, 0 = unknown user (cold or anonymous)
    hist: np.ndarray  # int64 (n, max_len) catalog indices
    session_len: np.ndarray  # int64 interactions so far in the history (= prefix length)
    user_events: np.ndarray  # int64 interactions of the user before this one
    session_category: np.ndarray  # int64 category index of the last item, 0 = unknown
    target: np.ndarray  # int64 catalog index of the next item
    ts: np.ndarray  # int64 epoch ms of the target (an ordinal for SR-GNN)
    weight: np.ndarray  # float32 event-type weight of the target
    #: (n, n_items) boolean, one row per example: the items the query has seen, which its
    #: ranking leaves out (see :func:`lambdarec.models.metrics.mask_seen`); None: rank them all.
    seen: sp.csr_matrix | None = None

    def __len__(self) -> int:
        return len(self.target)

    def subset(self, idx: np.ndarray) -> Examples:
        return Examples(**{k: v[idx] for k, v in self.__dict__.items() if v is not None})

    def sample(self, n: int | None, seed: int = 0) -> Examples:
        """At most ``n`` examples drawn without replacement (order kept); None keeps all."""
        if n is None or n >= len(self):
            return self
        rng = np.random.default_rng(seed)
        return self.subset(np.sort(rng.choice(len(self), size=n, replace=False)))

    @staticmethod
    def concat(*parts: Examples) -> Examples:
        """The examples of ``parts`` one after the other; ``seen`` is kept only if every part
        has it."""
        out: dict[str, object] = {}
        for f in fields(Examples):
            values = [getattr(p, f.name) for p in parts]
            if f.name == "seen":
                out["seen"] = (
                    None if any(v is None for v in values) else sp.vstack(values, format="csr")
                )
            else:
                out[f.name] = np.concatenate(values)
        return Examples(**out)  # type: ignore[arg-type]


@dataclass
class Catalog:
    """Side features of every item, by catalog index."""

    item_ids: np.ndarray  # object: raw item id per catalog index
    category: np.ndarray  # int64 category index, 0 = unknown
    price_bucket: np.ndarray  # int64 price decile 1..10, 0 = unknown
    n_categories: int  # including the unknown category 0
    n_price_buckets: int = N_PRICE_BUCKETS + 1
    #: Raw category (as a string) -> its index, as :func:`build_from_events` numbered them
    #: (what places a catalog item the data never had); None when the catalog was not built
    #: from raw events (the SR-GNN split has no categories).
    category_vocabulary: dict[str, int] | None = None
    #: The inner decile edges the price buckets were cut at (:func:`price_edges`); None: no
    #: price was known (every item is bucket 0).
    price_edges: list[float] | None = None

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def vocabulary(self) -> ItemVocabulary:
        """The raw category -> index mapping and price edges this catalog was numbered with, so
        the item tower places a new item exactly as training placed the items it had."""
        if self.category_vocabulary is None:
            raise ValueError(
                "this catalog was not built from raw events (data.build_from_events): it has no "
                "raw category mapping to place new items with; build the dataset from events "
                "(a generic interactions file, the lake or the synthetic generator)"
            )
        return ItemVocabulary(
            dict(self.category_vocabulary),
            None if self.price_edges is None else list(self.price_edges),
            int(self.n_categories),
            int(self.n_price_buckets),
        )


@dataclass
class Interactions:
    """Training interactions (after collapsing repeats) for baselines: one row per interaction."""

    group: np.ndarray  # int64 session index (co-occurrence)
    user: np.ndarray  # int64 user index (ALS); equals group when there are no users
    item: np.ndarray  # int64 catalog index
    ts: np.ndarray  # int64
    weight: np.ndarray  # float32

    def subset(self, mask: np.ndarray) -> Interactions:
        return Interactions(**{k: v[mask] for k, v in self.__dict__.items()})


@dataclass
class Dataset:
    """Examples and interactions of one dataset under one protocol (``split["protocol"]``).

    ``train``/``train_events`` are what models are fitted on while they are tuned on ``valid``;
    :meth:`for_test` gives the same dataset with the validation part moved into training, to refit
    the chosen models before the final test.
    """

    name: str
    catalog: Catalog
    train: Examples
    valid: Examples
    test: Examples
    train_events: Interactions
    #: every interaction with its time (for "trending before the query time"), train and later
    all_events: Interactions
    n_users: int  # including the unknown user 0
    user_ids: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=object))
    has_users: bool = True
    #: what the split is, for reports
    split: dict[str, object] = field(default_factory=dict)
    #: boolean mask over ``all_events``: the interactions known before the test queries (what
    #: :meth:`for_test` trains on); None: not recorded, so no refit dataset can be made
    before_test: np.ndarray | None = None

    @property
    def n_items(self) -> int:
        return self.catalog.n_items

    def popularity(self) -> np.ndarray:
        """Training interaction count per catalog item."""
        return np.bincount(self.train_events.item, minlength=self.n_items).astype(np.float64)

    def seen_in_train(self) -> np.ndarray:
        return self.popularity() > 0

    def for_test(self) -> Dataset:
        """The dataset to refit the tuned models on before the final test.

        ``train`` is the training then the validation examples (without ``seen``: training
        examples are not ranked), ``train_events`` every interaction before the test queries
        (training and validation). ``valid`` and ``test`` are unchanged: tune on the dataset
        itself, refit on this one with the chosen settings (a validation score measured here is
        no longer held out). User indices do not change: a user first seen in the validation
        period stays unknown (index 0), as it was when the settings were chosen.
        """
        if self.before_test is None:
            raise ValueError(f"{self.name}: the interactions before the test were not recorded")
        if self.split.get("refit"):
            return self
        return replace(
            self,
            train=Examples.concat(replace(self.train, seen=None), replace(self.valid, seen=None)),
            train_events=self.all_events.subset(self.before_test),
            split={**self.split, "refit": True},
        )

    def without_session_features(self) -> Dataset:
        """The same data with the session context blanked (the session-feature ablation)."""

        def blank(e: Examples) -> Examples:
            return replace(
                e,
                hist=np.full_like(e.hist, -1),
                session_len=np.zeros_like(e.session_len),
                session_category=np.zeros_like(e.session_category),
            )

        return replace(
            self,
            train=blank(self.train),
            valid=blank(self.valid),
            test=blank(self.test),
            # no history comes back through the user's (with_user_history, session_starts)
            split={**self.split, "session_features": False},
        )


def _codes(values: pd.Series | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    codes, uniques = pd.factorize(pd.Series(values), sort=False)
    return codes.astype(np.int64), np.asarray(uniques, dtype=object)


def _history(items: np.ndarray, pos: np.ndarray, max_len: int) -> np.ndarray:
    """For each row p, the ``max_len`` items before it in its sequence, most recent first."""
    n = len(items)
    hist = np.full((n, max_len), -1, dtype=np.int64)
    rows = np.arange(n)
    for j in range(max_len):
        ok = pos > j
        hist[ok, j] = items[rows[ok] - 1 - j]
    return hist


def item_sets(items: np.ndarray, lengths: np.ndarray, n_items: int) -> sp.csr_matrix:
    """Boolean (len(lengths) x n_items): row ``i`` holds the next ``lengths[i]`` of ``items``."""
    indptr = np.r_[0, np.cumsum(lengths)].astype(np.int64)
    m = sp.csr_matrix(
        (np.ones(len(items), dtype=bool), np.asarray(items, dtype=np.int64), indptr),
        shape=(len(lengths), n_items),
    )
    m.sum_duplicates()
    return m


def seen_matrix(
    items: np.ndarray, rows: np.ndarray, pos: np.ndarray, n_items: int
) -> sp.csr_matrix:
    """Boolean (len(rows) x n_items): for row ``r`` the items of rows ``r - pos[r] .. r - 1``
    (its sequence's earlier items, when ``items`` is sorted by sequence and ``pos`` counts from
    each sequence's start)."""
    lengths = pos[rows].astype(np.int64)
    within = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    source = np.repeat(rows - lengths, lengths) + within
    return item_sets(items[source], lengths, n_items)


def user_recent_items(
    interactions: Interactions, users: np.ndarray, n: int
) -> dict[int, np.ndarray]:
    """Each of ``users``' ``n`` most recent distinct items in ``interactions`` (by each item's
    last occurrence, time ties by row order), newest first: the batch layer's
    ``user_recent_items`` (:mod:`lambdarec.batch.neighbours`) cut to ``n``."""
    frame = pd.DataFrame({"user": interactions.user, "item": interactions.item})
    frame["ts"] = interactions.ts
    frame["order"] = np.arange(len(frame))
    frame = frame[frame["user"].isin(np.unique(users))]
    frame = frame.sort_values(["user", "ts", "order"], kind="stable")
    frame = frame.drop_duplicates(["user", "item"], keep="last").iloc[::-1]
    return {int(u): items.to_numpy()[:n] for u, items in frame.groupby("user", sort=False)["item"]}


def with_user_history(dataset: Dataset, ex: Examples) -> Examples:
    """``ex`` where a query without session context (a known user's first event of a session)
    reads the user's recent training items (:func:`user_recent_items`, the history length) as
    its history, and their newest one's category as its session category: what the served
    pipeline answers such a query from. Other queries are unchanged, and every query of a
    dataset without session features (:meth:`Dataset.without_session_features`)."""
    rows = np.flatnonzero((ex.session_len == 0) & (ex.user > 0))
    if not len(rows) or not dataset.split.get("session_features", True):
        return ex
    hist, category = ex.hist.copy(), ex.session_category.copy()
    recent = user_recent_items(dataset.train_events, ex.user[rows], hist.shape[1])
    for r in rows:
        items = recent.get(int(ex.user[r]))
        if items is not None and len(items):
            hist[r] = -1
            hist[r, : len(items)] = items
            category[r] = dataset.catalog.category[items[0]]
    return replace(ex, hist=hist, session_category=category)


def as_served(dataset: Dataset, ex: Examples) -> Examples:
    """``ex`` as the served query tower reads it: the unknown user (0: the two-tower's export
    keeps no user vocabulary), and a query without session context holds the user's recent items
    (:func:`with_user_history`). What the two-tower alone answers through serving."""
    ex = with_user_history(dataset, ex)
    return replace(ex, user=np.zeros_like(ex.user))


def session_starts(dataset: Dataset) -> Examples:
    """Training examples of a known user's first interaction of a session after earlier ones
    (the queries without session context, in training): the history is the user's most recent
    distinct items before it (as :func:`with_user_history` gives a validation or test query),
    no session length. Empty for ``loo`` (a user's sequence is the history already) and data
    without users."""
    ev = dataset.train_events
    width = dataset.train.hist.shape[1]
    empty = dataset.train.subset(np.zeros(0, dtype=np.int64))
    if (
        not dataset.has_users
        or dataset.split.get("kind") not in ("temporal", "session")
        or not dataset.split.get("session_features", True)
    ):
        return empty
    order = np.lexsort((np.arange(len(ev.ts)), ev.ts, ev.user))
    user, item, group = ev.user[order], ev.item[order], ev.group[order]
    _, first = np.unique(group, return_index=True)  # each session's first row, in time order
    _, user_start = np.unique(user, return_index=True)
    user_first = np.repeat(user_start, np.diff(np.r_[user_start, len(user)]))
    starts = first[(user[first] > 0) & (first > user_first[first])]
    starts.sort()
    hist = np.full((len(starts), width), -1, dtype=np.int64)
    for row, s in enumerate(starts.tolist()):
        seen: set[int] = set()
        lo = int(user_first[s])
        for j in range(s - 1, lo - 1, -1):
            it = int(item[j])
            if it not in seen:
                hist[row, len(seen)] = it
                seen.add(it)
                if len(seen) == width:
                    break
    return Examples(
        user=user[starts],
        hist=hist,
        session_len=np.zeros(len(starts), dtype=np.int64),
        user_events=(starts - user_first[starts]).astype(np.int64),
        session_category=dataset.catalog.category[hist[:, 0]].astype(np.int64),
        target=item[starts],
        ts=ev.ts[order][starts],
        weight=ev.weight[order][starts],
    )


def _warn_small_test(name: str, n: int) -> None:
    if n < MIN_TEST_QUERIES:
        log.warning(
            "%s: %d test queries: the metrics are noise (fewer than %d)",
            name,
            n,
            MIN_TEST_QUERIES,
        )


# -- events -> examples ---------------------------------------------------------------------
def _event_frame(events: pd.DataFrame) -> pd.DataFrame:
    """The columns the builders use, in the canonical table's order (``order`` keeps it)."""
    df = pd.DataFrame(
        {
            "user": events["user_id"].astype(str).to_numpy(),
            "session": events["session_id"].astype(str).to_numpy(),
            "item": events["item_id"].astype(str).to_numpy(),
            "etype": events["event_type"].astype(str).to_numpy(),
            "category": events["category"].to_numpy(dtype=object),
            "price": pd.to_numeric(events["price"], errors="coerce").to_numpy(dtype=np.float64),
            "ts": pd.to_datetime(events["ts"], utc=True)
            .astype("datetime64[ms, UTC]")
            .astype("int64")
            .to_numpy(),
        }
    )
    df["w"] = df["etype"].map(EVENT_WEIGHTS).fillna(1.0).astype(np.float32)
    df["order"] = np.arange(len(df))
    return df


def _catalog(df: pd.DataFrame, item_ids: np.ndarray) -> Catalog:
    """Every item of ``df`` (``df["ic"]`` holds its index), categories numbered 1..C."""
    first = df.groupby("ic", sort=True).agg(
        category=("category", "first"), price=("price", "median")
    )
    cat_codes, _ = _codes(first["category"].fillna("__none__"))
    cat_known = first["category"].notna().to_numpy()
    category = np.where(cat_known, cat_codes + 1, 0)
    # renumber so 1..C are dense
    uniq = np.unique(category[category > 0])
    remap = np.zeros(int(category.max()) + 1, dtype=np.int64)
    remap[uniq] = np.arange(1, len(uniq) + 1)
    category = remap[category]
    index: dict[str, int] = {}
    for value, code in zip(
        first["category"].to_numpy(dtype=object), category.tolist(), strict=True
    ):
        if code > 0:
            index.setdefault(str(value), int(code))
    prices = first["price"].to_numpy(dtype=np.float64)
    edges = price_edges(prices)
    return Catalog(
        item_ids=item_ids,
        category=category,
        price_bucket=price_buckets(prices, edges),
        n_categories=len(uniq) + 1,
        category_vocabulary=index,
        price_edges=None if edges is None else [float(e) for e in edges],
    )


def _sorted(df: pd.DataFrame, unit: str) -> pd.DataFrame:
    """``df`` sorted by ``unit`` (session or user), then time, then the canonical order."""
    key = pd.factorize(df[unit], sort=True)[0]
    order = np.lexsort((df["order"].to_numpy(), df["ts"].to_numpy(), key))
    return df.iloc[order].reset_index(drop=True)


def _collapse(df: pd.DataFrame, unit: str) -> pd.DataFrame:
    """``df`` sorted by ``unit`` (session or user), consecutive repeats of an item within a unit
    collapsed into their first row with the run's strongest weight; ``uc`` is the unit's code."""
    df = _sorted(df, unit)
    unit_codes, _ = _codes(df[unit])
    items = df["ic"].to_numpy()
    new_run = np.ones(len(df), dtype=bool)
    new_run[1:] = (unit_codes[1:] != unit_codes[:-1]) | (items[1:] != items[:-1])
    run_id = np.cumsum(new_run) - 1
    run_w = np.zeros(run_id[-1] + 1, dtype=np.float32)
    np.maximum.at(run_w, run_id, df["w"].to_numpy())
    c = df[new_run].reset_index(drop=True)
    c["w"] = run_w
    c["uc"] = unit_codes[new_run]
    return c


def _positions(unit_codes: np.ndarray) -> np.ndarray:
    """Each row's position within its unit (rows sorted by unit)."""
    starts = np.r_[0, np.flatnonzero(np.diff(unit_codes) != 0) + 1]
    lengths = np.diff(np.r_[starts, len(unit_codes)])
    return np.arange(len(unit_codes)) - np.repeat(starts, lengths)


@dataclass
class _Split:
    """What a protocol decides for each collapsed interaction."""

    role: np.ndarray  # int: 0 train, 1 valid, 2 test (the interaction as a target)
    train_event: np.ndarray  # bool: a training interaction (features, train users)
    before_test: np.ndarray  # bool: known before the test queries (the refit's interactions)
    info: dict[str, object]


def _days(name: str, day: np.ndarray, valid_days: int, test_days: int, protocol: str) -> int:
    """The first test day; raises when the data spans too few days."""
    if valid_days < 1 or test_days < 1:
        raise DatasetError(f"{name}: --valid-days and --test-days must be at least 1")
    last = int(day.max())
    span = last - int(day.min()) + 1
    if span < valid_days + test_days + 1:
        raise DatasetError(
            f"{name}: the events span {span} day(s); a {protocol} split needs at least "
            f"{valid_days + test_days + 1} (training days, then {valid_days} validation and "
            f"{test_days} test day(s)): lower --test-days/--valid-days, use --protocol loo, or "
            "add days of data (the demo: --days 3 or more)"
        )
    return last - test_days + 1


def _temporal(
    name: str, c: pd.DataFrame, *, valid_days: int, test_days: int, offset_ms: int
) -> _Split:
    day = (c["ts"].to_numpy() + offset_ms) // DAY_MS
    test_start = _days(name, day, valid_days, test_days, "temporal")
    valid_start = test_start - valid_days
    t_valid = valid_start * DAY_MS - offset_ms
    t_test = test_start * DAY_MS - offset_ms
    ts = c["ts"].to_numpy()
    return _Split(
        role=np.where(day >= test_start, 2, np.where(day >= valid_start, 1, 0)),
        train_event=ts < t_valid,
        before_test=ts < t_test,
        info={
            "kind": "temporal",
            "valid_start_ms": int(t_valid),
            "test_start_ms": int(t_test),
            "end_ms": int(ts.max()),
        },
    )


def _by_session(
    name: str, c: pd.DataFrame, *, valid_days: int, test_days: int, offset_ms: int
) -> _Split:
    ts = c["ts"].to_numpy()
    end = pd.Series(ts).groupby(c["uc"].to_numpy()).transform("max").to_numpy()
    day = (end + offset_ms) // DAY_MS
    test_start = _days(name, day, valid_days, test_days, "session")
    valid_start = test_start - valid_days
    role = np.where(day >= test_start, 2, np.where(day >= valid_start, 1, 0))
    first = _positions(c["uc"].to_numpy()) == 0
    return _Split(
        role=role,
        train_event=role == 0,
        before_test=role <= 1,
        info={
            "kind": "session",
            "valid_start_ms": int(valid_start * DAY_MS - offset_ms),
            "test_start_ms": int(test_start * DAY_MS - offset_ms),
            "end_ms": int(ts.max()),
            "train_sessions": int((first & (role == 0)).sum()),
            "valid_sessions": int((first & (role == 1)).sum()),
            "test_sessions": int((first & (role == 2)).sum()),
        },
    )


def _leave_one_out(name: str, c: pd.DataFrame) -> _Split:
    unit = c["uc"].to_numpy()
    pos = _positions(unit)
    length = np.bincount(unit)[unit]
    eligible = length >= 3
    role = np.where(
        eligible & (pos == length - 1), 2, np.where(eligible & (pos == length - 2), 1, 0)
    )
    n_users = int(np.unique(unit).size)
    n_eligible = int(np.unique(unit[eligible]).size)
    if n_eligible == 0:
        raise DatasetError(
            f"{name}: no user has 3 or more items (after collapsing consecutive repeats), so "
            "leave-one-out has no query: use --protocol temporal or --protocol session"
        )
    if n_eligible < n_users:
        log.info(
            "%s: %d of %d users have fewer than 3 items: all of theirs is training",
            name,
            n_users - n_eligible,
            n_users,
        )
    return _Split(
        role=role,
        train_event=role == 0,
        before_test=role != 2,
        info={"kind": "loo", "users": n_eligible, "users_without_query": n_users - n_eligible},
    )


def build_from_events(
    events: pd.DataFrame,
    *,
    name: str = "events",
    protocol: Protocol = "temporal",
    mask_seen: bool | None = None,
    valid_days: int = 1,
    test_days: int = 1,
    max_len: int = MAX_LEN,
    tz_offset_hours: float = 0.0,
) -> Dataset:
    """Examples of a canonical event table under ``protocol`` (see the module doc).

    ``mask_seen`` (default: on for ``loo`` only) records each validation and test query's seen
    items in :attr:`Examples.seen`. Days are counted in UTC shifted by ``tz_offset_hours``.
    Raises :class:`DatasetError` when the split cannot be made.
    """
    if protocol not in PROTOCOLS:
        raise DatasetError(f"unknown protocol {protocol!r}: use --protocol {'|'.join(PROTOCOLS)}")
    if events.empty:
        raise DatasetError(f"{name}: no events")
    if max_len < 1:
        raise DatasetError(f"{name}: --history-len must be at least 1")
    sequences = events.attrs.get("load_report", {}).get("format") == "sequences"
    if sequences and protocol != "loo":
        raise DatasetError(
            f"{name} has no timestamps (one user per line, items in order), so a {protocol} "
            "split cannot be made: use --protocol loo"
        )
    mask = protocol == "loo" if mask_seen is None else mask_seen
    # sessions in order, whatever the protocol: the catalog numbers items in this order
    df = _sorted(_event_frame(events), "session")
    item_codes, item_ids = _codes(df["item"])
    df["ic"] = item_codes
    catalog = _catalog(df, item_ids)
    df["sc"] = _codes(df["session"])[0]

    c = _collapse(df, "user" if protocol == "loo" else "session")
    offset = int(tz_offset_hours * 3_600_000)
    if protocol == "temporal":
        split = _temporal(name, c, valid_days=valid_days, test_days=test_days, offset_ms=offset)
    elif protocol == "session":
        split = _by_session(name, c, valid_days=valid_days, test_days=test_days, offset_ms=offset)
    else:
        split = _leave_one_out(name, c)

    # users known from training
    train_users = pd.unique(c.loc[split.train_event, "user"])
    user_index = {u: i + 1 for i, u in enumerate(train_users)}
    c["u"] = c["user"].map(user_index).fillna(0).astype(np.int64)

    items = c["ic"].to_numpy()
    pos = _positions(c["uc"].to_numpy())
    hist = _history(items, pos, max_len)
    by_user_time = np.lexsort((c["ts"].to_numpy(), c["u"].to_numpy()))
    user_events = np.empty(len(c), dtype=np.int64)
    user_events[by_user_time] = (
        pd.Series(c["user"].to_numpy()[by_user_time])
        .groupby(c["user"].to_numpy()[by_user_time])
        .cumcount()
        .to_numpy()
    )
    last_cat = np.where(hist[:, 0] >= 0, catalog.category[np.maximum(hist[:, 0], 0)], 0)
    all_ex = Examples(
        user=c["u"].to_numpy(),
        hist=hist,
        session_len=pos.astype(np.int64),
        user_events=user_events,
        session_category=last_cat,
        target=items,
        ts=c["ts"].to_numpy().astype(np.int64),
        weight=c["w"].to_numpy().astype(np.float32),
    )
    # A query has a session context (an earlier item in its session); the validation and test
    # sets also hold a known user's first event of a session (no session context: serving
    # answers it from the user's own recent items), a segment of its own in the reports.
    returning = (c["u"].to_numpy() > 0) & (user_events > 0) & (split.role >= 1)
    has_ctx = (pos >= 1) | returning
    rows = [np.flatnonzero(has_ctx & (split.role == s)) for s in (0, 1, 2)]
    parts = [all_ex.subset(r) for r in rows]
    if mask:
        for s in (1, 2):
            parts[s].seen = seen_matrix(items, rows[s], pos, catalog.n_items)
    inter = Interactions(
        group=c["sc"].to_numpy().astype(np.int64),
        user=c["u"].to_numpy(),
        item=items,
        ts=c["ts"].to_numpy().astype(np.int64),
        weight=c["w"].to_numpy().astype(np.float32),
    )
    info = {
        **split.info,
        "protocol": protocol,
        "mask_seen": bool(mask),
        "history_len": int(max_len),
        "timestamps": "synthetic (file order)" if sequences else "real",
        "interactions": int(len(c)),
        "events": int(len(df)),
        "collapsed_repeats": int(len(df) - len(c)),
        "queries": {"train": len(parts[0]), "valid": len(parts[1]), "test": len(parts[2])},
    }
    _check_parts(name, protocol, parts, valid_days, test_days)
    return Dataset(
        name=name,
        catalog=catalog,
        train=parts[0],
        valid=parts[1],
        test=parts[2],
        train_events=inter.subset(split.train_event),
        all_events=inter,
        n_users=len(user_index) + 1,
        user_ids=np.asarray(train_users, dtype=object),
        has_users=True,
        split=info,
        before_test=split.before_test,
    )


def _check_parts(
    name: str, protocol: str, parts: list[Examples], valid_days: int, test_days: int
) -> None:
    for label, part, days, option in (
        ("training", parts[0], None, None),
        ("validation", parts[1], valid_days, "--valid-days"),
        ("test", parts[2], test_days, "--test-days"),
    ):
        if len(part):
            continue
        if protocol == "loo":
            fix = "use --protocol temporal or --protocol session"
        elif option is None:
            fix = "lower --test-days/--valid-days, or use --protocol loo"
        else:
            fix = f"raise {option} (now {days}), or use --protocol loo"
        raise DatasetError(
            f"{name}: the {protocol} split has no {label} query (a query needs an earlier item "
            f"in its history): {fix}"
        )
    _warn_small_test(name, len(parts[2]))


def build_from_srgnn(
    split: SrgnnSplit,
    *,
    valid_share: float = 0.1,
    max_len: int = MAX_LEN,
    name: str = "diginetica",
    mask_seen: bool = False,
) -> Dataset:
    """Examples under the SR-GNN protocol (item id ``i`` is catalog index ``i - 1``).

    With ``mask_seen`` each validation and test query's prefix items are in its ``seen``.
    """
    n_items = split.n_items
    sessions = split.train_sessions
    n_valid = int(round(len(sessions) * valid_share))
    lengths = np.array([len(s) for s in sessions], dtype=np.int64)
    items = np.fromiter(
        (i - 1 for s in sessions for i in s), dtype=np.int64, count=int(lengths.sum())
    )
    group = np.repeat(np.arange(len(sessions)), lengths)
    starts = np.r_[0, np.cumsum(lengths)[:-1]]
    pos = np.arange(len(items)) - np.repeat(starts, lengths)
    hist = _history(items, pos, max_len)
    in_valid = group >= len(sessions) - n_valid

    def examples(idx: np.ndarray) -> Examples:
        return Examples(
            user=np.zeros(len(idx), dtype=np.int64),
            hist=hist[idx],
            session_len=pos[idx],
            user_events=np.zeros(len(idx), dtype=np.int64),
            session_category=np.zeros(len(idx), dtype=np.int64),
            target=items[idx],
            ts=group[idx].astype(np.int64),
            weight=np.ones(len(idx), dtype=np.float32),
        )

    train = examples(np.flatnonzero((pos >= 1) & ~in_valid))
    valid_rows = np.flatnonzero((pos >= 1) & in_valid)
    valid = examples(valid_rows)
    t_hist = np.full((len(split.test), max_len), -1, dtype=np.int64)
    t_len = np.zeros(len(split.test), dtype=np.int64)
    t_target = np.zeros(len(split.test), dtype=np.int64)
    for r, (prefix, target) in enumerate(split.test):
        recent = prefix[::-1][:max_len]
        t_hist[r, : len(recent)] = np.asarray(recent, dtype=np.int64) - 1
        t_len[r] = len(prefix)
        t_target[r] = target - 1
    n_test = len(split.test)
    test = Examples(
        user=np.zeros(n_test, dtype=np.int64),
        hist=t_hist,
        session_len=t_len,
        user_events=np.zeros(n_test, dtype=np.int64),
        session_category=np.zeros(n_test, dtype=np.int64),
        target=t_target,
        ts=np.full(n_test, len(sessions), dtype=np.int64),
        weight=np.ones(n_test, dtype=np.float32),
    )
    if mask_seen:
        valid.seen = seen_matrix(items, valid_rows, pos, n_items)
        flat = np.fromiter((i - 1 for p, _ in split.test for i in p), dtype=np.int64)
        test.seen = item_sets(flat, t_len, n_items)
    inter = Interactions(
        group=group,
        user=group,
        item=items,
        ts=group.astype(np.int64),
        weight=np.ones(len(items), dtype=np.float32),
    )
    catalog = Catalog(
        item_ids=np.arange(1, n_items + 1).astype(str).astype(object),
        category=np.zeros(n_items, dtype=np.int64),
        price_bucket=np.zeros(n_items, dtype=np.int64),
        n_categories=1,
    )
    _warn_small_test(name, n_test)
    return Dataset(
        name=name,
        catalog=catalog,
        train=train,
        valid=valid,
        test=test,
        train_events=inter.subset(~in_valid),
        all_events=inter,
        n_users=1,
        has_users=False,
        split={
            "kind": "srgnn",
            "protocol": "session",
            "mask_seen": bool(mask_seen),
            "history_len": int(max_len),
            "timestamps": "none (session order)",
            "train_sessions": len(sessions) - n_valid,
            "valid_sessions": n_valid,
            "test_pairs": n_test,
        },
        before_test=np.ones(len(items), dtype=bool),
    )


def default_protocol(dataset: str, events: pd.DataFrame | None = None) -> Protocol:
    """``session`` for the SR-GNN split, ``loo`` for a sequences file (no time), else
    ``temporal``."""
    if dataset == "diginetica":
        return "session"
    if events is not None and events.attrs.get("load_report", {}).get("format") == "sequences":
        return "loo"
    return "temporal"


def load_dataset(
    dataset: str,
    *,
    protocol: Protocol | None = None,
    mask_seen: bool | None = None,
    max_len: int = MAX_LEN,
    session_gap: timedelta | None = None,
    test_days: int | None = None,
    valid_days: int | None = None,
    synthetic_events: int = 60_000,
    seed: int = 42,
) -> Dataset:
    """A dataset by name (:data:`DATASETS`) or a file path, under ``protocol``.

    ``diginetica`` is the SR-GNN split (``session`` only), ``taobao`` the Taobao subset (days in
    UTC+8), ``amazon-sports``/``amazon-toys`` the Amazon 5-core sequences, ``synthetic`` a small
    generated clickstream, ``lake`` every event in the settings' lake; a path is read by
    :func:`lambdarec.data.loaders.load_interactions` (an interactions table or a sequences file).
    ``protocol`` defaults to :func:`default_protocol`, ``mask_seen`` to on for ``loo``;
    ``session_gap`` cuts sessions in files without a session id (default the loaders'),
    ``test_days``/``valid_days`` (default 1) apply to ``temporal`` and ``session``.
    """
    from pathlib import Path

    from lambdarec.data import loaders

    if protocol is not None and protocol not in PROTOCOLS:
        raise DatasetError(f"unknown protocol {protocol!r}: use --protocol {'|'.join(PROTOCOLS)}")
    gap = loaders.SESSION_GAP if session_gap is None else session_gap
    if dataset == "diginetica":
        if protocol not in (None, "session"):
            raise DatasetError(
                "diginetica is the SR-GNN split (sessions without users or timestamps): only "
                "--protocol session applies"
            )
        if test_days is not None or valid_days is not None:
            log.warning(
                "diginetica: the SR-GNN test set is fixed; --test-days/--valid-days ignored"
            )
        return build_from_srgnn(loaders.load_srgnn(), max_len=max_len, mask_seen=bool(mask_seen))
    tz_offset = 0.0
    name = dataset
    if dataset == "lake":
        from lambdarec.config import get_settings
        from lambdarec.data.lake import read_events

        events = read_events(get_settings().lake_dir)
    elif dataset == "taobao":
        # days in UTC+8: by default train up to 12-01, validate on 12-02, test on 12-03
        events = loaders.load_taobao(official_window=True, session_gap=gap)
        tz_offset = 8
    elif dataset in loaders.AMAZON_SEQUENCES:
        events = loaders.load_sequences(
            loaders.shared_path(loaders.AMAZON_SEQUENCES[dataset]), source=dataset
        )
    elif dataset == "synthetic":
        from lambdarec.data.generator import GeneratorConfig, generate_events

        cfg = GeneratorConfig(
            n_users=2_000,
            n_items=3_000,
            n_categories=40,
            days=7,
            n_events=synthetic_events,
            seed=seed,
        )
        events = generate_events(cfg)
    else:
        path = Path(dataset)
        if not path.exists():
            raise DatasetError(
                f"unknown dataset {dataset!r}: use --dataset {'|'.join(DATASETS)} or a file path"
            )
        events = loaders.load_interactions(path, session_gap=gap)
        name = path.stem
    chosen = protocol or default_protocol(dataset, events)
    if chosen == "loo" and (test_days is not None or valid_days is not None):
        log.warning(
            "%s: leave-one-out holds out items, not days; --test-days/--valid-days ignored", name
        )
    return build_from_events(
        events,
        name=name,
        protocol=chosen,
        mask_seen=mask_seen,
        valid_days=1 if valid_days is None else valid_days,
        test_days=1 if test_days is None else test_days,
        max_len=max_len,
        tz_offset_hours=tz_offset,
    )
