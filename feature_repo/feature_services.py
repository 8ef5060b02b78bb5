"""Feast feature services: the feature sets each model version reads, online and for training.

Several views share feature names (``views_7d``, ``category``, ``user_id``...): read these
services with ``full_feature_names=True`` (``<view>__<feature>``), as lambdarec.features.store does.
"""

from feast import FeatureService
from features import (
    category_popularity,
    item_cooccurrence,
    item_stats,
    session_features,
    trending_items,
    user_history_30d,
)

# The two-tower query tower: who the shopper is and what they are doing right now.
retrieval_v1 = FeatureService(
    name="retrieval_v1",
    features=[user_history_30d, session_features],
    description="Query-tower inputs of the two-tower retrieval model.",
    tags={"model": "two_tower"},
)

# The ranker scores (user, session, candidate item) pairs.
ranking_v1 = FeatureService(
    name="ranking_v1",
    features=[
        user_history_30d,
        item_stats,
        item_cooccurrence,
        category_popularity,
        session_features,
        trending_items,
    ],
    description="Inputs of the DeepFM ranker for one (user, session, item, category) row.",
    tags={"model": "deepfm"},
)
