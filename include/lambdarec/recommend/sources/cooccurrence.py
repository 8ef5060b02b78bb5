"""Items bought or viewed together with the session's recent items (the batch layer's
``item_cooccurrence`` view, read from the online store).

Each recent item's neighbours count with the item's recency (``0.7 ** position``, the newest
first) and the kind of co-occurrence (bought together 1.0, viewed together 0.7); an item reached
from several recent items keeps its best score.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lambdarec.recommend.sources.base import Pool

if TYPE_CHECKING:
    from collections.abc import Sequence

    from lambdarec.recommend.sources.base import Request, Stores
    from lambdarec.recommend.types import FeatureReader

VIEW = "item_cooccurrence"
KINDS = (("bought", 1.0), ("viewed", 0.7))
RECENCY = 0.7
REFS = [f"{VIEW}:co_{kind}_{what}" for kind, _ in KINDS for what in ("items", "scores")]


def cooccurring(reader: FeatureReader, item_ids: Sequence[str]) -> list[tuple[str, float]]:
    """The neighbours of ``item_ids`` (newest first) with their scores, best first."""
    if not item_ids:
        return []
    cols = reader.read(REFS, [{"item_id": i} for i in item_ids])
    scores: dict[str, float] = {}
    for pos in range(len(item_ids)):
        recency = RECENCY**pos
        for kind, weight in KINDS:
            items = cols.get(f"{VIEW}__co_{kind}_items", [None])[pos] or []
            values = cols.get(f"{VIEW}__co_{kind}_scores", [None])[pos] or []
            for item, value in zip(items, values, strict=False):
                s = recency * weight * float(value or 0.0)
                scores[item] = max(scores.get(item, 0.0), s)
    return sorted(scores.items(), key=lambda kv: -kv[1])


class CoOccurrenceSource:
    name = "cooccurrence"
    weight = 0.8

    def __init__(self, stores: Stores) -> None:
        self.features = stores.features

    def candidates(self, request: Request, fetch: int) -> Pool:
        if "cooccurrence" not in request.memo:
            recent = request.recent
            pairs = None
            if self.features is not None and recent and "online_store" not in request.degraded:
                pairs = request.attempt("online_store", cooccurring, self.features, recent)
            request.memo["cooccurrence"] = pairs or []
        return Pool(request.memo["cooccurrence"])
