"""A seeded synthetic clickstream at any scale, in the canonical event table.

The model, in the order things are drawn:

* **Catalog.** ``n_categories`` leaf categories under a few departments, sized by a Zipf law;
  items get a log-normal price around their category's median and a Zipf popularity within the
  category (and categories a Zipf share of traffic, so popularity is heavy-tailed overall). Most
  items exist before ``start``; ``new_item_share`` of them appear during the period and are never
  seen before their ``created_at``.
* **Users.** A log-normal activity level (a few heavy shoppers) and ``affinity_categories``
  preferred categories drawn by category popularity.
* **Sessions.** Spread over ``days`` by a diurnal curve (quiet at night, peak in the evening, a
  little busier at weekends). Each session has a focus category taken from its user's
  preferences and a log-normal number of views; views go mostly to the focus category, then to the
  user's other preferred categories, then anywhere.
* **Funnel.** Each view leads to an ``add_to_cart`` of the same item with ``cart_rate``; at the end
  of the session each cart is purchased with ``purchase_rate``, and the carts not bought are
  removed with ``remove_rate``. So a purchase is always of an item carted earlier in the session.
* **Time.** Gaps between views are log-normal and capped below 30 minutes, so a 30-minute
  sessionizer recovers the generator's sessions. Timestamps strictly increase within a session.

Generation runs window by window (a day, or a fraction of a day at large scale), each window from
its own seed, so memory stays flat at any size and :func:`iter_event_batches` yields batches in
event-time order. The same :class:`GeneratorConfig` always gives byte-identical output.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Annotated

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field, model_validator

from lambdarec.data.canonical import catalog_arrow_schema
from lambdarec.events import EventType, canonical_arrow_schema

if TYPE_CHECKING:
    from collections.abc import Iterator

    import pandas as pd

DAY_MS = 86_400_000
MINUTE_MS = 60_000

#: Event type codes used internally, in funnel order.
_TYPE_NAMES = [
    EventType.VIEW,
    EventType.ADD_TO_CART,
    EventType.REMOVE_FROM_CART,
    EventType.PURCHASE,
]
VIEW, CART, REMOVE, PURCHASE = range(4)

#: Relative traffic per hour of the day (UTC), interpolated per minute.
_HOURLY = np.array(
    [
        0.35,
        0.22,
        0.15,
        0.12,
        0.12,
        0.18,
        0.35,
        0.60,
        0.80,
        0.90,
        0.95,
        1.00,
        1.05,
        1.00,
        0.95,
        0.95,
        1.00,
        1.05,
        1.15,
        1.35,
        1.50,
        1.45,
        1.10,
        0.65,
    ]
)
_WEEKEND_BOOST = 1.15

#: Departments of the category tree with their typical price (the median of a category median).
_DEPARTMENTS = {
    "electronics": 180.0,
    "computers": 350.0,
    "home": 45.0,
    "kitchen": 30.0,
    "fashion": 35.0,
    "shoes": 60.0,
    "beauty": 18.0,
    "health": 15.0,
    "sports": 40.0,
    "toys": 22.0,
    "books": 14.0,
    "grocery": 6.0,
    "garden": 28.0,
    "automotive": 55.0,
    "pets": 20.0,
    "office": 12.0,
}

#: Window sizes (windows per day) the generator may choose; all divide a day into whole minutes.
_WINDOWS_PER_DAY = (1, 2, 3, 4, 6, 8, 12, 24, 48, 96, 288, 1440)

Rate = Annotated[float, Field(ge=0.0, le=1.0)]


class GeneratorConfig(BaseModel):
    """Everything the generator draws from; two equal configs give identical output."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    n_users: int = Field(10_000, ge=1, le=100_000_000)
    n_items: int = Field(50_000, ge=1, le=50_000_000)
    n_categories: int = Field(200, ge=1, le=1_000_000)
    days: int = Field(7, ge=1, le=3660)
    start: date = Field(date(2024, 1, 1), description="First day (UTC) of the period.")
    n_events: int | None = Field(
        None, ge=1, description="Target event count (about +-1%); overrides the session rate."
    )
    sessions_per_user_per_day: float = Field(0.3, gt=0, le=100)
    seed: int = Field(42, ge=0, le=2**63 - 1)
    item_zipf: float = Field(1.05, ge=0, le=5, description="Item popularity exponent.")
    category_zipf: float = Field(1.0, ge=0, le=5, description="Category size/traffic exponent.")
    mean_views_per_session: float = Field(6.0, ge=1, le=200)
    session_sigma: float = Field(0.9, gt=0, le=3, description="Log-normal sigma of views/session.")
    max_views_per_session: int = Field(200, ge=1, le=10_000)
    cart_rate: Rate = Field(0.08, description="Share of views followed by add_to_cart.")
    purchase_rate: Rate = Field(0.30, description="Share of carts purchased.")
    remove_rate: Rate = Field(0.15, description="Share of carts not purchased that are removed.")
    affinity_categories: int = Field(3, ge=1, le=50)
    focus_share: Rate = Field(0.65, description="Views in the session's focus category.")
    affinity_share: Rate = Field(0.20, description="Views in the user's other categories.")
    repeat_view_rate: Rate = Field(0.08, description="Views that repeat the previous item.")
    new_item_share: Rate = Field(0.05, description="Items created during the period.")
    median_view_gap_s: float = Field(35.0, gt=0, le=600)
    max_view_gap_s: float = Field(25 * 60, gt=0, lt=30 * 60)
    window_events: int = Field(
        400_000,
        ge=1_000,
        le=50_000_000,
        description="Events drawn per window (memory knob; part of the draw, so of the output).",
    )

    @model_validator(mode="after")
    def _consistent(self) -> GeneratorConfig:
        if self.n_categories > self.n_items:
            raise ValueError(
                f"n_categories ({self.n_categories}) must not exceed n_items ({self.n_items}): "
                "every category needs at least one item"
            )
        if self.focus_share + self.affinity_share > 1:
            raise ValueError(
                f"focus_share + affinity_share is {self.focus_share + self.affinity_share:.2f}; "
                "they are shares of views and must add up to at most 1"
            )
        if self.median_view_gap_s > self.max_view_gap_s:
            raise ValueError("median_view_gap_s must not exceed max_view_gap_s")
        if self.start.year < 1971:
            raise ValueError("start must be 1971-01-01 or later (epoch milliseconds)")
        return self

    # -- derived -------------------------------------------------------------------------
    @property
    def start_ms(self) -> int:
        return int(
            datetime(self.start.year, self.start.month, self.start.day, tzinfo=UTC).timestamp()
            * 1000
        )

    @property
    def end_ms(self) -> int:
        """End of the period (exclusive)."""
        return self.start_ms + self.days * DAY_MS

    @property
    def end(self) -> date:
        """Last day of the period (inclusive)."""
        return self.start + timedelta(days=self.days - 1)

    @property
    def expected_views_per_session(self) -> float:
        """Mean of the rounded, clipped log-normal number of views per session."""
        sigma = self.session_sigma
        mu = math.log(self.mean_views_per_session) - sigma * sigma / 2
        top = self.max_views_per_session

        def cdf(x: float) -> float:
            if x <= 0:
                return 0.0
            return 0.5 * (1 + math.erf((math.log(x) - mu) / (sigma * math.sqrt(2))))

        ks = np.arange(1, top + 1, dtype=float)
        upper = np.array([cdf(k + 0.5) for k in ks])
        upper[-1] = 1.0
        lower = np.r_[0.0, upper[:-1]]
        return float((ks * (upper - lower)).sum())

    @property
    def expected_events_per_session(self) -> float:
        carts = self.cart_rate
        tail = carts * (self.purchase_rate + (1 - self.purchase_rate) * self.remove_rate)
        return self.expected_views_per_session * (1 + carts + tail)

    @property
    def n_sessions(self) -> int:
        if self.n_events is not None:
            return max(1, round(self.n_events / self.expected_events_per_session))
        return max(1, round(self.n_users * self.days * self.sessions_per_user_per_day))

    @property
    def expected_events(self) -> int:
        return round(self.n_sessions * self.expected_events_per_session)


