"""Popular items: the lake's 7-day item statistics (or the catalog order), the floor that always
answers; enough of them to fill the list after the blocked items are filtered out."""

from __future__ import annotations

from typing import TYPE_CHECKING

from lambdarec.recommend.sources.base import Pool

if TYPE_CHECKING:
    from lambdarec.recommend.sources.base import Request, Stores


class PopularSource:
    name = "popular"
    weight = 0.4

    def __init__(self, stores: Stores) -> None:
        self.snapshot = stores.snapshot

    def candidates(self, request: Request, fetch: int) -> Pool:
        return Pool(self.snapshot.popular[: fetch + len(request.blocked)])
