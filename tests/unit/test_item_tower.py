"""The two-tower's item tower in numpy (cold start, issue #6): equal to ``TwoTower.candidate``
within 1e-5, through its export too; the vocabulary fitted on the events reproduces the training
catalog's category indices and price buckets; bad catalog rows are named.

The TF comparison builds an untrained TwoTower (random weights, no training: seconds).
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

from typing import TYPE_CHECKING  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from lambdarec.data.generator import GeneratorConfig, generate_events  # noqa: E402
from lambdarec.inference.item_tower import ItemTower  # noqa: E402
from lambdarec.inference.nn import OOV_ITEM, UNKNOWN_CATEGORY  # noqa: E402
from lambdarec.inference.vocabulary import ItemVocabulary  # noqa: E402
from lambdarec.models.data import Dataset, build_from_events  # noqa: E402

if TYPE_CHECKING:
    from pathlib import Path

TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def events() -> pd.DataFrame:
    cfg = GeneratorConfig(n_users=300, n_items=400, n_categories=10, days=5, n_events=8_000, seed=1)
    return generate_events(cfg)


@pytest.fixture(scope="module")
def dataset(events: pd.DataFrame) -> Dataset:
    return build_from_events(events, name="tiny")


@pytest.fixture(scope="module")
def vocabulary(events: pd.DataFrame, dataset: Dataset) -> ItemVocabulary:
    return dataset.catalog.vocabulary()


def _tower(vocabulary: ItemVocabulary | None, dim: int = 8) -> ItemTower:
    """A numpy tower with random weights of the vocabulary's sizes (no TensorFlow)."""
    rng = np.random.default_rng(0)
    n_cat = vocabulary.n_categories if vocabulary else 5
    n_price = vocabulary.n_price_buckets if vocabulary else 11
    weights = {
        "item": rng.normal(size=(2, dim)),
        "category": rng.normal(size=(n_cat, 16)),
        "price": rng.normal(size=(n_price, 4)),
        "kernel_0": rng.normal(size=(dim + 20, 12)),
        "bias_0": rng.normal(size=12),
        "kernel_1": rng.normal(size=(12, dim)),
        "bias_1": rng.normal(size=dim),
    }
    return ItemTower(weights, vocabulary)


# -- (a) numpy == TensorFlow ---------------------------------------------------------------------


def test_numpy_item_tower_equals_the_tf_candidate_tower(
    dataset: Dataset, vocabulary: ItemVocabulary, tmp_path: Path
) -> None:
    import tensorflow as tf

    from lambdarec.inference.item_tower import EXPORT_DIR, embed_new_items
    from lambdarec.models.export import export_item_tower, tower_weights
    from lambdarec.models.two_tower import (
        TrainedTwoTower,
        TwoTower,
        TwoTowerConfig,
        item_index,
    )

    catalog = dataset.catalog
    config = TwoTowerConfig(dim=16, hidden=32)
    model = TwoTower(
        n_items=dataset.n_items,
        n_users=dataset.n_users,
        n_categories=catalog.n_categories,
        n_price=catalog.n_price_buckets,
        config=config,
    )
    # every (item 0 or OOV, category, price bucket) combination
    item, cat, price = (
        a.ravel()
        for a in np.meshgrid(
            [0, OOV_ITEM],
            np.arange(catalog.n_categories),
            np.arange(catalog.n_price_buckets),
            indexing="ij",
        )
    )
    feats = {"item": item, "item_category": cat, "item_price": price}
    want = model.candidate({k: tf.constant(v, tf.int64) for k, v in feats.items()}).numpy()
    tower = ItemTower(tower_weights(model), None)
    got = tower.forward(cat, price, item)
    assert got.shape == want.shape == (len(item), config.dim)
    np.testing.assert_allclose(got, want, atol=TOLERANCE, rtol=0)
    # the categories really move the vector (not a constant output matching by accident)
    assert np.linalg.norm(got[cat == 1] - got[cat == 2], axis=1).min() > 1e-3
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-6)

    # the export round trip, and new items embedded from raw catalog rows
    trained = TrainedTwoTower(model, config, item_index(dataset), catalog)
    ids, _ = trained.item_embeddings()
    out = tmp_path / "two_tower"
    export_item_tower(trained, out / EXPORT_DIR, vocabulary)
    np.savez(
        out / "item_embeddings.npz",
        ids=np.asarray(ids).astype(str),
        embeddings=np.zeros((len(ids), config.dim), np.float32),
    )
    loaded = ItemTower.load(tmp_path)  # a run folder: finds two_tower/item_tower/
    np.testing.assert_allclose(loaded.forward(cat, price, item), want, atol=TOLERANCE, rtol=0)
    known = next(iter(vocabulary.categories))
    rows = pd.DataFrame(
        {"item_id": ["new-1", "new-2"], "category": [known, "never-seen"], "price": [12.5, 3000.0]}
    )
    new = embed_new_items(out, rows)
    c = vocabulary.category_index(rows["category"])
    b = vocabulary.price_bucket(rows["price"])
    tf_new = model.candidate(
        {
            "item": tf.constant([OOV_ITEM, OOV_ITEM], tf.int64),
            "item_category": tf.constant(c, tf.int64),
            "item_price": tf.constant(b, tf.int64),
        }
    ).numpy()
    assert new.ids == ["new-1", "new-2"] and new.unknown_category == 1
    np.testing.assert_allclose(new.embeddings, tf_new, atol=TOLERANCE, rtol=0)


