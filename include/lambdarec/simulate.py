"""Simulated shoppers browsing through the real HTTP API of a running serving app.

Each shopper is a user of the synthetic generator (:mod:`lambdarec.data.generator`) with its
hidden preferences: the categories it prefers, and the items' prices and popularity. A session
asks ``/recommend``, looks at the list with position bias, clicks what its preferences make it
click, may add it to the cart and buy it, asks again (the list follows the session), and ends
after a few steps; sometimes it browses an item of its own, not from any list. Every click names
the list it came from in ``context`` (``request_id``, ``position``), the way a client echoes it,
so the online attribution and the A/B readout can be tested end to end. The simulator keeps its
own tally (lists per variant, clicks, purchases) and, per variant and shopper, the counts the A/B
readout takes (:meth:`Summary.user_rows`), so a readout can be checked against it or computed
from it.

The choice model, written down once:

* **Examination** (position bias): the position-based model, position ``p`` (0-based) is looked
  at with probability ``1 / (1 + p) ** 0.7``, independently of the others; the shopper scans top
  down and takes the first examined item it finds attractive (one click per list: the list is
  asked again after each action).
* **Attractiveness**: ``(0.01 + 0.3 * affinity) * price_factor * quality``, capped at 0.95;
  ``affinity`` is the share of the shopper's preferred categories that are the item's (0, 1/3,
  2/3 or 1 with three), ``price_factor = (price / category median) ** -sensitivity`` (clipped to
  0.3..2; the generator has no price sensitivity, so each shopper draws one, log-normal around 1,
  from the simulator's seed) and ``quality`` grows from 0.7 to 1.3 with the item's popularity
  percentile. So a list of the shopper's categories is clicked far more than a popularity list.
* **Funnel**: a click is carted with ``min(0.9, 3 * cart_rate * (0.5 + affinity) *
  price_factor)`` and a cart bought with ``min(0.95, purchase_rate * (0.5 + affinity) *
  1.5 * price_factor)`` (the generator's rates, scaled by the same preferences).
* **Browsing**: when nothing on a list appeals, the shopper views an item of a preferred
  category (by popularity) with probability 0.5, without ``request_id`` (the user+item
  attribution path), else leaves.

Requests are paced by one token bucket for the whole run (``rps``), from a small thread pool;
429 and 503 answers are retried after their ``Retry-After``.
"""

from __future__ import annotations

import itertools
import logging
import math
import threading
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import numpy as np

from lambdarec.events import format_ts
from lambdarec.monitoring.ab import DEFAULT_K as READOUT_K

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    from lambdarec.config import Settings
    from lambdarec.data.generator import GeneratorConfig, HiddenModel

log = logging.getLogger(__name__)

#: Exponent of the position-based examination probability ``1 / (1 + p) ** EXAMINATION_EXPONENT``.
EXAMINATION_EXPONENT = 0.7
ATTRACT_OTHER = 0.01
ATTRACT_PREFERRED = 0.3
ATTRACT_MAX = 0.95
#: When nothing on a list appeals: the chance the shopper browses an item of its own.
BROWSE_SHARE = 0.5
#: Steps (lists asked) of a session: uniform from 2 to this.
MAX_STEPS = 8
LIST_SIZE = 10
MAX_RETRIES = 5
#: The demo's A/B budget (``make demo``'s online-loop step): shoppers, minutes and requests a
#: second. ``make bench-ab`` measures the readout's power and its A/A false alarms at it.
DEMO_SHOPPERS = 500
DEMO_MINUTES = 3.0
DEMO_RPS = 20.0
TIMEOUT_S = 10.0


class SimulateError(ValueError):
    """An argument or a state the simulator cannot run with; the message names the fix."""


# -- the shoppers ----------------------------------------------------------------------------
def examination(position: int, exponent: float = EXAMINATION_EXPONENT) -> float:
    """Probability that a shopper looks at the item at ``position`` (0-based) of a list."""
    if position < 0:
        raise ValueError(f"position {position} is negative; positions start at 0")
    return float((1.0 + position) ** -exponent)


@dataclass(frozen=True)
class Shopper:
    user_id: str
    preferred: tuple[str, ...]
    price_sensitivity: float
    activity: float

    def affinity(self, category: str | None) -> float:
        """Share of the shopper's preferred categories that are ``category`` (0..1)."""
        if not category or not self.preferred:
            return 0.0
        return self.preferred.count(category) / len(self.preferred)


