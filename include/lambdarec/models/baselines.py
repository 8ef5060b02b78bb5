"""The baselines a skeptical engineer tries first, fitted on training interactions only.

Each baseline has ``fit(dataset)`` and ``scores(examples) -> (len(examples), n_items)`` float32:

* :class:`MostPopular`: training interaction counts.
* :class:`Trending`: interaction counts in the ``window`` before the query time (time buckets of
  ``window / 8``; events of the query's own bucket are not used, so nothing leaks). It may use
  events after the training period, since they happened before the query; for SR-GNN data (no
  timestamps) time is the session ordinal, and all test queries come after the training sessions.
* :class:`CoOccurrence`: item-to-item co-occurrence within sessions (the batch layer's definition:
  each session's last ``max_items`` distinct items, score ``n_ab / sqrt(n_a * n_b)``), scored as
  the sum over the session's recent items, weighted ``decay ** age``.
* :class:`ALS`: implicit ALS on (user x item) training interactions (sessions when there are no
  users); a query uses its user's factors when the user is known, otherwise a fold-in of the
  session's recent items (one exact least-squares step against the fixed item factors).

Scores of popularity-free rankers get ``1e-6 * popularity`` added so ties break towards popular
items instead of towards low indices.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse as sp

if TYPE_CHECKING:
    from lambdarec.models.data import Dataset, Examples


def _tiebreak(pop: np.ndarray) -> np.ndarray:
    top = pop.max() if pop.size and pop.max() > 0 else 1.0
    return (1e-6 * pop / top).astype(np.float32)


def history_matrix(hist: np.ndarray, n_items: int, decay: float = 1.0) -> sp.csr_matrix:
    """Sparse (queries x items) weights ``decay ** position`` of each query's recent items."""
    rows, cols = np.nonzero(hist >= 0)
    weights = decay ** cols.astype(np.float64)
    m = sp.csr_matrix(
        (weights.astype(np.float32), (rows, hist[rows, cols])), shape=(len(hist), n_items)
    )
    m.sum_duplicates()
    return m


def cosine_cooccurrence(
    group: np.ndarray, item: np.ndarray, ts: np.ndarray, n_items: int, max_items: int
) -> sp.csr_matrix:
    """Item x item co-occurrence within groups (the batch layer's definition): each group's last
    ``max_items`` distinct items take part, score ``n_ab / sqrt(n_a * n_b)``, no diagonal."""
    order = np.lexsort((-ts, group))
    g, i = group[order], item[order]
    key = g.astype(np.int64) * n_items + i
    _, first = np.unique(key, return_index=True)
    first = np.sort(first)
    g, i = g[first], i[first]
    starts = np.r_[0, np.flatnonzero(np.diff(g) != 0) + 1]
    rank = np.arange(len(g)) - np.repeat(starts, np.diff(np.r_[starts, len(g)]))
    keep = rank < max_items
    gc = np.unique(g[keep], return_inverse=True)[1]
    s = sp.csr_matrix(
        (np.ones(int(keep.sum()), dtype=np.float32), (gc, i[keep])),
        shape=(int(gc.max()) + 1 if len(gc) else 0, n_items),
    )
    c = (s.T @ s).tocsr()
    c.setdiag(0)
    c.eliminate_zeros()
    support = np.asarray(s.sum(axis=0)).ravel()
    inv = np.zeros(n_items, dtype=np.float32)
    inv[support > 0] = 1.0 / np.sqrt(support[support > 0])
    return (sp.diags(inv) @ c @ sp.diags(inv)).tocsr().astype(np.float32)


class MostPopular:
    name = "most_popular"

    def fit(self, dataset: Dataset) -> MostPopular:
        self.pop = dataset.popularity().astype(np.float32)
        return self

    def scores(self, ex: Examples) -> np.ndarray:
        return np.broadcast_to(self.pop, (len(ex), len(self.pop))).copy()


