"""The two-tower's query tower in numpy (serving's per-request encoder): equal to
``TwoTower.query`` within 1e-5 with attention on and off, on batches with empty and full-length
histories; ``encode_one`` equals ``forward`` on its row; the export round trip through
``export_two_tower``; bad inputs and old or foreign exports are named.

The TF comparison builds an untrained TwoTower with random weights (no training: seconds).
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import json  # noqa: E402
from typing import TYPE_CHECKING, Any  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from lambdarec.inference.query_tower import (  # noqa: E402
    EXPORT_DIR,
    EXPORT_FORMAT,
    QueryTower,
)

if TYPE_CHECKING:
    from pathlib import Path

    from lambdarec.models.data import Dataset

TOLERANCE = 1e-5
N_ITEMS, N_USERS, N_CATEGORIES, HIST_LEN, DIM = 60, 9, 7, 12, 16


def _model(attention: bool) -> Any:
    """A TwoTower with random weights large enough that the attention's softmax is far from
    uniform (the initialiser's are tiny), built by one query call."""
    import tensorflow as tf

    from lambdarec.models.two_tower import TwoTower, TwoTowerConfig

    config = TwoTowerConfig(dim=DIM, hidden=24, attention=attention)
    model = TwoTower(
        n_items=N_ITEMS, n_users=N_USERS, n_categories=N_CATEGORIES, n_price=5, config=config
    )
    model.query({k: tf.constant(v) for k, v in _batch(np.random.default_rng(1), 2).items()})
    one = tf.constant([1], tf.int64)
    model.candidate({"item": one, "item_category": one, "item_price": one})  # builds the rest
    rng = np.random.default_rng(2)
    model.set_weights([rng.normal(0, 0.5, w.shape).astype(np.float32) for w in model.get_weights()])
    return model


def _batch(rng: np.random.Generator, b: int) -> dict[str, np.ndarray]:
    """Random query inputs: rows 0 and 1 have no history, row 2 a full one, the others a
    most-recent-first prefix padded with 0, and row 3 padding in the middle and at position 0."""
    hist = rng.integers(1, N_ITEMS + 2, size=(b, HIST_LEN))
    lengths = rng.integers(0, HIST_LEN + 1, size=b)
    fixed = [0, 0, HIST_LEN][:b]
    lengths[: len(fixed)] = fixed
    hist[np.arange(HIST_LEN)[None, :] >= lengths[:, None]] = 0
    if b > 3:
        hist[3] = rng.integers(1, N_ITEMS + 2, size=HIST_LEN)
        hist[3, [0, 4, 5]] = 0
    return {
        "user": rng.integers(0, N_USERS, size=b).astype(np.int64),
        "hist": hist.astype(np.int64),
        "session_category": rng.integers(0, N_CATEGORIES, size=b).astype(np.int64),
        "counts": rng.normal(2.0, 1.0, size=(b, 2)).astype(np.float32),
    }


@pytest.mark.parametrize("attention", [True, False], ids=["attention", "no-attention"])
def test_numpy_query_tower_equals_the_tf_query_tower(attention: bool) -> None:
    import tensorflow as tf

    from lambdarec.models.export import query_tower_weights

    model = _model(attention)
    tower = QueryTower(query_tower_weights(model, all_users=True), attention=attention)
    rng = np.random.default_rng(3)
    for b in (1, 7, 64):
        feats = _batch(rng, b)
        want = model.query({k: tf.constant(v) for k, v in feats.items()}).numpy()
        got = tower.forward(**feats)
        assert got.shape == want.shape == (b, DIM) and got.dtype == np.float32
        np.testing.assert_allclose(got, want, atol=TOLERANCE, rtol=0)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-6)
    # the history really moves the vector (not a constant output matching by accident)
    assert np.linalg.norm(got[2] - got[4]) > 1e-2

    # encode_one (user 0) == forward on the row, for each kind of history
    feats["user"][:] = 0
    batch = tower.forward(**feats)
    for row in range(8):
        hist = [int(i) for i in feats["hist"][row]]
        counts = (float(feats["counts"][row, 0]), float(feats["counts"][row, 1]))
        one = tower.encode_one(hist, int(feats["session_category"][row]), counts)
        assert one.shape == (1, DIM) and one.dtype == np.float32
        np.testing.assert_allclose(one[0], batch[row], atol=TOLERANCE, rtol=0)
        # serving trims the padding: the same vector
        trimmed = hist[: next((n for n in range(HIST_LEN, 0, -1) if hist[n - 1]), 0)]
        np.testing.assert_allclose(
            tower.encode_one(trimmed, int(feats["session_category"][row]), counts),
            one,
            atol=TOLERANCE,
            rtol=0,
        )
    # an empty history == TF on a history of padding
    empty = tower.encode_one([], 3, (1.0, 2.0))
    tf_empty = model.query(
        {
            "user": tf.constant([0], tf.int64),
            "hist": tf.constant([[0]], tf.int64),
            "session_category": tf.constant([3], tf.int64),
            "counts": tf.constant([[1.0, 2.0]]),
        }
    ).numpy()
    np.testing.assert_allclose(empty, tf_empty, atol=TOLERANCE, rtol=0)


