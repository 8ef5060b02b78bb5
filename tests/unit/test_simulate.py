"""The shopper simulator's logic: position bias, the choice model, pacing, retries, arguments and
the events it posts. No network: where a run needs an API, an in-process shop answers the
simulator's transport the way serving's /recommend and /events do."""

from __future__ import annotations

import hashlib
import threading
import uuid
from typing import Any

import numpy as np
import pytest

from lambdarec.data.generator import GeneratorConfig, generate_events
from lambdarec.events import Invalid, parse_event
from lambdarec.simulate import (
    EXAMINATION_EXPONENT,
    AccessRefused,
    Answer,
    Population,
    ServingClient,
    SimulateError,
    TokenBucket,
    check_args,
    choose,
    event_payload,
    examination,
    render,
    retry_after_s,
    run,
)

CONFIG = GeneratorConfig(n_users=400, n_items=1_000, n_categories=40, seed=3)


@pytest.fixture(scope="module")
def population() -> Population:
    return Population.from_config(CONFIG, 200, seed=5)


class FakeClock:
    """A clock that only moves when someone sleeps."""

    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []
        self._lock = threading.Lock()

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.slept.append(seconds)
            self.now += seconds


def _as_list(population: Population, slots: np.ndarray) -> list[dict[str, Any]]:
    m = population.model
    return [
        {"item_id": m.item_ids[s], "category": m.item_category[s], "position": p}
        for p, s in enumerate(slots)
    ]


def _matched_slots(population: Population, preferred: tuple[str, ...], k: int = 10) -> np.ndarray:
    m = population.model
    cats = np.asarray(m.item_category, dtype=object)
    slots = np.flatnonzero(np.isin(cats, list(preferred)))
    return slots[np.argsort(-m.item_popularity[slots], kind="stable")][:k]


def _popular_slots(population: Population, k: int = 10) -> np.ndarray:
    return np.argsort(-population.model.item_popularity, kind="stable")[:k]


# -- position bias ------------------------------------------------------------------------------
def test_examination_is_the_position_based_curve() -> None:
    probs = [examination(p) for p in range(20)]
    assert probs[0] == 1.0
    assert all(a > b for a, b in zip(probs, probs[1:], strict=False))
    assert probs[3] == pytest.approx(4**-EXAMINATION_EXPONENT)
    with pytest.raises(ValueError, match="negative"):
        examination(-1)


def test_equally_attractive_items_are_clicked_less_the_lower_they_are(
    population: Population,
) -> None:
    shopper = population.shoppers[0]
    # Items the hidden model does not know, all of one preferred category: the same appeal at
    # every position, so only the examination differs.
    items = [
        {"item_id": f"unknown-{p}", "category": shopper.preferred[0], "position": p}
        for p in range(10)
    ]
    rng = np.random.default_rng(1)
    picks = [choose(population, shopper, items, rng) for _ in range(20_000)]
    counts = np.bincount([p for p in picks if p is not None], minlength=10)
    assert counts[0] > counts[2] > counts[5] > counts[9] > 0
    assert picks.count(None) > 0, "some lists are left without a click"


# -- the choice model ----------------------------------------------------------------------------
def test_a_preference_matching_list_gets_more_clicks_than_popular_or_random(
    population: Population,
) -> None:
    rng = np.random.default_rng(2)
    popular = _as_list(population, _popular_slots(population))
    clicks = {"matched": 0, "popular": 0, "random": 0}
    shown = 0
    for shopper in population.shoppers:
        matched = _as_list(population, _matched_slots(population, shopper.preferred))
        for _ in range(10):
            shown += 1
            randoms = _as_list(population, rng.choice(len(population.model.item_ids), 10))
            for name, items in (("matched", matched), ("popular", popular), ("random", randoms)):
                clicks[name] += choose(population, shopper, items, rng) is not None
    ctr = {name: n / shown for name, n in clicks.items()}
    assert ctr["matched"] > 1.3 * ctr["popular"], ctr
    assert ctr["popular"] > ctr["random"], ctr


