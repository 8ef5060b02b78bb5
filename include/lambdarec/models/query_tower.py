"""The two-tower's query tower in numpy, so serving encodes a request without TensorFlow.

Serving encodes one query row per HTTP request. Through the SavedModel (``query_tower/``) each
call pays TensorFlow's per-call overhead (tensor conversion, function dispatch: about 0.5 ms of
CPU and a tenth of the serving process's GIL time); the same arithmetic in numpy on one row takes
tens of microseconds. :class:`QueryTower` is that forward pass (:meth:`TwoTower.query
<lambdarec.models.two_tower.TwoTower.query>`: masked mean and first item of the history, user,
category, counts, the optional additive attention, the MLP, L2 norm), equal to the TF tower within
1e-5 (tests/unit/test_query_tower.py).

:func:`export_query_tower` (called by ``two_tower.export``) writes ``<export>/query_tower_numpy/``:

* ``weights.npz`` -- the FULL item-id table (the history's items are looked up in it), the user
  table's row 0 only, the category table, the attention kernels and bias (when the model has
  attention) and the query MLP. Only row 0 of the user table is kept because serving always
  passes user 0, the unknown user (``serving.recommender.TwoTowerEncoder``: the export holds no
  user vocabulary), and the table has a row per training user;
* ``query_tower.json`` -- the format, the output dimension, the attention flag, the MLP
  activations and the table sizes.

The SavedModel stays in the export beside it: older serving code reads it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lambdarec.models.item_tower import ACTIVATIONS, check_index_range, export_dir, l2_normalize

if TYPE_CHECKING:
    from collections.abc import Sequence

    from lambdarec.models.two_tower import TrainedTwoTower

EXPORT_DIR = "query_tower_numpy"
EXPORT_FORMAT = 1
META_FILE = "query_tower.json"
WEIGHTS_FILE = "weights.npz"
#: The user serving passes (the unknown user): the only user row the export keeps.
UNKNOWN_USER = 0
#: Width of the category embedding and of the counts in the query tower's concatenation.
_CATEGORY_DIM = 16
_COUNTS_DIM = 2
_ATTENTION_WEIGHTS = ("att_h", "att_q", "att_q_bias", "att_v")


# -- export (needs the trained TF model) --------------------------------------------------------


def query_tower_weights(model: Any, *, all_users: bool = False) -> dict[str, np.ndarray]:
    """The query tower's weights of a built :class:`~lambdarec.models.two_tower.TwoTower`, numpy.

    ``all_users``: keep the whole user table instead of row 0 (the unknown user, all serving
    uses); for tests that compare other users with TensorFlow."""
    dense = model.query_mlp.layers
    users = model.user_emb.embeddings.numpy()
    weights = {
        "item": model.item_emb.embeddings.numpy(),
        "user": users if all_users else users[: UNKNOWN_USER + 1],
        "category": model.cat_emb.embeddings.numpy(),
        **{f"kernel_{n}": layer.kernel.numpy() for n, layer in enumerate(dense)},
        **{f"bias_{n}": layer.bias.numpy() for n, layer in enumerate(dense)},
    }
    if model.attention:
        weights.update(
            {
                "att_h": model.att_h.kernel.numpy(),
                "att_q": model.att_q.kernel.numpy(),
                "att_q_bias": model.att_q.bias.numpy(),
                "att_v": model.att_v.kernel.numpy(),
            }
        )
    return weights


def export_query_tower(trained: TrainedTwoTower, out_dir: Path) -> Path:
    """Write ``weights.npz`` and ``query_tower.json`` (see the module doc) to ``out_dir``."""
    model = trained.model
    if not model.query_mlp.built:
        _build_query_tower(model)
    if model.attention:
        linear = {"att_h": model.att_h, "att_q": model.att_q, "att_v": model.att_v}
        odd = {
            k: layer.activation.__name__
            for k, layer in linear.items()
            if layer.activation.__name__ != "linear"
        }
        if odd:
            raise ValueError(f"the numpy query tower expects linear attention layers, got {odd}")
    out_dir.mkdir(parents=True, exist_ok=True)
    weights = query_tower_weights(model)
    np.savez(out_dir / WEIGHTS_FILE, **weights)  # type: ignore[arg-type]
    last = len(model.query_mlp.layers) - 1
    meta = {
        "format": EXPORT_FORMAT,
        "dim": int(weights[f"kernel_{last}"].shape[1]),
        "attention": bool(model.attention),
        "activations": [layer.activation.__name__ for layer in model.query_mlp.layers],
        "item_rows": int(weights["item"].shape[0]),
        "user_rows": int(weights["user"].shape[0]),
        "category_rows": int(weights["category"].shape[0]),
    }
    (out_dir / META_FILE).write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    return out_dir


def _build_query_tower(model: Any) -> None:
    """Build the query tower's layers by one call on a one-row batch of padding."""
    import tensorflow as tf

    model.query(
        {
            "user": tf.constant([UNKNOWN_USER], tf.int64),
            "hist": tf.constant([[0]], tf.int64),
            "session_category": tf.constant([0], tf.int64),
            "counts": tf.zeros([1, _COUNTS_DIM], tf.float32),
        }
    )


