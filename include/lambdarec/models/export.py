"""Exports of the trained two-tower into what :mod:`lambdarec.inference` loads.

:func:`export_two_tower` writes a run's ``two_tower/`` folder: the item embeddings, the item index,
the config, :func:`export_item_tower`'s ``item_tower/`` (:mod:`lambdarec.inference.item_tower`),
:func:`export_query_tower`'s ``query_tower_numpy/`` (:mod:`lambdarec.inference.query_tower`) and a
SavedModel of the query tower for TensorFlow Serving. The numpy forward passes equal the TF
towers within 1e-5 (tests/unit/test_item_tower.py, test_query_tower.py).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import numpy as np

from lambdarec.inference import item_tower, query_tower
from lambdarec.inference.nn import OOV_ITEM
from lambdarec.inference.query_tower import ITEM_CATEGORY_FILE, ITEM_INDEX_FILE

if TYPE_CHECKING:
    from pathlib import Path

    from lambdarec.inference.vocabulary import ItemVocabulary
    from lambdarec.models.two_tower import TrainedTwoTower


def tower_weights(model: Any) -> dict[str, np.ndarray]:
    """The item tower's weights of a built :class:`~lambdarec.models.two_tower.TwoTower`, numpy:
    only the no-item and OOV rows of the id table (trained items have their vectors already)."""
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
    """Write ``weights.npz`` and ``item_tower.json`` to ``out_dir``."""
    model = trained.model
    if not model.item_mlp.built:
        trained.item_embeddings()  # builds the tower
    out_dir.mkdir(parents=True, exist_ok=True)
    weights = tower_weights(model)
    np.savez(out_dir / item_tower.WEIGHTS_FILE, **weights)  # type: ignore[arg-type]
    meta = {
        "format": item_tower.EXPORT_FORMAT,
        "dim": int(weights["kernel_1"].shape[1]),
        "oov_item": OOV_ITEM,
        "activations": [layer.activation.__name__ for layer in model.item_mlp.layers],
        "vocabulary": vocabulary.to_json() if vocabulary is not None else None,
    }
    (out_dir / item_tower.META_FILE).write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    return out_dir


def query_tower_weights(model: Any, *, all_users: bool = False) -> dict[str, np.ndarray]:
    """The query tower's weights of a built :class:`~lambdarec.models.two_tower.TwoTower`, numpy,
    named as :class:`~lambdarec.inference.query_tower.QueryTower` reads them.

    ``all_users``: keep the whole user table instead of row 0 (the unknown user, all serving
    uses); for tests that compare other users with TensorFlow. A tower without the user
    (``use_user_id=False``) has no user table."""
    dense = model.query_mlp.layers
    weights = {
        "item": model.item_emb.embeddings.numpy(),
        "category": model.cat_emb.embeddings.numpy(),
        **{f"kernel_{n}": layer.kernel.numpy() for n, layer in enumerate(dense)},
        **{f"bias_{n}": layer.bias.numpy() for n, layer in enumerate(dense)},
    }
    if model.use_user_id:
        users = model.user_emb.embeddings.numpy()
        weights["user"] = users if all_users else users[: query_tower.UNKNOWN_USER + 1]
    if model.attention:
        weights.update(
            {
                "att_h": model.att_h.kernel.numpy(),
                "att_q": model.att_q.kernel.numpy(),
                "att_q_bias": model.att_q.bias.numpy(),
                "att_v": model.att_v.kernel.numpy(),
            }
        )
    if model.encoder == "transformer":
        weights["position"] = model.pos_emb.embeddings.numpy()
        weights["seq_norm_gamma"] = model.seq_norm.gamma.numpy()
        weights["seq_norm_beta"] = model.seq_norm.beta.numpy()
        for n, block in enumerate(model.blocks):
            for name in ("ln_att", "ln_ff"):
                weights[f"block{n}_{name}_gamma"] = getattr(block, name).gamma.numpy()
                weights[f"block{n}_{name}_beta"] = getattr(block, name).beta.numpy()
            for name in ("qkv", "att_out", "ff_in", "ff_out"):
                weights[f"block{n}_{name}_kernel"] = getattr(block, name).kernel.numpy()
                weights[f"block{n}_{name}_bias"] = getattr(block, name).bias.numpy()
    return weights


def numpy_query_tower(model: Any, *, all_users: bool = False) -> query_tower.QueryTower:
    """The numpy twin of a built :class:`~lambdarec.models.two_tower.TwoTower`'s query tower
    (:func:`query_tower_weights`; the checks that its layers are the ones numpy implements)."""
    odd: dict[str, str] = {}
    if model.attention:
        linear = {"att_h": model.att_h, "att_q": model.att_q, "att_v": model.att_v}
        odd = {k: layer.activation.__name__ for k, layer in linear.items()}
        odd = {k: a for k, a in odd.items() if a != "linear"}
    if model.encoder == "transformer":
        for n, block in enumerate(model.blocks):
            acts = {
                "qkv": (block.qkv, "linear"),
                "att_out": (block.att_out, "linear"),
                "ff_in": (block.ff_in, "relu"),
                "ff_out": (block.ff_out, "linear"),
            }
            odd.update(
                {
                    f"block{n}_{k}": layer.activation.__name__
                    for k, (layer, want) in acts.items()
                    if layer.activation.__name__ != want
                }
            )
    if odd:
        raise ValueError(f"the numpy query tower does not implement these activations: {odd}")
    transformer = None
    if model.encoder == "transformer":
        transformer = query_tower.Transformer(
            layers=len(model.blocks),
            heads=model.blocks[0].heads,
            readout=model.readout,
            epsilon=float(model.seq_norm.epsilon),
            with_pooling=bool(model.with_pooling),
        )
    return query_tower.QueryTower(
        query_tower_weights(model, all_users=all_users),
        attention=bool(model.attention),
        activations=[layer.activation.__name__ for layer in model.query_mlp.layers],
        encoder=model.encoder,
        use_user_id=bool(model.use_user_id),
        transformer=transformer,
    )


def export_query_tower(
    trained: TrainedTwoTower, out_dir: Path, *, max_history: int = query_tower.MAX_HISTORY
) -> Path:
    """Write ``weights.npz`` and ``query_tower.json`` to ``out_dir``."""
    model = trained.model
    if not model.query_mlp.built:
        _build_query_tower(model)
    tower = numpy_query_tower(model)
    out_dir.mkdir(parents=True, exist_ok=True)
    np.savez(out_dir / query_tower.WEIGHTS_FILE, **tower.weights)  # type: ignore[arg-type]
    if tower.transformer is not None:
        max_history = min(max_history, tower.positions)
    meta = {**tower.meta(), "max_history": int(max_history)}
    (out_dir / query_tower.META_FILE).write_text(
        json.dumps(meta, indent=1) + "\n", encoding="utf-8"
    )
    return out_dir


def _build_query_tower(model: Any) -> None:
    """Build the query tower's layers by one call on a one-row batch of padding."""
    import tensorflow as tf

    model.query(
        {
            "user": tf.constant([query_tower.UNKNOWN_USER], tf.int64),
            "hist": tf.constant([[0]], tf.int64),
            "session_category": tf.constant([0], tf.int64),
            "counts": tf.zeros([1, query_tower.COUNTS_DIM], tf.float32),
        }
    )


