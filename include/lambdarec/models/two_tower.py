"""Two-tower retrieval with TensorFlow Recommenders.

Query tower: the session's recent items (most recent first, through the *shared* item-id
embedding) encoded by one of two encoders (``TwoTowerConfig.query_encoder``):

* ``pooling``: the masked mean, the newest item and an attention-weighted sum keyed on the newest
  item (NARM/STAMP style);
* ``transformer``: SASRec-style self-attention: the items (scaled by sqrt(d)) plus learned
  position embeddings
  (position 0 = the newest item) through pre-layer-norm blocks of multi-head self-attention over
  the non-padding positions and a position-wise ReLU feed-forward, each with a residual; the
  query is the final layer norm's output at the newest position (``readout="newest"``) or the
  masked mean over positions (``"mean"``); ``with_pooling`` also passes on the history's mean
  and newest item, as the pooling encoder does.

Beside the history: the user id embedding (``use_user_id``, off by default: serving passes the
unknown user 0, and on the validation queries asked as served the towers without it won by far),
the session category and log counts (items so far in the session, the user's earlier
interactions). Item tower: item id (items never seen in training share an OOV id, so they are
embedded from their category and price bucket), category and price bucket. Both towers end in an
MLP and an L2 normalisation.

Loss: softmax over candidates (:class:`tfrs.tasks.Retrieval`) with a temperature, the logQ
sampling-bias correction and accidental hits removed. The candidates are the batch's targets
(in-batch negatives) plus ``negatives`` items drawn uniformly from the whole catalog per batch
(mixed negative sampling); each candidate's correction is the log of its probability under that
mixture (``B * share of training targets + N / n_items``, normalised), so an item is corrected
the same whichever way it was drawn. ``negatives`` is 0 by default (in-batch only) for both
encoders: on the validation queries 1,024 uniform negatives cost the transformer on Taobao
(recall@100 .2373 -> .1771 in 8 epochs) and did not help it on Amazon Toys (.2404 -> .2429,
HR@20 .1238 -> .1202).

During training a share of the item ids (candidates and history) is replaced by the OOV id
(``id_dropout``), so the towers learn to place items unseen in training by their side features.
With ``session_starts`` the training examples also hold a returning user's first interaction of
a session, its history the user's recent items (:func:`data.session_starts`): what serving
answers such a query from. Training is seeded and stops early on the validation split's
Recall@20 (full ranking of a validation sample), keeping the best epoch's weights; the validation
queries are asked as serving asks them (:func:`data.as_served`: the unknown user, the user's
recent items without a session), so the epochs are chosen on what is served.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # before TensorFlow: TFRS needs tf_keras

import logging  # noqa: E402
import math  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass, field, replace  # noqa: E402
from typing import TYPE_CHECKING, Any, Literal  # noqa: E402

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_recommenders as tfrs  # noqa: E402

from lambdarec.models import metrics as M  # noqa: E402
from lambdarec.models.data import as_served  # noqa: E402

if TYPE_CHECKING:
    from lambdarec.models.data import Catalog, Dataset, Examples

log = logging.getLogger(__name__)
tf_keras = tf.keras
#: The layer norms' epsilon (the numpy forward reads it from the export).
LAYER_NORM_EPSILON = 1e-6


@dataclass
class TwoTowerConfig:
    dim: int = 64
    hidden: int = 128
    temperature: float = 0.05
    learning_rate: float = 0.003
    batch_size: int = 1024
    epochs: int = 5
    patience: int = 1
    max_train: int | None = None  # subsample training pairs (seeded) to bound the run
    valid_queries: int = 3000
    logq: bool = True
    #: Also pool the session's items with additive attention keyed on the last item (NARM/STAMP
    #: style), beside the mean and the last item.
    attention: bool = True
    #: Share of training items (candidates and history) whose id is replaced by the OOV id, so
    #: the towers learn to place items from their category and price alone: the items never seen
    #: in training (74% of Taobao's test targets) have nothing else. None: 0.25 when the catalog
    #: has categories, else 0 (SR-GNN data has no side features to fall back on).
    id_dropout: float | None = None
    seed: int = 42
    #: The history encoder of the query tower: ``pooling`` (mean, newest item, attention) or
    #: ``transformer`` (self-attention blocks; the module docstring has both).
    query_encoder: Literal["pooling", "transformer"] = "pooling"
    #: Feed the user id embedding to the query tower. Serving knows no user vocabulary and
    #: passes the unknown user (0), whose row training never sees: a tower leaning on the id
    #: is measured better offline than it serves (off: what validation chose, as served).
    use_user_id: bool = False
    #: Uniform catalog negatives per batch on top of the in-batch ones (0: in-batch only, what
    #: validation chose for both encoders).
    negatives: int = 0
    #: Transformer encoder: blocks, heads (``dim`` divisible by them), the feed-forward width,
    #: dropout (embeddings, attention weights, both residual branches) and the query readout.
    layers: int = 2
    heads: int = 2
    ff_dim: int = 128
    dropout: float = 0.2
    readout: Literal["newest", "mean"] = "newest"
    #: Learned positions of the transformer: the history length. ``train_two_tower`` sets it
    #: to its examples' (``data.MAX_LEN`` unless the dataset was built otherwise).
    positions: int = 10
    #: Transformer encoder: also feed the query MLP the history's masked mean and newest item
    #: (the pooling encoder's first two features), beside the self-attention's output.
    with_pooling: bool = False
    #: Also train on a known user's first interaction of a session, with the user's recent
    #: items as the history (:func:`data.session_starts`): what serving answers a returning
    #: user without a session from. A no-op for ``loo`` and data without users.
    session_starts: bool = True

    def __post_init__(self) -> None:
        if self.query_encoder not in ("pooling", "transformer"):
            raise ValueError(
                f"query_encoder {self.query_encoder!r}: use 'pooling' or 'transformer'"
            )
        if self.query_encoder == "transformer":
            if self.readout not in ("newest", "mean"):
                raise ValueError(f"readout {self.readout!r}: use 'newest' or 'mean'")
            if self.layers < 1 or self.heads < 1 or self.dim % self.heads:
                raise ValueError(
                    f"transformer: layers {self.layers} and heads {self.heads} must be >= 1 "
                    f"and divide dim {self.dim} into heads"
                )
        if self.negatives < 0:
            raise ValueError(f"negatives must be >= 0, got {self.negatives}")

    @property
    def uniform_negatives(self) -> int:
        """Uniform catalog negatives per batch."""
        return self.negatives


def item_index(dataset: Dataset) -> np.ndarray:
    """Embedding index of each catalog item: ``c + 2`` if seen in training, else 1 (OOV)."""
    seen = dataset.seen_in_train()
    return np.where(seen, np.arange(dataset.n_items) + 2, 1).astype(np.int64)


def query_features(ex: Examples, idx_map: np.ndarray) -> dict[str, np.ndarray]:
    """The query tower's inputs for a batch of examples."""
    hist = np.where(ex.hist >= 0, idx_map[np.maximum(ex.hist, 0)], 0)
    counts = np.stack([np.log1p(ex.session_len), np.log1p(ex.user_events)], axis=1)
    return {
        "user": ex.user.astype(np.int64),
        "hist": hist.astype(np.int64),
        "session_category": ex.session_category.astype(np.int64),
        "counts": counts.astype(np.float32),
    }