def test_two_tower_export_writes_the_numpy_query_tower(tmp_path: Path) -> None:
    """Through ``export_two_tower`` (with a model whose layers are not built yet): the numpy
    tower equals the SavedModel's signature, serving's current path, and keeps user 0 only."""
    import tensorflow as tf

    from lambdarec.data.generator import GeneratorConfig, generate_events
    from lambdarec.models.data import build_from_events
    from lambdarec.models.export import export_two_tower as export
    from lambdarec.models.two_tower import (
        TrainedTwoTower,
        TwoTower,
        TwoTowerConfig,
        item_index,
    )

    cfg = GeneratorConfig(n_users=50, n_items=80, n_categories=5, days=4, n_events=1_500, seed=1)
    dataset: Dataset = build_from_events(generate_events(cfg), name="tiny")
    catalog = dataset.catalog
    config = TwoTowerConfig(dim=DIM, hidden=24)
    model = TwoTower(
        n_items=dataset.n_items,
        n_users=dataset.n_users,
        n_categories=catalog.n_categories,
        n_price=catalog.n_price_buckets,
        config=config,
    )
    trained = TrainedTwoTower(model, config, item_index(dataset), catalog)
    paths = export(trained, tmp_path / "two_tower")
    assert paths["query_tower_numpy"] == tmp_path / "two_tower" / EXPORT_DIR
    meta = json.loads((paths["query_tower_numpy"] / "query_tower.json").read_text())
    assert meta == {
        "format": EXPORT_FORMAT,
        "dim": DIM,
        "attention": True,
        "activations": ["relu", "linear"],
        "item_rows": dataset.n_items + 2,
        "user_rows": 1,
        "category_rows": max(catalog.n_categories, 1),
        "max_history": 10,
    }

    for where in (tmp_path, tmp_path / "two_tower", paths["query_tower_numpy"]):
        tower = QueryTower.load(where)  # a run folder, the export, the folder itself
    serve = tf.saved_model.load(str(paths["query_tower"])).signatures["serving_default"]
    rng = np.random.default_rng(4)
    for n in (0, 1, 5, 20):
        hist = rng.integers(1, dataset.n_items + 2, size=n).tolist()
        counts = (float(rng.uniform(0, 3)), float(rng.uniform(0, 5)))
        cat = int(rng.integers(0, catalog.n_categories))
        want = serve(
            user=tf.constant([0], tf.int64),
            hist=tf.constant([hist or [0]], tf.int64),
            session_category=tf.constant([cat], tf.int64),
            counts=tf.constant([counts]),
        )["embedding"].numpy()
        np.testing.assert_allclose(
            tower.encode_one(hist, cat, counts), want, atol=TOLERANCE, rtol=0
        )

    with pytest.raises(ValueError, match=r"^user index out of range 0\.\.0: 3 .*only user 0"):
        tower.forward(np.array([3]), np.array([[1]]), np.array([0]), np.zeros((1, 2)))

    # Serving's encoder (numpy) turns online features into the tower's inputs; the SavedModel
    # export given the same inputs gives the same query vector.
    from lambdarec.inference.query_tower import QueryEncoder

    ids = [str(i) for i in np.load(paths["item_embeddings"])["ids"]]
    features = [
        {},
        {
            "session_features__last_viewed_items": ids[:3] + ["not-in-the-export"] + ids[7:9],
            "session_features__n_views": 6,
            "session_features__n_carts": 1,
            "user_history_30d__n_events_30d": 40,
        },
        {"session_features__last_viewed_items": ids[-25:], "session_features__n_purchases": 2},
    ]
    encoder = QueryEncoder.load(tmp_path / "two_tower")
    saved_model = tf.saved_model.load(str(paths["query_tower"])).signatures["serving_default"]
    # The inputs are training's: the newest items (known ones; repeats collapsed; training's
    # history length), the newest item's category, log1p(session), log1p(30 days + session).
    hist, category, counts = encoder.inputs(
        {"session_features__last_viewed_items": [ids[5], ids[5], "new", ids[2]] + ids[10:30]}
    )
    assert len(hist) == encoder.max_history - 1  # "new" took a place, unknown to the export
    assert hist[:2] == [int(trained.idx_map[5]), int(trained.idx_map[2])]
    assert category == int(catalog.category[5])
    _, _, counts = encoder.inputs(features[1])
    assert counts == pytest.approx((np.log1p(7), np.log1p(47)))
    for f in features:
        hist, category, counts = encoder.inputs(f)
        want = saved_model(
            user=tf.constant([0], tf.int64),
            hist=tf.constant([hist or [0]], tf.int64),
            session_category=tf.constant([category], tf.int64),
            counts=tf.constant([counts], tf.float32),
        )["embedding"].numpy()
        got = encoder.encode(f)
        assert got.shape == (1, DIM)
        np.testing.assert_allclose(got, want, atol=TOLERANCE, rtol=0)


