"""Feast data sources: the lake's feature tables (batch) and the speed layer's push sources.

Paths are absolute, from the settings' lake (``lambdarec.features.paths.lake_dir``): each
source is a table's directory of ``date=YYYY-MM-DD`` partitions, which the file offline store
reads whole. ``event_timestamp`` is the instant a row became knowable (see lambdarec.tables).
"""

from feast import FileSource, PushSource
from feast.data_format import ParquetFormat

from lambdarec.features.paths import lake_dir
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

_LAKE = lake_dir()


def _file_source(table: FeatureTable) -> FileSource:
    return FileSource(
        name=f"{table.name}_source",
        path=str(table.path(_LAKE)),
        file_format=ParquetFormat(),
        timestamp_field="event_timestamp",
        description=table.doc,
    )


user_history_source = _file_source(USER_HISTORY)
item_stats_source = _file_source(ITEM_STATS)
item_cooccurrence_source = _file_source(ITEM_COOCCURRENCE)
category_popularity_source = _file_source(CATEGORY_POPULARITY)
sequential_rules_source = _file_source(SEQUENTIAL_RULES)
session_items_source = _file_source(SESSION_ITEMS)
item_sessions_source = _file_source(ITEM_SESSIONS)
user_recent_items_source = _file_source(USER_RECENT_ITEMS)

# The speed layer pushes each update online and logs the same rows to the lake, which is the
# history that training (point-in-time joins) reads.
session_features_push = PushSource(
    name="session_features_push",
    batch_source=_file_source(SESSION_FEATURES),
    description=SESSION_FEATURES.doc,
)
trending_items_push = PushSource(
    name="trending_items_push",
    batch_source=_file_source(TRENDING_ITEMS),
    description=TRENDING_ITEMS.doc,
)
