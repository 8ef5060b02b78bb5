"""The two-tower's query tower in numpy: one request's query vector without TensorFlow.

Serving encodes one query row per HTTP request. Through a SavedModel each call paid TensorFlow's
per-call overhead (tensor conversion, function dispatch: about 0.5 ms of CPU); the same arithmetic
in numpy on one row takes tens of microseconds. :class:`QueryTower` is that forward pass
(:meth:`TwoTower.query <lambdarec.models.two_tower.TwoTower.query>`: masked mean and first item
of the history, user, category, counts, the optional additive attention, the MLP, L2 norm), equal
to the TF tower within 1e-5 (tests/unit/test_query_tower.py).

Training writes ``<export>/query_tower_numpy/`` (:func:`lambdarec.models.export.
export_query_tower`):

* ``weights.npz`` -- the FULL item-id table (the history's items are looked up in it), the user
  table's row 0 only, the category table, the attention kernels and bias (when the model has
  attention) and the query MLP. Only row 0 of the user table is kept because serving always
  passes user 0, the unknown user (:class:`QueryEncoder`: the export holds no user vocabulary);
* ``query_tower.json`` -- the format, the output dimension, the attention flag, the MLP
  activations and the table sizes.

:class:`QueryEncoder` turns the online features of a request (the ``retrieval_v1`` feature
service) into the tower's inputs and encodes them.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lambdarec.inference.nn import (
    ACTIVATIONS,
    check_activations,
    check_index_range,
    export_dir,
    l2_normalize,
    read_export,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

EXPORT_DIR = "query_tower_numpy"
EXPORT_FORMAT = 1
META_FILE = "query_tower.json"
WEIGHTS_FILE = "weights.npz"
#: The export's map from catalog position (the order of ``item_embeddings.npz``) to the item's
#: embedding index (``two_tower.item_index``).
ITEM_INDEX_FILE = "item_index.npy"
#: Each catalog item's category index (same order): the session category is its newest item's.
ITEM_CATEGORY_FILE = "item_category.npy"
#: The user serving passes (the unknown user): the only user row the export keeps.
UNKNOWN_USER = 0
#: Width of the category embedding and of the counts in the query tower's concatenation.
CATEGORY_DIM = 16
COUNTS_DIM = 2
ATTENTION_WEIGHTS = ("att_h", "att_q", "att_q_bias", "att_v")
#: The history length of an export that does not say (its meta's ``max_history``).
MAX_HISTORY = 10


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
        max_history: int = MAX_HISTORY,
    ) -> None:
        self.weights = {k: np.asarray(v, dtype=np.float32) for k, v in weights.items()}
        #: The history length training used (its examples' last items).
        self.max_history = max_history
        check_activations(list(activations), "query tower")
        self.activations = [ACTIVATIONS[a] for a in activations]
        self.attention = attention
        w = self.weights
        missing = [k for k in ATTENTION_WEIGHTS if k not in w] if attention else []
        if missing:
            raise ValueError(f"the query tower has attention but no weights {missing}")
        d = w["item"].shape[1]
        width = 3 * d + w["category"].shape[1] + COUNTS_DIM + (d if attention else 0)
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
        """From ``query_tower_numpy/`` itself, a two-tower export holding it (``export_two_tower``)
        or a run folder holding that export."""
        folder = Path(folder)
        if not (folder / META_FILE).exists():
            folder = export_dir(folder) / EXPORT_DIR
        meta, weights = read_export(
            folder,
            META_FILE,
            WEIGHTS_FILE,
            EXPORT_FORMAT,
            "numpy query tower",
            "the export predates it; re-export the model (lambdarec.models.export."
            "export_two_tower) or retrain (weekly_model_retraining)",
        )
        return cls(
            weights,
            attention=bool(meta["attention"]),
            activations=meta["activations"],
            max_history=int(meta.get("max_history", MAX_HISTORY)),
        )

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
        if category.shape != (b,) or counts.shape != (b, COUNTS_DIM):
            raise ValueError(
                f"session_category {category.shape} and counts {counts.shape} must be ({b},) "
                f"and ({b}, {COUNTS_DIM}), one row per user"
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
        if len(counts) != COUNTS_DIM:
            raise ValueError(f"counts: {COUNTS_DIM} values expected, got {len(counts)}")
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
                x[self._counts_at + COUNTS_DIM :] = s @ e
        h = x
        for kernel, bias, act in self._layers:
            h = act(h @ kernel + bias)
        norm = math.sqrt(max(float(h @ h), 1e-12))
        return (h / np.float32(norm))[None, :]


class QueryEncoder:
    """The champion two-tower's query tower with its item index: online features -> a vector.

    The inputs are training's (``two_tower.query_features``): the session's recent items newest
    first (through ``item_index.npy``; items the export does not know are skipped), the session
    category (the category of the newest known item, ``item_category.npy``), and the two counts:
    log1p of the session's events so far, log1p of the user's events (the daily job's 30 days
    plus this session's). The export holds no user vocabulary: the user is the unknown user (0).
    """

    def __init__(
        self,
        tower: QueryTower,
        item_ids: Sequence[str],
        item_index: np.ndarray,
        item_category: np.ndarray | None = None,
    ) -> None:
        self.tower = tower
        #: The session's recent items the encoder reads (training's history length).
        self.max_history = tower.max_history
        #: Item id -> (the query tower's embedding index, the item's category index).
        category = np.zeros(len(item_ids), np.int64) if item_category is None else item_category
        self._index = {
            item: (int(item_index[pos]), int(category[pos])) for pos, item in enumerate(item_ids)
        }

    @classmethod
    def load(cls, model_dir: Path) -> QueryEncoder:
        """From a two-tower export (``export_two_tower``) or a run folder holding one."""
        folder = export_dir(Path(model_dir))
        with np.load(folder / "item_embeddings.npz") as data:
            ids = [str(i) for i in data["ids"]]
        categories = folder / ITEM_CATEGORY_FILE
        return cls(
            QueryTower.load(folder),
            ids,
            np.load(folder / ITEM_INDEX_FILE),
            np.load(categories) if categories.is_file() else None,
        )

    def inputs(self, features: dict[str, Any]) -> tuple[list[int], int, tuple[float, float]]:
        """(history indices newest first, the session category, the two log1p counts) of one
        request's features."""
        index = self._index
        recent: list[str] = []
        for item in features.get("session_features__last_viewed_items") or ():
            # consecutive repeats collapsed, as training collapses them
            if item is not None and (not recent or item != recent[-1]):
                recent.append(str(item))
                if len(recent) == self.max_history:
                    break
        known = [index[i] for i in recent if i in index]
        n_session = sum(
            int(features.get(f"session_features__n_{c}") or 0)
            for c in ("views", "carts", "purchases")
        )
        n_user = int(features.get("user_history_30d__n_events_30d") or 0) + n_session
        category = known[0][1] if known else 0
        return [i for i, _ in known], category, (math.log1p(n_session), math.log1p(n_user))

    def encode(self, features: dict[str, Any]) -> np.ndarray:
        hist, category, counts = self.inputs(features)
        return self.tower.encode_one(hist, category, counts)
