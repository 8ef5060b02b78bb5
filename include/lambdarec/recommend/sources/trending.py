"""Trending items: the speed layer's trend scores of the newest ``trending_items`` partition."""

from __future__ import annotations

from typing import TYPE_CHECKING

from lambdarec.recommend.sources.base import Pool

if TYPE_CHECKING:
    from lambdarec.recommend.sources.base import Request, Stores


class TrendingSource:
    name = "trending"
    weight = 0.6

    def __init__(self, stores: Stores) -> None:
        self.snapshot = stores.snapshot

    def candidates(self, request: Request, fetch: int) -> Pool:
        return Pool(self.snapshot.trending[:fetch])
