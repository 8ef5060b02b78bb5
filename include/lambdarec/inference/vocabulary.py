"""Raw catalog values -> the models' inputs: category index and price bucket.

The training catalog's own numbering (``data.Catalog.category_vocabulary`` and ``price_edges``,
kept by ``data.build_from_events``) travels with the exports, so a catalog item the models never
saw is placed exactly as training placed the items it had: its category through the same index
(anything unknown -> 0, the models' own "unknown category") and its price through the same decile
edges (:func:`price_buckets`, the one bucketing rule training uses too).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from lambdarec.inference.nn import UNKNOWN_CATEGORY

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

#: Price deciles: buckets 1..10, 0 = unknown price.
N_PRICE_BUCKETS = 10
#: The file ``retrain.build`` writes the vocabulary to, in the run folder.
VOCABULARY_FILE = "item_vocabulary.json"


def price_edges(prices: np.ndarray) -> np.ndarray | None:
    """The inner decile edges of the known prices: None when no price is known, empty when
    fewer than ``N_PRICE_BUCKETS`` are (every known price is then bucket 1)."""
    known = prices[np.isfinite(prices)]
    if not len(known):
        return None
    if len(known) < N_PRICE_BUCKETS:
        return np.empty(0, dtype=np.float64)
    return np.quantile(known, np.linspace(0, 1, N_PRICE_BUCKETS + 1)[1:-1])


def price_buckets(prices: np.ndarray, edges: np.ndarray | None) -> np.ndarray:
    """Each price's decile bucket 1..10 by the inner ``edges`` (:func:`price_edges`); 0 where
    the price is unknown or no edges exist (no price was known)."""
    out = np.zeros(len(prices), dtype=np.int64)
    known = np.isfinite(prices)
    if edges is not None:
        out[known] = np.searchsorted(edges, prices[known], side="right") + 1
    return out


def _missing(value: object) -> bool:
    """None or NaN: what ``data.build_from_events`` counts as no category."""
    return value is None or (isinstance(value, float | np.floating) and math.isnan(value))


@dataclass(frozen=True)
class ItemVocabulary:
    """Raw catalog values -> the item tower's category index and price bucket."""

    #: Raw category (as a string) -> category index 1..C; anything else maps to 0.
    categories: dict[str, int]
    #: The inner decile edges of the training catalog's prices (9 values); ``[]``: fewer than 10
    #: known prices, every price is bucket 1; None: no prices at all, every item is bucket 0.
    price_edges: list[float] | None
    n_categories: int
    n_price_buckets: int

    def category_index(self, categories: Sequence[object] | np.ndarray) -> np.ndarray:
        """The category index of each raw category; missing or unknown -> 0 (the model's
        unknown category, the fallback)."""
        return np.array(
            [
                UNKNOWN_CATEGORY if _missing(c) else self.categories.get(str(c), UNKNOWN_CATEGORY)
                for c in categories
            ],
            dtype=np.int64,
        )

    def price_bucket(
        self, prices: Sequence[float] | np.ndarray, item_ids: Sequence[str] | None = None
    ) -> np.ndarray:
        """The price bucket of each price; a NaN, infinite or negative price is a ValueError
        naming the items (``item_ids``, else the row numbers)."""
        values = np.asarray([np.nan if p is None else p for p in prices], dtype=np.float64)
        values = values.reshape(-1)
        bad = ~np.isfinite(values) | (values < 0)
        if bad.any():
            rows = np.flatnonzero(bad)[:5]
            names = [str(item_ids[r]) for r in rows] if item_ids is not None else rows.tolist()
            raise ValueError(
                f"price: {int(bad.sum())} item(s) have no valid price (NaN, infinite or negative), "
                f"e.g. {names} with {values[rows].tolist()}; the item tower buckets each new "
                "item by its price: fix these catalog rows (a finite price >= 0) or leave the "
                "items out until they have one"
            )
        edges = None if self.price_edges is None else np.asarray(self.price_edges, np.float64)
        return price_buckets(values, edges)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> ItemVocabulary:
        edges = raw["price_edges"]
        return cls(
            categories={str(k): int(v) for k, v in raw["categories"].items()},
            price_edges=None if edges is None else [float(e) for e in edges],
            n_categories=int(raw["n_categories"]),
            n_price_buckets=int(raw["n_price_buckets"]),
        )


def write_vocabulary(vocabulary: ItemVocabulary, path: Path) -> Path:
    path.write_text(json.dumps(vocabulary.to_json(), indent=1) + "\n", encoding="utf-8")
    return path


def read_vocabulary(path: Path) -> ItemVocabulary | None:
    if not path.exists():
        return None
    return ItemVocabulary.from_json(json.loads(path.read_text(encoding="utf-8")))