# -- errors --------------------------------------------------------------------------------------


def _numpy_tower(attention: bool = True) -> QueryTower:
    """A numpy tower with random weights (no TensorFlow)."""
    rng = np.random.default_rng(0)
    d, width = DIM, 3 * DIM + 16 + 2 + (DIM if attention else 0)
    weights = {
        "item": rng.normal(size=(N_ITEMS + 2, d)),
        "user": rng.normal(size=(1, d)),
        "category": rng.normal(size=(N_CATEGORIES, 16)),
        "kernel_0": rng.normal(size=(width, 24)),
        "bias_0": rng.normal(size=24),
        "kernel_1": rng.normal(size=(24, d)),
        "bias_1": rng.normal(size=d),
    }
    if attention:
        weights.update(
            {
                "att_h": rng.normal(size=(d, d)),
                "att_q": rng.normal(size=(d, d)),
                "att_q_bias": rng.normal(size=d),
                "att_v": rng.normal(size=(d, 1)),
            }
        )
    return QueryTower(weights, attention=attention)


def test_out_of_range_indices_name_the_field_and_the_range() -> None:
    tower = _numpy_tower()
    top = N_ITEMS + 1
    with pytest.raises(ValueError, match=rf"^hist index out of range 0\.\.{top}: {top + 1}$"):
        tower.encode_one([3, top + 1], 0, (0.0, 0.0))
    with pytest.raises(ValueError, match=rf"^hist index out of range 0\.\.{top}: -1$"):
        tower.encode_one([-1], 0, (0.0, 0.0))
    with pytest.raises(
        ValueError,
        match=rf"^session_category index out of range 0\.\.{N_CATEGORIES - 1}: {N_CATEGORIES}$",
    ):
        tower.encode_one([3], N_CATEGORIES, (0.0, 0.0))
    with pytest.raises(ValueError, match="^counts: 2 values expected, got 1"):
        tower.encode_one([3], 0, (0.0,))  # type: ignore[arg-type]
    ok = {
        "user": np.array([0]),
        "hist": np.array([[2, 0]]),
        "session_category": np.array([1]),
        "counts": np.zeros((1, 2), np.float32),
    }
    with pytest.raises(ValueError, match=rf"^hist index out of range 0\.\.{top}: {top + 1}$"):
        tower.forward(**{**ok, "hist": np.array([[top + 1, 0]])})
    with pytest.raises(ValueError, match=r"^session_category index out of range"):
        tower.forward(**{**ok, "session_category": np.array([-2])})
    with pytest.raises(ValueError, match=r"^hist: shape \(1, 0\)"):
        tower.forward(**{**ok, "hist": np.zeros((1, 0), np.int64)})
    assert tower.forward(**ok).shape == (1, DIM)


def test_load_names_a_missing_or_foreign_export(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="the export predates it; re-export"):
        QueryTower.load(tmp_path)
    tower = _numpy_tower(attention=False)
    folder = tmp_path / EXPORT_DIR
    folder.mkdir()
    np.savez(folder / "weights.npz", **tower.weights)  # type: ignore[arg-type]
    meta = {
        "format": EXPORT_FORMAT,
        "dim": DIM,
        "attention": False,
        "activations": ["relu", "linear"],
    }
    (folder / "query_tower.json").write_text(json.dumps(meta))
    loaded = QueryTower.load(tmp_path)
    np.testing.assert_array_equal(
        loaded.encode_one([4, 5], 1, (0.5, 1.0)), tower.encode_one([4, 5], 1, (0.5, 1.0))
    )
    (folder / "query_tower.json").write_text(json.dumps({**meta, "format": EXPORT_FORMAT + 1}))
    with pytest.raises(ValueError, match=rf"query tower format {EXPORT_FORMAT + 1}, expected"):
        QueryTower.load(tmp_path)
    (folder / "query_tower.json").write_text(json.dumps({**meta, "attention": True}))
    with pytest.raises(ValueError, match="has attention but no weights"):
        QueryTower.load(tmp_path)