def _largest_remainder(total: int, weights: np.ndarray) -> np.ndarray:
    """Split ``total`` into integers proportional to ``weights`` (deterministic, exact sum)."""
    share = weights / weights.sum() * total
    out = np.floor(share).astype(np.int64)
    rest = total - int(out.sum())
    if rest:
        out[np.argsort(-(share - out), kind="stable")[:rest]] += 1
    return out


def _group_exclusive_cumsum(values: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Cumulative sum of ``values`` restarting at each group (groups are consecutive runs)."""
    cs = np.cumsum(values)
    excl = cs - values
    starts = np.cumsum(counts) - counts
    nonempty = counts > 0
    base = np.zeros(len(counts), dtype=values.dtype)
    base[nonempty] = excl[starts[nonempty]]
    return excl - np.repeat(base, counts)


def _searchsorted(cum: np.ndarray, values: np.ndarray) -> np.ndarray:
    """``np.searchsorted(cum, values, side="right")``; sorted queries keep a large ``cum`` in cache."""
    if len(cum) < 65_536 or len(values) < 4_096:
        return np.searchsorted(cum, values, side="right")
    order = np.argsort(values)
    out = np.empty(len(values), dtype=np.intp)
    out[order] = np.searchsorted(cum, values[order], side="right")
    return out


def _rng(seed: int, *stream: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, *stream]))


def _prefixed(prefix: str, numbers: np.ndarray, suffix: np.ndarray | None = None) -> pa.Array:
    """``prefix + str(number) [+ '-' + str(suffix)]`` as an Arrow string array, vectorised."""
    parts = [pa.scalar(prefix), pc.cast(pa.array(numbers), pa.string())]
    if suffix is not None:
        parts += [pa.scalar("-"), pc.cast(pa.array(suffix), pa.string())]
    return pc.binary_join_element_wise(*parts, "")


@dataclass(frozen=True)
class _Catalog:
    """The catalog in "slot" order: items sorted by category, then by popularity rank."""

    item_number: np.ndarray  # slot -> public item number (item_id is f"i{number}")
    category: np.ndarray  # slot -> category index
    price: np.ndarray  # slot -> price
    created_ms: np.ndarray  # slot -> created_at (epoch ms)
    cum_weight: np.ndarray  # cumulative popularity weight over slots
    cat_first: np.ndarray  # category -> first slot
    cat_size: np.ndarray  # category -> number of slots
    cat_cum: np.ndarray  # cumulative category traffic share
    cat_names: pa.Array  # category -> name
    item_ids: pa.Array  # slot -> item_id


@dataclass(frozen=True)
class HiddenModel:
    """What :meth:`ClickstreamGenerator.hidden_model` exposes: the generator's users and items.

    Users are ``u0 .. u{n_users-1}``; ``preferred[u]`` holds their ``affinity_categories``
    category names (drawn with replacement, so a repeat weighs double). Items are in the
    generator's slot order (by category, then popularity rank).
    """

    user_ids: list[str]
    activity: np.ndarray  # user -> share of the sessions
    preferred: list[tuple[str, ...]]  # user -> preferred category names
    category_share: dict[str, float]  # category name -> share of the traffic
    item_ids: list[str]
    item_category: list[str]
    item_price: np.ndarray
    item_popularity: np.ndarray  # item -> share of the traffic (sums to 1)
    focus_share: float
    affinity_share: float
    cart_rate: float
    purchase_rate: float


class ClickstreamGenerator:
    """The generator for one config: the catalog, and events as time-ordered Arrow batches."""

    def __init__(self, config: GeneratorConfig) -> None:
        self.config = config

    # -- catalog -------------------------------------------------------------------------
    @cached_property
    def _catalog(self) -> _Catalog:
        cfg = self.config
        rng = _rng(cfg.seed, 0)
        n_cat, n_items = cfg.n_categories, cfg.n_items
        cat_weight = np.arange(1, n_cat + 1, dtype=float) ** -cfg.category_zipf
        cat_size = 1 + _largest_remainder(n_items - n_cat, cat_weight)
        cat_first = np.cumsum(cat_size) - cat_size
        category = np.repeat(np.arange(n_cat), cat_size)
        rank = np.arange(n_items) - np.repeat(cat_first, cat_size)

        dept_names = np.array(list(_DEPARTMENTS))
        dept = rng.integers(0, len(dept_names), n_cat)
        dept_price = np.array(list(_DEPARTMENTS.values()))[dept]
        cat_median = dept_price * rng.lognormal(0.0, 0.5, n_cat)
        price = np.round(
            np.maximum(cat_median[category] * rng.lognormal(0.0, 0.45, n_items), 0.49), 2
        )

        # Within a category, weight by Zipf rank; each category's items share its traffic share.
        within = (rank + 1.0) ** -cfg.item_zipf
        within_total = np.add.reduceat(within, cat_first)
        weight = within / within_total[category] * (cat_weight / cat_weight.sum())[category]
        cum_weight = np.cumsum(weight)
        cum_weight /= cum_weight[-1]

        old_ms = cfg.start_ms - rng.integers(DAY_MS, 730 * DAY_MS, n_items)
        new_ms = cfg.start_ms + rng.integers(0, cfg.days * DAY_MS, n_items)
        is_new = (rng.random(n_items) < cfg.new_item_share) & (rank > 0)
        created = np.where(is_new, new_ms, old_ms)

        number = rng.permutation(n_items)
        names = [f"{dept_names[d]}/c{c:04d}" for c, d in enumerate(dept)]
        return _Catalog(
            item_number=number,
            category=category,
            price=price,
            created_ms=created,
            cum_weight=cum_weight,
            cat_first=cat_first,
            cat_size=cat_size,
            cat_cum=np.cumsum(cat_weight) / cat_weight.sum(),
            cat_names=pa.array(names, pa.string()),
            item_ids=_prefixed("i", number),
        )

    def catalog_table(self) -> pa.Table:
        """The catalog (item_id, category, price, created_at), ordered by item number."""
        cat = self._catalog
        order = np.argsort(cat.item_number)
        return pa.table(
            [
                cat.item_ids.take(pa.array(order)),
                cat.cat_names.take(pa.array(cat.category[order])),
                pa.array(cat.price[order]),
                pa.array(cat.created_ms[order], pa.timestamp("ms", tz="UTC")),
            ],
            schema=catalog_arrow_schema(),
        )

    # -- users ---------------------------------------------------------------------------
    @cached_property
    def _users(self) -> tuple[np.ndarray, np.ndarray]:
        """(cumulative activity share, preferred categories [n_users, k])."""
        cfg = self.config
        rng = _rng(cfg.seed, 1)
        activity = rng.lognormal(0.0, 1.0, cfg.n_users)
        cum = np.cumsum(activity)
        cum /= cum[-1]
        prefs = self._draw_categories(rng, (cfg.n_users, cfg.affinity_categories))
        return cum, prefs

    def _draw_categories(self, rng: np.random.Generator, size: int | tuple[int, int]) -> np.ndarray:
        cat_cum = self._catalog.cat_cum
        return np.minimum(
            np.searchsorted(cat_cum, rng.random(size), side="right"), len(cat_cum) - 1
        )

    def _draw_items(self, rng: np.random.Generator, cats: np.ndarray) -> np.ndarray:
        """One item slot per entry of ``cats``, by popularity within that category."""
        cat = self._catalog
        first = cat.cat_first[cats]
        last = first + cat.cat_size[cats] - 1
        lo = np.where(first > 0, cat.cum_weight[np.maximum(first - 1, 0)], 0.0)
        hi = cat.cum_weight[last]
        slots = _searchsorted(cat.cum_weight, lo + rng.random(len(cats)) * (hi - lo))
        return np.clip(slots, first, last)

    def hidden_model(self) -> HiddenModel:
        """The truth the clickstream is drawn from, for a simulator that plays these shoppers
        (:mod:`lambdarec.simulate`): users' activity and preferred categories, and every item's
        category, price and popularity. The same config always gives the same model."""
        cfg = self.config
        cat = self._catalog
        activity_cum, prefs = self._users
        names = np.array(cat.cat_names.to_pylist(), dtype=object)
        return HiddenModel(
            user_ids=[f"u{n}" for n in range(cfg.n_users)],
            activity=np.diff(activity_cum, prepend=0.0),
            preferred=[tuple(str(c) for c in row) for row in names[prefs]],
            category_share=dict(
                zip(names.tolist(), np.diff(cat.cat_cum, prepend=0.0).tolist(), strict=True)
            ),
            item_ids=cat.item_ids.to_pylist(),
            item_category=names[cat.category].tolist(),
            item_price=cat.price,
            item_popularity=np.diff(cat.cum_weight, prepend=0.0),
            focus_share=cfg.focus_share,
            affinity_share=cfg.affinity_share,
            cart_rate=cfg.cart_rate,
            purchase_rate=cfg.purchase_rate,
        )

    # -- windows -------------------------------------------------------------------------
    @cached_property
    def _windows(self) -> tuple[int, np.ndarray, np.ndarray]:
        """(windows per day, minute weights of a day, sessions per window [days * wpd])."""
        cfg = self.config
        minutes = np.arange(24 * 60) / 60.0
        minute_w = np.interp(minutes, np.arange(25), np.r_[_HOURLY, _HOURLY[0]])
        weekday = np.array([(cfg.start + timedelta(days=d)).weekday() for d in range(cfg.days)])
        day_w = np.where(weekday >= 5, _WEEKEND_BOOST, 1.0)
        day_sessions = _largest_remainder(cfg.n_sessions, day_w)
        peak_events = day_sessions.max() * cfg.expected_events_per_session
        per_day = next(
            (w for w in _WINDOWS_PER_DAY if peak_events / w <= cfg.window_events),
            _WINDOWS_PER_DAY[-1],
        )
        window_w = minute_w.reshape(per_day, -1).sum(axis=1)
        sessions = np.concatenate([_largest_remainder(int(n), window_w) for n in day_sessions])
        return per_day, minute_w, sessions

    @property
    def n_windows(self) -> int:
        return len(self._windows[2])

    @cached_property
    def _first_session(self) -> np.ndarray:
        sessions = self._windows[2]
        return np.cumsum(sessions) - sessions

    def _window_events(self, w: int) -> dict[str, np.ndarray]:
        """The events of the sessions that start in window ``w`` (columns as numpy arrays)."""
        cfg = self.config
        cat = self._catalog
        user_cum, prefs = self._users
        per_day, minute_w, sessions = self._windows
        n = int(sessions[w])
        first_session = int(self._first_session[w])
        rng = _rng(cfg.seed, 2, w)
        win_minutes = 1440 // per_day
        win_start = cfg.start_ms + w * win_minutes * MINUTE_MS

        # Sessions: start minute by the diurnal curve, user by activity, focus category.
        mw = minute_w[(w % per_day) * win_minutes : (w % per_day + 1) * win_minutes]
        minute = np.searchsorted(np.cumsum(mw) / mw.sum(), rng.random(n), side="right")
        start = win_start + minute * MINUTE_MS + rng.integers(0, MINUTE_MS, n)
        user = np.minimum(_searchsorted(user_cum, rng.random(n)), cfg.n_users - 1)
        k = cfg.affinity_categories
        focus = prefs[user, rng.integers(0, k, n)]
        sigma = cfg.session_sigma
        mu = math.log(cfg.mean_views_per_session) - sigma * sigma / 2
        n_views = np.clip(np.rint(rng.lognormal(mu, sigma, n)), 1, cfg.max_views_per_session)
        n_views = n_views.astype(np.int64)

        # Views: category by focus / affinity / anywhere, then item by popularity.
        sess = np.repeat(np.arange(n), n_views)
        v = len(sess)
        pos = np.arange(v) - np.repeat(np.cumsum(n_views) - n_views, n_views)
        r = rng.random(v)
        cats = np.where(
            r < cfg.focus_share,
            focus[sess],
            np.where(
                r < cfg.focus_share + cfg.affinity_share,
                prefs[user[sess], rng.integers(0, k, v)],
                self._draw_categories(rng, v),
            ),
        )
        slot = self._draw_items(rng, cats)

        gap_mu = math.log(cfg.median_view_gap_s * 1000)
        gaps = np.clip(rng.lognormal(gap_mu, 1.1, v), 1000, cfg.max_view_gap_s * 1000).astype(
            np.int64
        )
        rel = _group_exclusive_cumsum(gaps, n_views)

        # Funnel: cart right after its view, before the next view; removes, then purchases, after
        # the last view.
        carted = np.flatnonzero(rng.random(v) < cfg.cart_rate)
        cart_rel = rel[carted] + (gaps[carted] * rng.uniform(0.15, 0.6, len(carted))).astype(
            np.int64
        )
        bought = rng.random(len(carted)) < cfg.purchase_rate
        removed = ~bought & (rng.random(len(carted)) < cfg.remove_rate)
        session_end = rel[np.cumsum(n_views) - 1] + gaps[np.cumsum(n_views) - 1]
        tail_idx = np.concatenate([carted[removed], carted[bought]])
        tail_type = np.r_[np.full(removed.sum(), REMOVE), np.full(bought.sum(), PURCHASE)]
        tail_sess = sess[tail_idx]
        order = np.lexsort((tail_idx, tail_type, tail_sess))
        tail_idx, tail_type, tail_sess = tail_idx[order], tail_type[order], tail_sess[order]
        tail_counts = np.bincount(tail_sess, minlength=n)
        steps = rng.integers(1500, 15_000, len(tail_idx))
        tail_rel = session_end[tail_sess] + _group_exclusive_cumsum(steps, tail_counts) + steps

        ev_sess = np.concatenate([sess, sess[carted], tail_sess])
        ev_rel = np.concatenate([rel, cart_rel, tail_rel])
        ev_type = np.concatenate([np.full(v, VIEW), np.full(len(carted), CART), tail_type]).astype(
            np.int8
        )

        # Keep sessions inside the period: a session that would run past its end starts earlier
        # (never before its window, so event-time order across windows holds).
        duration = np.zeros(n, dtype=np.int64)
        np.maximum.at(duration, ev_sess, ev_rel)
        start = np.maximum(np.minimum(start, cfg.end_ms - 1 - duration), win_start)

        # Items not yet created at the time of a view: redraw once, then take the category's head
        # (always an old item).
        start_v = start[sess]  # final session starts (after the clamp)
        too_new = cat.created_ms[slot] > start_v + rel
        if too_new.any():
            slot[too_new] = self._draw_items(rng, cats[too_new])
            too_new = cat.created_ms[slot] > start_v + rel
            slot[too_new] = cat.cat_first[cats[too_new]]
        repeat = (rng.random(v) < cfg.repeat_view_rate) & (pos > 0)
        slot[repeat] = slot[np.flatnonzero(repeat) - 1]

        ev_slot = np.concatenate([slot, slot[carted], slot[tail_idx]])

        order = np.lexsort((ev_rel, ev_sess))
        ev_sess, ev_rel, ev_slot, ev_type = (
            ev_sess[order],
            ev_rel[order],
            ev_slot[order],
            ev_type[order],
        )
        counts = np.bincount(ev_sess, minlength=n)
        return {
            "ts": start[ev_sess] + ev_rel,
            "session": first_session + ev_sess,
            "pos": np.arange(len(ev_sess)) - np.repeat(np.cumsum(counts) - counts, counts),
            "user": user[ev_sess],
            "slot": ev_slot,
            "type": ev_type,
        }

    def _to_table(self, cols: dict[str, np.ndarray]) -> pa.Table:
        cat = self._catalog
        slot = pa.array(cols["slot"])
        return pa.table(
            [
                _prefixed("e", cols["session"], cols["pos"]),
                _prefixed("u", cols["user"]),
                _prefixed("s", cols["session"]),
                cat.item_ids.take(slot),
                pa.array([t.value for t in _TYPE_NAMES], pa.string()).take(pa.array(cols["type"])),
                cat.cat_names.take(pa.array(cat.category[cols["slot"]])),
                pa.array(cat.price[cols["slot"]]),
                pa.array(cols["ts"], pa.timestamp("ms", tz="UTC")),
            ],
            schema=canonical_arrow_schema(),
        )

    def iter_tables(self) -> Iterator[pa.Table]:
        """One canonical table per window, in event-time order (ties: session, then position)."""
        carry: dict[str, np.ndarray] | None = None
        last = self.n_windows - 1
        per_day = self._windows[0]
        window_ms = DAY_MS // per_day
        for w in range(self.n_windows):
            cols = self._window_events(w)
            if carry is not None:
                cols = {k: np.concatenate([carry[k], cols[k]]) for k in cols}
            order = np.lexsort((cols["pos"], cols["session"], cols["ts"]))
            cols = {k: a[order] for k, a in cols.items()}
            cut = (
                len(cols["ts"])
                if w == last
                else int(np.searchsorted(cols["ts"], self.config.start_ms + (w + 1) * window_ms))
            )
            carry = {k: a[cut:] for k, a in cols.items()}
            if cut:
                yield self._to_table({k: a[:cut] for k, a in cols.items()})


def iter_event_batches(
    config: GeneratorConfig, *, batch_rows: int = 100_000
) -> Iterator[pa.RecordBatch]:
    """Canonical event batches of at most ``batch_rows`` rows, in event-time order.

    Memory stays bounded by the window size (``config.window_events``), so this streams 10M+
    events. Feed it to :func:`lambdarec.data.lake.write_events` or a replayer.
    """
    if batch_rows < 1:
        raise ValueError("batch_rows must be at least 1")
    for table in ClickstreamGenerator(config).iter_tables():
        yield from table.to_batches(max_chunksize=batch_rows)


def generate_catalog(config: GeneratorConfig) -> pd.DataFrame:
    """The catalog as a DataFrame: item_id, category, price, created_at (UTC ms)."""
    return ClickstreamGenerator(config).catalog_table().to_pandas()


def generate_events(config: GeneratorConfig, *, max_rows: int = 20_000_000) -> pd.DataFrame:
    """All events as one canonical DataFrame (for small sizes; stream larger ones)."""
    if config.expected_events > max_rows:
        raise ValueError(
            f"about {config.expected_events:,} events expected, more than max_rows={max_rows:,}; "
            "use iter_event_batches() to stream them, or raise max_rows"
        )
    tables = list(ClickstreamGenerator(config).iter_tables())
    if not tables:
        return canonical_arrow_schema().empty_table().to_pandas()
    return pa.concat_tables(tables).to_pandas()
