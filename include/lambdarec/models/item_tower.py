"""Cold start: embed catalog items the two-tower never saw, in numpy, and add them to the index.

The two-tower's item tower (:meth:`lambdarec.models.two_tower.TwoTower.candidate`) reads the item
id's embedding, the category and the price bucket. An item that entered the catalog after the
training data has no id of its own: it takes the out-of-vocabulary id (1), which training taught
to stand for "an item placed by its category and price alone" (``id_dropout``). So a new item still
gets a meaningful vector from its catalog row, without retraining.

:func:`export_item_tower` (called by ``two_tower.export``) writes ``<export>/item_tower/``:

* ``weights.npz`` -- the OOV and no-item rows of the item-id table, the category and price-bucket
  tables and the item MLP (a few KB: the full id table stays out, trained items are already in
  ``item_embeddings.npz``);
* ``item_tower.json`` -- the format, the activations and the :class:`ItemVocabulary` that turns a
  raw catalog row into the model's inputs: category string -> category index (1..C; anything
  unknown -> 0, the model's own "unknown category"), price -> decile bucket (1..10, the training
  catalog's edges). It is the training catalog's own numbering (``data.Catalog.category_vocabulary``
  and ``price_edges``, kept by ``data.build_from_events``), so a new item is placed exactly as
  training placed the items it had.

:class:`ItemTower` is the numpy forward pass (embedding lookups, Dense+ReLU, Dense, L2 norm), equal
to the TF tower within 1e-5 (tests/unit/test_item_tower.py). It needs no TensorFlow, so the daily
Airflow task can run it. :func:`add_new_items` is that task's body: the lake catalog's items absent
from the serving champion's ``item_embeddings.npz`` are embedded and upserted into the collection
behind the serving alias; ``retrain.export_embeddings`` adds the same items to each new version it
publishes, so a retraining never drops the items added since.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from collections.abc import Sequence

    import pandas as pd

    from lambdarec.config import Settings
    from lambdarec.models.data import Catalog
    from lambdarec.models.two_tower import TrainedTwoTower

log = logging.getLogger(__name__)

EXPORT_DIR = "item_tower"
EXPORT_FORMAT = 1
#: Embedding index of an item the model never saw (``two_tower.item_index``); 0 means no item.
OOV_ITEM = 1
#: The category index of a missing or unknown category (``data.Catalog``).
UNKNOWN_CATEGORY = 0
#: The file ``retrain.build`` writes the vocabulary to, in the run folder.
VOCABULARY_FILE = "item_vocabulary.json"
#: Known items whose index vectors are compared with the champion's before new items are added.
CONSISTENCY_PROBE = 5
CATALOG_COLUMNS = ("item_id", "category", "price")
#: The Dense activations the numpy towers and the numpy DeepFM implement, by Keras name.
ACTIVATIONS = {"relu": lambda h: np.maximum(h, 0.0), "linear": lambda h: h}


def check_index_range(name: str, idx: np.ndarray, rows: int, hint: str = "") -> None:
    """A ValueError naming ``name``, the valid range and the offending index when ``idx`` has
    an entry outside ``0..rows-1`` (an embedding lookup would fail or wrap around)."""
    if idx.size and (idx.min() < 0 or idx.max() >= rows):
        bad = idx.min() if idx.min() < 0 else idx.max()
        raise ValueError(f"{name} index out of range 0..{rows - 1}: {bad}{hint}")


def l2_normalize(h: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length as ``tf.math.l2_normalize`` does: x / sqrt(max(sum(x^2),
    1e-12)), float32."""
    norm = np.sqrt(np.maximum((h * h).sum(axis=1, keepdims=True), np.float32(1e-12)))
    return (h / norm).astype(np.float32, copy=False)


# -- vocabulary -------------------------------------------------------------------------------


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

    @classmethod
    def from_catalog(cls, catalog: Catalog) -> ItemVocabulary:
        """The vocabulary ``data.build_from_events`` numbered ``catalog`` with: its raw category
        -> index mapping and its price decile edges, so the item tower places a new item
        exactly as training placed the items it had."""
        if catalog.category_vocabulary is None:
            raise ValueError(
                "this catalog was not built from raw events (data.build_from_events): it has no "
                "raw category mapping to place new items with; build the dataset from events "
                "(a generic interactions file, the lake or the synthetic generator)"
            )
        return cls(
            dict(catalog.category_vocabulary),
            None if catalog.price_edges is None else list(catalog.price_edges),
            int(catalog.n_categories),
            int(catalog.n_price_buckets),
        )

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
        values = np.asarray([np.nan if p is None else p for p in prices], dtype=np.float64).reshape(
            -1
        )
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
        from lambdarec.models.data import price_buckets  # imports pandas: not at module load

        edges = None if self.price_edges is None else np.asarray(self.price_edges, np.float64)
        return price_buckets(values, edges)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> ItemVocabulary:
        return cls(
            categories={str(k): int(v) for k, v in raw["categories"].items()},
            price_edges=None
            if raw["price_edges"] is None
            else [float(e) for e in raw["price_edges"]],
            n_categories=int(raw["n_categories"]),
            n_price_buckets=int(raw["n_price_buckets"]),
        )


