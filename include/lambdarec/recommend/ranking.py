"""Ranking the filtered candidates: the ranker when one is loaded, else the blend of sources.

Either way each candidate carries the features that contributed most to its score (``reasons``
in the response). The ranker sees what retrieval said of each candidate as its training rows had
it: a vector hit's score is the index's inner product (``2 * score - 1``, the cosine training
used) and its rank its place among the vector hits; the other candidates get the lowest vector
score of the request (0 without vector hits) and rank after the hits by their blend.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from lambdarec.recommend.sources.base import Request
    from lambdarec.recommend.types import Candidate, Ranker

#: Added to the blend of a candidate in the session's category (no ranker).
SESSION_CATEGORY_BONUS = 0.05


def blend(candidates: Sequence[Candidate], weights: Mapping[str, float]) -> None:
    """Each candidate's blend of its sources' scores and its main source (the one that adds
    most to the blend; the first listed on a tie)."""
    for c in candidates:
        best, best_value, total = "", -1.0, 0.0
        for source, score in c.sources.items():
            value = weights.get(source, 0.0) * score
            total += value
            if value > best_value:
                best, best_value = source, value
        c.blend, c.source = total, best


def retrieval_inputs(candidates: Sequence[Candidate]) -> tuple[np.ndarray, np.ndarray]:
    """(retrieval score, rank) per candidate: vector hits by their score, then the rest."""
    n = len(candidates)
    vector = np.array([c.sources.get("vector", np.nan) for c in candidates], dtype=np.float64)
    hit = ~np.isnan(vector)
    score = 2.0 * vector - 1.0  # the index's inner product, undoing the source's (s + 1) / 2
    floor = float(score[hit].min()) if hit.any() else 0.0
    score = np.where(hit, score, floor)
    order = sorted(
        range(n),
        key=lambda i: (not hit[i], -score[i], -candidates[i].blend, candidates[i].item_id),
    )
    rank = np.empty(n, dtype=np.float64)
    rank[order] = np.arange(n)
    return score, rank


def score_with(
    ranker: Ranker, features: Mapping[str, Any], candidates: Sequence[Candidate]
) -> list[tuple[float, dict[str, float]]]:
    retrieval, rank = retrieval_inputs(candidates)
    return ranker.score(
        features,
        [c.item_id for c in candidates],
        [c.category for c in candidates],
        retrieval,
        rank,
    )


def rank(request: Request, candidates: list[Candidate], weights: Mapping[str, float]) -> None:
    """Score ``candidates`` in place and sort them best first (ties by item id)."""
    ranker = request.models.ranker
    scored = None
    if ranker is None:
        request.missing("ranker")
    else:
        scored = request.attempt("ranker", score_with, ranker, request.features, candidates)
    if scored is not None and len(scored) == len(candidates):
        for c, (s, contrib) in zip(candidates, scored, strict=True):
            c.score, c.contributions = float(s), contrib
    else:
        session_category = request.features.get("session_features__session_category")
        for c in candidates:
            c.contributions = {
                f"{src}_score": weights.get(src, 0.0) * v for src, v in c.sources.items()
            }
            if session_category and c.category == session_category:
                c.contributions["session_category_match"] = SESSION_CATEGORY_BONUS
            c.score = sum(c.contributions.values())
    candidates.sort(key=lambda c: (-c.score, c.item_id))
