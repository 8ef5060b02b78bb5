"""The two-tower's query tower in numpy: one request's query vector without TensorFlow.

Serving encodes one query row per HTTP request. Through a SavedModel each call paid TensorFlow's
per-call overhead (tensor conversion, function dispatch: about 0.5 ms of CPU); the same arithmetic
in numpy on one row takes tens of microseconds. :class:`QueryTower` is that forward pass
(:meth:`TwoTower.query <lambdarec.models.two_tower.TwoTower.query>`) for both history encoders:

* ``pooling``: masked mean and first item of the history, the optional additive attention;
* ``transformer``: item (times sqrt(d)) + position embeddings, pre-layer-norm blocks of multi-head
  self-attention over the non-padding positions and a ReLU feed-forward, the final layer norm,
  read at the newest position or averaged over the items;

then the user (optional), category, counts, the MLP and the L2 norm, equal to the TF tower within
1e-5 (tests/unit/test_query_tower.py).

Training writes ``<export>/query_tower_numpy/`` (:func:`lambdarec.models.export.
export_query_tower`):

* ``weights.npz`` -- the FULL item-id table (the history's items are looked up in it), the user
  table's row 0 only (when the tower reads the user), the category table, the encoder's weights
  (attention kernels; or positions, blocks and the final layer norm) and the query MLP. Only
  row 0 of the user table is kept because serving always passes user 0, the unknown user
  (:class:`QueryEncoder`: the export holds no user vocabulary);
* ``query_tower.json`` -- the format, the encoder and its shapes, the output dimension, the MLP
  activations and the table sizes. Format 1 is the pooling tower with the user (what exports
  before the transformer hold, and what a pooling tower with the user still writes, so older
  readers load it); format 2 names its ``encoder`` and ``use_user_id``.

:class:`QueryEncoder` turns the online features of a request (the ``retrieval_v1`` feature
service) into the tower's inputs and encodes them.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lambdarec.inference.nn import (
    ACTIVATIONS,
    check_activations,
    check_index_range,
    export_dir,
    l2_normalize,
    layer_norm,
    read_export,
    softmax,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

EXPORT_DIR = "query_tower_numpy"
#: The newest format: any encoder, named in the meta.
EXPORT_FORMAT = 2
#: The pooling tower with the user row (no ``encoder`` in the meta).
POOLING_FORMAT = 1
READABLE_FORMATS = (POOLING_FORMAT, EXPORT_FORMAT)
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
#: One transformer block's weights, each stored as ``block{n}_{name}``.
BLOCK_WEIGHTS = (
    "ln_att_gamma",
    "ln_att_beta",
    "qkv_kernel",
    "qkv_bias",
    "att_out_kernel",
    "att_out_bias",
    "ln_ff_gamma",
    "ln_ff_beta",
    "ff_in_kernel",
    "ff_in_bias",
    "ff_out_kernel",
    "ff_out_bias",
)
#: The transformer's weights besides the blocks: position embeddings, the final layer norm.
SEQUENCE_WEIGHTS = ("position", "seq_norm_gamma", "seq_norm_beta")
ENCODERS = ("pooling", "transformer")
READOUTS = ("newest", "mean")
#: The history length of an export that does not say (its meta's ``max_history``).
MAX_HISTORY = 10


@dataclass(frozen=True)
class Transformer:
    """The transformer encoder's shape (``two_tower.SelfAttentionBlock``): blocks, heads, the
    readout (``newest``: the newest position's output; ``mean``: the mean over the items) and
    the layer norms' epsilon. The feed-forward is ReLU; widths come from the weights."""

    layers: int
    heads: int
    readout: str = "newest"
    epsilon: float = 1e-6
    #: The history's masked mean and newest item also go to the MLP, after the encoder's output.
    with_pooling: bool = False

    def to_json(self, weights: dict[str, np.ndarray]) -> dict[str, Any]:
        return {
            "layers": self.layers,
            "heads": self.heads,
            "readout": self.readout,
            "layer_norm_epsilon": self.epsilon,
            "positions": int(weights["position"].shape[0]),
            "ff_dim": int(weights["block0_ff_in_kernel"].shape[1]),
            "ff_activation": "relu",
            "with_pooling": self.with_pooling,
        }

    @classmethod
    def from_json(cls, meta: dict[str, Any]) -> Transformer:
        if meta.get("ff_activation", "relu") != "relu":
            raise ValueError(
                f"transformer feed-forward activation {meta['ff_activation']!r} not supported "
                "in numpy (relu only)"
            )
        return cls(
            layers=int(meta["layers"]),
            heads=int(meta["heads"]),
            readout=str(meta.get("readout", "newest")),
            epsilon=float(meta.get("layer_norm_epsilon", 1e-6)),
            with_pooling=bool(meta.get("with_pooling", False)),
        )


class QueryTower:
    """The query tower in numpy (``TwoTower.query``).

    Inputs are the model's indices, as ``two_tower.query_features`` makes them: history items
    through ``item_index.npy`` (0 = padding, 1 = an item unseen in training), counts already
    ``log1p``-ed. ``encoder`` is ``pooling`` (``attention`` says whether it has the additive
    attention) or ``transformer`` (``transformer`` gives its shape); ``use_user_id`` whether the
    tower reads the user (the weights then hold ``user``)."""

    def __init__(
        self,
        weights: dict[str, np.ndarray],
        *,
        attention: bool = False,
        activations: Sequence[str] = ("relu", "linear"),
        max_history: int = MAX_HISTORY,
        encoder: str = "pooling",
        use_user_id: bool = True,
        transformer: Transformer | None = None,
    ) -> None:
        self.weights = {k: np.asarray(v, dtype=np.float32) for k, v in weights.items()}
        check_activations(list(activations), "query tower")
        self.activation_names = list(activations)
        self.activations = [ACTIVATIONS[a] for a in activations]
        if encoder not in ENCODERS:
            raise ValueError(f"query tower encoder {encoder!r}: expected one of {ENCODERS}")
        self.encoder = encoder
        self.attention = attention and encoder == "pooling"
        self.use_user_id = use_user_id
        w = self.weights
        missing = [k for k in ATTENTION_WEIGHTS if k not in w] if self.attention else []
        if use_user_id and "user" not in w:
            missing.append("user")
        d = w["item"].shape[1]
        user_width = d if use_user_id else 0
        if encoder == "transformer":
            if transformer is None:
                raise ValueError("a transformer query tower needs its shape (Transformer)")
            if transformer.readout not in READOUTS:
                raise ValueError(f"readout {transformer.readout!r}: expected one of {READOUTS}")
            if d % transformer.heads:
                raise ValueError(f"item dim {d} is not divisible into {transformer.heads} heads")
            names = [*SEQUENCE_WEIGHTS]
            names += [f"block{n}_{k}" for n in range(transformer.layers) for k in BLOCK_WEIGHTS]
            missing += [k for k in names if k not in w]
            width = user_width + d + w["category"].shape[1] + COUNTS_DIM
            width += 2 * d if transformer.with_pooling else 0
        else:
            width = user_width + 2 * d + w["category"].shape[1] + COUNTS_DIM
            width += d if self.attention else 0
        if missing:
            what = "attention" if self.attention else encoder
            raise ValueError(f"the query tower has {what} but no weights {missing}")
        if (use_user_id and w["user"].shape[1] != d) or w["kernel_0"].shape[0] != width:
            user_dim = w["user"].shape[1] if use_user_id else None
            raise ValueError(
                f"query tower weights disagree: item dim {d}, user dim {user_dim}, "
                f"MLP input {w['kernel_0'].shape[0]} (expected {width})"
            )
        self.transformer = transformer if encoder == "transformer" else None
        #: The history length training used (its examples' last items); a transformer reads
        #: no more than its positions.
        self.max_history = max_history
        if self.transformer is not None:
            self.max_history = min(max_history, self.positions)
        # encode_one's constants: the MLP input's slices, the encoder's arrays
        self._item_dim = d
        self._width = width
        self._seq_at = user_width  # the history's part of the MLP input starts here
        self._cat_at = width - COUNTS_DIM - w["category"].shape[1]
        if self.attention:
            self._cat_at -= d
        self._counts_at = self._cat_at + w["category"].shape[1]
        self._user0 = w["user"][UNKNOWN_USER] if use_user_id else None
        self._item, self._category = w["item"], w["category"]
        if self.attention:
            self._att_h, self._att_q = w["att_h"], w["att_q"]
            self._att_q_bias, self._att_v = w["att_q_bias"], w["att_v"][:, 0]
        if self.transformer is not None:
            t = self.transformer
            self._blocks = [
                tuple(w[f"block{n}_{k}"] for k in BLOCK_WEIGHTS) for n in range(t.layers)
            ]
            self._position = w["position"]
            self._seq_norm = (w["seq_norm_gamma"], w["seq_norm_beta"])
            self._heads = t.heads
            self._epsilon = t.epsilon
            self._scale = np.float32(1.0 / math.sqrt(d // t.heads))
            self._item_scale = np.float32(math.sqrt(d))  # the items scaled as SASRec does
        self._layers = [
            (w[f"kernel_{n}"], w[f"bias_{n}"], act) for n, act in enumerate(self.activations)
        ]
        self._n_items = len(w["item"])
        self._n_categories = len(w["category"])

    @property
    def dim(self) -> int:
        return int(self.weights[f"kernel_{len(self.activations) - 1}"].shape[1])

    @property
    def positions(self) -> int:
        """The longest history a transformer reads (its learned positions)."""
        return int(self.weights["position"].shape[0]) if "position" in self.weights else 0

    @classmethod
    def load(cls, folder: Path) -> QueryTower:
        """From ``query_tower_numpy/`` itself, a two-tower export holding it (``export_two_tower``)
        or a run folder holding that export."""
        folder = Path(folder)
        if not (folder / META_FILE).exists():
            folder = export_dir(folder) / EXPORT_DIR
        fmt = EXPORT_FORMAT
        if (folder / META_FILE).is_file():
            fmt = json.loads((folder / META_FILE).read_text(encoding="utf-8")).get("format")
        meta, weights = read_export(
            folder,
            META_FILE,
            WEIGHTS_FILE,
            fmt if fmt in READABLE_FORMATS else EXPORT_FORMAT,
            "numpy query tower",
            "the export predates it; re-export the model (lambdarec.models.export."
            "export_two_tower) or retrain (weekly_model_retraining)",
        )
        encoder = str(meta.get("encoder", "pooling"))
        if encoder == "transformer" and "transformer" not in meta:
            raise ValueError(f"{folder}: a transformer export without its shape in {META_FILE}")
        return cls(
            weights,
            attention=bool(meta["attention"]),
            activations=meta["activations"],
            max_history=int(meta.get("max_history", MAX_HISTORY)),
            encoder=encoder,
            use_user_id=bool(meta.get("use_user_id", True)),
            transformer=(
                Transformer.from_json(meta["transformer"]) if encoder == "transformer" else None
            ),
        )

    def meta(self) -> dict[str, Any]:
        """``query_tower.json`` of this tower but the export's own fields (``max_history``):
        format 1 for the pooling tower with the user, else format 2."""
        w = self.weights
        meta: dict[str, Any] = {
            "format": EXPORT_FORMAT,
            "encoder": self.encoder,
            "use_user_id": self.use_user_id,
            "dim": self.dim,
            "attention": self.attention,
            "activations": self.activation_names,
            "item_rows": int(w["item"].shape[0]),
            "user_rows": int(w["user"].shape[0]) if self.use_user_id else 0,
            "category_rows": int(w["category"].shape[0]),
        }
        if self.transformer is not None:
            meta["transformer"] = self.transformer.to_json(w)
        if self.encoder == "pooling" and self.use_user_id:
            del meta["encoder"], meta["use_user_id"]
            meta["format"] = POOLING_FORMAT
        return meta

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
        if self.use_user_id:
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
        parts = [w["user"][user]] if self.use_user_id else []
        if self.transformer is not None:
            self._check_length(hist.shape[1])
            parts.append(self._encode_batch(hist))
            if self.transformer.with_pooling:
                parts += list(_mean_and_newest(w["item"], hist))
            parts += [w["category"][category], counts]
        else:
            mask = (hist > 0).astype(np.float32)[..., None]  # (b, L, 1)
            e = w["item"][hist] * mask
            mean, last = _mean_and_newest(w["item"], hist)
            parts += [mean, last, w["category"][category], counts]
            if self.attention:
                q = last @ w["att_q"] + w["att_q_bias"]
                s = np.tanh(e @ w["att_h"] + q[:, None, :]) @ w["att_v"]  # (b, L, 1)
                s = s + (mask - np.float32(1.0)) * np.float32(1e9)
                s = np.exp(s - s.max(axis=1, keepdims=True))
                weights = s / s.sum(axis=1, keepdims=True) * mask  # all-padding rows pool to 0
                parts.append((weights * e).sum(axis=1))
        h = np.concatenate(parts, axis=1)
        for n, act in enumerate(self.activations):
            h = act(h @ w[f"kernel_{n}"] + w[f"bias_{n}"])
        return l2_normalize(h)

    def _check_length(self, n: int) -> None:
        if n > self.positions:
            raise ValueError(
                f"hist: {n} positions, the transformer learned {self.positions} (pass the "
                f"newest {self.positions} items)"
            )

    def _encode_batch(self, hist: np.ndarray) -> np.ndarray:
        """The transformer's output (b, d) of a padded batch: padding is masked out of every
        attention as TensorFlow masks it (a -1e9 bias, exactly zero weight)."""
        assert self.transformer is not None
        mask = (hist > 0).astype(np.float32)  # (b, L)
        x = self._item[hist] * self._item_scale + self._position[: hist.shape[1]]
        key_bias = ((mask - np.float32(1.0)) * np.float32(1e9))[:, None, None, :]
        newest = self.transformer.readout == "newest"
        last = len(self._blocks) - 1
        for n in range(len(self._blocks)):
            # with the newest readout only position 0 of the last block is read
            x = self._block(n, x, key_bias, first_only=newest and n == last)
        x = layer_norm(x, *self._seq_norm, self._epsilon)
        if newest:
            return x[:, 0, :] * mask[:, :1]
        m = mask[..., None]
        return (x * m).sum(axis=1) / np.maximum(m.sum(axis=1), np.float32(1.0))

    def _block(
        self, n: int, x: np.ndarray, key_bias: np.ndarray | None, *, first_only: bool
    ) -> np.ndarray:
        """One self-attention block on ``x`` (b, L, d); ``first_only``: the output at position 0
        alone (b, 1, d)."""
        g1, b1, w_qkv, b_qkv, w_o, b_o, g2, b2, w_in, b_in, w_out, b_out = self._blocks[n]
        eps = self._epsilon
        b, length, d = x.shape
        heads = self._heads
        dh = d // heads
        qkv = layer_norm(x, g1, b1, eps) @ w_qkv + b_qkv  # (b, L, 3d)
        rows = 1 if first_only else length
        q = qkv[:, :rows, :d].reshape(b, rows, heads, dh).transpose(0, 2, 1, 3)
        k = qkv[:, :, d : 2 * d].reshape(b, length, heads, dh).transpose(0, 2, 3, 1)
        v = qkv[:, :, 2 * d :].reshape(b, length, heads, dh).transpose(0, 2, 1, 3)
        s = (q @ k) * self._scale  # (b, heads, rows, L)
        if key_bias is not None:
            s = s + key_bias
        o = (softmax(s) @ v).transpose(0, 2, 1, 3).reshape(b, rows, d)
        x = x[:, :rows] + (o @ w_o + b_o)
        f = np.maximum(layer_norm(x, g2, b2, eps) @ w_in + b_in, np.float32(0.0))
        return x + (f @ w_out + b_out)

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
        d, items, at = self._item_dim, self._item, self._seq_at
        x = np.zeros(self._width, dtype=np.float32)
        if self._user0 is not None:
            x[:d] = self._user0
        x[self._cat_at : self._counts_at] = self._category[c]
        x[self._counts_at] = counts[0]
        x[self._counts_at + 1] = counts[1]
        # one reduction checks both ends: a negative id is huge as uint64
        if ids.size and ids.view(np.uint64).max() >= self._n_items:
            bad = int(ids.min()) if ids.min() < 0 else int(ids.max())
            raise ValueError(f"hist index out of range 0..{self._n_items - 1}: {bad}")
        if self.transformer is not None:
            self._check_length(ids.size)
            x[at : at + d] = self._encode_sequence(ids)
            valid = ids if ids.all() else ids[ids > 0]
            if self.transformer.with_pooling and valid.size:
                x[at + d : at + 2 * d] = items[valid].sum(axis=0) / np.float32(valid.size)
                if ids[0] > 0:  # the newest position, zeros if padding
                    x[at + 2 * d : at + 3 * d] = items[ids[0]]
        else:
            valid = ids if ids.all() else ids[ids > 0]  # padding is out of the mean and attention
            if valid.size:
                e = items[valid]  # (k, d)
                x[at : at + d] = e.sum(axis=0) / np.float32(valid.size)
                if ids[0] > 0:  # "last" is position 0 of the masked history: zeros if padding
                    x[at + d : at + 2 * d] = e[0]
                if self.attention:
                    q = x[at + d : at + 2 * d] @ self._att_q + self._att_q_bias
                    s = np.tanh(e @ self._att_h + q) @ self._att_v  # (k,)
                    s = np.exp(s - s.max())
                    s /= s.sum()
                    x[self._counts_at + COUNTS_DIM :] = s @ e
        h = x
        for kernel, bias, act in self._layers:
            h = act(h @ kernel + bias)
        norm = math.sqrt(max(float(h @ h), 1e-12))
        return (h / np.float32(norm))[None, :]

    def _encode_sequence(self, ids: np.ndarray) -> np.ndarray:
        """The transformer's output (d,) of one history: its items alone, at their positions
        (padding takes no part, as its zero attention weight in :meth:`forward`)."""
        assert self.transformer is not None
        newest = self.transformer.readout == "newest"
        if not ids.size or (newest and ids[0] == 0):
            return np.zeros(self._item_dim, np.float32)  # the readout position is padding
        at = np.flatnonzero(ids) if not ids.all() else None
        if at is None:
            x = self._item[ids] * self._item_scale + self._position[: ids.size]
        elif at.size:
            x = self._item[ids[at]] * self._item_scale + self._position[at]
        else:
            return np.zeros(self._item_dim, np.float32)
        x = x[None]  # (1, k, d)
        last = len(self._blocks) - 1
        for n in range(len(self._blocks)):
            x = self._block(n, x, None, first_only=newest and n == last)
        x = layer_norm(x[0], *self._seq_norm, self._epsilon)
        return x[0] if newest else x.mean(axis=0)


def _mean_and_newest(items: np.ndarray, hist: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A padded batch's masked mean item embedding (b, d) and newest item's (zeros if padding)."""
    mask = (hist > 0).astype(np.float32)[..., None]  # (b, L, 1)
    e = items[hist] * mask
    return e.sum(axis=1) / np.maximum(mask.sum(axis=1), np.float32(1.0)), e[:, 0, :]


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