def test_carts_and_purchases_follow_the_preferences(population: Population) -> None:
    shopper = population.shoppers[0]
    liked = _matched_slots(population, shopper.preferred, 1)[0]
    other_cats = sorted(set(population.model.item_category) - set(shopper.preferred))
    other = _matched_slots(population, (other_cats[0],), 1)[0]
    m = population.model
    for prob in (
        population.click_probability,
        population.cart_probability,
        population.purchase_probability,
    ):
        like = prob(shopper, m.item_ids[liked], None)
        dislike = prob(shopper, m.item_ids[other], None)
        assert 0 < dislike < like <= 0.95, prob.__name__


def test_price_sensitivity_prefers_cheaper_items_of_a_category(population: Population) -> None:
    m = population.model
    shopper = next(s for s in population.shoppers if s.price_sensitivity > 0.5)
    category = shopper.preferred[0]
    slots = [n for n, c in enumerate(m.item_category) if c == category]
    cheap = min(slots, key=lambda n: m.item_price[n])
    dear = max(slots, key=lambda n: m.item_price[n])
    assert m.item_price[cheap] < m.item_price[dear]
    assert population.cart_probability(
        shopper, m.item_ids[cheap], category
    ) > population.cart_probability(shopper, m.item_ids[dear], category)


def test_the_population_is_the_generators_users(population: Population) -> None:
    ids = {s.user_id for s in population.shoppers}
    assert len(ids) == 200 and ids <= set(population.model.user_ids)
    again = Population.from_config(CONFIG, 200, seed=5)
    assert [s.user_id for s in again.shoppers] == [s.user_id for s in population.shoppers]
    first = population.model.user_ids.index(population.shoppers[0].user_id)
    assert population.shoppers[0].preferred == population.model.preferred[first]


