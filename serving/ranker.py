"""The DeepFM ranker at serving time: the run's exported DeepFM scored in numpy, no TensorFlow.

``lambdarec.models.deepfm.export_for_serving`` writes ``deepfm/serving/`` in every run
(``weights.npz``, ``items.npz``, ``ranker.json``); :class:`DeepFMRanker` loads it and implements
the recommender's ``Ranker`` protocol: one forward pass over all candidates of a request (embedding
lookups, the FM's first and second order, the MLP), a few hundred microseconds for 150 candidates.

Each candidate's contributions are the model's own decomposition of its logit: per field, its
first-order weight plus half of its pairwise FM interactions (``sum_j!=i <v_i, v_j> / 2``), and
the MLP's output as one ``deep`` entry; the five largest by absolute value are returned. With the
dense layer's bias (the same for every candidate, so left out) they sum to the score.

Feature rows are built at request time from the Feast features and the candidates, as
``lambdarec.models.deepfm.candidate_features`` builds them in training. Where serving can only
approximate a training feature (train/serve skew):

* ``retrieval_score`` / ``log_rank``: training candidates were the retriever's top
  ``n_candidates`` (100), each with its two-tower score and its position in that list. Serving
  merges the vector index's hits with co-occurring, trending and popular items. A vector hit's
  score is the index's inner product (``2 * sources["vector"] - 1``: the same cosine as training);
  the others have none, so they get the lowest vector score of the request (0 when no vector
  hit) and rank after the vector hits, by their blend score; ranks are capped at
  ``n_candidates - 1``, the largest training saw.
* session history (``last_item``, ``session_category``, ``cooc``): training used the session's
  last 10 interactions of any kind (repeats collapsed); serving has the speed layer's
  ``last_viewed_items`` (views only; repeats collapsed here). ``session_category`` is the
  category of the last viewed item, as in training, not Feast's ``session_category`` (the most
  viewed category); an item unknown to the export gives category 0.
* ``cooc``: the training co-occurrence matrix shipped in the export, over the history above
  (exact, but frozen at training time: not the fresher online ``item_cooccurrence`` scores,
  whose scale differs).
* ``log_pop``: training interaction counts from the export (frozen at training time).
* ``log_session_len``: the session's events so far (``n_views + n_carts + n_removes +
  n_purchases``), not collapsed as training's interaction count is.
* ``log_user_events``: training counted the user's every interaction before the query;
  serving has ``user_history_30d__n_events_30d`` (30 days, up to the last daily run) plus this
  session's events.
* Items unknown to the export (new since the training data): embedding index 1 (out of
  vocabulary, as training maps items it never saw), price bucket 0, popularity 0, no
  co-occurrence; their category is the catalog's (the candidate's ``category``, from the lake)
  through the run's item vocabulary (``vocabulary``: the two-tower export's item tower
  vocabulary, the training catalog's own category numbering), so a new item of the session's
  category gets the category match the model learned; 0 (unknown) without a vocabulary or for a
  category the training catalog never had. In training every catalog item had its category and price
  bucket.
"""

from __future__ import annotations

import json
import logging
import math
from typing import TYPE_CHECKING, Any

import numpy as np

from lambdarec.models.item_tower import ACTIVATIONS, OOV_ITEM
from serving.recommender import SOURCE_WEIGHTS

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

    from lambdarec.models.item_tower import ItemVocabulary
    from serving.recommender import Candidate

log = logging.getLogger(__name__)

#: Kept in step with ``lambdarec.models.deepfm`` (which imports TensorFlow, so not imported here).
EXPORT_DIR = "serving"
EXPORT_FORMAT = 1
TOP_CONTRIBUTIONS = 5