def _missing(value: object) -> bool:
    """None or NaN: what ``data.build_from_events`` counts as no category."""
    return value is None or (isinstance(value, float | np.floating) and math.isnan(value))


def write_vocabulary(vocabulary: ItemVocabulary, path: Path) -> Path:
    path.write_text(json.dumps(vocabulary.to_json(), indent=1) + "\n", encoding="utf-8")
    return path


def read_vocabulary(path: Path) -> ItemVocabulary | None:
    if not path.exists():
        return None
    return ItemVocabulary.from_json(json.loads(path.read_text(encoding="utf-8")))


# -- export (needs the trained TF model) --------------------------------------------------------


def tower_weights(model: Any) -> dict[str, np.ndarray]:
    """The item tower's weights of a built :class:`~lambdarec.models.two_tower.TwoTower`, numpy."""
    dense = model.item_mlp.layers
    return {
        "item": model.item_emb.embeddings.numpy()[: OOV_ITEM + 1],
        "category": model.cat_emb.embeddings.numpy(),
        "price": model.price_emb.embeddings.numpy(),
        **{f"kernel_{n}": layer.kernel.numpy() for n, layer in enumerate(dense)},
        **{f"bias_{n}": layer.bias.numpy() for n, layer in enumerate(dense)},
    }


def export_item_tower(
    trained: TrainedTwoTower, out_dir: Path, vocabulary: ItemVocabulary | None
) -> Path:
    """Write ``weights.npz`` and ``item_tower.json`` (see the module doc) to ``out_dir``."""
    model = trained.model
    if not model.item_mlp.built:
        trained.item_embeddings()  # builds the tower
    out_dir.mkdir(parents=True, exist_ok=True)
    weights = tower_weights(model)
    np.savez(out_dir / "weights.npz", **weights)  # type: ignore[arg-type]
    activations = [layer.activation.__name__ for layer in model.item_mlp.layers]
    meta = {
        "format": EXPORT_FORMAT,
        "dim": int(weights["kernel_1"].shape[1]),
        "oov_item": OOV_ITEM,
        "activations": activations,
        "vocabulary": vocabulary.to_json() if vocabulary is not None else None,
    }
    (out_dir / "item_tower.json").write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    return out_dir


# -- the numpy tower ----------------------------------------------------------------------------


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
        unknown = [a for a in activations if a not in ACTIVATIONS]
        if unknown:
            raise ValueError(f"item tower activation(s) {unknown} not supported in numpy")
        self.activations = [ACTIVATIONS[a] for a in activations]

    @property
    def dim(self) -> int:
        return int(self.weights[f"kernel_{len(self.activations) - 1}"].shape[1])

    @classmethod
    def load(cls, model_dir: Path) -> ItemTower:
        """From a two-tower export (``two_tower.export``) or a run folder holding one."""
        folder = export_dir(model_dir) / EXPORT_DIR
        if not (folder / "item_tower.json").exists():
            raise FileNotFoundError(
                f"{folder} holds no item tower export: the run predates it; retrain "
                "(weekly_model_retraining) to embed new items"
            )
        meta = json.loads((folder / "item_tower.json").read_text(encoding="utf-8"))
        if meta.get("format") != EXPORT_FORMAT:
            raise ValueError(
                f"{folder}: item tower format {meta.get('format')}, expected {EXPORT_FORMAT}"
            )
        with np.load(folder / "weights.npz") as data:
            weights = {k: data[k] for k in data.files}
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


def export_dir(model_dir: Path) -> Path:
    """The two-tower export folder: ``model_dir`` itself or its ``two_tower/`` (a run folder)."""
    return model_dir / "two_tower" if (model_dir / "two_tower").is_dir() else model_dir


def known_item_ids(model_dir: Path) -> list[str]:
    """The items the model has embeddings for (``item_embeddings.npz``)."""
    with np.load(export_dir(model_dir) / "item_embeddings.npz") as data:
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
                f"{seen[:5]}; pass only items absent from item_embeddings.npz"
            )
    return tower.embed(rows)


def unseen_catalog_items(model_dir: Path, catalog: pd.DataFrame) -> NewItems:
    """The catalog's items absent from the model's item embeddings, embedded."""
    known = set(known_item_ids(model_dir))
    new = catalog[~catalog["item_id"].astype(str).isin(known)]
    return ItemTower.load(model_dir).embed(new.reset_index(drop=True))