class Population:
    """``users`` shoppers of the generator's hidden model, and what they know of the items."""

    def __init__(self, model: HiddenModel, users: int, seed: int = 0) -> None:
        n = len(model.user_ids)
        if not 1 <= users <= n:
            raise SimulateError(
                f"--users {users} is not within 1..{n} (the users of the generated data); "
                "lower it, or raise --data-users to the size the data was generated with"
            )
        rng = np.random.default_rng(np.random.SeedSequence([seed, 7]))
        chosen = np.sort(rng.choice(n, size=users, replace=False, p=model.activity))
        sensitivity = rng.lognormal(0.0, 0.5, users)
        self.model = model
        self.shoppers = [
            Shopper(
                model.user_ids[u],
                model.preferred[u],
                float(sensitivity[i]),
                float(model.activity[u]),
            )
            for i, u in enumerate(chosen)
        ]
        weights = np.array([s.activity for s in self.shoppers])
        self.weights = weights / weights.sum()
        self.index = {item: n for n, item in enumerate(model.item_ids)}
        price = np.asarray(model.item_price, dtype=float)
        cats = np.asarray(model.item_category, dtype=object)
        self.category_median = {str(c): float(np.median(price[cats == c])) for c in set(cats)}
        popularity = np.asarray(model.item_popularity, dtype=float)
        pct = np.empty(len(popularity))
        pct[np.argsort(popularity, kind="stable")] = np.linspace(0.0, 1.0, len(popularity))
        self.quality = 0.7 + 0.6 * pct
        self._by_category: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for c in self.category_median:
            slots = np.flatnonzero(cats == c)
            w = popularity[slots]
            self._by_category[c] = (slots, w / w.sum())

    @classmethod
    def from_config(cls, config: GeneratorConfig, users: int, seed: int = 0) -> Population:
        from lambdarec.data.generator import ClickstreamGenerator

        return cls(ClickstreamGenerator(config).hidden_model(), users, seed)

    def _price_factor(self, shopper: Shopper, item_id: str, category: str | None) -> float:
        n = self.index.get(item_id)
        if n is None:
            return 1.0
        median = self.category_median.get(self.model.item_category[n]) or 1.0
        ratio = max(float(self.model.item_price[n]), 0.01) / median
        return float(np.clip(ratio**-shopper.price_sensitivity, 0.3, 2.0))

    def category_of(self, item_id: str, shown: str | None = None) -> str | None:
        """The category a list showed for the item, else the hidden model's."""
        if shown:
            return shown
        n = self.index.get(item_id)
        return None if n is None else self.model.item_category[n]

    def click_probability(self, shopper: Shopper, item_id: str, category: str | None) -> float:
        category = self.category_of(item_id, category)
        n = self.index.get(item_id)
        quality = 1.0 if n is None else float(self.quality[n])
        base = ATTRACT_OTHER + ATTRACT_PREFERRED * shopper.affinity(category)
        return min(ATTRACT_MAX, base * self._price_factor(shopper, item_id, category) * quality)

    def cart_probability(self, shopper: Shopper, item_id: str, category: str | None) -> float:
        category = self.category_of(item_id, category)
        lift = (0.5 + shopper.affinity(category)) * self._price_factor(shopper, item_id, category)
        return min(0.9, 3 * self.model.cart_rate * lift)

    def purchase_probability(self, shopper: Shopper, item_id: str, category: str | None) -> float:
        category = self.category_of(item_id, category)
        lift = (0.5 + shopper.affinity(category)) * self._price_factor(shopper, item_id, category)
        return min(0.95, 1.5 * self.model.purchase_rate * lift)

    def price_of(self, item_id: str) -> float | None:
        n = self.index.get(item_id)
        return None if n is None else float(self.model.item_price[n])

    def browse(self, shopper: Shopper, rng: np.random.Generator) -> str:
        """An item the shopper finds by itself: a preferred category, by popularity."""
        category = shopper.preferred[int(rng.integers(len(shopper.preferred)))]
        slots, p = self._by_category.get(category) or next(iter(self._by_category.values()))
        return self.model.item_ids[int(rng.choice(slots, p=p))]

    def pick(self, rng: np.random.Generator) -> int:
        """A shopper's index, by activity."""
        return int(rng.choice(len(self.shoppers), p=self.weights))