def export_two_tower(
    trained: TrainedTwoTower,
    out_dir: Path,
    *,
    vocabulary: ItemVocabulary | None = None,
    max_history: int = query_tower.MAX_HISTORY,
) -> dict[str, Any]:
    """Item embeddings (``item_embeddings.npz``: ids + float32 matrix), the query tower as a
    SavedModel (``query_tower/``, signature ``serving_default`` over the query features, for
    TensorFlow Serving) and in numpy (``query_tower_numpy/``: what lambdarec's serving loads,
    :mod:`lambdarec.inference.query_tower`), the item tower in numpy with ``vocabulary``
    (``item_tower/``: embeds items unseen in training, :mod:`lambdarec.inference.item_tower`) and
    the config. Returns the paths."""
    import tensorflow as tf

    out_dir.mkdir(parents=True, exist_ok=True)
    ids, matrix = trained.item_embeddings()
    np.savez(out_dir / item_tower.EMBEDDINGS_FILE, ids=ids.astype(str), embeddings=matrix)
    max_len = None
    spec = {
        "user": tf.TensorSpec([None], tf.int64, name="user"),
        "hist": tf.TensorSpec([None, max_len], tf.int64, name="hist"),
        "session_category": tf.TensorSpec([None], tf.int64, name="session_category"),
        "counts": tf.TensorSpec([None, 2], tf.float32, name="counts"),
    }
    module = tf.Module()
    module.model = trained.model
    module.serve = tf.function(
        lambda f: {"embedding": trained.model.query(f)}, input_signature=[spec]
    )
    qpath = out_dir / "query_tower"
    tf.saved_model.save(module, str(qpath), signatures={"serving_default": module.serve})
    np.save(out_dir / ITEM_INDEX_FILE, trained.idx_map)
    np.save(out_dir / ITEM_CATEGORY_FILE, trained.catalog.category.astype(np.int64))
    (out_dir / "two_tower_config.json").write_text(
        json.dumps({**asdict(trained.config), "history": trained.history}, indent=1)
    )
    item_dir = export_item_tower(trained, out_dir / item_tower.EXPORT_DIR, vocabulary)
    query_np = export_query_tower(
        trained, out_dir / query_tower.EXPORT_DIR, max_history=max_history
    )
    return {
        "item_embeddings": out_dir / item_tower.EMBEDDINGS_FILE,
        "query_tower": qpath,
        "query_tower_numpy": query_np,
        "item_tower": item_dir,
    }