def item_features(
    catalog: Catalog, items: np.ndarray, idx_map: np.ndarray
) -> dict[str, np.ndarray]:
    return {
        "item": idx_map[items],
        "item_key": items.astype(np.int64),
        "item_category": catalog.category[items].astype(np.int64),
        "item_price": catalog.price_bucket[items].astype(np.int64),
    }


_Layer: Any = tf_keras.layers.Layer  # a variable's attribute: mypy cannot resolve it as a base


class SelfAttentionBlock(_Layer):
    """One pre-layer-norm transformer block: ``x + attention(LN(x))``, then ``x + FF(LN(x))``.

    Pre-norm trains without a learning-rate warm-up and keeps the residual stream (the item
    embeddings) unnormalised through the blocks; the encoder normalises once after the last one.
    Queries, keys and values all read the normalised input (the SASRec code normalised only the
    queries). The numpy forward (:mod:`lambdarec.inference.query_tower`) mirrors it, weight for
    weight: ``qkv`` is one (d, 3d) projection split into queries, keys, values."""

    def __init__(self, *, dim: int, heads: int, ff_dim: int, dropout: float, seed: int) -> None:
        super().__init__()
        glorot = tf_keras.initializers.GlorotUniform
        self.dim, self.heads = dim, heads
        self.ln_att = tf_keras.layers.LayerNormalization(epsilon=LAYER_NORM_EPSILON)
        self.qkv = tf_keras.layers.Dense(3 * dim, kernel_initializer=glorot(seed))
        self.att_out = tf_keras.layers.Dense(dim, kernel_initializer=glorot(seed + 1))
        self.ln_ff = tf_keras.layers.LayerNormalization(epsilon=LAYER_NORM_EPSILON)
        self.ff_in = tf_keras.layers.Dense(
            ff_dim, activation="relu", kernel_initializer=glorot(seed + 2)
        )
        self.ff_out = tf_keras.layers.Dense(dim, kernel_initializer=glorot(seed + 3))
        self.att_drop = tf_keras.layers.Dropout(dropout, seed=seed + 4)
        self.res_drop = tf_keras.layers.Dropout(dropout, seed=seed + 5)

    def call(
        self,
        x: tf.Tensor,
        key_bias: tf.Tensor,
        training: bool | None = None,
        first_only: bool = False,
    ) -> tf.Tensor:
        """``x`` (b, L, d); ``key_bias`` (b, 1, 1, L): 0 for an item, -1e9 for padding.
        ``first_only``: the output at position 0 alone (b, 1, d), all a newest readout reads of
        the last block (every position is still a key and a value)."""
        b, n = tf.shape(x)[0], tf.shape(x)[1]
        dh = self.dim // self.heads

        def split(t: tf.Tensor, rows: Any) -> tf.Tensor:  # (b, rows, d) -> (b, heads, rows, dh)
            return tf.transpose(tf.reshape(t, [b, rows, self.heads, dh]), [0, 2, 1, 3])

        q, k, v = tf.split(self.qkv(self.ln_att(x)), 3, axis=-1)
        rows = n
        if first_only:
            q, x, rows = q[:, :1], x[:, :1], 1
        s = tf.matmul(split(q, rows), split(k, n), transpose_b=True) * (1.0 / math.sqrt(dh))
        a = self.att_drop(tf.nn.softmax(s + key_bias, axis=-1), training=training)
        o = tf.matmul(a, split(v, n))
        o = tf.reshape(tf.transpose(o, [0, 2, 1, 3]), [b, rows, self.dim])
        x = x + self.res_drop(self.att_out(o), training=training)
        f = self.ff_out(self.ff_in(self.ln_ff(x)))
        return x + self.res_drop(f, training=training)