def choose(
    population: Population,
    shopper: Shopper,
    items: Sequence[Mapping[str, Any]],
    rng: np.random.Generator,
) -> int | None:
    """The index in ``items`` the shopper clicks, or None: scan top down, each position examined
    with :func:`examination`, the first examined item that appeals is taken."""
    for n, item in enumerate(items):
        position = int(item.get("position", n))
        if rng.random() >= examination(position):
            continue
        p = population.click_probability(shopper, str(item["item_id"]), item.get("category"))
        if rng.random() < p:
            return n
    return None


# -- pacing and HTTP ----------------------------------------------------------------------------
class TokenBucket:
    """``rate`` requests a second for all threads together, ``burst`` at once.

    A taker that finds no token reserves the next one (the count goes below zero) and is told how
    long to wait for it, so concurrent takers queue up in order instead of all waking at once.
    """

    def __init__(
        self,
        rate: float,
        burst: int = 1,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], object] = time.sleep,
    ) -> None:
        if not rate > 0:
            raise SimulateError(f"--rps {rate} is not positive; give requests a second, e.g. 10")
        self.rate, self.burst, self.clock, self.sleep = rate, max(1, burst), clock, sleep
        self._tokens = float(self.burst)
        self._then = clock()
        self._lock = threading.Lock()

    def reserve(self) -> float:
        """Take a token; return the seconds to wait before using it (0: use it now)."""
        with self._lock:
            now = self.clock()
            self._tokens = min(float(self.burst), self._tokens + (now - self._then) * self.rate)
            self._then = now
            self._tokens -= 1
            return 0.0 if self._tokens >= 0 else -self._tokens / self.rate

    def acquire(self) -> None:
        wait = self.reserve()
        if wait > 0:
            self.sleep(wait)


@dataclass(frozen=True)
class Answer:
    status: int
    headers: Mapping[str, str]
    body: Any


def requests_transport() -> Callable[..., Answer]:
    """HTTP with one keep-alive ``requests.Session`` per thread."""
    import requests

    local = threading.local()

    def send(
        method: str,
        url: str,
        headers: dict[str, str],
        params: dict[str, Any] | None,
        body: Any,
        timeout_s: float,
    ) -> Answer:
        session = getattr(local, "session", None)
        if session is None:
            session = local.session = requests.Session()
        try:
            resp = session.request(
                method, url, headers=headers, params=params, json=body, timeout=timeout_s
            )
        except requests.Timeout as exc:
            raise TimeoutError(str(exc)) from None
        except requests.RequestException as exc:
            raise ConnectionError(str(exc)) from None
        try:
            payload = resp.json()
        except ValueError:
            payload = None
        return Answer(resp.status_code, dict(resp.headers), payload)

    return send


def retry_after_s(headers: Mapping[str, str], default: float = 1.0) -> float:
    """Seconds of a ``Retry-After`` header (the delta form; a date or garbage gives ``default``)."""
    value = next((v for k, v in headers.items() if k.lower() == "retry-after"), None)
    try:
        seconds = float(value) if value is not None else default
    except ValueError:
        return default
    return seconds if math.isfinite(seconds) and seconds >= 0 else default


class AccessRefused(SimulateError):
    pass


# -- the tally ---------------------------------------------------------------------------------
@dataclass
class VariantStats:
    lists: int = 0
    #: Items on those lists (the impressions serving logged for them, one per shown item).
    shown: int = 0
    clicks: int = 0
    carts: int = 0
    purchases: int = 0

    @property
    def ctr(self) -> float:
        """Share of the shown lists the shopper clicked (one click at most per list)."""
        return self.clicks / self.lists if self.lists else 0.0


@dataclass
class UserStats:
    """One shopper's record under one variant, in the A/B readout's per-user counts
    (:data:`lambdarec.monitoring.ab.USER_COLUMNS`): the items serving showed it and what it did
    with them, as the online metrics job counts them from the lake (``revenue`` is the price of
    each purchase from a list; ``*_top_k`` count positions below :data:`READOUT_K`)."""

    impressions: int = 0
    lists: int = 0
    shown_top_k: int = 0
    clicks: int = 0
    clicks_top_k: int = 0
    carts: int = 0
    purchases: int = 0
    revenue: float = 0.0


