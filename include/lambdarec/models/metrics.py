"""Full-ranking metrics over all items, vectorised in numpy.

A model gives a score matrix (queries x items); :func:`top_k` keeps the best ``k`` item indices
per row (argpartition, then a sort of those ``k``). Every metric is computed from the top-k lists
and the targets, so a ranking is never sampled: the target competes with the whole catalog.

A query's already-seen items (``Examples.seen``) are taken out of its ranking with
:func:`mask_seen` before the top-k, when the protocol asks for it.

Targets are a 2-D int array padded with ``-1`` (one column for next-item prediction). With one
target per query, Recall@K = HR@K (the "P@K" of the SR-GNN papers), MRR@K is the reciprocal rank
of the target when it is in the top K (else 0), NDCG@K = 1 / log2(rank + 1).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence

    import scipy.sparse as sp

KS: tuple[int, ...] = (5, 10, 20, 50, 100)


def mask_seen(scores: np.ndarray, seen: sp.spmatrix | None) -> np.ndarray:
    """``scores`` with each row's seen items (the non-zeros of the same row of ``seen``, a
    queries x items sparse matrix) set to -inf, so :func:`top_k` ranks them last.

    In place (a read-only array is copied first); returns the scores. None leaves them as they
    are.
    """
    if seen is None:
        return scores
    if seen.shape != scores.shape:
        raise ValueError(f"seen is {seen.shape}, the scores {scores.shape}")
    out = scores if scores.flags.writeable else scores.copy()
    coo = seen.tocoo()
    out[coo.row, coo.col] = -np.inf
    return out


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` highest scores per row, best first (ties: lower index first)."""
    scores = np.asarray(scores)
    n = scores.shape[1]
    k = min(k, n)
    if k == n:
        part = np.broadcast_to(np.arange(n), scores.shape).copy()
    else:
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    vals = np.take_along_axis(scores, part, axis=1)
    order = np.lexsort((part, -vals), axis=1)
    return np.take_along_axis(part, order, axis=1)


def as_targets(targets: Sequence[int] | Sequence[Sequence[int]] | np.ndarray) -> np.ndarray:
    """Targets as a 2-D int64 array padded with -1."""
    arr = np.asarray(targets, dtype=object) if not isinstance(targets, np.ndarray) else targets
    if arr.dtype != object and arr.ndim == 1:
        return arr.astype(np.int64)[:, None]
    if arr.dtype != object and arr.ndim == 2:
        return arr.astype(np.int64)
    rows = [np.atleast_1d(np.asarray(t, dtype=np.int64)) for t in targets]  # type: ignore[union-attr]
    width = max((len(r) for r in rows), default=1) or 1
    out = np.full((len(rows), width), -1, dtype=np.int64)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


def hits_matrix(topk: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Boolean (queries x k): the item at each position is one of the query's targets."""
    targets = as_targets(targets)
    hits = np.zeros(topk.shape, dtype=bool)
    for j in range(targets.shape[1]):
        t = targets[:, j : j + 1]
        hits |= (topk == t) & (t >= 0)
    return hits


def ranking_metrics(
    topk: np.ndarray, targets: np.ndarray, ks: Iterable[int] = KS
) -> dict[str, np.ndarray]:
    """Per-query metric values: ``recall@K``, ``hr@K``, ``ndcg@K``, ``mrr@K`` for each K.

    Queries without any target get NaN (callers drop them); a K larger than the list length
    uses the whole list.
    """
    targets = as_targets(targets)
    n_targets = (targets >= 0).sum(axis=1).astype(np.float64)
    hits = hits_matrix(topk, targets)
    discounts = 1.0 / np.log2(np.arange(2, topk.shape[1] + 2))
    valid = n_targets > 0
    out: dict[str, np.ndarray] = {}
    for k in ks:
        h = hits[:, :k]
        kk = h.shape[1]
        n_hit = h.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            recall = n_hit / n_targets
            dcg = (h * discounts[:kk]).sum(axis=1)
            ideal = np.array(
                [discounts[: int(min(t, kk))].sum() for t in n_targets], dtype=np.float64
            )
            ndcg = dcg / ideal
        first = np.where(h.any(axis=1), h.argmax(axis=1), -1)
        mrr = 1.0 / np.where(first >= 0, first + 1.0, np.inf)
        hr = (n_hit > 0).astype(np.float64)
        for name, v in (("recall", recall), ("hr", hr), ("ndcg", ndcg), ("mrr", mrr)):
            out[f"{name}@{k}"] = np.where(valid, v, np.nan)
    return out


def coverage(topk: np.ndarray, n_items: int, k: int) -> float:
    """Share of the catalog that appears in at least one top-``k`` list."""
    if n_items <= 0 or topk.size == 0:
        return 0.0
    return float(np.unique(topk[:, :k]).size / n_items)


def popularity_percentiles(popularity: np.ndarray) -> np.ndarray:
    """Each item's popularity percentile in [0, 1] (1 = the most popular; ties share a value)."""
    pop = np.asarray(popularity, dtype=np.float64)
    if pop.size == 0:
        return pop
    order = np.sort(pop)
    return np.searchsorted(order, pop, side="right") / pop.size


def popularity_bias(topk: np.ndarray, percentiles: np.ndarray, k: int) -> float:
    """Mean popularity percentile of the recommended items (0.5 = popularity-neutral)."""
    if topk.size == 0:
        return float("nan")
    return float(percentiles[topk[:, :k]].mean())


def evaluate_scores(
    score_fn: Callable[[np.ndarray], np.ndarray],
    n_queries: int,
    targets: np.ndarray,
    *,
    n_items: int,
    popularity: np.ndarray,
    ks: Sequence[int] = KS,
    batch_size: int = 512,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Run ``score_fn(query_indices) -> scores (batch x n_items)`` over all queries in batches.

    Returns per-query metrics and the top-``max(ks)`` lists (for coverage, bias and re-ranking).
    """
    kmax = max(ks)
    tops = []
    for start in range(0, n_queries, batch_size):
        idx = np.arange(start, min(start + batch_size, n_queries))
        scores = np.asarray(score_fn(idx), dtype=np.float32)
        if scores.shape != (len(idx), n_items):
            raise ValueError(f"score_fn gave {scores.shape}, expected {(len(idx), n_items)}")
        tops.append(top_k(scores, kmax))
    topk = np.concatenate(tops) if tops else np.zeros((0, kmax), dtype=np.int64)
    return ranking_metrics(topk, targets, ks), topk


def summarize(
    per_query: dict[str, np.ndarray],
    topk: np.ndarray,
    *,
    n_items: int,
    percentiles: np.ndarray,
    ks: Sequence[int] = KS,
    mask: np.ndarray | None = None,
) -> dict[str, float]:
    """Mean of each per-query metric (over ``mask`` if given), plus coverage@K and popbias@K."""
    out: dict[str, float] = {}
    sel = np.ones(len(topk), dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    for name, values in per_query.items():
        v = values[sel]
        v = v[~np.isnan(v)]
        out[name] = float(v.mean()) if v.size else float("nan")
    for k in ks:
        out[f"coverage@{k}"] = coverage(topk[sel], n_items, k)
        out[f"popbias@{k}"] = popularity_bias(topk[sel], percentiles, k)
    out["n_queries"] = int(sel.sum())
    return out
