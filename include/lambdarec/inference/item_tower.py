"""The two-tower's item tower in numpy: embeds catalog items the model never saw (cold start).

The item tower (:meth:`lambdarec.models.two_tower.TwoTower.candidate`) reads the item id's
embedding, the category and the price bucket. An item that entered the catalog after the training
data has no id of its own: it takes the out-of-vocabulary id (1), which training taught to stand
for "an item placed by its category and price alone" (``id_dropout``). So a new item still gets a
meaningful vector from its catalog row, without retraining.

Training writes ``<export>/item_tower/`` (:func:`lambdarec.models.export.export_item_tower`):

* ``weights.npz`` -- the OOV and no-item rows of the item-id table, the category and price-bucket
  tables and the item MLP (a few KB: the full id table stays out, trained items are already in
  ``item_embeddings.npz``);
* ``item_tower.json`` -- the format, the activations and the :class:`ItemVocabulary
  <lambdarec.inference.vocabulary.ItemVocabulary>` that turns a raw catalog row into the model's
  inputs.

:class:`ItemTower` is the forward pass (embedding lookups, Dense+ReLU, Dense, L2 norm), equal to
the TF tower within 1e-5 (tests/unit/test_item_tower.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from lambdarec.inference.nn import (
    ACTIVATIONS,
    OOV_ITEM,
    UNKNOWN_CATEGORY,
    check_activations,
    check_index_range,
    export_dir,
    l2_normalize,
    read_export,
)
from lambdarec.inference.vocabulary import ItemVocabulary

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

    import pandas as pd

EXPORT_DIR = "item_tower"
EXPORT_FORMAT = 1
META_FILE = "item_tower.json"
WEIGHTS_FILE = "weights.npz"
#: The two-tower export's trained item vectors (``export_two_tower``).
EMBEDDINGS_FILE = "item_embeddings.npz"
CATALOG_COLUMNS = ("item_id", "category", "price")


@dataclass
class NewItems:
    """Embedded items: raw ids, float32 L2-normalised vectors, the category index of each."""

    ids: list[str]
    embeddings: np.ndarray
    category_index: np.ndarray
    #: How many rows fell back to the unknown category.
    unknown_category: int = 0

    def __len__(self) -> int:
        return len(self.ids)


class ItemTower:
    """The item tower in numpy (``TwoTower.candidate``), with its vocabulary."""

    def __init__(
        self,
        weights: dict[str, np.ndarray],
        vocabulary: ItemVocabulary | None,
        activations: Sequence[str] = ("relu", "linear"),
    ) -> None:
        self.weights = {k: np.asarray(v, dtype=np.float32) for k, v in weights.items()}
        self.vocabulary = vocabulary
        check_activations(list(activations), "item tower")
        self.activations = [ACTIVATIONS[a] for a in activations]

    @property
    def dim(self) -> int:
        return int(self.weights[f"kernel_{len(self.activations) - 1}"].shape[1])

    @classmethod
    def load(cls, model_dir: Path) -> ItemTower:
        """From a two-tower export (``export_two_tower``) or a run folder holding one."""
        meta, weights = read_export(
            export_dir(model_dir) / EXPORT_DIR,
            META_FILE,
            WEIGHTS_FILE,
            EXPORT_FORMAT,
            "item tower",
            "the run predates it; retrain (weekly_model_retraining) to embed new items",
        )
        vocab = meta.get("vocabulary")
        return cls(weights, ItemVocabulary.from_json(vocab) if vocab else None, meta["activations"])

    def forward(
        self, category: np.ndarray, price_bucket: np.ndarray, item: np.ndarray | None = None
    ) -> np.ndarray:
        """L2-normalised item vectors from model indices (``item`` 0 or 1, default OOV)."""
        w = self.weights
        category = np.asarray(category, dtype=np.int64)
        price_bucket = np.asarray(price_bucket, dtype=np.int64)
        item = np.full(len(category), OOV_ITEM, np.int64) if item is None else np.asarray(item)
        for name, idx in (("item", item), ("category", category), ("price", price_bucket)):
            check_index_range(name, idx, len(w[name]))
        h = np.concatenate(
            [w["item"][item], w["category"][category], w["price"][price_bucket]], axis=1
        )
        for n, act in enumerate(self.activations):
            h = act(h @ w[f"kernel_{n}"] + w[f"bias_{n}"])
        return l2_normalize(h)

    def embed(self, rows: pd.DataFrame) -> NewItems:
        """Vectors of catalog rows (``item_id``, ``category``, ``price``) through the OOV id."""
        if self.vocabulary is None:
            raise ValueError(
                "this model's export has no item vocabulary (its dataset was not built from "
                "the lake's events): category and price cannot be mapped; retrain on the lake"
            )
        missing = [c for c in CATALOG_COLUMNS if c not in rows.columns]
        if missing:
            raise ValueError(f"catalog rows lack column(s) {missing}; need {list(CATALOG_COLUMNS)}")
        ids = [str(i) for i in rows["item_id"]]
        empty = [n for n, i in enumerate(ids) if not i or i in ("None", "nan")]
        if empty:
            raise ValueError(f"item_id: rows {empty[:5]} have no item id; drop or fix them")
        if len(set(ids)) != len(ids):
            raise ValueError("item_id: the catalog rows repeat item ids; pass each item once")
        cats = self.vocabulary.category_index(rows["category"].to_numpy(dtype=object))
        buckets = self.vocabulary.price_bucket(rows["price"].to_numpy(dtype=np.float64), ids)
        vectors = self.forward(cats, buckets) if ids else np.zeros((0, self.dim), np.float32)
        return NewItems(ids, vectors, cats, int((cats == UNKNOWN_CATEGORY).sum()))


def trained_items(model_dir: Path) -> tuple[list[str], np.ndarray]:
    """The items the model has vectors for and the vectors (``item_embeddings.npz``)."""
    with np.load(export_dir(model_dir) / EMBEDDINGS_FILE) as data:
        return [str(i) for i in data["ids"]], data["embeddings"]


def known_item_ids(model_dir: Path) -> list[str]:
    """The items the model has embeddings for (``item_embeddings.npz``)."""
    with np.load(export_dir(model_dir) / EMBEDDINGS_FILE) as data:
        return [str(i) for i in data["ids"]]


def embed_new_items(model_dir: Path, rows: pd.DataFrame) -> NewItems:
    """Embeddings of catalog rows (``item_id``, ``category``, ``price``) of items NOT in the
    model's ``item_embeddings.npz``, by the run's item tower (``model_dir``: a run folder or its
    ``two_tower/`` export). An unknown category falls back to the unknown category (0); a missing
    or negative price, an empty or repeated id, or an item the model already embeds is a
    ValueError naming the field."""
    tower = ItemTower.load(model_dir)
    known = set(known_item_ids(model_dir))
    if "item_id" in rows.columns:
        seen = [str(i) for i in rows["item_id"] if str(i) in known]
        if seen:
            raise ValueError(
                f"item_id: {len(seen)} item(s) already have embeddings from training, e.g. "
                f"{seen[:5]}; pass only items absent from {EMBEDDINGS_FILE}"
            )
    return tower.embed(rows)


def unseen_catalog_items(model_dir: Path, catalog: pd.DataFrame) -> NewItems:
    """The catalog's items absent from the model's item embeddings, embedded."""
    known = set(known_item_ids(model_dir))
    new = catalog[~catalog["item_id"].astype(str).isin(known)]
    return ItemTower.load(model_dir).embed(new.reset_index(drop=True))