class TwoTower(tfrs.Model):
    def __init__(
        self,
        *,
        n_items: int,
        n_users: int,
        n_categories: int,
        n_price: int,
        config: TwoTowerConfig,
    ) -> None:
        super().__init__()
        c = config
        init = tf_keras.initializers.RandomNormal(stddev=0.05, seed=c.seed)
        self.item_emb = tf_keras.layers.Embedding(n_items + 2, c.dim, embeddings_initializer=init)
        self.user_emb = tf_keras.layers.Embedding(
            max(n_users, 1), c.dim, embeddings_initializer=init
        )
        self.cat_emb = tf_keras.layers.Embedding(
            max(n_categories, 1), 16, embeddings_initializer=init
        )
        self.price_emb = tf_keras.layers.Embedding(max(n_price, 1), 4, embeddings_initializer=init)
        seed = c.seed

        def mlp() -> Any:
            return tf_keras.Sequential(
                [
                    tf_keras.layers.Dense(
                        c.hidden,
                        activation="relu",
                        kernel_initializer=tf_keras.initializers.GlorotUniform(seed),
                    ),
                    tf_keras.layers.Dense(
                        c.dim, kernel_initializer=tf_keras.initializers.GlorotUniform(seed + 1)
                    ),
                ]
            )

        self.encoder = c.query_encoder
        self.use_user_id = c.use_user_id
        self.attention = c.attention and self.encoder == "pooling"
        if self.attention:
            glorot = tf_keras.initializers.GlorotUniform
            self.att_h = tf_keras.layers.Dense(
                c.dim, use_bias=False, kernel_initializer=glorot(seed + 2)
            )
            self.att_q = tf_keras.layers.Dense(c.dim, kernel_initializer=glorot(seed + 3))
            self.att_v = tf_keras.layers.Dense(
                1, use_bias=False, kernel_initializer=glorot(seed + 4)
            )
        self.with_pooling = c.with_pooling and self.encoder == "transformer"
        if self.encoder == "transformer":
            self.readout = c.readout
            self.pos_emb = tf_keras.layers.Embedding(
                c.positions,
                c.dim,
                embeddings_initializer=tf_keras.initializers.RandomNormal(
                    stddev=0.05, seed=seed + 5
                ),
            )
            self.seq_drop = tf_keras.layers.Dropout(c.dropout, seed=seed + 6)
            self.blocks = [
                SelfAttentionBlock(
                    dim=c.dim,
                    heads=c.heads,
                    ff_dim=c.ff_dim,
                    dropout=c.dropout,
                    seed=seed + 10 * (n + 1),
                )
                for n in range(c.layers)
            ]
            self.seq_norm = tf_keras.layers.LayerNormalization(epsilon=LAYER_NORM_EPSILON)
        self.query_mlp = mlp()
        self.item_mlp = mlp()
        self.task = tfrs.tasks.Retrieval(temperature=c.temperature, remove_accidental_hits=True)
        self.logq = c.logq
        self.negatives = c.uniform_negatives
        self.id_dropout = float(
            c.id_dropout if c.id_dropout is not None else (0.25 if n_categories > 1 else 0.0)
        )
        #: What the uniform negatives are drawn from (:meth:`sample_from`); training sets it.
        self.catalog_tables: _CatalogTables | None = None

    def sample_from(self, tables: _CatalogTables) -> None:
        """The catalog the uniform negatives are drawn from, and its sampling probabilities."""
        self.catalog_tables = tables

    def query(self, f: dict[str, tf.Tensor], training: bool = False) -> tf.Tensor:
        hist = f["hist"]
        parts = [self.user_emb(f["user"])] if self.use_user_id else []
        if self.encoder == "transformer":
            parts.append(self._encode_sequence(hist, training))
            if self.with_pooling:
                parts += list(self._mean_and_newest(hist))
            parts += [self.cat_emb(f["session_category"]), f["counts"]]
        else:
            mask = tf.cast(hist > 0, tf.float32)[..., None]
            e = self.item_emb(hist) * mask
            mean, last = self._mean_and_newest(hist)
            parts += [mean, last, self.cat_emb(f["session_category"]), f["counts"]]
            if self.attention:
                s = self.att_v(tf.tanh(self.att_h(e) + self.att_q(last)[:, None, :]))  # (b, L, 1)
                s = s + (mask - 1.0) * 1e9
                weights = tf.nn.softmax(s, axis=1) * mask  # all-padding rows pool to zero
                parts.append(tf.reduce_sum(weights * e, axis=1))
        x = tf.concat(parts, axis=1)
        return tf.math.l2_normalize(self.query_mlp(x), axis=1)

    def _mean_and_newest(self, hist: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """The history's masked mean item embedding and its newest item's (zeros if padding)."""
        mask = tf.cast(hist > 0, tf.float32)[..., None]
        e = self.item_emb(hist) * mask
        mean = tf.reduce_sum(e, axis=1) / tf.maximum(tf.reduce_sum(mask, axis=1), 1.0)
        return mean, e[:, 0, :]

    def _encode_sequence(self, hist: tf.Tensor, training: bool) -> tf.Tensor:
        """The transformer's query vector (b, d) of a (b, L) history, 0 = padding: zeros when
        the readout position (or the whole history) is padding."""
        mask = tf.cast(hist > 0, tf.float32)  # (b, L)
        # items scaled by sqrt(d) as SASRec does: at the embeddings' initial scale the blocks'
        # residual branches would drown the items and positions
        scale = math.sqrt(self.item_emb.output_dim)
        x = self.item_emb(hist) * scale + self.pos_emb(tf.range(tf.shape(hist)[1]))[None, :, :]
        x = self.seq_drop(x, training=training) * mask[..., None]
        # padding is never a key: a finite -1e9 (not -inf) keeps an all-padding row finite
        key_bias = ((mask - 1.0) * 1e9)[:, None, None, :]
        last = len(self.blocks) - 1
        for n, block in enumerate(self.blocks):
            first_only = self.readout == "newest" and n == last
            x = block(x, key_bias, training=training, first_only=first_only)
        x = self.seq_norm(x)
        if self.readout == "newest":
            return x[:, 0, :] * mask[:, :1]
        w = mask[..., None]
        return tf.reduce_sum(x * w, axis=1) / tf.maximum(tf.reduce_sum(w, axis=1), 1.0)

    def candidate(self, f: dict[str, tf.Tensor]) -> tf.Tensor:
        x = tf.concat(
            [
                self.item_emb(f["item"]),
                self.cat_emb(f["item_category"]),
                self.price_emb(f["item_price"]),
            ],
            axis=1,
        )
        return tf.math.l2_normalize(self.item_mlp(x), axis=1)

    def draw_negatives(self) -> tf.Tensor:
        """``negatives`` catalog positions drawn uniformly (with replacement) for one batch."""
        assert self.catalog_tables is not None
        return tf.random.uniform([self.negatives], 0, self.catalog_tables.n_items, tf.int64)

    def _drop_ids(self, ids: tf.Tensor) -> tf.Tensor:
        drop = tf.random.uniform(tf.shape(ids)) < self.id_dropout
        return tf.where(drop & (ids > 1), tf.ones_like(ids), ids)

    def compute_loss(self, features: dict[str, tf.Tensor], training: bool = False) -> tf.Tensor:
        if training and self.id_dropout > 0:
            features = {
                **features,
                "item": self._drop_ids(features["item"]),
                "hist": self._drop_ids(features["hist"]),
            }
        q = self.query(features, training=training)
        c = self.candidate(features)
        ids, prob = features["item_key"], features["prob"]
        if self.negatives:
            if self.catalog_tables is None:
                raise ValueError("uniform negatives need the catalog: call sample_from() first")
            t = self.catalog_tables
            neg = self.draw_negatives()
            item = tf.gather(t.item_index, neg)
            neg_c = self.candidate(
                {
                    "item": self._drop_ids(item) if training and self.id_dropout > 0 else item,
                    "item_category": tf.gather(t.category, neg),
                    "item_price": tf.gather(t.price, neg),
                }
            )
            c = tf.concat([c, neg_c], axis=0)
            ids = tf.concat([ids, neg], axis=0)
            # the candidates are draws from a mixture: B from the target distribution (the
            # batch), N uniform; its probability of each, whichever way it was drawn
            b = tf.cast(tf.shape(q)[0], tf.float32)
            n = float(self.negatives)
            target_share = tf.concat([prob, tf.gather(t.target_share, neg)], axis=0)
            prob = (b * target_share + n / t.n_items) / (b + n)
        return self.task(
            q,
            c,
            sample_weight=features["weight"],
            candidate_sampling_probability=prob if self.logq else None,
            candidate_ids=ids,
            compute_metrics=False,
        )


@dataclass(frozen=True)
class _CatalogTables:
    """The item tower's inputs of every catalog item and its share of training targets, as
    constants the training graph gathers uniform negatives from."""

    item_index: np.ndarray  # int64 (n_items,) embedding index
    category: np.ndarray  # int64 (n_items,)
    price: np.ndarray  # int64 (n_items,)
    target_share: np.ndarray  # float32 (n_items,)

    @property
    def n_items(self) -> int:
        return len(self.item_index)


@dataclass
class TrainedTwoTower:
    model: TwoTower
    config: TwoTowerConfig
    idx_map: np.ndarray
    catalog: Catalog
    history: list[dict[str, float | None]] = field(default_factory=list)
    item_matrix: np.ndarray | None = None
    name: str = "two_tower"

    def query_embeddings(self, ex: Examples, batch_size: int = 4096) -> np.ndarray:
        out = []
        for s in range(0, len(ex), batch_size):
            part = ex.subset(np.arange(s, min(s + batch_size, len(ex))))
            f = {k: tf.constant(v) for k, v in query_features(part, self.idx_map).items()}
            out.append(self.model.query(f).numpy())
        return np.concatenate(out) if out else np.zeros((0, self.config.dim), np.float32)

    def item_embeddings(self) -> tuple[np.ndarray, np.ndarray]:
        """(raw item ids, float32 matrix n_items x dim), catalog order."""
        if self.item_matrix is None:
            items = np.arange(self.catalog.n_items)
            parts = []
            for s in range(0, len(items), 8192):
                f = item_features(self.catalog, items[s : s + 8192], self.idx_map)
                parts.append(
                    self.model.candidate({k: tf.constant(v) for k, v in f.items()}).numpy()
                )
            self.item_matrix = np.concatenate(parts).astype(np.float32)
        return self.catalog.item_ids, self.item_matrix

    def scores(self, ex: Examples) -> np.ndarray:
        _, items = self.item_embeddings()
        return self.query_embeddings(ex) @ items.T


def _target_share(dataset: Dataset, ex: Examples) -> np.ndarray:
    """Each catalog item's share of the training targets (the in-batch sampling probability)."""
    freq = np.bincount(ex.target, minlength=dataset.n_items).astype(np.float64)
    return (freq / max(freq.sum(), 1.0)).astype(np.float32)


def _train_tensors(
    dataset: Dataset, ex: Examples, idx_map: np.ndarray, share: np.ndarray
) -> dict[str, np.ndarray]:
    return {
        **query_features(ex, idx_map),
        **item_features(dataset.catalog, ex.target, idx_map),
        "weight": ex.weight.astype(np.float32),
        "prob": share[ex.target],
    }


def train_two_tower(
    dataset: Dataset, config: TwoTowerConfig | None = None, *, train: Examples | None = None
) -> TrainedTwoTower:
    """Fit on ``dataset.train`` (or ``train``), early-stopping on ``dataset.valid`` (with
    ``valid_queries`` 0: ``epochs`` epochs, the last one kept, as :func:`refit_two_tower`)."""
    c = config or TwoTowerConfig()
    tf_keras.utils.set_random_seed(c.seed)
    ex = train if train is not None else dataset.train
    if c.session_starts:
        from lambdarec.models.data import Examples, session_starts

        starts = session_starts(dataset)
        log.info("two-tower: %d session starts of returning users added", len(starts))
        ex = Examples.concat(replace(ex, seen=None), starts) if len(starts) else ex
    ex = ex.sample(c.max_train, c.seed)
    if c.query_encoder == "transformer":
        c = replace(c, positions=int(ex.hist.shape[1]))  # saved with the model's config
    idx_map = item_index(dataset)
    model = TwoTower(
        n_items=dataset.n_items,
        n_users=dataset.n_users,
        n_categories=dataset.catalog.n_categories,
        n_price=dataset.catalog.n_price_buckets,
        config=c,
    )
    share = _target_share(dataset, ex)
    if c.uniform_negatives:
        catalog = dataset.catalog
        model.sample_from(
            _CatalogTables(
                item_index=idx_map,
                category=catalog.category.astype(np.int64),
                price=catalog.price_bucket.astype(np.int64),
                target_share=share,
            )
        )
    model.compile(optimizer=tf_keras.optimizers.Adam(c.learning_rate))
    tensors = _train_tensors(dataset, ex, idx_map, share)
    ds = (
        tf.data.Dataset.from_tensor_slices(tensors)
        .shuffle(min(len(ex), 200_000), seed=c.seed, reshuffle_each_iteration=True)
        .batch(c.batch_size, drop_remainder=len(ex) > c.batch_size)
        .prefetch(2)
    )
    trained = TrainedTwoTower(model, c, idx_map, dataset.catalog)
    # valid_queries 0: a refit with the epochs chosen before, nothing held out to stop on
    valid = (
        as_served(dataset, dataset.valid.sample(c.valid_queries, c.seed))
        if c.valid_queries
        else None
    )
    best, best_weights, bad = -1.0, None, 0
    for epoch in range(c.epochs):
        t0 = time.perf_counter()
        h = model.fit(ds, epochs=1, verbose=0)
        seconds = time.perf_counter() - t0
        trained.item_matrix = None
        score = _valid_recall(trained, valid) if valid is not None and len(valid) else None
        rec = {
            "epoch": epoch + 1,
            "loss": float(h.history["loss"][-1]),
            "valid_recall@20": score,
            "epoch_seconds": round(seconds, 2),
            "examples_per_s": round(len(ex) / seconds, 1),
        }
        trained.history.append(rec)
        log.info("two-tower %s", rec)
        if score is None:  # no validation: the last epoch's weights
            continue
        if score > best:
            best, best_weights, bad = score, model.get_weights(), 0
        else:
            bad += 1
            if bad > c.patience:
                break
    if best_weights is not None:
        model.set_weights(best_weights)
    trained.item_matrix = None
    return trained


def refit_two_tower(dataset: Dataset, trained: TrainedTwoTower) -> TrainedTwoTower:
    """The same configuration fitted again on ``dataset`` (:meth:`Dataset.for_test`: the training
    and validation examples) for as many epochs as validation chose for ``trained``."""
    from dataclasses import replace

    scored = [(h["valid_recall@20"] or 0.0, h["epoch"] or 0) for h in trained.history]
    # the first best epoch (the one early stopping kept), else every epoch it ran
    best = max(scored, key=lambda s: (s[0], -s[1]), default=(0.0, 0))[1]
    epochs = int(best or len(trained.history) or trained.config.epochs)
    log.info("two-tower: refit on %d examples for %d epochs", len(dataset.train), epochs)
    return train_two_tower(dataset, replace(trained.config, epochs=epochs, valid_queries=0))


def _valid_recall(trained: TrainedTwoTower, valid: Examples) -> float:
    s = M.mask_seen(trained.scores(valid), valid.seen)
    topk = M.top_k(s, 20)
    return float(np.nanmean(M.ranking_metrics(topk, valid.target, (20,))["recall@20"]))
