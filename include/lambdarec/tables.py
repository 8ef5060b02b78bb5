"""Where every table of the lake lives and what its columns are.

The batch layer (Spark) writes these tables, Great Expectations validates them, and Feast reads
them; all three take names and columns from here, so a rename happens in one place.

Layout under ``settings.lake_dir``::

    events/date=YYYY-MM-DD/part-*.parquet              the master dataset (canonical events)
    catalog/                                            item catalog (item_id, category, price, ...)
    features/<table>/date=YYYY-MM-DD/part-*.parquet     one partition per run's data interval

A table's folder holds one hive-style ``date=YYYY-MM-DD`` folder per UTC day (so Spark, DuckDB and
pyarrow see a ``date`` column): :func:`partition_dir` builds that path, :func:`partitions`,
:func:`partition_day` and :func:`newest_partition` read it back, and :func:`as_day` turns a run's
``ds``, a date or a datetime into the day; no other Python code spells the layout out. (The Flink
job's raw archive gets the same folder names from its filesystem sink, ``PARTITIONED BY (date)``.)

Every feature row carries ``event_timestamp``: the end of the day it describes (the instant the
feature became knowable), which is what point-in-time joins in Feast compare against.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path

#: The partition column, and the glob that matches a table's partition folders.
PARTITION_KEY = "date"
PARTITION_GLOB = f"{PARTITION_KEY}=*"


def as_day(value: str | date | datetime) -> date:
    """The UTC day of ``value``: ``'YYYY-MM-DD'`` (Airflow's ``ds``), an ISO-8601 timestamp, a
    date or a datetime. Datetimes count in UTC; a naive one is taken to be UTC already."""
    if isinstance(value, datetime):
        return (value.astimezone(UTC) if value.tzinfo else value).date()
    if isinstance(value, date):
        return value
    if isinstance(value, str):
        for parse in (date.fromisoformat, datetime.fromisoformat):
            try:
                return as_day(parse(value))
            except ValueError:
                continue
    raise ValueError(f"{value!r} is not a day; use YYYY-MM-DD (UTC), e.g. 2024-05-01")


def partition_dir(table_root: str | Path, day: str | date | datetime) -> Path:
    """``<table_root>/date=YYYY-MM-DD``: the folder of one day of a table."""
    return Path(table_root) / f"{PARTITION_KEY}={as_day(day).isoformat()}"


def partition_day(path: str | Path) -> date | None:
    """The day of a partition folder (the inverse of :func:`partition_dir`), or None when the
    folder's name is not exactly ``date=YYYY-MM-DD``."""
    key, sep, value = Path(path).name.partition("=")
    if key != PARTITION_KEY or not sep:
        return None
    try:
        day = date.fromisoformat(value)
    except ValueError:
        return None
    return day if day.isoformat() == value else None


def partitions(table_root: str | Path) -> list[tuple[date, Path]]:
    """The partition folders of a table with their days, oldest first (other entries ignored)."""
    root = Path(table_root)
    if not root.is_dir():
        return []
    found = []
    for path in root.glob(PARTITION_GLOB):
        day = partition_day(path)
        if day is not None and path.is_dir():
            found.append((day, path))
    return sorted(found)


def newest_partition(
    table_root: str | Path, *, before: str | date | datetime | None = None
) -> Path | None:
    """The newest partition holding a ``*.parquet`` file, only days before ``before`` if given."""
    limit = None if before is None else as_day(before)
    for day, path in reversed(partitions(table_root)):
        if (limit is None or day < limit) and any(path.glob("*.parquet")):
            return path
    return None


@dataclass(frozen=True)
class FeatureTable:
    name: str
    keys: tuple[str, ...]
    #: column -> Arrow/Spark type name (string, int64, double, date, timestamp, array<string>...)
    columns: dict[str, str]
    doc: str

    def path(self, lake_dir: str | Path) -> Path:
        return Path(lake_dir) / "features" / self.name

    def partition(self, lake_dir: str | Path, day: str | date) -> Path:
        return partition_dir(self.path(lake_dir), day)


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

SEQUENTIAL_RULES = FeatureTable(
    name="sequential_rules",
    keys=("item_id",),
    columns={
        "item_id": "string",
        "event_timestamp": "timestamp",
        "next_items": "array<string>",  # the top items that follow, best first
        # Raw rule weights (sums of 1/distance, not normalised: can exceed 1), aligned with
        # next_items; ``*_scores`` columns are in (0, 1], these are not.
        "next_weights": "array<double>",
    },
    doc="Items that follow an item within a few steps of a session (sequential rules, 30 days).",
)

SESSION_ITEMS = FeatureTable(
    name="session_items",
    keys=("session_id",),
    columns={
        "session_id": "string",
        "event_timestamp": "timestamp",
        "items": "array<string>",  # distinct, most recent first, at most max_items
        "last_event_ts": "timestamp",  # the session's last event in the window
    },
    doc="Each session's distinct items, most recent first (session-kNN's neighbours, 30 days).",
)

ITEM_SESSIONS = FeatureTable(
    name="item_sessions",
    keys=("item_id",),
    columns={
        "item_id": "string",
        "event_timestamp": "timestamp",
        "sessions": "array<string>",  # the most recent sessions holding the item, newest first
        "last_event_ms": "array<int64>",  # each session's last event, epoch ms, aligned
    },
    doc="The most recent sessions that hold an item (session-kNN's inverted index, 30 days).",
)

USER_RECENT_ITEMS = FeatureTable(
    name="user_recent_items",
    keys=("user_id",),
    columns={
        "user_id": "string",
        "event_timestamp": "timestamp",
        "items": "array<string>",  # distinct, most recent first, at most max_items
    },
    doc="A user's most recent distinct items over 30 days (the history a new session lacks).",
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
    SEQUENTIAL_RULES,
    SESSION_ITEMS,
    ITEM_SESSIONS,
    USER_RECENT_ITEMS,
)


def events_path(lake_dir: str | Path) -> Path:
    """The canonical event table's folder (its ``date=`` partitions: :mod:`lambdarec.data.lake`)."""
    return Path(lake_dir) / "events"


def catalog_path(lake_dir: str | Path) -> Path:
    """The item catalog's folder (:func:`lambdarec.data.lake.write_catalog` keeps one Parquet
    file in it; readers may take every ``*.parquet`` there)."""
    return Path(lake_dir) / "catalog"