@dataclass
class Summary:
    """What a run did, from the simulator's side."""

    sessions: int = 0
    lists: int = 0
    events: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    retries: int = 0
    #: Per (variant, user_id): what the A/B readout needs of each shopper (:meth:`user_rows`);
    #: :attr:`variants` sums them.
    users: dict[tuple[str, str], UserStats] = field(default_factory=dict)
    browsed: int = 0
    seconds: float = 0.0
    interrupted: bool = False
    #: The run's tag: every session id of the run is ``sim-<tag>-<n>`` (and every event id
    #: ``sim-<tag>-<n>-<m>``), so the run's impressions and events can be told from others'.
    tag: str = ""

    @property
    def variants(self) -> dict[str, VariantStats]:
        """Per variant, the sums of its shoppers' records (lists, items shown, actions)."""
        out: dict[str, VariantStats] = {}
        for (variant, _), user in self.users.items():
            stats = out.setdefault(variant, VariantStats())
            stats.lists += user.lists
            stats.shown += user.impressions
            stats.clicks += user.clicks
            stats.carts += user.carts
            stats.purchases += user.purchases
        return out

    @property
    def session_prefix(self) -> str:
        return f"sim-{self.tag}-"

    def as_dict(self) -> dict[str, Any]:
        return {
            "tag": self.tag,
            "sessions": self.sessions,
            "lists": self.lists,
            "events": dict(self.events),
            "errors": dict(self.errors),
            "retries": self.retries,
            "browsed_off_list": self.browsed,
            "seconds": round(self.seconds, 2),
            "interrupted": self.interrupted,
            "variants": {
                name: {
                    "lists": v.lists,
                    "shown": v.shown,
                    "clicks": v.clicks,
                    "carts": v.carts,
                    "purchases": v.purchases,
                    "ctr": round(v.ctr, 4),
                }
                for name, v in sorted(self.variants.items())
            },
        }

    def user_rows(self) -> list[dict[str, Any]]:
        """One row per (variant, user) with the readout's counts, the rows
        :func:`lambdarec.monitoring.ab.readout` takes once given a ``day``."""
        return [
            {"variant": variant, "user_id": user, **asdict(stats)}
            for (variant, user), stats in sorted(self.users.items())
        ]


class _Tally:
    """The run's :class:`Summary`, updated by every thread."""

    def __init__(self) -> None:
        self.summary = Summary()
        self.lock = threading.Lock()

    def incr(self, name: str) -> None:
        with self.lock:
            setattr(self.summary, name, getattr(self.summary, name) + 1)

    def error(self, key: str) -> None:
        with self.lock:
            self.summary.errors[key] += 1

    def event(self, kind: str) -> None:
        with self.lock:
            self.summary.events[kind] += 1

    def _count(self, variant: str, what: str, user_id: str) -> UserStats:
        """One more list, click, cart or purchase in the user's record under ``variant`` (the
        caller holds the lock)."""
        user = self.summary.users.setdefault((variant, user_id), UserStats())
        setattr(user, what, getattr(user, what) + 1)
        return user

    def shown(self, variant: str, user_id: str, positions: Sequence[int]) -> None:
        """A list served to ``user_id`` under ``variant`` with items at ``positions``."""
        with self.lock:
            user = self._count(variant, "lists", user_id)
            user.impressions += len(positions)
            user.shown_top_k += sum(p < READOUT_K for p in positions)

    def acted(
        self, variant: str, user_id: str, what: str, position: int, revenue: float = 0.0
    ) -> None:
        """A click, cart or purchase (``what``) on the item at ``position`` of a list."""
        with self.lock:
            user = self._count(variant, what, user_id)
            if what == "clicks" and position < READOUT_K:
                user.clicks_top_k += 1
            user.revenue += revenue


