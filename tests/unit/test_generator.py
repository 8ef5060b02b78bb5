"""The synthetic clickstream: contract, determinism, funnel, time and popularity shape."""

from __future__ import annotations

import time
from datetime import UTC, date, datetime

import pandas as pd
import pyarrow as pa
import pytest
from pydantic import ValidationError

from lambdarec.data.canonical import check_canonical
from lambdarec.data.generator import (
    ClickstreamGenerator,
    GeneratorConfig,
    generate_catalog,
    generate_events,
    iter_event_batches,
)
from lambdarec.events import CANONICAL_COLUMNS, Event, canonical_arrow_schema, parse_event

SMALL = GeneratorConfig(
    n_users=2_000, n_items=5_000, n_categories=50, days=3, n_events=60_000, seed=7
)


@pytest.fixture(scope="module")
def events() -> pd.DataFrame:
    return generate_events(SMALL)


@pytest.fixture(scope="module")
def catalog() -> pd.DataFrame:
    return generate_catalog(SMALL)


# -- config ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_items": 10, "n_categories": 20}, "n_categories (20) must not exceed n_items (10)"),
        ({"focus_share": 0.9, "affinity_share": 0.3}, "must add up to at most 1"),
        ({"n_users": 0}, "n_users"),
        ({"cart_rate": 1.5}, "cart_rate"),
        ({"n_user": 5}, "n_user"),
    ],
)
def test_config_rejects_bad_values_with_a_clear_message(kwargs: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message.replace("(", r"\(").replace(")", r"\)")):
        GeneratorConfig(**kwargs)


def test_event_target_is_met_within_a_few_percent(events: pd.DataFrame) -> None:
    assert abs(len(events) - 60_000) / 60_000 < 0.03
    assert abs(len(events) - SMALL.expected_events) / SMALL.expected_events < 0.03


# -- contract -------------------------------------------------------------------------------
def test_schema_is_exactly_canonical() -> None:
    batches = list(iter_event_batches(SMALL, batch_rows=7_000))
    assert all(b.schema.equals(canonical_arrow_schema()) for b in batches)
    assert max(b.num_rows for b in batches) <= 7_000


def test_frame_passes_the_canonical_check(events: pd.DataFrame) -> None:
    check_canonical(events)  # columns, dtypes, id rule, event types, unique ids
    assert list(events.columns) == list(CANONICAL_COLUMNS)
    assert events["event_id"].is_unique
    assert events["price"].notna().all() and (events["price"] > 0).all()


def test_rows_pass_the_event_contract(events: pd.DataFrame) -> None:
    now = datetime(2100, 1, 1, tzinfo=UTC)
    for row in events.sample(300, random_state=1).to_dict("records"):
        row["ts"] = row["ts"].isoformat()
        assert isinstance(parse_event(row, now=now), Event), row


def test_batches_concatenate_to_the_frame(events: pd.DataFrame) -> None:
    streamed = pa.Table.from_batches(list(iter_event_batches(SMALL, batch_rows=5_000))).to_pandas()
    pd.testing.assert_frame_equal(streamed, events)


