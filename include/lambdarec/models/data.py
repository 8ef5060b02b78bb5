"""Training and evaluation examples for next-item prediction, from canonical events or SR-GNN.

An example is (context, next item): the context is what is known just before the shopper's next
interaction: the user, the last ``max_len`` items of the current session (most recent first,
padded with -1), the session's category (the category of its last item) and counts (events so far
in the session, events of the user before). Items are *catalog indices* ``0..n_items-1``; the
catalog is every item in the data, so evaluation ranks the whole catalog, including items never
seen in training (they can only be reached through side features).

Event data (Taobao, Diginetica raw, synthetic, a generic interactions file) is split by the time of
the target event: the last ``test_days`` days are the test set, the ``valid_days`` before them the
validation set, the rest training. Consecutive repeats of the same item in a session are collapsed
into one interaction (weight = the strongest event type of the run), otherwise "predict the item
you are looking at" dominates every metric. Features (popularity, co-occurrence, ALS) are fitted on
training events only.

SR-GNN data keeps the published split: training sessions are expanded into every prefix (the last
``valid_share`` of sessions, in file order, become the validation set) and the test prefixes are
used as given.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from lambdarec.inference.vocabulary import (
    N_PRICE_BUCKETS,
    ItemVocabulary,
    price_buckets,
    price_edges,
)

if TYPE_CHECKING:
    from lambdarec.data.loaders import SrgnnSplit

DAY_MS = 86_400_000
#: Training weight per event type (the strongest event of a collapsed run counts).
EVENT_WEIGHTS: dict[str, float] = {
    "view": 1.0,
    "remove_from_cart": 1.0,
    "add_to_cart": 2.0,
    "purchase": 3.0,
}
MAX_LEN = 10


@dataclass
class Examples:
    """Column arrays of (context, target) examples; ``hist`` is most recent first, -1 padded."""

    user: np.ndarray  # int64 user index, 0 = unknown user (cold or anonymous)
    hist: np.ndarray  # int64 (n, max_len) catalog indices
    session_len: np.ndarray  # int64 interactions so far in the session (= prefix length)
    user_events: np.ndarray  # int64 interactions of the user before this one
    session_category: np.ndarray  # int64 category index of the last item, 0 = unknown
    target: np.ndarray  # int64 catalog index of the next item
    ts: np.ndarray  # int64 epoch ms of the target (an ordinal for SR-GNN)
    weight: np.ndarray  # float32 event-type weight of the target

    def __len__(self) -> int:
        return len(self.target)

    def subset(self, idx: np.ndarray) -> Examples:
        return Examples(**{k: v[idx] for k, v in self.__dict__.items()})

    def sample(self, n: int | None, seed: int = 0) -> Examples:
        """At most ``n`` examples drawn without replacement (order kept); None keeps all."""
        if n is None or n >= len(self):
            return self
        rng = np.random.default_rng(seed)
        return self.subset(np.sort(rng.choice(len(self), size=n, replace=False)))


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


@dataclass
class Dataset:
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

    @property
    def n_items(self) -> int:
        return self.catalog.n_items

    def popularity(self) -> np.ndarray:
        """Training interaction count per catalog item."""
        return np.bincount(self.train_events.item, minlength=self.n_items).astype(np.float64)

    def seen_in_train(self) -> np.ndarray:
        return self.popularity() > 0

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
            self, train=blank(self.train), valid=blank(self.valid), test=blank(self.test)
        )


def _codes(values: pd.Series | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    codes, uniques = pd.factorize(pd.Series(values), sort=False)
    return codes.astype(np.int64), np.asarray(uniques, dtype=object)


def _history(items: np.ndarray, pos: np.ndarray, max_len: int) -> np.ndarray:
    """For each row p, the ``max_len`` items before it in its session, most recent first."""
    n = len(items)
    hist = np.full((n, max_len), -1, dtype=np.int64)
    rows = np.arange(n)
    for j in range(max_len):
        ok = pos > j
        hist[ok, j] = items[rows[ok] - 1 - j]
    return hist


def build_from_events(
    events: pd.DataFrame,
    *,
    name: str = "events",
    valid_days: int = 1,
    test_days: int = 1,
    max_len: int = MAX_LEN,
    tz_offset_hours: float = 0.0,
) -> Dataset:
    """Examples with a temporal split from a canonical event table (see the module doc)."""
    if events.empty:
        raise ValueError("no events")
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
    df = df.sort_values(["session", "ts"], kind="stable").reset_index(drop=True)

    # catalog over every item in the data
    item_codes, item_ids = _codes(df["item"])
    df["ic"] = item_codes
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
    catalog = Catalog(
        item_ids=item_ids,
        category=category,
        price_bucket=price_buckets(prices, edges),
        n_categories=len(uniq) + 1,
        category_vocabulary=index,
        price_edges=None if edges is None else [float(e) for e in edges],
    )

    # collapse consecutive repeats of an item within a session
    sess_codes, _ = _codes(df["session"])
    new_run = np.ones(len(df), dtype=bool)
    new_run[1:] = (sess_codes[1:] != sess_codes[:-1]) | (item_codes[1:] != item_codes[:-1])
    run_id = np.cumsum(new_run) - 1
    run_w = np.zeros(run_id[-1] + 1, dtype=np.float32)
    np.maximum.at(run_w, run_id, df["w"].to_numpy())
    c = df[new_run].reset_index(drop=True)
    c["w"] = run_w
    c["sc"] = sess_codes[new_run]

    # split by day of the target event
    day = (c["ts"].to_numpy() + int(tz_offset_hours * 3_600_000)) // DAY_MS
    last = int(day.max())
    span = last - int(day.min()) + 1
    if span < valid_days + test_days + 1:
        raise ValueError(
            f"{name}: the events span {span} day(s); a temporal split needs at least "
            f"{valid_days + test_days + 1} (training days, then {valid_days} validation and "
            f"{test_days} test day(s)); add days of data (the demo: --days 3 or more)"
        )
    test_start = last - test_days + 1
    valid_start = test_start - valid_days
    split = np.where(day >= test_start, 2, np.where(day >= valid_start, 1, 0))
    offset = int(tz_offset_hours * 3_600_000)
    t_valid = valid_start * DAY_MS - offset
    t_test = test_start * DAY_MS - offset

    # users known from training
    is_train_event = c["ts"].to_numpy() < t_valid
    train_users = pd.unique(c.loc[is_train_event, "user"])
    user_index = {u: i + 1 for i, u in enumerate(train_users)}
    c["u"] = c["user"].map(user_index).fillna(0).astype(np.int64)

    items = c["ic"].to_numpy()
    starts = np.r_[0, np.flatnonzero(np.diff(c["sc"].to_numpy()) != 0) + 1]
    lengths = np.diff(np.r_[starts, len(c)])
    pos = np.arange(len(c)) - np.repeat(starts, lengths)
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
    has_ctx = pos >= 1
    parts = [all_ex.subset(np.flatnonzero(has_ctx & (split == s))) for s in (0, 1, 2)]
    inter = Interactions(
        group=c["sc"].to_numpy(),
        user=c["u"].to_numpy(),
        item=items,
        ts=c["ts"].to_numpy().astype(np.int64),
        weight=c["w"].to_numpy().astype(np.float32),
    )
    train_events = Interactions(**{k: v[is_train_event] for k, v in inter.__dict__.items()})
    return Dataset(
        name=name,
        catalog=catalog,
        train=parts[0],
        valid=parts[1],
        test=parts[2],
        train_events=train_events,
        all_events=inter,
        n_users=len(user_index) + 1,
        user_ids=np.asarray(train_users, dtype=object),
        has_users=True,
        split={
            "kind": "temporal",
            "valid_start_ms": int(t_valid),
            "test_start_ms": int(t_test),
            "end_ms": int(c["ts"].max()),
            "interactions": int(len(c)),
            "events": int(len(df)),
            "collapsed_repeats": int(len(df) - len(c)),
        },
    )


def build_from_srgnn(
    split: SrgnnSplit, *, valid_share: float = 0.1, max_len: int = MAX_LEN, name: str = "diginetica"
) -> Dataset:
    """Examples under the SR-GNN protocol (item id ``i`` is catalog index ``i - 1``)."""
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
    valid = examples(np.flatnonzero((pos >= 1) & in_valid))
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
    inter = Interactions(
        group=group,
        user=group,
        item=items,
        ts=group.astype(np.int64),
        weight=np.ones(len(items), dtype=np.float32),
    )
    train_mask = ~in_valid
    catalog = Catalog(
        item_ids=np.arange(1, n_items + 1).astype(str).astype(object),
        category=np.zeros(n_items, dtype=np.int64),
        price_bucket=np.zeros(n_items, dtype=np.int64),
        n_categories=1,
    )
    return Dataset(
        name=name,
        catalog=catalog,
        train=train,
        valid=valid,
        test=test,
        train_events=Interactions(**{k: v[train_mask] for k, v in inter.__dict__.items()}),
        all_events=inter,
        n_users=1,
        has_users=False,
        split={
            "kind": "srgnn",
            "train_sessions": len(sessions) - n_valid,
            "valid_sessions": n_valid,
            "test_pairs": n_test,
        },
    )


def load_dataset(
    dataset: str, *, max_len: int = MAX_LEN, synthetic_events: int = 60_000, seed: int = 42
) -> Dataset:
    """``diginetica`` (SR-GNN split), ``taobao`` (temporal), ``synthetic``, ``lake`` (every event
    in the settings' lake, temporal split) or a file path."""
    from pathlib import Path

    from lambdarec.data import loaders

    if dataset == "lake":
        from lambdarec.config import get_settings
        from lambdarec.data.lake import read_events

        return build_from_events(read_events(get_settings().lake_dir), name="lake", max_len=max_len)

    if dataset == "diginetica":
        return build_from_srgnn(loaders.load_srgnn(), max_len=max_len)
    if dataset == "taobao":
        events = loaders.load_taobao(official_window=True)
        # train up to 12-01, validate on 12-02, test on 12-03 (days in UTC+8)
        return build_from_events(
            events, name="taobao", valid_days=1, test_days=1, max_len=max_len, tz_offset_hours=8
        )
    if dataset == "synthetic":
        from lambdarec.data.generator import GeneratorConfig, generate_events

        cfg = GeneratorConfig(
            n_users=2_000,
            n_items=3_000,
            n_categories=40,
            days=7,
            n_events=synthetic_events,
            seed=seed,
        )
        return build_from_events(generate_events(cfg), name="synthetic", max_len=max_len)
    path = Path(dataset)
    if not path.exists():
        raise ValueError(
            f"unknown dataset {dataset!r}: use diginetica, taobao, synthetic or a path"
        )
    return build_from_events(loaders.load_interactions(path), name=path.stem, max_len=max_len)