class ServingClient:
    """``/recommend`` and ``/events`` of one serving app: paced, retried, counted."""

    def __init__(
        self,
        base_url: str,
        *,
        bucket: TokenBucket,
        api_key: str | None = None,
        transport: Callable[..., Answer] | None = None,
        sleep: Callable[[float], object] = time.sleep,
        max_retries: int = MAX_RETRIES,
        timeout_s: float = TIMEOUT_S,
        tally: _Tally | None = None,
    ) -> None:
        self.base = base_url.rstrip("/")
        self.bucket, self.sleep = bucket, sleep
        self.transport = transport or requests_transport()
        self.max_retries, self.timeout_s = max_retries, timeout_s
        self.tally = tally or _Tally()
        self.headers = {"Accept": "application/json"}
        if api_key:
            self.headers["X-API-Key"] = api_key

    def call(
        self, method: str, path: str, *, params: dict[str, Any] | None = None, body: Any = None
    ) -> Answer | None:
        """The 2xx answer, or None (counted under its status, or ``connection``).

        Raises :class:`AccessRefused` on 401/403: no later request would do better."""
        for attempt in itertools.count():
            self.bucket.acquire()
            try:
                answer = self.transport(
                    method, self.base + path, self.headers, params, body, self.timeout_s
                )
            except OSError as exc:  # ConnectionError, TimeoutError
                log.debug("%s %s: %s", method, path, exc)
                self.tally.error("timeout" if isinstance(exc, TimeoutError) else "connection")
                return None
            if answer.status in (429, 503) and attempt < self.max_retries:
                self.tally.incr("retries")
                self.sleep(retry_after_s(answer.headers))
                continue
            if 200 <= answer.status < 300:
                return answer
            status = answer.status
            self.tally.error(str(status))
            if status in (401, 403):
                message = _error_message(answer.body)
                raise AccessRefused(
                    f"{method} {path} answered {status} ({message}); pass --api-key with a key "
                    "holding the recommend and events scopes (`lambdarec api-key new`)"
                )
            return None
        raise AssertionError("unreachable")  # pragma: no cover

    def recommend(self, user_id: str, session_id: str, k: int) -> dict[str, Any] | None:
        answer = self.call(
            "GET", "/recommend", params={"user_id": user_id, "session_id": session_id, "k": k}
        )
        if answer is None or not isinstance(answer.body, dict):
            return None
        self.tally.incr("lists")
        return answer.body

    def post_event(self, event: dict[str, Any]) -> bool:
        answer = self.call("POST", "/events", body=event)
        if answer is None:
            return False
        self.tally.event(str(event["event_type"]))
        return True


def _error_message(body: Any) -> str:
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return str(body["error"].get("message", ""))[:200]
    return "no JSON error"