# -- the vocabulary ------------------------------------------------------------------------------


def test_vocabulary_reproduces_the_training_catalog(
    events: pd.DataFrame, dataset: Dataset, vocabulary: ItemVocabulary
) -> None:
    catalog = dataset.catalog
    assert sorted(vocabulary.categories.values()) == list(range(1, catalog.n_categories))
    assert vocabulary.price_edges is not None and len(vocabulary.price_edges) == 9
    # each item's own catalog row maps to the indices the model was trained with
    first = events.drop_duplicates("item_id").set_index("item_id")
    rows = first.loc[catalog.item_ids.astype(str)]
    np.testing.assert_array_equal(vocabulary.category_index(rows["category"]), catalog.category)
    np.testing.assert_array_equal(vocabulary.price_bucket(rows["price"]), catalog.price_bucket)
    again = ItemVocabulary.from_json(vocabulary.to_json())
    assert again == vocabulary

    # A catalog not built from raw events (the SR-GNN split) has no mapping to place items with.
    from dataclasses import replace

    with pytest.raises(ValueError, match="not built from raw events"):
        replace(catalog, category_vocabulary=None).vocabulary()


# -- (c) input validation ------------------------------------------------------------------------


def test_unknown_or_missing_category_falls_back_to_the_unknown_index(
    vocabulary: ItemVocabulary,
) -> None:
    known = next(iter(vocabulary.categories))
    got = vocabulary.category_index([known, "a-category-from-tomorrow", None, float("nan")])
    assert got[0] == vocabulary.categories[known] > 0
    assert got[1:].tolist() == [UNKNOWN_CATEGORY] * 3


@pytest.mark.parametrize("price", [float("nan"), -1.0, float("inf"), None])
def test_a_bad_price_is_a_value_error_naming_the_field_and_the_fix(
    vocabulary: ItemVocabulary, price: float | None
) -> None:
    tower = _tower(vocabulary)
    rows = pd.DataFrame(
        {"item_id": ["ok", "broken"], "category": ["x", "x"], "price": [10.0, price]}
    )
    with pytest.raises(ValueError, match=r"^price: 1 item\(s\).*'broken'.*fix these catalog rows"):
        tower.embed(rows)


def test_prices_are_bucketed_by_the_training_deciles(vocabulary: ItemVocabulary) -> None:
    edges = vocabulary.price_edges
    assert edges is not None
    got = vocabulary.price_bucket([0.0, edges[0] - 1e-9, edges[0], edges[-1], 1e12])
    assert got.tolist() == [1, 1, 2, 10, 10]


def test_catalog_rows_are_validated(vocabulary: ItemVocabulary) -> None:
    tower = _tower(vocabulary)
    with pytest.raises(ValueError, match=r"lack column\(s\) \['price'\]"):
        tower.embed(pd.DataFrame({"item_id": ["a"], "category": ["x"]}))
    with pytest.raises(ValueError, match="^item_id: the catalog rows repeat"):
        tower.embed(
            pd.DataFrame({"item_id": ["a", "a"], "category": ["x", "x"], "price": [1.0, 2.0]})
        )
    with pytest.raises(ValueError, match="^item_id: rows"):
        tower.embed(
            pd.DataFrame({"item_id": ["a", ""], "category": ["x", "x"], "price": [1.0, 2.0]})
        )
    with pytest.raises(ValueError, match="no item vocabulary"):
        _tower(None).embed(pd.DataFrame({"item_id": ["a"], "category": ["x"], "price": [1.0]}))
    new = tower.embed(
        pd.DataFrame({"item_id": ["a", "b"], "category": ["x", None], "price": [1.0, 2.0]})
    )
    assert new.embeddings.shape == (2, tower.dim) and new.embeddings.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(new.embeddings, axis=1), 1.0, atol=1e-6)


def test_items_the_model_already_embeds_are_refused(
    vocabulary: ItemVocabulary, tmp_path: Path
) -> None:
    import json

    from lambdarec.inference.item_tower import EXPORT_DIR, embed_new_items

    tower = _tower(vocabulary)
    folder = tmp_path / EXPORT_DIR
    folder.mkdir()
    np.savez(folder / "weights.npz", **tower.weights)  # type: ignore[arg-type]
    (folder / "item_tower.json").write_text(
        json.dumps(
            {
                "format": 1,
                "dim": tower.dim,
                "oov_item": 1,
                "activations": ["relu", "linear"],
                "vocabulary": vocabulary.to_json(),
            }
        )
    )
    np.savez(
        tmp_path / "item_embeddings.npz",
        ids=np.array(["old-1", "old-2"]),
        embeddings=np.zeros((2, tower.dim), np.float32),
    )
    rows = pd.DataFrame(
        {"item_id": ["new-1", "old-2"], "category": ["x", "x"], "price": [1.0, 1.0]}
    )
    with pytest.raises(ValueError, match=r"^item_id: 1 item\(s\) already have embeddings.*old-2"):
        embed_new_items(tmp_path, rows)
    assert embed_new_items(tmp_path, rows.iloc[:1]).ids == ["new-1"]
