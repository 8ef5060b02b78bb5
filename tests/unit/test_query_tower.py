"""The two-tower's query tower in numpy (serving's per-request encoder): equal to
``TwoTower.query`` within 1e-5 for both history encoders (pooling with attention on and off;
the transformer with either readout, with and without the user), on batches with empty and
full-length histories, with random weights and after a short training; ``encode_one`` equals
``forward`` on its row; the export round trip through ``export_two_tower``; bad inputs and old
or foreign exports are named.

The random-weight comparisons build an untrained TwoTower (no training: seconds); the trained
ones fit one epoch on a tiny generated clickstream.
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
    POOLING_FORMAT,
    QueryTower,
    Transformer,
)

if TYPE_CHECKING:
    from pathlib import Path

    from lambdarec.models.data import Dataset

TOLERANCE = 1e-5
N_ITEMS, N_USERS, N_CATEGORIES, HIST_LEN, DIM = 60, 9, 7, 12, 16


#: The query towers compared with TensorFlow, as TwoTowerConfig options.
TOWERS: dict[str, dict[str, Any]] = {
    "attention": {"attention": True},
    "no-attention": {"attention": False},
    "transformer": {"query_encoder": "transformer", "positions": HIST_LEN},
    "transformer-with-pooling-no-user": {
        "query_encoder": "transformer",
        "positions": HIST_LEN,
        "with_pooling": True,
        "use_user_id": False,
    },
    "transformer-mean-1-layer-no-user": {
        "query_encoder": "transformer",
        "positions": HIST_LEN,
        "readout": "mean",
        "layers": 1,
        "heads": 4,
        "use_user_id": False,
    },
}


def _model(**options: Any) -> Any:
    """A TwoTower with random weights large enough that the attentions' softmaxes are far from
    uniform (the initialiser's are tiny), built by one query call."""
    import tensorflow as tf

    from lambdarec.models.two_tower import TwoTower, TwoTowerConfig

    config = TwoTowerConfig(dim=DIM, hidden=24, **options)
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


@pytest.mark.parametrize("options", TOWERS.values(), ids=TOWERS.keys())
def test_numpy_query_tower_equals_the_tf_query_tower(options: dict[str, Any]) -> None:
    import tensorflow as tf

    from lambdarec.models.export import numpy_query_tower

    model = _model(**options)
    tower = numpy_query_tower(model, all_users=True)
    assert tower.encoder == options.get("query_encoder", "pooling")
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


@pytest.fixture(scope="module")
def tiny() -> Dataset:
    """A tiny generated clickstream (80 items, 5 categories)."""
    from lambdarec.data.generator import GeneratorConfig, generate_events
    from lambdarec.models.data import build_from_events

    cfg = GeneratorConfig(n_users=50, n_items=80, n_categories=5, days=4, n_events=1_500, seed=1)
    return build_from_events(generate_events(cfg), name="tiny")


@pytest.mark.parametrize(
    ("kind", "user"),
    [("pooling", True), ("pooling", False), ("transformer", True)],
    ids=["pooling-user", "pooling", "transformer-user"],
)
def test_two_tower_export_writes_the_numpy_query_tower(
    tiny: Dataset, tmp_path: Path, kind: str, user: bool
) -> None:
    """Through ``export_two_tower`` (with a model whose layers are not built yet): the numpy
    tower equals the SavedModel's signature, serving's current path, and keeps user 0 only.
    The pooling tower with the user keeps format 1 (older readers load it); without the user
    it is format 2 with no user row."""
    import tensorflow as tf

    from lambdarec.models.export import export_two_tower as export
    from lambdarec.models.two_tower import (
        TrainedTwoTower,
        TwoTower,
        TwoTowerConfig,
        item_index,
    )

    dataset = tiny
    catalog = dataset.catalog
    config = TwoTowerConfig(
        dim=DIM,
        hidden=24,
        query_encoder=kind,  # type: ignore[arg-type]
        use_user_id=user,
    )
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
    pooling = {
        "format": POOLING_FORMAT,
        "dim": DIM,
        "attention": True,
        "activations": ["relu", "linear"],
        "item_rows": dataset.n_items + 2,
        "user_rows": 1,
        "category_rows": max(catalog.n_categories, 1),
        "max_history": 10,
    }
    if kind == "pooling" and user:
        assert meta == pooling
    elif kind == "pooling":
        assert meta == {**pooling, "format": EXPORT_FORMAT, "encoder": "pooling"} | {
            "use_user_id": False,
            "user_rows": 0,
        }
    else:
        assert meta == {
            **pooling,
            "format": EXPORT_FORMAT,
            "encoder": "transformer",
            "use_user_id": True,
            "attention": False,
            "transformer": {
                "layers": 2,
                "heads": 2,
                "readout": "newest",
                "layer_norm_epsilon": 1e-6,
                "positions": 10,
                "ff_dim": 128,
                "ff_activation": "relu",
                "with_pooling": False,
            },
        }

    for where in (tmp_path, tmp_path / "two_tower", paths["query_tower_numpy"]):
        tower = QueryTower.load(where)  # a run folder, the export, the folder itself
    serve = tf.saved_model.load(str(paths["query_tower"])).signatures["serving_default"]
    rng = np.random.default_rng(4)
    for n in (0, 1, 5, 20 if kind == "pooling" else 10):  # the transformer: 10 positions
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

    if user:
        with pytest.raises(ValueError, match=r"^user index out of range 0\.\.0: 3 .*only user 0"):
            tower.forward(np.array([3]), np.array([[1]]), np.array([0]), np.zeros((1, 2)))
    else:  # no user table: the user is not read
        rows = (np.array([[1]]), np.array([0]), np.zeros((1, 2)))
        np.testing.assert_array_equal(
            tower.forward(np.array([3]), *rows), tower.forward(np.array([0]), *rows)
        )

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


@pytest.mark.parametrize("encoder", ["pooling", "transformer"])
def test_numpy_equals_tf_after_a_short_training(
    tiny: Dataset, tmp_path: Path, encoder: str
) -> None:
    """Trained weights, not random ones: one epoch with uniform negatives (the transformer's
    dropout on), exported and loaded, equals the TF tower on the validation queries, batched and
    one by one as serving asks (user 0)."""
    import tensorflow as tf

    from lambdarec.models.export import export_query_tower
    from lambdarec.models.two_tower import TwoTowerConfig, query_features, train_two_tower

    config = TwoTowerConfig(
        dim=DIM,
        hidden=24,
        epochs=1,
        batch_size=128,
        valid_queries=200,
        query_encoder=encoder,  # type: ignore[arg-type]
        negatives=64,
    )
    trained = train_two_tower(tiny, config)
    assert np.isfinite(trained.history[0]["loss"])
    tower = QueryTower.load(export_query_tower(trained, tmp_path / EXPORT_DIR))
    assert tower.encoder == encoder
    feats = query_features(tiny.valid, trained.idx_map)
    feats["user"][:] = 0  # the export keeps the unknown user only
    feats["hist"][0] = 0  # an empty history
    feats["hist"][1, :3] = [5, 1, 7]  # an item unseen in training (the OOV row)
    assert ((feats["hist"] > 0).sum(axis=1) == feats["hist"].shape[1]).any()  # a full one
    want = trained.model.query({k: tf.constant(v) for k, v in feats.items()}).numpy()
    np.testing.assert_allclose(tower.forward(**feats), want, atol=TOLERANCE, rtol=0)
    for row in range(min(len(want), 60)):
        hist = [int(i) for i in feats["hist"][row] if i]  # serving passes no padding
        counts = (float(feats["counts"][row, 0]), float(feats["counts"][row, 1]))
        one = tower.encode_one(hist, int(feats["session_category"][row]), counts)
        np.testing.assert_allclose(one[0], want[row], atol=TOLERANCE, rtol=0)


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
    meta = {  # an export from before the transformer: format 1, no encoder
        "format": POOLING_FORMAT,
        "dim": DIM,
        "attention": False,
        "activations": ["relu", "linear"],
    }
    (folder / "query_tower.json").write_text(json.dumps(meta))
    loaded = QueryTower.load(tmp_path)
    assert loaded.encoder == "pooling" and loaded.use_user_id
    np.testing.assert_array_equal(
        loaded.encode_one([4, 5], 1, (0.5, 1.0)), tower.encode_one([4, 5], 1, (0.5, 1.0))
    )
    (folder / "query_tower.json").write_text(json.dumps({**meta, "format": EXPORT_FORMAT + 1}))
    with pytest.raises(ValueError, match=rf"query tower format {EXPORT_FORMAT + 1}, expected"):
        QueryTower.load(tmp_path)
    (folder / "query_tower.json").write_text(json.dumps({**meta, "attention": True}))
    with pytest.raises(ValueError, match="has attention but no weights"):
        QueryTower.load(tmp_path)
    (folder / "query_tower.json").write_text(
        json.dumps({**meta, "format": EXPORT_FORMAT, "encoder": "transformer"})
    )
    with pytest.raises(ValueError, match="a transformer export without its shape"):
        QueryTower.load(tmp_path)


def _numpy_transformer(layers: int = 2, positions: int = 10) -> QueryTower:
    """A numpy transformer tower with random weights (no TensorFlow), without the user."""
    rng = np.random.default_rng(0)
    d, ff = DIM, 24
    weights = {
        "item": rng.normal(size=(N_ITEMS + 2, d)),
        "category": rng.normal(size=(N_CATEGORIES, 16)),
        "position": rng.normal(size=(positions, d)),
        "seq_norm_gamma": rng.normal(size=d),
        "seq_norm_beta": rng.normal(size=d),
        "kernel_0": rng.normal(size=(d + 16 + 2, 24)),
        "bias_0": rng.normal(size=24),
        "kernel_1": rng.normal(size=(24, d)),
        "bias_1": rng.normal(size=d),
    }
    shapes = {
        "ln_att_gamma": (d,),
        "ln_att_beta": (d,),
        "qkv_kernel": (d, 3 * d),
        "qkv_bias": (3 * d,),
        "att_out_kernel": (d, d),
        "att_out_bias": (d,),
        "ln_ff_gamma": (d,),
        "ln_ff_beta": (d,),
        "ff_in_kernel": (d, ff),
        "ff_in_bias": (ff,),
        "ff_out_kernel": (ff, d),
        "ff_out_bias": (d,),
    }
    for n in range(layers):
        weights.update({f"block{n}_{k}": rng.normal(size=v) for k, v in shapes.items()})
    return QueryTower(
        weights,
        encoder="transformer",
        use_user_id=False,
        transformer=Transformer(layers=layers, heads=2),
    )


def test_a_transformer_export_round_trips_and_names_what_it_cannot_read(tmp_path: Path) -> None:
    tower = _numpy_transformer()
    assert tower.max_history == tower.positions == 10
    folder = tmp_path / EXPORT_DIR
    folder.mkdir()
    np.savez(folder / "weights.npz", **tower.weights)  # type: ignore[arg-type]
    meta = {**tower.meta(), "max_history": 50}  # more than the positions: capped
    assert meta["format"] == EXPORT_FORMAT and meta["user_rows"] == 0
    (folder / "query_tower.json").write_text(json.dumps(meta))
    loaded = QueryTower.load(tmp_path)
    assert (loaded.encoder, loaded.use_user_id, loaded.max_history) == ("transformer", False, 10)
    hist = [4, 9, 1, 30]
    np.testing.assert_array_equal(
        loaded.encode_one(hist, 1, (0.5, 1.0)), tower.encode_one(hist, 1, (0.5, 1.0))
    )
    # the user is not read: any user gives the same vector
    rows = (np.array([hist * 2]), np.array([1]), np.array([[0.5, 1.0]], np.float32))
    np.testing.assert_array_equal(
        tower.forward(np.array([7]), *rows), tower.forward(np.array([0]), *rows)
    )

    with pytest.raises(ValueError, match=r"^hist: 11 positions, the transformer learned 10"):
        tower.encode_one(list(range(1, 12)), 0, (0.0, 0.0))
    with pytest.raises(ValueError, match=r"^hist: 11 positions, the transformer learned 10"):
        tower.forward(np.array([0]), np.ones((1, 11), np.int64), np.array([0]), np.zeros((1, 2)))
    for odd in ("gelu", "swish"):
        bad = {**meta, "transformer": {**meta["transformer"], "ff_activation": odd}}
        (folder / "query_tower.json").write_text(json.dumps(bad))
        with pytest.raises(ValueError, match=f"activation '{odd}' not supported in numpy"):
            QueryTower.load(tmp_path)
    weights = {k: v for k, v in tower.weights.items() if not k.startswith("block1_")}
    with pytest.raises(ValueError, match=r"has transformer but no weights \['block1_ln_att_gamma'"):
        QueryTower(
            weights,
            encoder="transformer",
            use_user_id=False,
            transformer=Transformer(layers=2, heads=2),
        )
    with pytest.raises(ValueError, match="not divisible into 3 heads"):
        QueryTower(
            tower.weights,
            encoder="transformer",
            use_user_id=False,
            transformer=Transformer(layers=2, heads=3),
        )
    with pytest.raises(ValueError, match="encoder 'rnn'"):
        QueryTower(tower.weights, encoder="rnn")


def test_encode_one_of_a_transformer_skips_padding_and_reads_the_newest_position() -> None:
    """Padding takes no part (as its zero attention weight in the batch); a history whose
    newest position is padding reads zeros, as the TF tower's masked readout does."""
    tower = _numpy_transformer(layers=1)
    batch = tower.forward(
        np.zeros(4, np.int64),
        np.array([[4, 0, 9, 0], [4, 9, 0, 0], [0, 4, 9, 0], [0, 0, 0, 0]]),
        np.ones(4, np.int64),
        np.full((4, 2), 0.5, np.float32),
    )
    for row, hist in enumerate(([4, 0, 9], [4, 9], [0, 4, 9], [])):
        one = tower.encode_one(hist, 1, (0.5, 0.5))
        np.testing.assert_allclose(one[0], batch[row], atol=TOLERANCE, rtol=0)
    # position matters: the same items one place apart give another vector
    assert np.abs(batch[0] - batch[1]).max() > 1e-3
    np.testing.assert_allclose(batch[2], batch[3], atol=TOLERANCE, rtol=0)  # both read zeros
