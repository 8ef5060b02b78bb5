"""Two-tower retrieval with TensorFlow Recommenders.

Query tower: user id embedding (0 = unknown user), the session's recent items pooled (mean, last
item and an attention-weighted sum keyed on the last item, through the *shared* item-id
embedding), the session category and log counts (items so far in the session, the user's earlier
interactions). Item tower: item id (items never seen in training share an OOV id, so they are
embedded from their category and price bucket), category and price bucket. Both towers end in an
MLP and an L2 normalisation; the loss is in-batch softmax (:class:`tfrs.tasks.Retrieval`) with a
temperature, the logQ sampling-bias correction (``candidate_sampling_probability`` = the item's
share of training targets) and accidental hits removed. During training a share of the item ids
(candidates and history) is replaced by the OOV id (``id_dropout``), so the towers learn to place
items unseen in training by their side features. Training is seeded and stops early on the
validation split's Recall@20 (full ranking of a validation sample), keeping the best epoch's
weights.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # before TensorFlow: TFRS needs tf_keras

import logging  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from typing import TYPE_CHECKING, Any  # noqa: E402

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_recommenders as tfrs  # noqa: E402

from lambdarec.models import metrics as M  # noqa: E402

if TYPE_CHECKING:
    from lambdarec.models.data import Catalog, Dataset, Examples

log = logging.getLogger(__name__)
tf_keras = tf.keras


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

        self.attention = c.attention
        if c.attention:
            glorot = tf_keras.initializers.GlorotUniform
            self.att_h = tf_keras.layers.Dense(
                c.dim, use_bias=False, kernel_initializer=glorot(seed + 2)
            )
            self.att_q = tf_keras.layers.Dense(c.dim, kernel_initializer=glorot(seed + 3))
            self.att_v = tf_keras.layers.Dense(
                1, use_bias=False, kernel_initializer=glorot(seed + 4)
            )
        self.query_mlp = mlp()
        self.item_mlp = mlp()
        self.task = tfrs.tasks.Retrieval(temperature=c.temperature, remove_accidental_hits=True)
        self.logq = c.logq
        self.id_dropout = float(
            c.id_dropout if c.id_dropout is not None else (0.25 if n_categories > 1 else 0.0)
        )

    def query(self, f: dict[str, tf.Tensor]) -> tf.Tensor:
        hist = f["hist"]
        mask = tf.cast(hist > 0, tf.float32)[..., None]
        e = self.item_emb(hist) * mask
        mean = tf.reduce_sum(e, axis=1) / tf.maximum(tf.reduce_sum(mask, axis=1), 1.0)
        last = e[:, 0, :]
        parts = [
            self.user_emb(f["user"]),
            mean,
            last,
            self.cat_emb(f["session_category"]),
            f["counts"],
        ]
        if self.attention:
            s = self.att_v(tf.tanh(self.att_h(e) + self.att_q(last)[:, None, :]))  # (b, L, 1)
            s = s + (mask - 1.0) * 1e9
            weights = tf.nn.softmax(s, axis=1) * mask  # all-padding rows pool to zero
            parts.append(tf.reduce_sum(weights * e, axis=1))
        x = tf.concat(parts, axis=1)
        return tf.math.l2_normalize(self.query_mlp(x), axis=1)

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

    def compute_loss(self, features: dict[str, tf.Tensor], training: bool = False) -> tf.Tensor:
        if training and self.id_dropout > 0:
            features = dict(features)
            for key in ("item", "hist"):
                ids = features[key]
                drop = tf.random.uniform(tf.shape(ids)) < self.id_dropout
                features[key] = tf.where(drop & (ids > 1), tf.ones_like(ids), ids)
        q = self.query(features)
        c = self.candidate(features)
        return self.task(
            q,
            c,
            sample_weight=features["weight"],
            candidate_sampling_probability=features["prob"] if self.logq else None,
            candidate_ids=features["item_key"],
            compute_metrics=False,
        )


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


def _train_tensors(dataset: Dataset, ex: Examples, idx_map: np.ndarray) -> dict[str, np.ndarray]:
    freq = np.bincount(ex.target, minlength=dataset.n_items).astype(np.float64)
    prob = (freq / max(freq.sum(), 1.0))[ex.target]
    return {
        **query_features(ex, idx_map),
        **item_features(dataset.catalog, ex.target, idx_map),
        "weight": ex.weight.astype(np.float32),
        "prob": prob.astype(np.float32),
    }


def train_two_tower(
    dataset: Dataset, config: TwoTowerConfig | None = None, *, train: Examples | None = None
) -> TrainedTwoTower:
    """Fit on ``dataset.train`` (or ``train``), early-stopping on ``dataset.valid`` (with
    ``valid_queries`` 0: ``epochs`` epochs, the last one kept, as :func:`refit_two_tower`)."""
    c = config or TwoTowerConfig()
    tf_keras.utils.set_random_seed(c.seed)
    ex = (train if train is not None else dataset.train).sample(c.max_train, c.seed)
    idx_map = item_index(dataset)
    model = TwoTower(
        n_items=dataset.n_items,
        n_users=dataset.n_users,
        n_categories=dataset.catalog.n_categories,
        n_price=dataset.catalog.n_price_buckets,
        config=c,
    )
    model.compile(optimizer=tf_keras.optimizers.Adam(c.learning_rate))
    tensors = _train_tensors(dataset, ex, idx_map)
    ds = (
        tf.data.Dataset.from_tensor_slices(tensors)
        .shuffle(min(len(ex), 200_000), seed=c.seed, reshuffle_each_iteration=True)
        .batch(c.batch_size, drop_remainder=len(ex) > c.batch_size)
        .prefetch(2)
    )
    trained = TrainedTwoTower(model, c, idx_map, dataset.catalog)
    # valid_queries 0: a refit with the epochs chosen before, nothing held out to stop on
    valid = dataset.valid.sample(c.valid_queries, c.seed) if c.valid_queries else None
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
    s = trained.scores(valid)
    topk = M.top_k(s, 20)
    return float(np.nanmean(M.ranking_metrics(topk, valid.target, (20,))["recall@20"]))