# -- determinism ----------------------------------------------------------------------------
def test_same_seed_same_output(events: pd.DataFrame, catalog: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(generate_events(SMALL), events)
    pd.testing.assert_frame_equal(generate_catalog(SMALL), catalog)


def test_different_seed_different_output(events: pd.DataFrame) -> None:
    other = generate_events(SMALL.model_copy(update={"seed": 8}))
    assert len(other) != len(events) or not other["item_id"].equals(events["item_id"])
    assert (
        generate_catalog(SMALL.model_copy(update={"seed": 8}))["price"]
        .ne(generate_catalog(SMALL)["price"])
        .any()
    )


# -- time -----------------------------------------------------------------------------------
def test_globally_time_ordered_and_inside_the_period(events: pd.DataFrame) -> None:
    assert events["ts"].is_monotonic_increasing
    assert events["ts"].min() >= pd.Timestamp("2024-01-01", tz="UTC")
    assert events["ts"].max() < pd.Timestamp("2024-01-04", tz="UTC")
    days = events["ts"].dt.date.unique()
    assert sorted(days) == [date(2024, 1, 1), date(2024, 1, 2), date(2024, 1, 3)]


def test_timestamps_strictly_increase_within_a_session_with_gaps_under_30_min(
    events: pd.DataFrame,
) -> None:
    by_session = events.sort_values(["session_id", "ts"], kind="stable")
    gaps = by_session.groupby("session_id")["ts"].diff().dropna()
    assert (gaps > pd.Timedelta(0)).all()
    assert gaps.max() < pd.Timedelta(minutes=30)
    # A session's rows appear in the table in the same order as their position suffix.
    pos = by_session["event_id"].str.rsplit("-", n=1).str[1].astype(int)
    assert (pos.groupby(by_session["session_id"]).diff().dropna() == 1).all()


def test_many_small_windows_keep_time_order_across_window_boundaries() -> None:
    config = SMALL.model_copy(update={"window_events": 1_000, "n_events": 30_000, "days": 2})
    gen = ClickstreamGenerator(config)
    assert gen.n_windows >= 2 * 24  # the carry-over between windows is exercised
    df = pa.concat_tables(list(gen.iter_tables())).to_pandas()
    assert df["ts"].is_monotonic_increasing
    assert df["event_id"].is_unique
    sizes = df.groupby("session_id").size()
    assert sizes.max() > 1


def test_diurnal_curve_evening_busier_than_night(events: pd.DataFrame) -> None:
    hours = events["ts"].dt.hour.value_counts()
    assert hours.loc[[19, 20, 21]].sum() > 3 * hours.loc[[2, 3, 4]].sum()


# -- funnel ---------------------------------------------------------------------------------
def test_purchases_and_removes_only_of_items_carted_earlier_in_the_session(
    events: pd.DataFrame,
) -> None:
    carts = events[events["event_type"] == "add_to_cart"]
    first_cart = carts.groupby(["session_id", "item_id"])["ts"].min().rename("cart_ts")
    for kind in ("purchase", "remove_from_cart"):
        rows = events[events["event_type"] == kind].join(first_cart, on=["session_id", "item_id"])
        assert len(rows) > 0
        assert rows["cart_ts"].notna().all(), f"{kind} of an item never carted in its session"
        assert (rows["cart_ts"] < rows["ts"]).all()
    # Every cart follows a view of the same item in the same session.
    views = events[events["event_type"] == "view"]
    first_view = views.groupby(["session_id", "item_id"])["ts"].min().rename("view_ts")
    joined = carts.join(first_view, on=["session_id", "item_id"])
    assert (joined["view_ts"] < joined["ts"]).all()


def test_funnel_ratios_are_plausible(events: pd.DataFrame) -> None:
    n = events["event_type"].value_counts()
    assert 0.06 < n["add_to_cart"] / n["view"] < 0.10
    assert 0.25 < n["purchase"] / n["add_to_cart"] < 0.35
    assert 0 < n["remove_from_cart"] < n["purchase"]
    per_session = events.groupby("session_id").size()
    assert 2 <= per_session.median() <= 8
    assert per_session.max() > 30  # a long tail of long sessions


# -- catalog and popularity -------------------------------------------------------------------
def test_catalog_shape(catalog: pd.DataFrame) -> None:
    assert list(catalog.columns) == ["item_id", "category", "price", "created_at"]
    assert len(catalog) == SMALL.n_items and catalog["item_id"].is_unique
    assert catalog["category"].nunique() == SMALL.n_categories
    sizes = catalog["category"].value_counts()
    assert sizes.iloc[0] > 10 * sizes.iloc[-1]  # Zipf-sized categories
    assert (catalog["price"] > 0).all()
    # Prices differ by category: the spread of category medians is wide.
    medians = catalog.groupby("category")["price"].median()
    assert medians.max() > 5 * medians.min()
    new = catalog["created_at"] >= pd.Timestamp("2024-01-01", tz="UTC")
    assert 0.02 < new.mean() < 0.08


def test_events_take_category_and_price_from_the_catalog(
    events: pd.DataFrame, catalog: pd.DataFrame
) -> None:
    joined = events.merge(catalog, on="item_id", how="left", suffixes=("", "_cat"))
    assert joined["category_cat"].notna().all()
    assert (joined["category"] == joined["category_cat"]).all()
    assert (joined["price"] == joined["price_cat"]).all()
    assert (joined["created_at"] <= joined["ts"]).all()  # no item is seen before it exists


def test_popularity_head_is_much_heavier_than_the_tail(events: pd.DataFrame) -> None:
    views = events.loc[events["event_type"] == "view", "item_id"].value_counts()
    head = views.iloc[: len(views) // 100]
    tail = views.iloc[len(views) // 2 :]
    assert head.sum() / views.sum() > 0.15  # 1% of the items seen get over 15% of the views
    assert head.mean() > 50 * tail.mean()


def test_users_concentrate_on_a_few_categories(events: pd.DataFrame) -> None:
    views = events[events["event_type"] == "view"]
    active = views.groupby("user_id").filter(lambda g: len(g) >= 30)
    share_top3 = active.groupby("user_id")["category"].agg(
        lambda c: c.value_counts().iloc[:3].sum() / len(c)
    )
    assert share_top3.median() > 0.6


# -- scale ----------------------------------------------------------------------------------
def test_scale_smoke_200k_events_quickly() -> None:
    config = GeneratorConfig(
        n_users=20_000, n_items=200_000, n_categories=500, days=7, n_events=200_000, seed=3
    )
    started = time.perf_counter()
    rows = 0
    for batch in iter_event_batches(config, batch_rows=50_000):
        rows += batch.num_rows
    elapsed = time.perf_counter() - started
    assert abs(rows - 200_000) < 6_000
    assert elapsed < 10, f"200k events took {elapsed:.1f} s"
