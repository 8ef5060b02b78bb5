"""DeepFM ranker (tf.keras): ranks the recommendation pipeline's candidates into the top 10.

It is trained on what it ranks when served: the candidates the pipeline's sources propose
(:func:`lambdarec.models.served.candidate_lists`: vector retrieval, co-occurrence, trending,
popular and any configured source) for held-out queries (the validation split, which the
retriever and the sources' statistics did not see); the positive is the real next item (weighted
by its event type), the others are the candidates it beat. Queries whose next item is among no
source's candidates carry no ranking signal and are skipped. The loss is a softmax over all of a
query's candidates (listwise), cross-entropy on the one that was clicked: it learns to order the
top of the list, and, from each source's score and place, how far to trust each source, so the
served list can be better than any single source. 10% of the queries are held out for early
stopping on the loss.

Fields per (query, candidate), built by :func:`lambdarec.inference.ranker_rows.ranker_rows` (the
function serving builds its rows with): sparse ids (candidate category; price bucket; session
category; optionally the candidate item and the session's last item through one shared id
embedding, see ``DeepFMConfig.item_ids``) and dense features (per source its score and log place,
co-occurrence of the candidate with the session's recent items, log item popularity, log session
length, log user history length, same-category flag). Each sparse field has an embedding and a
first-order weight; each dense feature scales a learned vector, so it takes part in the FM's
pairwise interactions; the deep part is an MLP over all field vectors. Output: a logit.

Exposure (:mod:`lambdarec.models.exposure`): when the training queries come with the impressions
serving logged for them, the lists carry where each candidate was shown (``CandidateLists.shown``)
and the model gets one more sparse field, ``position`` (an embedding per shown place, one neutral
index for rows not shown). A shown item that was not clicked is a negative of its list, one that
was clicked its positive. Serving scores every candidate at the neutral position, so what the
model learnt of a place's click bias is left out of its ranking. Without impressions there is no
such field and the model is the one it always was.

Serving scores with :func:`export_for_serving`'s numpy export (:mod:`lambdarec.inference.ranker`),
not with TensorFlow: the weights, the per-item side arrays and the co-occurrence matrix.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # before TensorFlow: TFRS needs tf_keras

import logging  # noqa: E402
import time  # noqa: E402
from dataclasses import asdict, dataclass, field  # noqa: E402
from typing import TYPE_CHECKING, Any  # noqa: E402

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from lambdarec.inference import ranker as numpy_ranker  # noqa: E402
from lambdarec.inference.ranker_rows import (  # noqa: E402
    N_POSITIONS,
    ItemTable,
    dense_names,
    ranker_rows,
)

if TYPE_CHECKING:
    from pathlib import Path

    from lambdarec.models.baselines import CoOccurrence
    from lambdarec.models.data import Dataset, Examples

log = logging.getLogger(__name__)
tf_keras = tf.keras


@dataclass
class DeepFMConfig:
    k: int = 16
    hidden: tuple[int, ...] = (128, 64)
    #: 0.0005: at 0.002 the listwise ranker overfit Taobao's ~2k training queries by epoch 2 and
    #: re-ranking lowered NDCG@10 (.0287 -> .0259); at 0.0005 it raised it to .0325. Diginetica
    #: was unchanged (NDCG@10 .2021 vs .2030 on 10k test prefixes).
    learning_rate: float = 0.0005
    #: Trained on the pipeline's candidates of every source, the listwise loss kept falling for
    #: 15 epochs on Amazon Toys' validation queries (early stopping decides).
    epochs: int = 20
    patience: int = 2
    max_queries: int = 20_000
    #: Embed the candidate's and the last item's ids. Off by default: with a few thousand training
    #: queries over tens of thousands of items they memorise the training queries (Diginetica:
    #: validation loss rose from the first epoch on; without them the re-ranking gained 4 points
    #: of HR@20 over retrieval instead of 1.6, and MRR@20 rose instead of falling).
    item_ids: bool = False
    queries_per_batch: int = 64  # a batch is this many queries x all their candidates
    seed: int = 42


class DeepFM(tf_keras.Model):  # type: ignore[name-defined,misc]
    def __init__(
        self,
        *,
        n_items: int,
        n_categories: int,
        n_price: int,
        n_dense: int,
        config: DeepFMConfig,
        position: bool = False,
    ) -> None:
        super().__init__()
        c = config
        self.use_ids = c.item_ids
        self.use_position = position
        init = tf_keras.initializers.RandomNormal(stddev=0.01, seed=c.seed)
        if position:
            self.position_emb = tf_keras.layers.Embedding(
                N_POSITIONS, c.k, embeddings_initializer=init
            )
            self.position_w = tf_keras.layers.Embedding(
                N_POSITIONS, 1, embeddings_initializer="zeros"
            )
        if self.use_ids:
            self.item_emb = tf_keras.layers.Embedding(n_items + 2, c.k, embeddings_initializer=init)
            self.item_w = tf_keras.layers.Embedding(n_items + 2, 1, embeddings_initializer="zeros")
        self.cat_emb = tf_keras.layers.Embedding(
            max(n_categories, 1), c.k, embeddings_initializer=init
        )
        self.cat_w = tf_keras.layers.Embedding(
            max(n_categories, 1), 1, embeddings_initializer="zeros"
        )
        self.price_emb = tf_keras.layers.Embedding(
            max(n_price, 1), c.k, embeddings_initializer=init
        )
        self.price_w = tf_keras.layers.Embedding(max(n_price, 1), 1, embeddings_initializer="zeros")
        self.dense_v = self.add_weight(name="dense_v", shape=(n_dense, c.k), initializer=init)
        self.dense_w = tf_keras.layers.Dense(1, kernel_initializer="zeros")
        self.norm = tf_keras.layers.BatchNormalization()
        self.deep = tf_keras.Sequential(
            [
                tf_keras.layers.Dense(
                    h,
                    activation="relu",
                    kernel_initializer=tf_keras.initializers.GlorotUniform(c.seed + i),
                )
                for i, h in enumerate(c.hidden)
            ]
            + [
                tf_keras.layers.Dense(
                    1, kernel_initializer=tf_keras.initializers.GlorotUniform(c.seed)
                )
            ]
        )

    def call(self, f: dict[str, tf.Tensor], training: bool = False) -> tf.Tensor:
        dense = self.norm(f["dense"], training=training)  # (b, d)
        fields = [
            self.cat_emb(f["cand_category"]),
            self.price_emb(f["cand_price"]),
            self.cat_emb(f["session_category"]),
        ]
        first = (
            self.cat_w(f["cand_category"])
            + self.price_w(f["cand_price"])
            + self.cat_w(f["session_category"])
            + self.dense_w(dense)
        )
        if self.use_ids:
            fields += [self.item_emb(f["cand_item"]), self.item_emb(f["last_item"])]
            first += self.item_w(f["cand_item"]) + self.item_w(f["last_item"])
        if self.use_position:
            fields.append(self.position_emb(f["position"]))
            first += self.position_w(f["position"])
        v = tf.concat([tf.stack(fields, axis=1), dense[..., None] * self.dense_v[None]], axis=1)
        square_of_sum = tf.square(tf.reduce_sum(v, axis=1))
        sum_of_square = tf.reduce_sum(tf.square(v), axis=1)
        second = 0.5 * tf.reduce_sum(square_of_sum - sum_of_square, axis=1, keepdims=True)
        deep = self.deep(tf.reshape(v, (-1, v.shape[1] * v.shape[2])), training=training)
        return first + second + deep  # (batch, 1) logits


def item_table(dataset: Dataset, idx_map: np.ndarray, cooc: CoOccurrence) -> ItemTable:
    """What the ranker's rows read of each catalog item (the table the serving export holds)."""
    matrix = cooc.matrix.tocsr()
    matrix.sort_indices()
    return ItemTable.from_csr(
        index=idx_map,
        category=dataset.catalog.category,
        price_bucket=dataset.catalog.price_bucket,
        popularity=dataset.popularity(),
        indptr=matrix.indptr,
        indices=matrix.indices,
        data=matrix.data,
        decay=cooc.decay,
    )


