"""The DeepFM ranker in numpy: the run's exported DeepFM scores a request's candidates.

Training (``lambdarec.models.deepfm.export_for_serving``) writes ``deepfm/serving/`` in every run:
``weights.npz`` (the model's variables by role), ``items.npz`` (the :class:`~lambdarec.inference.
ranker_rows.ItemTable`: per catalog item its raw id, embedding index, category, price bucket and
training popularity, and the training co-occurrence matrix) and ``ranker.json`` (the candidate
sources it reads, field order, batch-norm epsilon, MLP activations, co-occurrence decay, history
length).

:meth:`DeepFMRanker.rows` turns a request into the training feature rows through
:func:`~lambdarec.inference.ranker_rows.ranker_rows`, the function training builds its rows with.
What serving feeds it differs from training only where serving knows less:

* each source's score and place come from the caller: the pipeline's candidates, as in training
  (the ranker is trained on the same pipeline's candidates);
* the session history is the speed layer's ``last_viewed_items`` (views only), training's was the
  session's last interactions of any kind;
* the session length is the session's events so far (not collapsed as training's interaction
  count is); the user's events are ``user_history_30d.n_events_30d`` (30 days, up to the last
  daily run) plus this session's;
* co-occurrence and popularity are the training data's (frozen at training time);
* items the export does not know (newer than the training data) take the out-of-vocabulary
  embedding, price bucket 0, popularity 0, no co-occurrence, and their catalog category through
  the run's item vocabulary (the two-tower export's), so a new item of the session's category gets
  the category match the model learned.

:meth:`DeepFMRanker.forward` is one pass over all candidates (embedding lookups, the FM's first
and second order, the MLP); each candidate's contributions are the model's own decomposition of
its logit: per field its first-order weight plus half its pairwise interactions, and the MLP's
output as one ``deep`` entry.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np

from lambdarec.inference.nn import ACTIVATIONS, check_activations, read_export
from lambdarec.inference.ranker_rows import (
    UNKNOWN,
    ItemTable,
    dense_names,
    online_counts,
    online_history,
    ranker_rows,
)

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from pathlib import Path

    from lambdarec.inference.vocabulary import ItemVocabulary

log = logging.getLogger(__name__)

#: The serving export's folder inside a run's ``deepfm/`` folder, and its format version.
EXPORT_DIR = "serving"
EXPORT_FORMAT = 3  # 3: per-source rel and gap, in_history, n_sources
#: The format of a ranker trained with impressions: format 3 plus the ``position`` field (code that
#: reads only format 3 refuses it instead of scoring without the field's weights).
EXPORT_FORMAT_POSITION = 4
FORMATS = (EXPORT_FORMAT, EXPORT_FORMAT_POSITION)
META_FILE = "ranker.json"
WEIGHTS_FILE = "weights.npz"
ITEMS_FILE = "items.npz"
#: Contributions reported per candidate (the largest by absolute value).
TOP_CONTRIBUTIONS = 5


def one_blas_thread() -> None:
    """Limit BLAS (OpenBLAS) to one thread per calling thread in this process.

    A request's matrix products are small (150 x 160 by 160 x 128): BLAS's worker threads only
    add hand-offs, and on a busy 2-core machine they cost the ranker 13 ms at p50 instead of 2 ms
    with one thread.
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # a transitive dependency (implicit, scikit-learn): optional here
        log.warning("threadpoolctl is missing: BLAS keeps its threads (slower ranking under load)")
        return
    threadpool_limits(limits=1, user_api="blas")


def read_table(folder: Path, decay: float) -> tuple[list[str], ItemTable]:
    """The raw item ids and the :class:`ItemTable` of an export's ``items.npz``."""
    with np.load(folder / ITEMS_FILE) as items:
        ids = [str(i) for i in items["ids"].tolist()]
        table = ItemTable.from_csr(
            index=items["index"],
            category=items["category"],
            price_bucket=items["price_bucket"],
            popularity=items["popularity"],
            indptr=items["cooc_indptr"],
            indices=items["cooc_indices"],
            data=items["cooc_data"],
            decay=decay,
        )
    return ids, table


