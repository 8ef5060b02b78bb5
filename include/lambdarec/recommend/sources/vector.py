"""Vector retrieval: the champion query tower's embedding of the request, searched in the index.

Scores are the index's inner products (cosines of unit vectors) mapped to [0, 1] as ``(s+1)/2``.
The query vector is computed once per request; over-fetch rounds search again with a larger
``k`` while the index returned all it was asked for.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lambdarec.recommend.sources.base import Pool

if TYPE_CHECKING:
    from lambdarec.recommend.sources.base import Request, Stores


class VectorSource:
    name = "vector"
    weight = 1.0

    def __init__(self, stores: Stores) -> None:
        self.index = stores.index

    def candidates(self, request: Request, fetch: int) -> Pool:
        memo = request.memo
        if "query_vector" not in memo:
            encoder = request.models.encoder
            if encoder is None:
                request.missing("model")
            memo["query_vector"] = (
                None
                if encoder is None
                else request.attempt("model", encoder.encode, request.features)
            )
            if self.index is None:
                request.missing("index")
        vector = memo["query_vector"]
        if vector is None or self.index is None:
            return Pool([])
        hits = request.attempt("index", self.index.search, vector, fetch)
        if not hits:
            return Pool([])
        return Pool([(i, (s + 1.0) / 2.0) for i, s in hits[0]], more=len(hits[0]) >= fetch)