def event_payload(
    *,
    event_id: str,
    shopper: Shopper,
    session_id: str,
    item_id: str,
    event_type: str,
    category: str | None,
    price: float | None,
    request_id: str | None = None,
    position: int | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """An event of the contract; a click from a list carries its ``request_id`` and ``position``
    in ``context``, an off-list view carries neither."""
    event: dict[str, Any] = {
        "event_id": event_id,
        "user_id": shopper.user_id,
        "session_id": session_id,
        "item_id": item_id,
        "event_type": event_type,
        "ts": format_ts(now or datetime.now(UTC)),
    }
    if category:
        event["category"] = category
    if price is not None:
        event["price"] = price
    if request_id is not None:
        event["context"] = {"request_id": request_id, "position": int(position or 0)}
    return event


# -- a session ---------------------------------------------------------------------------------
def run_session(
    client: ServingClient,
    population: Population,
    shopper: Shopper,
    session_id: str,
    rng: np.random.Generator,
    *,
    k: int = LIST_SIZE,
    max_steps: int = MAX_STEPS,
    keep_going: Callable[[], bool] = lambda: True,
) -> None:
    """One shopper's session: a list, a reaction, the list again, ... for 2..max_steps lists
    (fewer when the shopper leaves, or ``keep_going()`` turns false: the run's end)."""
    tally = client.tally
    counter = itertools.count()

    def post(item_id: str, kind: str, category: str | None, **ctx: Any) -> bool:
        event = event_payload(
            event_id=f"{session_id}-{next(counter)}",
            shopper=shopper,
            session_id=session_id,
            item_id=item_id,
            event_type=kind,
            category=population.category_of(item_id, category),
            price=population.price_of(item_id),
            **ctx,
        )
        return client.post_event(event)

    steps = int(rng.integers(2, max(2, max_steps) + 1))
    for _ in range(steps):
        if not keep_going():
            return
        answer = client.recommend(shopper.user_id, session_id, k)
        if answer is None:
            return
        items = [i for i in answer.get("items", []) if isinstance(i, dict) and "item_id" in i]
        variant = str(answer.get("variant") or "unknown")
        tally.shown(
            variant, shopper.user_id, [int(i.get("position", n)) for n, i in enumerate(items)]
        )
        picked = choose(population, shopper, items, rng)
        if picked is None:
            if rng.random() >= BROWSE_SHARE:
                return  # nothing appealed: the shopper leaves
            if post(population.browse(shopper, rng), "view", None):
                tally.incr("browsed")
            continue
        item = items[picked]
        item_id, category = str(item["item_id"]), item.get("category")
        position = int(item.get("position", picked))
        request_id = answer.get("request_id")
        # A list without a request id (an older serving) cannot be attributed: clicks go as
        # plain views, never with a made-up id.
        ctx: dict[str, Any] = (
            {"request_id": request_id, "position": position}
            if isinstance(request_id, str) and request_id
            else {}
        )
        if not post(item_id, "view", category, **ctx):
            continue
        tally.acted(variant, shopper.user_id, "clicks", position)
        if rng.random() >= population.cart_probability(shopper, item_id, category):
            continue
        if not post(item_id, "add_to_cart", category, **ctx):
            continue
        tally.acted(variant, shopper.user_id, "carts", position)
        if rng.random() < population.purchase_probability(shopper, item_id, category) and post(
            item_id, "purchase", category, **ctx
        ):
            price = population.price_of(item_id)
            tally.acted(variant, shopper.user_id, "purchases", position, price or 0.0)


# -- a run -------------------------------------------------------------------------------------
def check_args(*, users: int, minutes: float, rps: float, threads: int, base_url: str) -> str:
    """Refuse arguments the run cannot use (one line naming the fix); the normalised URL."""
    if users < 1:
        raise SimulateError(f"--users {users} is not positive; simulate at least 1 shopper")
    if not (minutes > 0 and math.isfinite(minutes)):
        raise SimulateError(f"--minutes {minutes} is not positive; run for e.g. --minutes 1")
    if not (rps > 0 and math.isfinite(rps)):
        raise SimulateError(f"--rps {rps} is not positive; give requests a second, e.g. --rps 10")
    if threads < 1:
        raise SimulateError(f"--threads {threads} is not positive; use e.g. --threads 4")
    parts = urlsplit(base_url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SimulateError(
            f"--base-url {base_url!r} is not an http(s) URL; give it like http://127.0.0.1:8000"
        )
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise SimulateError(
            f"--base-url {base_url!r} has a bad port; give it like http://127.0.0.1:8000"
        ) from None
    return base_url.strip().rstrip("/")


def reachable(base_url: str, timeout_s: float = 3.0) -> str | None:
    """None when ``base_url/health`` answers 200, else why not."""
    import requests

    try:
        resp = requests.get(f"{base_url}/health", timeout=timeout_s)
    except requests.RequestException as exc:
        return type(exc).__name__
    return None if resp.status_code == 200 else f"/health answered {resp.status_code}"


def default_base_url(settings: Settings) -> str:
    """The proxy's public URL when it answers, else serving's own port (loopback)."""
    host = settings.bind_host
    candidates = [f"http://{host}:{settings.proxy_port}", f"http://{host}:{settings.serving_port}"]
    for url in candidates:
        if reachable(url, timeout_s=1.0) is None:
            return url
    raise SimulateError(
        f"no serving app answers at {' or '.join(candidates)}; start it with "
        "`lambdarec platform up serving` (or `up proxy`), or pass --base-url"
    )


def run(
    population: Population,
    *,
    base_url: str,
    minutes: float,
    rps: float,
    api_key: str | None = None,
    seed: int = 0,
    threads: int = 4,
    k: int = LIST_SIZE,
    max_sessions: int | None = None,
    check_url: bool = True,
    progress: bool = True,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], object] = time.sleep,
    transport: Callable[..., Answer] | None = None,
) -> Summary:
    """Run sessions of the population's shoppers against ``base_url`` for ``minutes`` (or until
    ``max_sessions`` sessions started), ``rps`` requests a second over ``threads`` threads.

    Each session draws its shopper and every decision from ``(seed, session number)``, so the
    same answers give the same clicks. Raises :class:`SimulateError` on bad arguments, an
    unreachable URL, or a key the API refuses (401/403)."""
    from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait

    from tqdm import tqdm

    base_url = check_args(
        users=len(population.shoppers), minutes=minutes, rps=rps, threads=threads, base_url=base_url
    )
    if max_sessions is not None and max_sessions < 1:
        raise SimulateError(f"max_sessions {max_sessions} is not positive")
    if check_url:
        why = reachable(base_url)
        if why is not None:
            raise SimulateError(
                f"serving at {base_url} is not reachable ({why}); start it with "
                "`lambdarec platform up serving` or pass --base-url of a running app"
            )
    # A shopper is in one session at a time: more threads than shoppers would idle.
    threads = min(threads, len(population.shoppers))
    tally = _Tally()
    tally.summary.tag = run_tag = uuid.uuid4().hex[:10]
    bucket = TokenBucket(rps, clock=clock, sleep=sleep)
    client = ServingClient(
        base_url, bucket=bucket, api_key=api_key, transport=transport, sleep=sleep, tally=tally
    )
    started = clock()
    deadline = started + minutes * 60.0
    numbers = itertools.count()
    busy: set[int] = set()
    lock = threading.Lock()
    stop = threading.Event()

    def next_session() -> tuple[int, int, np.random.Generator] | None:
        with lock:
            if stop.is_set() or clock() >= deadline:
                return None
            number = next(numbers)
            if max_sessions is not None and number >= max_sessions:
                return None
            rng = np.random.default_rng(np.random.SeedSequence([seed, 11, number]))
            who = population.pick(rng)
            if who in busy:  # a shopper is in one session at a time: the next idle one
                idle = [n for n in range(len(population.shoppers)) if n not in busy]
                if not idle:
                    return None
                who = idle[int(rng.integers(len(idle)))]
            busy.add(who)
            return number, who, rng

    def worker() -> None:
        while (drawn := next_session()) is not None:
            number, who, rng = drawn
            try:
                run_session(
                    client,
                    population,
                    population.shoppers[who],
                    f"sim-{run_tag}-{number}",
                    rng,
                    k=k,
                    keep_going=lambda: not stop.is_set() and clock() < deadline,
                )
            except BaseException:
                stop.set()
                raise
            finally:
                with lock:
                    busy.discard(who)
                tally.incr("sessions")

    total_s = max(1, round(minutes * 60))
    bar = tqdm(
        total=total_s,
        desc="simulate",
        disable=not progress,
        mininterval=0.5,
        bar_format="{desc}: {percentage:3.0f}%|{bar}| {n}/{total} s [{elapsed}<{remaining}{postfix}]",
    )
    pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="shopper")
    try:
        futures = [pool.submit(worker) for _ in range(threads)]
        pending = set(futures)
        while pending:
            _, pending = wait(pending, timeout=0.5, return_when=FIRST_EXCEPTION)
            with tally.lock:
                s = tally.summary
                bar.set_postfix(
                    lists=s.lists, events=sum(s.events.values()), errors=sum(s.errors.values())
                )
            bar.update(min(total_s, round(clock() - started)) - bar.n)
            if any(f.done() and f.exception() for f in futures):
                stop.set()
    except KeyboardInterrupt:  # Ctrl-C: finish the requests in flight, report what was done
        log.warning("interrupted: stopping the shoppers after their current request")
        stop.set()
        interrupted = True
    else:
        interrupted = False
        for future in futures:
            future.result()  # raises the first worker's error (AccessRefused, ...)
    finally:
        stop.set()
        pool.shutdown(wait=True)
        bar.close()
    summary = tally.summary
    summary.seconds = clock() - started
    summary.interrupted = interrupted
    return summary


def render(summary: Summary) -> str:
    """The summary as a few readable lines."""
    lines = [
        f"{summary.sessions} sessions, {summary.lists} lists fetched in {summary.seconds:.1f} s; "
        f"{summary.browsed} off-list views; {summary.retries} retries"
        + (" (interrupted)" if summary.interrupted else ""),
        "events posted: "
        + (", ".join(f"{k} {v}" for k, v in sorted(summary.events.items())) or "none"),
        "errors by status: "
        + (", ".join(f"{k}: {v}" for k, v in sorted(summary.errors.items())) or "none"),
    ]
    for name, v in sorted(summary.variants.items()):
        lines.append(
            f"variant {name}: {v.lists} lists ({v.shown} items shown), {v.clicks} clicks "
            f"(CTR {v.ctr:.1%}), "
            f"{v.carts} carts, {v.purchases} purchases"
        )
    return "\n".join(lines)