# -- the daily step -----------------------------------------------------------------------------


def champion_export_dir(settings: Settings) -> Path | None:
    """The two-tower export serving uses, as serving finds it: the folder pinned by
    ``LAMBDAREC_SERVING_MODEL_DIR``, else the MLflow champion's (downloaded); None without one."""
    if settings.serving_model_dir:
        return Path(settings.serving_model_dir)
    import mlflow

    from lambdarec.models.retrain import TWO_TOWER
    from lambdarec.registry import ModelRegistry

    champion = ModelRegistry.from_settings(settings, TWO_TOWER).get_champion()
    if champion is None:
        return None
    return Path(
        mlflow.artifacts.download_artifacts(
            artifact_uri=champion.artifact_uri, tracking_uri=settings.mlflow_uri
        )
    )


def add_new_items(
    settings: Settings | None = None, model_dir: Path | None = None
) -> dict[str, Any]:
    """Embed the lake catalog's items the serving champion has no vector for and upsert them into
    the collection behind the serving alias; returns what was done (or why nothing was).

    Runs daily (``daily_feature_pipeline``, after ``materialize``): items enter the catalog any day
    while the two-tower retrains weekly, and the numpy tower needs no TensorFlow in the worker.
    Nothing is written when the serving index does not hold the champion's vectors (compared on a
    few trained items): new vectors must live beside the ones the query tower was trained with.
    Idempotent: a re-run upserts the same vectors.
    """
    from lambdarec.config import get_settings
    from lambdarec.data.lake import catalog_path, read_catalog
    from lambdarec.retrieval.index import VectorIndex

    s = settings if settings is not None else get_settings()

    def skip(reason: str) -> dict[str, Any]:
        log.info("new items: nothing embedded: %s", reason)
        return {"embedded": 0, "reason": reason}

    if not catalog_path(s.lake_dir).exists():
        return skip(f"no catalog at {catalog_path(s.lake_dir)}")
    with VectorIndex.from_settings(s) as index:
        if index.config.is_lite and not Path(index.config.uri).exists():
            return skip(f"no vector index at {index.config.uri} yet")
        try:
            version = index.serving_version()
        except Exception as error:
            if not (index.config.is_lite and "Open local milvus failed" in str(error)):
                raise
            # Milvus Lite admits one process per file: serving holds it while it runs.
            return skip(
                f"the Milvus Lite file {index.config.uri} is held by another process (serving?); "
                "the new items go in with the next weekly publish, or use a Milvus server "
                "(LAMBDAREC_MILVUS_URI) to add them daily"
            )
        if version is None:
            return skip(f"alias {index.config.alias} is not set: no model published yet")
        folder = model_dir if model_dir is not None else champion_export_dir(s)
        if folder is None:
            return skip("no champion two-tower in the registry")
        if not (export_dir(folder) / EXPORT_DIR / "item_tower.json").exists():
            return skip(f"the champion's export {folder} has no item tower (retrain to add one)")
        with np.load(export_dir(folder) / "item_embeddings.npz") as data:
            ids, matrix = [str(i) for i in data["ids"]], data["embeddings"]
        probe = ids[:: max(1, len(ids) // CONSISTENCY_PROBE)][:CONSISTENCY_PROBE]
        stored = index.vectors(probe)
        want = {i: matrix[n] for n, i in enumerate(ids) if i in stored}
        if len(want) != len(probe) or any(
            not np.allclose(stored[i], v, atol=1e-4) for i, v in want.items()
        ):
            return skip(
                f"the serving index ({index.collection_name(version)}) does not hold the "
                f"champion's vectors of {probe}; publish the champion first"
            )
        new = unseen_catalog_items(folder, read_catalog(s.lake_dir))
        if not len(new):
            return skip("every catalog item has a trained embedding")
        index.upsert(new.ids, new.embeddings, [str(c) for c in new.category_index])
        collection = index.collection_name(version)
    log.info(
        "new items: embedded %d catalog item(s) unseen by the champion (%d with an unknown "
        "category) into %s",
        len(new),
        new.unknown_category,
        collection,
    )
    return {
        "embedded": len(new),
        "unknown_category": new.unknown_category,
        "collection": collection,
        "model_dir": str(folder),
    }


__all__ = [
    "EXPORT_DIR",
    "ItemTower",
    "ItemVocabulary",
    "NewItems",
    "add_new_items",
    "champion_export_dir",
    "embed_new_items",
    "export_item_tower",
    "read_vocabulary",
    "tower_weights",
    "unseen_catalog_items",
    "write_vocabulary",
]