class DeepFMRanker:
    """The exported DeepFM of one run (``deepfm/serving/``); thread-safe (read-only arrays)."""

    name = "deepfm"

    def __init__(self, folder: Path, vocabulary: ItemVocabulary | None = None) -> None:
        #: Raw catalog values -> the model's category index, for items the export lacks.
        self.vocabulary = vocabulary
        meta, weights = read_export(
            folder, META_FILE, WEIGHTS_FILE, FORMATS, "DeepFM ranker", "retrain"
        )
        #: The candidate sources whose scores and places the model reads, in its order.
        self.sources: list[str] = list(meta["sources"])
        if list(meta["dense"]) != dense_names(self.sources):
            raise ValueError(
                f"{folder}: dense features {meta['dense']}, this code builds "
                f"{dense_names(self.sources)} for sources {self.sources}"
            )
        self.fields: list[str] = list(meta["fields"])
        self.use_ids = bool(meta["item_ids"])
        #: Trained with impressions: the ``position`` field, always neutral here (see ``rows``).
        self.use_position = meta["format"] == EXPORT_FORMAT_POSITION
        self.max_history = int(meta["max_history"])
        self.w = {k: v.astype(np.float32) for k, v in weights.items()}
        ids, self.table = read_table(folder, float(meta["cooc_decay"]))
        self._position = {item: pos for pos, item in enumerate(ids)}
        w = self.w
        # Batch norm at inference is an affine map of each dense feature.
        scale = w["bn_gamma"] / np.sqrt(w["bn_var"] + np.float32(meta["bn_epsilon"]))
        self._bn_scale, self._bn_shift = scale, w["bn_beta"] - w["bn_mean"] * scale
        check_activations(meta["deep_activations"], "DeepFM")
        self._deep = [
            (w[f"deep_kernel_{i}"], w[f"deep_bias_{i}"], ACTIVATIONS[act])
            for i, act in enumerate(meta["deep_activations"])
        ]
        if not self._deep or self._deep[-1][0].shape[1] != 1:
            raise ValueError(f"{folder}: the MLP must end in one output unit")
        self.folder = folder
        one_blas_thread()

    @classmethod
    def from_model_dir(
        cls, deepfm_dir: Path, vocabulary: ItemVocabulary | None = None
    ) -> DeepFMRanker | None:
        """The ranker exported in a run's ``deepfm/`` folder; None for a run from before the
        export existed."""
        folder = deepfm_dir / EXPORT_DIR
        if not (folder / META_FILE).is_file():
            return None
        return cls(folder, vocabulary)

    # -- feature rows -----------------------------------------------------------------------

    def rows(
        self,
        features: Mapping[str, Any],
        item_ids: Sequence[str],
        categories: Sequence[str | None],
        source_scores: np.ndarray,
        source_ranks: np.ndarray,
    ) -> dict[str, np.ndarray]:
        """The training feature rows of one request's candidates: ``item_ids`` with their raw
        catalog ``categories``, and (candidates x :attr:`sources`) scores and places from the
        pipeline's sources (see the module doc). Every row has the neutral ``position``: a ranker
        trained with impressions learnt the shown place's bias there, and ranks without it."""
        n = len(item_ids)
        pos = self._position
        cand = np.fromiter((pos.get(i, UNKNOWN) for i in item_ids), np.int64, n)
        cand_category = None
        unknown = np.flatnonzero(cand < 0)
        if len(unknown) and self.vocabulary is not None:
            cand_category = np.zeros(n, dtype=np.int64)
            cand_category[unknown] = self.vocabulary.category_index(
                [categories[i] for i in unknown.tolist()]
            )
        hist = online_history(
            features.get("session_features__last_viewed_items") or (), pos, self.max_history
        )
        session_len, user_events = online_counts(features)
        return ranker_rows(
            self.table,
            hist,
            np.array([session_len]),
            np.array([user_events]),
            cand[None, :],
            np.asarray(source_scores, dtype=np.float64)[None],
            np.asarray(source_ranks, dtype=np.float64)[None],
            None if cand_category is None else cand_category[None, :],
        )

    # -- the model --------------------------------------------------------------------------

    def forward(self, rows: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """(logits (n,), contributions (n, fields + 1)): per field its first-order term plus half
        its pairwise interactions, then the MLP's output (the last column)."""
        w = self.w
        x = rows["dense"].astype(np.float32) * self._bn_scale + self._bn_shift  # (n, d)
        sparse = [("cat", "cand_category"), ("price", "cand_price"), ("cat", "session_category")]
        if self.use_ids:
            sparse += [("item", "cand_item"), ("item", "last_item")]
        if self.use_position:
            sparse += [("position", "position")]
        v = np.concatenate(
            [
                np.stack([w[f"{table}_emb"][rows[name]] for table, name in sparse], axis=1),
                x[:, :, None] * w["dense_v"][None],
            ],
            axis=1,
        )  # (n, fields, k)
        first = np.concatenate(
            [
                np.stack([w[f"{table}_w"][rows[name], 0] for table, name in sparse], axis=1),
                x * w["dense_w_kernel"][:, 0],
            ],
            axis=1,
        )  # (n, fields)
        total = v.sum(axis=1)  # (n, k)
        pairs = 0.5 * (np.einsum("nfk,nk->nf", v, total) - np.einsum("nfk,nfk->nf", v, v))
        h = v.reshape(len(v), -1)
        for kernel, bias, activation in self._deep:
            h = activation(h @ kernel + bias)
        contributions = np.concatenate([first + pairs, h], axis=1)
        logits = contributions.sum(axis=1) + w["dense_w_bias"][0]
        return logits, contributions

    def score(
        self,
        features: Mapping[str, Any],
        item_ids: Sequence[str],
        categories: Sequence[str | None],
        source_scores: np.ndarray,
        source_ranks: np.ndarray,
    ) -> list[tuple[float, dict[str, float]]]:
        """Per candidate (logit, its top contributions), in the candidates' order."""
        if not item_ids:
            return []
        rows = self.rows(features, item_ids, categories, source_scores, source_ranks)
        logits, contributions = self.forward(rows)
        names = [*self.fields, "deep"]
        top = np.argsort(-np.abs(contributions), axis=1)[:, :TOP_CONTRIBUTIONS]
        best_values = np.take_along_axis(contributions, top, axis=1).astype(np.float64)
        values = np.round(best_values, 4).tolist()  # float64: 4 decimals print as 4 decimals
        return [
            (logit, {names[j]: v for j, v in zip(best, vals, strict=True)})
            for logit, best, vals in zip(logits.tolist(), top.tolist(), values, strict=True)
        ]
