"""Speed-layer feature tables: what the stream job pushes to Feast and logs to the lake.

Same shape as the batch tables in :mod:`lambdarec.tables` (and candidates to move there): the
Flink job writes one row per event to ``<lake>/features/<table>/date=YYYY-MM-DD/part-*.parquet``
(the history Feast's point-in-time joins read) and pushes the same row to the online store.
"""

from __future__ import annotations

from lambdarec.tables import FeatureTable

SESSION_FEATURES = FeatureTable(
    name="session_features",
    keys=("session_id",),
    columns={
        "session_id": "string",
        "event_timestamp": "timestamp",
        "user_id": "string",
        "last_viewed_items": "array<string>",  # newest first
        "last_carted_items": "array<string>",  # newest first
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