class Trending:
    name = "trending"

    def __init__(self, window: float) -> None:
        self.window = float(window)

    def fit(self, dataset: Dataset) -> Trending:
        ev = dataset.all_events
        self.n_items = dataset.n_items
        self.bucket = max(1.0, self.window / 8)
        self.lag = int(round(self.window / self.bucket))
        b = (ev.ts // self.bucket).astype(np.int64)
        self.b0 = int(b.min())
        counts = sp.csr_matrix(
            (np.ones(len(b), dtype=np.float32), (b - self.b0, ev.item)),
            shape=(int(b.max()) - self.b0 + 1, self.n_items),
        )
        self.cum = counts.toarray().cumsum(axis=0) if counts.shape[0] <= 4096 else None
        self.counts = counts
        self.tie = _tiebreak(dataset.popularity())
        return self

    def _window_counts(self, qb: int) -> np.ndarray:
        hi = min(qb - self.b0, self.counts.shape[0])  # exclusive: the query's bucket is not used
        lo = max(hi - self.lag, 0)
        if hi <= 0:
            return np.zeros(self.n_items, dtype=np.float32)
        if self.cum is not None:
            return self.cum[hi - 1] - (self.cum[lo - 1] if lo > 0 else 0)
        return np.asarray(self.counts[lo:hi].sum(axis=0)).ravel()

    def scores(self, ex: Examples) -> np.ndarray:
        qb = (ex.ts // self.bucket).astype(np.int64)
        out = np.empty((len(ex), self.n_items), dtype=np.float32)
        for b in np.unique(qb):
            out[qb == b] = self._window_counts(int(b)) + self.tie
        return out


class CoOccurrence:
    name = "cooccurrence"

    def __init__(self, decay: float = 0.7, max_items: int = 50) -> None:
        self.decay = decay
        self.max_items = max_items

    def fit(self, dataset: Dataset) -> CoOccurrence:
        ev = dataset.train_events
        n = dataset.n_items
        self.matrix = cosine_cooccurrence(ev.group, ev.item, ev.ts, n, self.max_items)
        self.n_items = n
        self.tie = _tiebreak(dataset.popularity())
        return self

    def scores(self, ex: Examples) -> np.ndarray:
        q = history_matrix(ex.hist, self.n_items, self.decay)
        return np.asarray((q @ self.matrix).todense(), dtype=np.float32) + self.tie

    def pair_scores(self, hist: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Co-occurrence score of each (query, candidate) pair: ``items`` is (queries x c)."""
        out = np.zeros(items.shape, dtype=np.float32)
        for start in range(0, len(hist), 1024):
            sl = slice(start, start + 1024)
            q = history_matrix(hist[sl], self.n_items, self.decay)
            dense = np.asarray((q @ self.matrix).todense(), dtype=np.float32)
            out[sl] = np.take_along_axis(dense, items[sl], axis=1)
        return out


class ALS:
    name = "als"

    def __init__(
        self,
        factors: int = 64,
        regularization: float = 0.05,
        alpha: float = 1.0,
        iterations: int = 12,
        seed: int = 0,
    ) -> None:
        self.factors = factors
        self.regularization = regularization
        self.alpha = alpha
        self.iterations = iterations
        self.seed = seed

    def fit(self, dataset: Dataset) -> ALS:
        from implicit.cpu.als import AlternatingLeastSquares

        ev = dataset.train_events
        rows = ev.user if dataset.has_users else ev.group
        n_rows = int(rows.max()) + 1
        m = sp.csr_matrix(
            (np.ones(len(rows), dtype=np.float32), (rows, ev.item)),
            shape=(n_rows, dataset.n_items),
        )
        m.data[:] = 1.0  # binary: repeated interactions count once
        # implicit parallelises over its own threads; OpenBLAS's pool under them oversubscribes
        # the cores (implicit checks when the model is built and warns unless BLAS has one).
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=1, user_api="blas"):
            model = AlternatingLeastSquares(
                factors=self.factors,
                regularization=self.regularization,
                alpha=self.alpha,
                iterations=self.iterations,
                random_state=self.seed,
                num_threads=2,
            )
            model.fit(m, show_progress=False)
        self.items = np.asarray(model.item_factors, dtype=np.float32)
        self.users = np.asarray(model.user_factors, dtype=np.float32)
        self.use_users = dataset.has_users
        self.gram = self.items.T @ self.items
        self.n_items = dataset.n_items
        self.tie = _tiebreak(dataset.popularity())
        return self

    def fold_in(self, hist: np.ndarray) -> np.ndarray:
        """Least-squares user vectors for the recent items (implicit-ALS confidence 1 + alpha)."""
        k = self.items.shape[1]
        mask = hist >= 0
        y = self.items[np.maximum(hist, 0)] * mask[..., None]  # (b, L, k)
        conf = 1.0 + self.alpha
        a = self.gram[None] + (conf - 1.0) * np.einsum("blk,blj->bkj", y, y)
        a += self.regularization * np.eye(k, dtype=np.float32)[None]
        b = conf * y.sum(axis=1)
        return np.linalg.solve(a, b[..., None])[..., 0].astype(np.float32)

    def scores(self, ex: Examples) -> np.ndarray:
        q = self.fold_in(ex.hist)
        if self.use_users:
            known = ex.user > 0
            q[known] = self.users[ex.user[known]]
        return q @ self.items.T + self.tie
