"""What the lake says about items: catalog categories, popular and trending lists.

Read once when a pipeline is built (:meth:`Snapshot.from_lake`); the popular list is the floor
that always answers, whatever else is down.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterable

    from lambdarec.config import Settings

#: Items kept in the popular and the trending list.
POPULAR_TOP = 5000
TRENDING_TOP = 500


@dataclass
class Snapshot:
    categories: dict[str, str] = field(default_factory=dict)
    #: (item_id, score), best first; score normalised to (0, 1].
    popular: list[tuple[str, float]] = field(default_factory=list)
    trending: list[tuple[str, float]] = field(default_factory=list)
    source: str = "empty"

    @classmethod
    def from_items(
        cls,
        categories: dict[str, str],
        popular: Iterable[tuple[str, float]],
        trending: Iterable[tuple[str, float]] = (),
        source: str = "memory",
    ) -> Snapshot:
        return cls(categories, normalised(popular), normalised(trending), source)

    @classmethod
    def from_lake(cls, settings: Settings, top: int = POPULAR_TOP) -> Snapshot:
        """Categories from the catalog; popularity from the newest ``item_stats`` partition
        (purchases, carts and views over 7 days), else the catalog order; trending from the
        newest ``trending_items`` partition when the speed layer has logged one."""
        import pyarrow.parquet as pq

        from lambdarec.tables import ITEM_STATS, TRENDING_ITEMS, catalog_path, newest_partition

        lake = settings.lake_dir
        categories: dict[str, str] = {}
        catalog_files = sorted(catalog_path(lake).glob("*.parquet"))
        if catalog_files:
            table = pq.read_table(catalog_files, columns=["item_id", "category"]).to_pydict()
            categories = {
                i: c or "" for i, c in zip(table["item_id"], table["category"], strict=True)
            }
        popular: list[tuple[str, float]] = []
        source = "catalog"
        newest = newest_partition(ITEM_STATS.path(lake))
        if newest is not None:
            t = pq.read_table(newest, columns=["item_id", "views_7d", "carts_7d", "purchases_7d"])
            d = t.to_pydict()
            scored = [
                (i, (v or 0) + 3.0 * (c or 0) + 10.0 * (p or 0))
                for i, v, c, p in zip(
                    d["item_id"], d["views_7d"], d["carts_7d"], d["purchases_7d"], strict=True
                )
            ]
            popular = sorted(scored, key=lambda kv: -kv[1])[:top]
            source = f"item_stats {newest.name}"
        elif categories:
            popular = [(i, 1.0 / (1 + n)) for n, i in enumerate(list(categories)[:top])]
        trending: list[tuple[str, float]] = []
        newest_trend = newest_partition(TRENDING_ITEMS.path(lake))
        if newest_trend is not None:
            d = pq.read_table(newest_trend, columns=["item_id", "trend_score"]).to_pydict()
            best: dict[str, float] = {}
            for i, s in zip(d["item_id"], d["trend_score"], strict=True):
                best[i] = max(best.get(i, 0.0), float(s or 0.0))
            trending = sorted(best.items(), key=lambda kv: -kv[1])[:TRENDING_TOP]
        return cls(categories, normalised(popular), normalised(trending), source)


def normalised(pairs: Iterable[tuple[str, float]]) -> list[tuple[str, float]]:
    """Scores scaled to (0, 1] by the best one (non-finite dropped); rank-based when none is
    positive."""
    pairs = [(str(i), float(s)) for i, s in pairs if math.isfinite(float(s))]
    top = max((s for _, s in pairs), default=0.0)
    if top <= 0:
        return [(i, 1.0 / (1 + n)) for n, (i, _) in enumerate(pairs)]
    return [(i, max(s, 0.0) / top) for i, s in pairs]
