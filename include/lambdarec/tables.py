"""Where every table of the lake lives and what its columns are.

The batch layer (Spark) writes these tables, Great Expectations validates them, and Feast reads
them; all three take names and columns from here, so a rename happens in one place.

Layout under ``settings.lake_dir``::

    events/date=YYYY-MM-DD/part-*.parquet              the master dataset (canonical events)
    catalog/                                            item catalog (item_id, category, price, ...)
    features/<table>/date=YYYY-MM-DD/part-*.parquet     one partition per run's data interval

Every feature row carries ``event_timestamp``: the end of the day it describes (the instant the
feature became knowable), which is what point-in-time joins in Feast compare against.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path


@dataclass(frozen=True)
class FeatureTable:
    name: str
    keys: tuple[str, ...]
    #: column -> Arrow/Spark type name (string, int64, double, date, timestamp, array<string>...)
    columns: dict[str, str]
    doc: str

    def path(self, lake_dir: Path) -> Path:
        return lake_dir / "features" / self.name

    def partition(self, lake_dir: Path, day: str) -> Path:
        return self.path(lake_dir) / f"date={day}"


USER_HISTORY = FeatureTable(
    name="user_history_30d",
    keys=("user_id",),
    columns={
        "user_id": "string",
        "event_timestamp": "timestamp",
        "n_events_30d": "int64",
        "n_views_30d": "int64",
        "n_carts_30d": "int64",
        "n_removes_30d": "int64",
        "n_purchases_30d": "int64",
        "n_distinct_items_30d": "int64",
        "n_distinct_categories_30d": "int64",
        "top_category_30d": "string",
        "top_categories_30d": "string",  # up to 3, '|'-separated, most frequent first
        "avg_price_viewed_30d": "double",
        "max_price_viewed_30d": "double",
        "avg_price_bought_30d": "double",
        "max_price_bought_30d": "double",
        "days_since_last_event": "double",
        # purchases / views (0 when no views); above 1 when purchases lack a recorded view
        "conversion_rate_30d": "double",
    },
    doc="What a user did over the 30 days ending with the partition's day.",
)

ITEM_STATS = FeatureTable(
    name="item_stats",
    keys=("item_id",),
    columns={
        "item_id": "string",
        "event_timestamp": "timestamp",
        "category": "string",
        "price": "double",
        "views_1d": "int64",
        "carts_1d": "int64",
        "purchases_1d": "int64",
        "views_7d": "int64",
        "carts_7d": "int64",
        "purchases_7d": "int64",
        "views_30d": "int64",
        "carts_30d": "int64",
        "purchases_30d": "int64",
        "conversion_7d": "double",  # purchases / views, as in user history
        "conversion_30d": "double",
        "unique_users_7d": "int64",
        "unique_users_30d": "int64",
        "popularity_rank_in_category_7d": "int64",  # 1 = most viewed in its category
    },
    doc="How an item sells over the 1, 7 and 30 days ending with the partition's day.",
)

ITEM_COOCCURRENCE = FeatureTable(
    name="item_cooccurrence",
    keys=("item_id",),
    columns={
        "item_id": "string",
        "event_timestamp": "timestamp",
        "co_bought_items": "array<string>",  # top neighbours, best first
        "co_bought_scores": "array<double>",  # normalised to (0, 1]
        "co_viewed_items": "array<string>",
        "co_viewed_scores": "array<double>",
    },
    doc="'Bought X also bought Y' (same user, 30 days) and co-viewed in the same session.",
)

CATEGORY_POPULARITY = FeatureTable(
    name="category_popularity",
    keys=("category",),
    columns={
        "category": "string",
        "event_timestamp": "timestamp",
        "views_7d": "int64",
        "purchases_7d": "int64",
        "unique_users_7d": "int64",
        "rank_7d": "int64",
    },
    doc="How popular a category is over the 7 days ending with the partition's day.",
)

# -- speed layer: written per event by the stream job (history to the lake, latest to Feast) ----

SESSION_FEATURES = FeatureTable(
    name="session_features",
    keys=("session_id",),
    columns={
        "session_id": "string",
        "event_timestamp": "timestamp",
        "user_id": "string",
        "last_viewed_items": "array<string>",  # newest first
        "last_carted_items": "array<string>",  # newest first
        "last_purchased_items": "array<string>",  # newest first
        "n_views": "int64",
        "n_carts": "int64",
        "n_removes": "int64",
        "n_purchases": "int64",
        "n_events_30min": "int64",
        "session_category": "string",  # the session's most viewed category so far
        "session_avg_price": "double",
        "seconds_since_prev_event": "double",
    },
    doc="The shopper's current session, updated on every event by the speed layer.",
)

TRENDING_ITEMS = FeatureTable(
    name="trending_items",
    keys=("item_id",),
    columns={
        "item_id": "string",
        "event_timestamp": "timestamp",
        "views_5min": "int64",
        "purchases_5min": "int64",
        "views_1h": "int64",
        "purchases_1h": "int64",
        "trend_score": "double",
    },
    doc="Items gaining attention right now (sliding 5-minute and 1-hour windows).",
)

SPEED_TABLES: tuple[FeatureTable, ...] = (SESSION_FEATURES, TRENDING_ITEMS)

FEATURE_TABLES: tuple[FeatureTable, ...] = (
    USER_HISTORY,
    ITEM_STATS,
    ITEM_COOCCURRENCE,
    CATEGORY_POPULARITY,
)


def events_path(lake_dir: Path) -> Path:
    return lake_dir / "events"


def catalog_path(lake_dir: Path) -> Path:
    return lake_dir / "catalog"