# -- pacing and retries --------------------------------------------------------------------------
def test_token_bucket_spaces_requests_at_the_rate() -> None:
    clock = FakeClock()
    bucket = TokenBucket(5.0, clock=clock, sleep=clock.sleep)
    waits = [bucket.reserve() for _ in range(6)]
    assert waits == pytest.approx([0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
    clock.now = 100.0  # a long pause refills only up to the burst
    assert bucket.reserve() == 0.0
    assert bucket.reserve() == pytest.approx(0.2)


def test_token_bucket_acquire_sleeps_for_its_turn() -> None:
    clock = FakeClock()
    bucket = TokenBucket(2.0, burst=3, clock=clock, sleep=clock.sleep)
    for _ in range(3 + 4):
        bucket.acquire()
    assert clock.slept == pytest.approx([0.5] * 4)  # the burst at once, then the rate
    assert clock.now == pytest.approx(2.0)


def _client(
    answers: list[Answer | Exception], clock: FakeClock, **kwargs: Any
) -> tuple[ServingClient, list[tuple[str, str, dict[str, str]]]]:
    calls: list[tuple[str, str, dict[str, str]]] = []

    def transport(method: str, url: str, headers: dict[str, str], *_: Any) -> Answer:
        calls.append((method, url, dict(headers)))
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    bucket = TokenBucket(1000.0, clock=clock, sleep=clock.sleep)
    client = ServingClient(
        "http://shop.test/", bucket=bucket, transport=transport, sleep=clock.sleep, **kwargs
    )
    return client, calls


def test_429_and_503_are_retried_after_retry_after() -> None:
    clock = FakeClock()
    client, calls = _client(
        [
            Answer(429, {"Retry-After": "3"}, {}),
            Answer(503, {"retry-after": "2"}, {}),
            Answer(202, {}, {"accepted": 1}),
        ],
        clock,
        api_key="secret",
    )
    answer = client.call("POST", "/events", body={})
    assert answer is not None and answer.status == 202
    assert clock.slept == [3.0, 2.0]
    assert client.tally.summary.retries == 2 and not client.tally.summary.errors
    assert [c[1] for c in calls] == ["http://shop.test/events"] * 3
    assert all(c[2]["X-API-Key"] == "secret" for c in calls)


def test_errors_are_counted_by_status_and_a_refused_key_stops() -> None:
    clock = FakeClock()
    script: list[Answer | Exception] = [Answer(429, {}, {}) for _ in range(3)]
    script += [Answer(400, {}, {}), ConnectionError("refused"), Answer(401, {}, {"error": {}})]
    client, _ = _client(
        script,
        clock,
        max_retries=2,
    )
    assert client.call("GET", "/recommend") is None  # 429 three times: given up
    assert clock.slept == [1.0, 1.0]  # no Retry-After: one second
    assert client.call("GET", "/recommend") is None
    assert client.call("GET", "/recommend") is None
    with pytest.raises(AccessRefused, match="--api-key"):
        client.call("GET", "/recommend")
    assert client.tally.summary.errors == {"429": 1, "400": 1, "connection": 1, "401": 1}


@pytest.mark.parametrize(
    ("value", "seconds"), [("5", 5.0), ("0.5", 0.5), ("Wed, 21 Oct 2015", 1.0), ("-3", 1.0)]
)
def test_retry_after_forms(value: str, seconds: float) -> None:
    assert retry_after_s({"Retry-After": value}) == seconds


# -- arguments -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("args", "option"),
    [
        ({"users": 0}, "--users"),
        ({"minutes": 0}, "--minutes"),
        ({"minutes": float("nan")}, "--minutes"),
        ({"rps": -1}, "--rps"),
        ({"threads": 0}, "--threads"),
        ({"base_url": "127.0.0.1:8000"}, "--base-url"),
        ({"base_url": "ftp://host"}, "--base-url"),
        ({"base_url": "http://host:99999"}, "--base-url"),
    ],
)
def test_bad_arguments_are_refused_in_one_line(args: dict[str, Any], option: str) -> None:
    good: dict[str, Any] = {
        "users": 3,
        "minutes": 1.0,
        "rps": 5.0,
        "threads": 2,
        "base_url": "http://127.0.0.1:8000/",
    }
    assert check_args(**good) == "http://127.0.0.1:8000"
    with pytest.raises(SimulateError) as err:
        check_args(**{**good, **args})
    message = str(err.value)
    assert option in message and "\n" not in message
    assert any(hint in message for hint in ("e.g.", "like", "at least"))


def test_more_users_than_the_data_has_is_refused() -> None:
    with pytest.raises(SimulateError, match="--data-users"):
        Population.from_config(CONFIG, CONFIG.n_users + 1)


def test_an_unreachable_url_is_refused_before_any_session(population: Population) -> None:
    with pytest.raises(SimulateError, match="not reachable"):
        run(population, base_url="http://127.0.0.1:1", minutes=1, rps=5, progress=False)


# -- events -------------------------------------------------------------------------------------
def test_a_click_from_a_list_carries_request_id_and_position(population: Population) -> None:
    shopper = population.shoppers[0]
    rid = uuid.uuid4().hex
    clicked = event_payload(
        event_id="e1",
        shopper=shopper,
        session_id="s1",
        item_id="i1",
        event_type="add_to_cart",
        category="books/c0001",
        price=12.5,
        request_id=rid,
        position=4,
    )
    assert clicked["context"] == {"request_id": rid, "position": 4}
    browsed = event_payload(
        event_id="e2",
        shopper=shopper,
        session_id="s1",
        item_id="i2",
        event_type="view",
        category=None,
        price=None,
    )
    assert "context" not in browsed and "category" not in browsed
    for payload in (clicked, browsed):
        event = parse_event(payload)
        assert not isinstance(event, Invalid), event
        assert event.user_id == shopper.user_id


class Shop:
    """Serving's two endpoints in process: variant ``matched`` (by a hash of the user) shows the
    shopper's own categories, ``popular`` the most popular items; /events validates against the
    contract like serving does."""

    def __init__(self, population: Population) -> None:
        self.population = population
        self.preferred = {s.user_id: s.preferred for s in population.shoppers}
        self.popular = _as_list(population, _popular_slots(population))
        self.lists: dict[str, tuple[str, list[dict[str, Any]]]] = {}
        self.events: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    def variant(self, user_id: str) -> str:
        return "matched" if hashlib.sha256(user_id.encode()).digest()[0] % 2 else "popular"

    def __call__(
        self,
        method: str,
        url: str,
        headers: dict[str, str],
        params: dict[str, Any] | None,
        body: Any,
        timeout_s: float,
    ) -> Answer:
        if url.endswith("/recommend"):
            assert params is not None
            user = params["user_id"]
            variant = self.variant(user)
            if variant == "matched":
                items = _as_list(
                    self.population, _matched_slots(self.population, self.preferred[user])
                )
            else:
                items = self.popular
            rid = uuid.uuid4().hex
            with self.lock:
                self.lists[rid] = (user, items)
            return Answer(200, {}, {"request_id": rid, "variant": variant, "items": items})
        event = parse_event(body)
        if isinstance(event, Invalid):
            return Answer(400, {}, {"error": {"field": event.field, "message": event.reason}})
        with self.lock:
            self.events.append(body)
        return Answer(202, {}, {"accepted": 1})


def test_a_run_posts_attributable_events_and_the_better_list_wins(
    population: Population,
) -> None:
    shop = Shop(population)
    clock = FakeClock()
    summary = run(
        population,
        base_url="http://shop.test",
        minutes=60,
        rps=20,
        seed=9,
        threads=2,
        max_sessions=600,
        check_url=False,
        progress=False,
        clock=clock,
        sleep=clock.sleep,
        transport=shop,
    )
    assert summary.sessions == 600
    assert summary.lists == len(shop.lists) > 600
    assert sum(summary.events.values()) == len(shop.events)
    assert not summary.errors
    # Paced: the fake clock moved by at least one rate interval per request after the first.
    requests_made = summary.lists + len(shop.events)
    assert clock.now >= (requests_made - 1) / 20 - 1e-6

    from_lists = [e for e in shop.events if "context" in e]
    browsed = [e for e in shop.events if "context" not in e]
    assert from_lists and browsed and len(browsed) == summary.browsed
    assert {e["event_type"] for e in from_lists} >= {"view", "add_to_cart", "purchase"}
    assert {e["event_type"] for e in browsed} == {"view"}
    for e in from_lists:
        user, items = shop.lists[e["context"]["request_id"]]
        assert user == e["user_id"]
        assert items[e["context"]["position"]]["item_id"] == e["item_id"]
    views = sum(e["event_type"] == "view" for e in from_lists)
    assert views == sum(v.clicks for v in summary.variants.values())
    assert summary.events["purchase"] == sum(v.purchases for v in summary.variants.values())
    # Items shown per variant: what the lists held; every session is tagged with the run's tag.
    assert sum(v.shown for v in summary.variants.values()) == sum(
        len(items) for _, items in shop.lists.values()
    )
    assert summary.tag and all(
        e["session_id"].startswith(summary.session_prefix) for e in shop.events
    )

    matched, popular = summary.variants["matched"], summary.variants["popular"]
    assert matched.lists > 100 and popular.lists > 100
    assert matched.ctr > 1.2 * popular.ctr, summary.as_dict()
    assert matched.purchases / matched.lists > popular.purchases / popular.lists


def test_per_user_rows_add_up_and_the_readout_finds_the_better_list(
    population: Population,
) -> None:
    """The per-(variant, user) rows hold exactly what the shop showed and what came back from
    its lists, and the A/B readout's own statistics on them see the matched list win."""
    import pandas as pd

    from lambdarec.monitoring.ab import USER_COLUMNS, readout

    shop = Shop(population)
    clock = FakeClock()
    summary = run(
        population,
        base_url="http://shop.test",
        minutes=60,
        rps=20,
        seed=4,
        threads=2,
        max_sessions=400,
        check_url=False,
        progress=False,
        clock=clock,
        sleep=clock.sleep,
        transport=shop,
    )
    rows = pd.DataFrame(summary.user_rows())
    assert set(rows.columns) == {"variant", "user_id", *USER_COLUMNS}
    assert not rows.duplicated(["variant", "user_id"]).any()
    assert all(shop.variant(u) == v for v, u in zip(rows["variant"], rows["user_id"], strict=True))
    for name, stats in summary.variants.items():
        mine = rows[rows["variant"] == name]
        assert mine["lists"].sum() == stats.lists
        assert mine["clicks"].sum() == stats.clicks
        assert mine["carts"].sum() == stats.carts
        assert mine["purchases"].sum() == stats.purchases
    # Every list of the shop holds 10 items at positions 0..9: all shown within the top 10.
    assert (rows["impressions"] == 10 * rows["lists"]).all()
    assert (rows["shown_top_k"] == rows["impressions"]).all()
    assert (rows["clicks_top_k"] == rows["clicks"]).all()
    # Per user, the clicks and the revenue are those of the events that name a list.
    from_lists = [e for e in shop.events if "context" in e]
    clicks = pd.Series([e["user_id"] for e in from_lists if e["event_type"] == "view"])
    by_user = rows.groupby("user_id")
    clicked = by_user["clicks"].sum()
    assert clicked[clicked > 0].to_dict() == clicks.value_counts().to_dict()
    revenue = pd.DataFrame(
        [(e["user_id"], e["price"]) for e in from_lists if e["event_type"] == "purchase"],
        columns=["user_id", "price"],
    )
    assert len(revenue) > 0
    expected = revenue.groupby("user_id")["price"].sum()
    got = by_user["revenue"].sum()
    assert got[got > 0].to_dict() == pytest.approx(expected.to_dict())

    result = readout(rows.assign(day="2024-01-01"), control="popular", min_lists=1)
    test = result["period"]["tests"]["matched"]["metrics"]["ctr_at_k"]
    assert test["verdict"] == "better" and test["p_value"] < 0.05, test


def test_the_run_ends_at_its_deadline_within_the_rate(population: Population) -> None:
    shop = Shop(population)
    clock = FakeClock()
    summary = run(
        population,
        base_url="http://shop.test",
        minutes=0.5,
        rps=10,
        threads=3,
        check_url=False,
        progress=False,
        clock=clock,
        sleep=clock.sleep,
        transport=shop,
    )
    requests_made = summary.lists + sum(summary.events.values())
    # Every request took a token: at most the burst plus 10/s over 30 s, plus what a step begun
    # before the deadline still sends (a list, then a view, a cart and a purchase) per thread.
    assert 0 < requests_made <= 1 + 10 * 30 + 3 * 4
    assert clock.now >= 30.0 and summary.seconds == clock.now
    assert not summary.interrupted
    text = render(summary)
    assert f"{summary.lists} lists fetched" in text and "variant matched" in text


def test_the_hidden_model_is_what_the_generator_draws_from() -> None:
    """The shoppers' preferences are the generator's truth: its users' views fall mostly in
    their preferred categories (focus + affinity shares, plus chance)."""
    config = GeneratorConfig(n_users=300, n_items=1_000, n_categories=40, days=3, seed=8)
    population = Population.from_config(config, 300)
    preferred = dict(zip(population.model.user_ids, population.model.preferred, strict=True))
    events = generate_events(config)
    views = events[events["event_type"] == "view"]
    inside = [c in preferred[u] for u, c in zip(views["user_id"], views["category"], strict=True)]
    share = sum(inside) / len(inside)
    assert share >= config.focus_share + config.affinity_share - 0.02, share
    catalog = dict(zip(events["item_id"], events["price"], strict=True))
    for item, price in list(catalog.items())[:50]:
        assert population.price_of(item) == pytest.approx(price)


def test_the_cli_refuses_bad_arguments_in_one_line() -> None:
    from typer.testing import CliRunner

    from lambdarec.cli import app

    runner = CliRunner()
    for args, words in (
        (["--users", "0", "--minutes", "1", "--rps", "5"], "--users"),
        (["--users", "2", "--minutes", "1", "--rps", "0"], "--rps"),
        (["--users", "2", "--minutes", "1", "--rps", "5", "--base-url", "localhost"], "http"),
        (
            ["--users", "2", "--minutes", "1", "--rps", "5", "--base-url", "http://127.0.0.1:1"],
            "not reachable",
        ),
        (["--users", "5000", "--minutes", "1", "--rps", "5"], "--data-users"),
    ):
        result = runner.invoke(app, ["simulate", *args])
        assert result.exit_code == 2, result.output
        errors = [line for line in result.output.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and words in errors[0], result.output
        assert "Traceback" not in result.output