@dataclass
class CandidateLists:
    """The pipeline's candidates of ``n`` queries, padded to ``c``: catalog positions (-1 pads),
    and what each of ``sources`` said of each (n, c, S; NaN where it did not propose it);
    ``shown`` (n, c): where a logged impression showed each candidate (0-based, -1 not shown), None
    for lists without impressions (:mod:`lambdarec.models.exposure`)."""

    sources: list[str]
    cand: np.ndarray
    scores: np.ndarray
    ranks: np.ndarray
    shown: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.cand)

    def subset(self, idx: np.ndarray) -> CandidateLists:
        return CandidateLists(
            self.sources,
            self.cand[idx],
            self.scores[idx],
            self.ranks[idx],
            None if self.shown is None else self.shown[idx],
        )


def candidate_features(
    table: ItemTable, ex: Examples, lists: CandidateLists
) -> dict[str, np.ndarray]:
    """Flattened (query x candidate) feature rows, query-major
    (:func:`lambdarec.inference.ranker_rows.ranker_rows`, serving's function too)."""
    return ranker_rows(
        table,
        ex.hist,
        ex.session_len,
        ex.user_events,
        lists.cand,
        lists.scores,
        lists.ranks,
        shown_position=lists.shown,
    )


@dataclass
class TrainedDeepFM:
    model: DeepFM
    config: DeepFMConfig
    idx_map: np.ndarray
    cooc: CoOccurrence
    #: The candidate sources the model reads, in its order.
    sources: list[str]
    history: list[dict[str, float]] = field(default_factory=list)
    name: str = "deepfm"
    #: The item table its rows read (built from the dataset on first use).
    table: ItemTable | None = None
    #: Trained on impressions: it has the ``position`` field (see the module doc).
    position: bool = False

    def item_table(self, dataset: Dataset) -> ItemTable:
        if self.table is None:
            self.table = item_table(dataset, self.idx_map, self.cooc)
        return self.table

    def predict(self, dataset: Dataset, ex: Examples, lists: CandidateLists) -> np.ndarray:
        """Logits (n, c) of the candidates (-inf where a list is padded)."""
        if lists.sources != self.sources:
            raise ValueError(f"candidates from sources {lists.sources}, model reads {self.sources}")
        n, c = lists.cand.shape
        out = np.full((n, c), -np.inf, dtype=np.float32)
        step = max(1, 65_536 // max(c, 1))
        for s in range(0, n, step):
            sl = np.arange(s, min(s + step, n))
            f = candidate_features(self.item_table(dataset), ex.subset(sl), lists.subset(sl))
            logits = self.model({k: tf.constant(v) for k, v in f.items()}, training=False).numpy()
            out[sl] = np.where(lists.cand[sl] >= 0, logits.reshape(len(sl), c), -np.inf)
        return out


#: The serving export's folder inside the run's ``deepfm/`` folder
#: (:mod:`lambdarec.inference.ranker` loads it and refuses a format it does not know).
SERVING_EXPORT = numpy_ranker.EXPORT_DIR


def field_names(config: DeepFMConfig, sources: list[str], position: bool = False) -> list[str]:
    """The model's fields in the order of its ``v`` tensor (sparse, then dense)."""
    sparse = ["cand_category", "cand_price", "session_category"]
    if config.item_ids:
        sparse += ["cand_item", "last_item"]
    if position:
        sparse += ["position"]
    return [*sparse, *dense_names(sources)]


def serving_weights(model: DeepFM) -> dict[str, np.ndarray]:
    """The model's variables by role, as the numpy forward pass (``inference/ranker.py``) reads
    them (embedding tables, first-order weights, the batch-norm statistics, the MLP)."""
    layers = {
        "cat_emb": model.cat_emb.embeddings,
        "cat_w": model.cat_w.embeddings,
        "price_emb": model.price_emb.embeddings,
        "price_w": model.price_w.embeddings,
        "dense_v": model.dense_v,
        "dense_w_kernel": model.dense_w.kernel,
        "dense_w_bias": model.dense_w.bias,
        "bn_gamma": model.norm.gamma,
        "bn_beta": model.norm.beta,
        "bn_mean": model.norm.moving_mean,
        "bn_var": model.norm.moving_variance,
    }
    if model.use_ids:
        layers |= {"item_emb": model.item_emb.embeddings, "item_w": model.item_w.embeddings}
    if model.use_position:
        layers |= {
            "position_emb": model.position_emb.embeddings,
            "position_w": model.position_w.embeddings,
        }
    for i, layer in enumerate(model.deep.layers):
        layers |= {f"deep_kernel_{i}": layer.kernel, f"deep_bias_{i}": layer.bias}
    return {name: np.asarray(v.numpy(), dtype=np.float32) for name, v in layers.items()}


def export_for_serving(trained: TrainedDeepFM, dataset: Dataset, out_dir: Path) -> Path:
    """Write what the numpy ranker (:mod:`lambdarec.inference.ranker`) needs, without TensorFlow
    or the training Dataset.

    ``weights.npz``: :func:`serving_weights`. ``items.npz``: the rows' :class:`ItemTable` per
    catalog item (raw id, embedding index ``idx_map``: 0 no item, 1 out of vocabulary; category,
    price bucket, training popularity) and the training co-occurrence matrix as CSR arrays.
    ``ranker.json``: the sources it reads, the field order, the batch-norm epsilon, the MLP
    activations, the co-occurrence decay and the history length; format 4 instead of 3 for a model
    with the ``position`` field (trained on impressions).
    """
    import json

    model, c = trained.model, trained.config
    out_dir.mkdir(parents=True, exist_ok=True)
    np.savez(out_dir / numpy_ranker.WEIGHTS_FILE, **serving_weights(model))  # type: ignore[arg-type]
    table = trained.item_table(dataset)
    cooc = trained.cooc.matrix.tocsr()
    cooc.sort_indices()  # the table's keys are each row's columns in order
    np.savez(
        out_dir / numpy_ranker.ITEMS_FILE,
        ids=np.asarray(dataset.catalog.item_ids).astype(str),
        index=table.index,
        category=table.category,
        price_bucket=table.price_bucket,
        popularity=table.popularity,
        cooc_indptr=cooc.indptr.astype(np.int64),
        cooc_indices=cooc.indices.astype(np.int64),
        cooc_data=cooc.data.astype(np.float32),
    )
    meta = {
        "format": (
            numpy_ranker.EXPORT_FORMAT_POSITION if trained.position else numpy_ranker.EXPORT_FORMAT
        ),
        "sources": list(trained.sources),
        "fields": field_names(c, trained.sources, trained.position),
        "dense": dense_names(trained.sources),
        "item_ids": c.item_ids,
        "k": c.k,
        "bn_epsilon": float(model.norm.epsilon),
        "deep_activations": [layer.activation.__name__ for layer in model.deep.layers],
        "cooc_decay": float(trained.cooc.decay),
        "max_history": int(dataset.train.hist.shape[1]),
        "n_items": int(dataset.n_items),
        "config": asdict(c),
    }
    (out_dir / numpy_ranker.META_FILE).write_text(
        json.dumps(meta, indent=1) + "\n", encoding="utf-8"
    )
    return out_dir


class _EarlyStop:
    """The training loop's epoch bookkeeping: log the epoch, keep the best weights by the
    validation loss, stop after ``patience`` epochs without improvement."""

    def __init__(self, model: Any, history: list[dict[str, Any]], patience: int) -> None:
        self.model, self.history, self.patience = model, history, patience
        self.best, self.best_weights, self.bad = np.inf, None, 0

    def epoch_done(
        self, epoch: int, loss: float, val: float, seconds: float, rows: int, queries: int
    ) -> bool:
        """Record the epoch; True when training should stop."""
        rec = {
            "epoch": epoch + 1,
            "loss": loss,
            "val_loss": val,
            "epoch_seconds": round(seconds, 2),
            "examples_per_s": round(rows / seconds, 1),
            "rows": rows,
            "queries": queries,
        }
        self.history.append(rec)
        log.info("deepfm %s", rec)
        if val < self.best:
            self.best, self.best_weights, self.bad = val, self.model.get_weights(), 0
            return False
        self.bad += 1
        return self.bad > self.patience

    def restore(self) -> None:
        if self.best_weights is not None:
            self.model.set_weights(self.best_weights)


def train_deepfm(
    dataset: Dataset,
    ex: Examples,
    lists: CandidateLists,
    idx_map: np.ndarray,
    cooc: CoOccurrence,
    config: DeepFMConfig | None = None,
) -> TrainedDeepFM:
    """Fit on the pipeline's candidates ``lists`` of the queries ``ex`` (see the module doc):
    a softmax over each query's whole candidate list, cross-entropy on its next item. Lists with
    impressions (``lists.shown``, :func:`lambdarec.models.exposure.attach_exposure`) add the
    ``position`` field."""
    c = config or DeepFMConfig()
    tf_keras.utils.set_random_seed(c.seed)
    if len(ex) > c.max_queries:
        sel = np.sort(np.random.default_rng(c.seed).choice(len(ex), c.max_queries, replace=False))
        ex, lists = ex.subset(sel), lists.subset(sel)
    hit = (lists.cand == ex.target[:, None]) & (lists.cand >= 0)
    keep_q = np.flatnonzero(hit.any(axis=1))
    n_q, n_c = len(keep_q), lists.cand.shape[1]
    if n_q < 2:
        raise ValueError(
            "fewer than 2 training queries have their next item among the pipeline's candidates"
        )
    log.info(
        "deepfm: %d of %d queries have their next item among the candidates (%.1f%%), up to %d "
        "candidates each",
        n_q,
        len(ex),
        100.0 * n_q / max(len(ex), 1),
        n_c,
    )
    ex, lists, hit = ex.subset(keep_q), lists.subset(keep_q), hit[keep_q]
    table = item_table(dataset, idx_map, cooc)
    flat = candidate_features(table, ex, lists)
    rows = {k: v.reshape(n_q, n_c, *v.shape[1:]) for k, v in flat.items()}
    valid = lists.cand >= 0
    label = hit.argmax(axis=1).astype(np.int32)
    weight = ex.weight.astype(np.float32)
    is_val = np.random.default_rng(c.seed).random(n_q) < 0.1
    model = DeepFM(
        n_items=dataset.n_items,
        n_categories=dataset.catalog.n_categories,
        n_price=dataset.catalog.n_price_buckets,
        n_dense=len(dense_names(lists.sources)),
        config=c,
        position=lists.shown is not None,
    )
    opt = tf_keras.optimizers.Adam(c.learning_rate)

    def ds(mask: np.ndarray, shuffle: bool) -> tf.data.Dataset:
        d = tf.data.Dataset.from_tensor_slices(
            ({k: v[mask] for k, v in rows.items()}, valid[mask], label[mask], weight[mask])
        )
        if shuffle:
            d = d.shuffle(int(mask.sum()), seed=c.seed, reshuffle_each_iteration=True)
        return d.batch(c.queries_per_batch).prefetch(2)

    def loss_of(
        f: dict[str, tf.Tensor], m: tf.Tensor, y: tf.Tensor, w: tf.Tensor, training: bool
    ) -> tf.Tensor:
        flat_f = {k: tf.reshape(v, (-1, *v.shape[2:])) for k, v in f.items()}
        logits = tf.reshape(model(flat_f, training=training), (-1, n_c))
        logits = tf.where(m, logits, tf.fill(tf.shape(logits), -1e9))
        ce = tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits)
        return tf.reduce_sum(w * ce) / tf.maximum(tf.reduce_sum(w), 1e-6)

    @tf.function(reduce_retracing=True)
    def train_step(f: dict[str, tf.Tensor], m: tf.Tensor, y: tf.Tensor, w: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            loss = loss_of(f, m, y, w, True)
        grads = tape.gradient(loss, model.trainable_variables)
        opt.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        return loss

    @tf.function(reduce_retracing=True)
    def val_step(f: dict[str, tf.Tensor], m: tf.Tensor, y: tf.Tensor, w: tf.Tensor) -> tf.Tensor:
        return loss_of(f, m, y, w, False) * tf.reduce_sum(w)

    train_ds, val_ds = ds(~is_val, True), ds(is_val, False)
    val_w = float(weight[is_val].sum()) or 1.0
    trained = TrainedDeepFM(
        model, c, idx_map, cooc, list(lists.sources), table=table, position=model.use_position
    )
    stopper = _EarlyStop(model, trained.history, c.patience)
    n_train = int(valid[~is_val].sum())
    for epoch in range(c.epochs):
        t0 = time.perf_counter()
        losses = [float(train_step(f, m, y, w)) for f, m, y, w in train_ds]
        seconds = time.perf_counter() - t0
        val = sum(float(val_step(f, m, y, w)) for f, m, y, w in val_ds) / val_w
        if stopper.epoch_done(epoch, float(np.mean(losses)), val, seconds, n_train, n_q):
            break
    stopper.restore()
    return trained
