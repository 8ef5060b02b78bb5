"""Feast feature views: one per feature table; schemas come from the table specs.

TTLs follow one rule: a row stays usable while the window it summarises still overlaps the
present, plus one day of slack for a late daily run (the batch views), or for as long as the
stream window it describes (the push views):

* ``user_history_30d``: 31 days. A 30-day profile; a shopper who comes back after a quiet spell
  still gets their last known profile instead of a cold start, never one whose whole window is
  older than 30 days.
* ``item_stats``: 2 days. The ranking signals that matter are the 1-day and 7-day counts of a
  daily full snapshot; one missed run is tolerated, two mean the numbers are wrong.
* ``item_cooccurrence``: 31 days. Neighbours over 30 days age slowly.
* ``category_popularity``: 8 days. A 7-day window.
* ``sequential_rules``, ``session_items``, ``item_sessions``, ``user_recent_items``: 31 days.
  30-day windows, read by the session sources (``session_knn`` reads a past session's items
  for as long as the session is in the window) and the returning user's history.
* ``session_features``: 30 minutes, the session gap: an older row describes a finished session.
* ``trending_items``: 1 hour, the longest trending window.
"""

from datetime import timedelta

from data_sources import (
    category_popularity_source,
    item_cooccurrence_source,
    item_sessions_source,
    item_stats_source,
    sequential_rules_source,
    session_features_push,
    session_items_source,
    trending_items_push,
    user_history_source,
    user_recent_items_source,
)
from entities import category, item, session, user
from feast import FeatureView, Field
from feast.types import Array, FeastType, Float64, Int64, String, UnixTimestamp

from lambdarec.tables import (
    CATEGORY_POPULARITY,
    ITEM_COOCCURRENCE,
    ITEM_SESSIONS,
    ITEM_STATS,
    SEQUENTIAL_RULES,
    SESSION_FEATURES,
    SESSION_ITEMS,
    TRENDING_ITEMS,
    USER_HISTORY,
    USER_RECENT_ITEMS,
    FeatureTable,
)

_TYPES: dict[str, FeastType] = {
    "string": String,
    "int64": Int64,
    "double": Float64,
    "timestamp": UnixTimestamp,
    "array<string>": Array(String),
    "array<double>": Array(Float64),
    "array<int64>": Array(Int64),
}


def _schema(table: FeatureTable) -> list[Field]:
    """Every column of the table spec but the timestamp, keys included (Feast wants them)."""
    return [
        Field(name=name, dtype=_TYPES[kind])
        for name, kind in table.columns.items()
        if name != "event_timestamp"
    ]


user_history_30d = FeatureView(
    name=USER_HISTORY.name,
    entities=[user],
    ttl=timedelta(days=31),
    schema=_schema(USER_HISTORY),
    source=user_history_source,
    online=True,
    description=USER_HISTORY.doc,
    tags={"layer": "batch"},
)

item_stats = FeatureView(
    name=ITEM_STATS.name,
    entities=[item],
    ttl=timedelta(days=2),
    schema=_schema(ITEM_STATS),
    source=item_stats_source,
    online=True,
    description=ITEM_STATS.doc,
    tags={"layer": "batch"},
)

item_cooccurrence = FeatureView(
    name=ITEM_COOCCURRENCE.name,
    entities=[item],
    ttl=timedelta(days=31),
    schema=_schema(ITEM_COOCCURRENCE),
    source=item_cooccurrence_source,
    online=True,
    description=ITEM_COOCCURRENCE.doc,
    tags={"layer": "batch"},
)

category_popularity = FeatureView(
    name=CATEGORY_POPULARITY.name,
    entities=[category],
    ttl=timedelta(days=8),
    schema=_schema(CATEGORY_POPULARITY),
    source=category_popularity_source,
    online=True,
    description=CATEGORY_POPULARITY.doc,
    tags={"layer": "batch"},
)

sequential_rules = FeatureView(
    name=SEQUENTIAL_RULES.name,
    entities=[item],
    ttl=timedelta(days=31),
    schema=_schema(SEQUENTIAL_RULES),
    source=sequential_rules_source,
    online=True,
    description=SEQUENTIAL_RULES.doc,
    tags={"layer": "batch"},
)

session_items = FeatureView(
    name=SESSION_ITEMS.name,
    entities=[session],
    ttl=timedelta(days=31),
    schema=_schema(SESSION_ITEMS),
    source=session_items_source,
    online=True,
    description=SESSION_ITEMS.doc,
    tags={"layer": "batch"},
)

item_sessions = FeatureView(
    name=ITEM_SESSIONS.name,
    entities=[item],
    ttl=timedelta(days=31),
    schema=_schema(ITEM_SESSIONS),
    source=item_sessions_source,
    online=True,
    description=ITEM_SESSIONS.doc,
    tags={"layer": "batch"},
)

user_recent_items = FeatureView(
    name=USER_RECENT_ITEMS.name,
    entities=[user],
    ttl=timedelta(days=31),
    schema=_schema(USER_RECENT_ITEMS),
    source=user_recent_items_source,
    online=True,
    description=USER_RECENT_ITEMS.doc,
    tags={"layer": "batch"},
)

session_features = FeatureView(
    name=SESSION_FEATURES.name,
    entities=[session],
    ttl=timedelta(minutes=30),
    schema=_schema(SESSION_FEATURES),
    source=session_features_push,
    online=True,
    description=SESSION_FEATURES.doc,
    tags={"layer": "speed"},
)

trending_items = FeatureView(
    name=TRENDING_ITEMS.name,
    entities=[item],
    ttl=timedelta(hours=1),
    schema=_schema(TRENDING_ITEMS),
    source=trending_items_push,
    online=True,
    description=TRENDING_ITEMS.doc,
    tags={"layer": "speed"},
)