def _one_blas_thread() -> None:
    """Limit BLAS (OpenBLAS) to one thread per calling thread in this process.

    A request's matrix products are small (150 x 160 by 160 x 128): BLAS's worker threads only
    add hand-offs, and on a busy 2-core machine they cost the ranker 13 ms at p50 instead of 2 ms
    with one thread. Serving runs requests in threads of its own; the query tower (TensorFlow)
    and the vector index use their own thread pools, unaffected.
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # a transitive dependency (implicit, scikit-learn): optional here
        log.warning("threadpoolctl is missing: BLAS keeps its threads (slower ranking under load)")
        return
    threadpool_limits(limits=1, user_api="blas")


class DeepFMRanker:
    """The exported DeepFM of one run (``deepfm/serving/``); thread-safe (read-only arrays)."""

    name = "deepfm"

    def __init__(self, folder: Path, vocabulary: ItemVocabulary | None = None) -> None:
        #: Raw catalog values -> the model's category index, for items the export lacks.
        self.vocabulary = vocabulary
        meta = json.loads((folder / "ranker.json").read_text(encoding="utf-8"))
        if meta.get("format") != EXPORT_FORMAT:
            raise ValueError(
                f"{folder}: ranker export format {meta.get('format')!r}, "
                f"this serving reads {EXPORT_FORMAT}"
            )
        self.fields: list[str] = list(meta["fields"])
        self.dense: list[str] = list(meta["dense"])
        self.use_ids = bool(meta["item_ids"])
        self.n_candidates = int(meta["n_candidates"])
        self.max_history = int(meta["max_history"])
        self.decay = float(meta["cooc_decay"])
        with np.load(folder / "weights.npz") as w:
            self.w = {k: w[k].astype(np.float32) for k in w.files}
        with np.load(folder / "items.npz") as items:
            ids = items["ids"]
            self.index = items["index"]
            self.category = items["category"]
            self.price_bucket = items["price_bucket"]
            self.popularity = items["popularity"]
            self._indptr = items["cooc_indptr"]
            self._indices = items["cooc_indices"]
            self._data = items["cooc_data"]
        self._position = {str(item): pos for pos, item in enumerate(ids.tolist())}
        w = self.w
        # Batch norm at inference is an affine map of each dense feature.
        scale = w["bn_gamma"] / np.sqrt(w["bn_var"] + np.float32(meta["bn_epsilon"]))
        self._bn_scale, self._bn_shift = scale, w["bn_beta"] - w["bn_mean"] * scale
        n_deep = len(meta["deep_activations"])
        self._deep = [
            (w[f"deep_kernel_{i}"], w[f"deep_bias_{i}"], ACTIVATIONS[act])
            for i, act in enumerate(meta["deep_activations"])
        ]
        if n_deep == 0 or self._deep[-1][0].shape[1] != 1:
            raise ValueError(f"{folder}: the MLP must end in one output unit")
        self.folder = folder
        _one_blas_thread()

    @classmethod
    def from_model_dir(
        cls, deepfm_dir: Path, vocabulary: ItemVocabulary | None = None
    ) -> DeepFMRanker | None:
        """The ranker exported in a run's ``deepfm/`` folder; None for a run from before the
        export existed (serving then blends the retrieval scores)."""
        folder = deepfm_dir / EXPORT_DIR
        if not (folder / "ranker.json").is_file():
            return None
        return cls(folder, vocabulary)

    # -- feature rows -----------------------------------------------------------------------

    def rows(
        self, features: dict[str, Any], candidates: Sequence[Candidate]
    ) -> dict[str, np.ndarray]:
        """The training feature rows of ``candidates`` (see the module doc for the skew)."""
        n = len(candidates)
        pos = self._position
        cand = np.fromiter((pos.get(c.item_id, -1) for c in candidates), np.int64, n)
        known = cand >= 0
        safe = np.maximum(cand, 0)
        category = np.where(known, self.category[safe], 0)
        if self.vocabulary is not None and not known.all():
            unknown = np.flatnonzero(~known)
            category[unknown] = self.vocabulary.category_index(
                [candidates[i].category for i in unknown.tolist()]
            )

        hist = self._history(features)
        if hist:
            last = int(self.index[hist[0]]) if hist[0] >= 0 else OOV_ITEM
            session_category = int(self.category[hist[0]]) if hist[0] >= 0 else 0
        else:
            last, session_category = 0, 0

        def count(name: str) -> int:
            return int(features.get(name) or 0)

        session_len = sum(
            count(f"session_features__n_{kind}")
            for kind in ("views", "carts", "removes", "purchases")
        )
        user_events = count("user_history_30d__n_events_30d") + session_len
        retrieval, rank = self._retrieval(candidates)
        dense = np.stack(
            [
                retrieval,
                np.log1p(rank),
                self._cooc(hist, safe, known),
                np.log1p(np.where(known, self.popularity[safe], 0.0)),
                np.full(n, math.log1p(session_len)),
                np.full(n, math.log1p(user_events)),
                (category == session_category) & (session_category > 0),
            ],
            axis=-1,
        ).astype(np.float32)
        return {
            "cand_item": np.where(known, self.index[safe], OOV_ITEM),
            "last_item": np.full(n, last, dtype=np.int64),
            "cand_category": category,
            "cand_price": np.where(known, self.price_bucket[safe], 0),
            "session_category": np.full(n, session_category, dtype=np.int64),
            "dense": dense.reshape(n, len(self.dense)),
        }

    def _history(self, features: dict[str, Any]) -> list[int]:
        """Catalog positions of the session's last viewed items, newest first, consecutive
        repeats collapsed as training collapses them; -1 for an item unknown to the export."""
        out: list[int] = []
        previous = None
        for item in features.get("session_features__last_viewed_items") or ():
            if item is None or item == previous:
                continue
            previous = item
            out.append(self._position.get(str(item), -1))
            if len(out) == self.max_history:
                break
        return out

    def _retrieval(self, candidates: Sequence[Candidate]) -> tuple[np.ndarray, np.ndarray]:
        """(retrieval score, rank) per candidate: vector hits by their score, then the rest."""
        n = len(candidates)
        vector = np.array([c.sources.get("vector", np.nan) for c in candidates], dtype=np.float64)
        hit = ~np.isnan(vector)
        score = 2.0 * vector - 1.0  # the index's inner product, undoing serving's (s + 1) / 2
        floor = float(score[hit].min()) if hit.any() else 0.0
        score = np.where(hit, score, floor)
        blend = [
            sum(SOURCE_WEIGHTS.get(s, 0.0) * v for s, v in c.sources.items()) for c in candidates
        ]
        order = sorted(
            range(n), key=lambda i: (not hit[i], -score[i], -blend[i], candidates[i].item_id)
        )
        rank = np.empty(n, dtype=np.float64)
        rank[order] = np.minimum(np.arange(n), self.n_candidates - 1)
        return score, rank

    def _cooc(self, hist: list[int], cand: np.ndarray, known: np.ndarray) -> np.ndarray:
        """``sum_j decay**j * M[hist_j, candidate]`` over the training co-occurrence matrix."""
        out = np.zeros(len(cand), dtype=np.float64)
        for j, h in enumerate(hist):
            if h < 0:
                continue
            lo, hi = int(self._indptr[h]), int(self._indptr[h + 1])
            if lo == hi:
                continue
            cols = self._indices[lo:hi]
            at = np.minimum(np.searchsorted(cols, cand), hi - lo - 1)
            match = known & (cols[at] == cand)
            out += np.where(match, np.float32(self.decay**j) * self._data[lo:hi][at], 0.0)
        return out

    # -- the model --------------------------------------------------------------------------

    def forward(self, rows: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """(logits (n,), contributions (n, fields + 1)): per field its first-order term plus half
        its pairwise interactions, then the MLP's output (the last column)."""
        w = self.w
        x = rows["dense"].astype(np.float32) * self._bn_scale + self._bn_shift  # (n, d)
        sparse = [("cat", "cand_category"), ("price", "cand_price"), ("cat", "session_category")]
        if self.use_ids:
            sparse += [("item", "cand_item"), ("item", "last_item")]
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
        self, features: dict[str, Any], candidates: Sequence[Candidate]
    ) -> list[tuple[float, dict[str, float]]]:
        """Per candidate (logit, its top contributions), in the candidates' order."""
        if not candidates:
            return []
        logits, contributions = self.forward(self.rows(features, candidates))
        names = [*self.fields, "deep"]
        top = np.argsort(-np.abs(contributions), axis=1)[:, :TOP_CONTRIBUTIONS]
        best_values = np.take_along_axis(contributions, top, axis=1).astype(np.float64)
        values = np.round(best_values, 4).tolist()  # float64: 4 decimals print as 4 decimals
        return [
            (logit, {names[j]: v for j, v in zip(best, vals, strict=True)})
            for logit, best, vals in zip(logits.tolist(), top.tolist(), values, strict=True)
        ]