# -- the numpy tower ----------------------------------------------------------------------------


class QueryTower:
    """The query tower in numpy (``TwoTower.query``).

    Inputs are the model's indices, as ``two_tower.query_features`` makes them: history items
    through ``item_index.npy`` (0 = padding, 1 = an item unseen in training), counts already
    ``log1p``-ed."""

    def __init__(
        self,
        weights: dict[str, np.ndarray],
        *,
        attention: bool,
        activations: Sequence[str] = ("relu", "linear"),
    ) -> None:
        self.weights = {k: np.asarray(v, dtype=np.float32) for k, v in weights.items()}
        unknown = [a for a in activations if a not in ACTIVATIONS]
        if unknown:
            raise ValueError(f"query tower activation(s) {unknown} not supported in numpy")
        self.activations = [ACTIVATIONS[a] for a in activations]
        self.attention = attention
        w = self.weights
        missing = [k for k in _ATTENTION_WEIGHTS if k not in w] if attention else []
        if missing:
            raise ValueError(f"the query tower has attention but no weights {missing}")
        d = w["item"].shape[1]
        width = 3 * d + w["category"].shape[1] + _COUNTS_DIM + (d if attention else 0)
        if w["user"].shape[1] != d or w["kernel_0"].shape[0] != width:
            raise ValueError(
                f"query tower weights disagree: item dim {d}, user dim {w['user'].shape[1]}, "
                f"MLP input {w['kernel_0'].shape[0]} (expected {width})"
            )
        # encode_one's constants: the MLP input's slices, and the attention's vector
        self._item_dim = d
        self._width = width
        self._cat_at = 3 * d
        self._counts_at = self._cat_at + w["category"].shape[1]
        self._user0 = w["user"][UNKNOWN_USER]
        self._item, self._category = w["item"], w["category"]
        if attention:
            self._att_h, self._att_q = w["att_h"], w["att_q"]
            self._att_q_bias, self._att_v = w["att_q_bias"], w["att_v"][:, 0]
        self._layers = [
            (w[f"kernel_{n}"], w[f"bias_{n}"], act) for n, act in enumerate(self.activations)
        ]
        self._n_items = len(w["item"])
        self._n_categories = len(w["category"])

    @property
    def dim(self) -> int:
        return int(self.weights[f"kernel_{len(self.activations) - 1}"].shape[1])

    @classmethod
    def load(cls, folder: Path) -> QueryTower:
        """From ``query_tower_numpy/`` itself, a two-tower export holding it (``two_tower.export``)
        or a run folder holding that export."""
        folder = Path(folder)
        if not (folder / META_FILE).exists():
            folder = export_dir(folder) / EXPORT_DIR
        if not (folder / META_FILE).exists():
            raise FileNotFoundError(
                f"{folder} holds no numpy query tower ({META_FILE}): the export predates it; "
                "re-export the model (two_tower.export) or retrain (weekly_model_retraining); "
                "until then serve the SavedModel query_tower/"
            )
        meta = json.loads((folder / META_FILE).read_text(encoding="utf-8"))
        if meta.get("format") != EXPORT_FORMAT:
            raise ValueError(
                f"{folder}: query tower format {meta.get('format')}, expected {EXPORT_FORMAT}"
            )
        with np.load(folder / WEIGHTS_FILE) as data:
            weights = {k: data[k] for k in data.files}
        return cls(weights, attention=bool(meta["attention"]), activations=meta["activations"])

    def forward(
        self, user: np.ndarray, hist: np.ndarray, session_category: np.ndarray, counts: np.ndarray
    ) -> np.ndarray:
        """L2-normalised query vectors (b, dim) float32 of a batch: ``user`` (b,), ``hist``
        (b, L) with 0 as padding, ``session_category`` (b,), ``counts`` (b, 2)."""
        w = self.weights
        user = np.asarray(user, dtype=np.int64).reshape(-1)
        hist = np.asarray(hist, dtype=np.int64)
        category = np.asarray(session_category, dtype=np.int64).reshape(-1)
        counts = np.asarray(counts, dtype=np.float32)
        b = len(user)
        if hist.ndim != 2 or hist.shape[0] != b or hist.shape[1] < 1:
            raise ValueError(
                f"hist: shape {hist.shape}, expected ({b}, L) with L >= 1 (pad an empty "
                "history with 0)"
            )
        if category.shape != (b,) or counts.shape != (b, _COUNTS_DIM):
            raise ValueError(
                f"session_category {category.shape} and counts {counts.shape} must be ({b},) "
                f"and ({b}, {_COUNTS_DIM}), one row per user"
            )
        rows = len(w["user"])
        check_index_range(
            "user",
            user,
            rows,
            ""
            if rows > 1
            else (" (the export keeps only user 0, the unknown user serving passes)"),
        )
        check_index_range("hist", hist, self._n_items)
        check_index_range("session_category", category, self._n_categories)
        mask = (hist > 0).astype(np.float32)[..., None]  # (b, L, 1)
        e = w["item"][hist] * mask
        mean = e.sum(axis=1) / np.maximum(mask.sum(axis=1), np.float32(1.0))
        last = e[:, 0, :]
        parts = [w["user"][user], mean, last, w["category"][category], counts]
        if self.attention:
            q = last @ w["att_q"] + w["att_q_bias"]
            s = np.tanh(e @ w["att_h"] + q[:, None, :]) @ w["att_v"]  # (b, L, 1)
            s = s + (mask - np.float32(1.0)) * np.float32(1e9)
            s = np.exp(s - s.max(axis=1, keepdims=True))
            weights = s / s.sum(axis=1, keepdims=True) * mask  # all-padding rows pool to zero
            parts.append((weights * e).sum(axis=1))
        h = np.concatenate(parts, axis=1)
        for n, act in enumerate(self.activations):
            h = act(h @ w[f"kernel_{n}"] + w[f"bias_{n}"])
        return l2_normalize(h)

    def encode_one(
        self, hist: Sequence[int], session_category: int, counts: tuple[float, float]
    ) -> np.ndarray:
        """The query vector (1, dim) float32 of one request of the unknown user (0), as serving
        asks: ``hist`` the session's item indices, most recent first (may be empty; 0 is
        padding), ``counts`` the two ``log1p`` counts. Equals :meth:`forward` on that row."""
        ids = np.asarray(hist, dtype=np.int64)
        if ids.ndim != 1:
            raise ValueError(f"hist: one history expected (a flat sequence), got shape {ids.shape}")
        if len(counts) != _COUNTS_DIM:
            raise ValueError(f"counts: {_COUNTS_DIM} values expected, got {len(counts)}")
        c = int(session_category)
        if not 0 <= c < self._n_categories:
            raise ValueError(
                f"session_category index out of range 0..{self._n_categories - 1}: {c}"
            )
        d, items = self._item_dim, self._item
        x = np.zeros(self._width, dtype=np.float32)
        x[:d] = self._user0
        x[self._cat_at : self._counts_at] = self._category[c]
        x[self._counts_at] = counts[0]
        x[self._counts_at + 1] = counts[1]
        # one reduction checks both ends: a negative id is huge as uint64
        if ids.size and ids.view(np.uint64).max() >= self._n_items:
            bad = int(ids.min()) if ids.min() < 0 else int(ids.max())
            raise ValueError(f"hist index out of range 0..{self._n_items - 1}: {bad}")
        valid = ids if ids.all() else ids[ids > 0]  # padding is out of the mean and attention
        if valid.size:
            e = items[valid]  # (k, d)
            x[d : 2 * d] = e.sum(axis=0) / np.float32(valid.size)
            if ids[0] > 0:  # "last" is position 0 of the masked history: zeros if padding
                x[2 * d : 3 * d] = e[0]
            if self.attention:
                q = x[2 * d : 3 * d] @ self._att_q + self._att_q_bias
                s = np.tanh(e @ self._att_h + q) @ self._att_v  # (k,)
                s = np.exp(s - s.max())
                s /= s.sum()
                x[self._counts_at + _COUNTS_DIM :] = s @ e
        h = x
        for kernel, bias, act in self._layers:
            h = act(h @ kernel + bias)
        norm = math.sqrt(max(float(h @ h), 1e-12))
        return (h / np.float32(norm))[None, :]


__all__ = [
    "EXPORT_DIR",
    "EXPORT_FORMAT",
    "QueryTower",
    "UNKNOWN_USER",
    "export_query_tower",
    "query_tower_weights",
]
