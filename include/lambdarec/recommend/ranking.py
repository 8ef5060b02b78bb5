"""Ranking the filtered candidates: the ranker when one is loaded, else the blend of sources.

Either way each candidate carries the features that contributed most to its score (``reasons``
in the response). The ranker sees what each source said of each candidate (its score and its
place in that source's list, :func:`source_matrix`), as its training rows had it: the ranker is
trained on the pipeline's own candidates, so it learns how much to trust each source.
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


def source_matrix(
    candidates: Sequence[Candidate], sources: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
    """(scores, ranks), each (candidates x sources): what each source said of each candidate,
    NaN where it did not propose it."""
    scores = np.full((len(candidates), len(sources)), np.nan)
    ranks = np.full((len(candidates), len(sources)), np.nan)
    for n, c in enumerate(candidates):
        for j, name in enumerate(sources):
            if name in c.sources:
                scores[n, j] = c.sources[name]
                ranks[n, j] = c.ranks.get(name, np.nan)
    return scores, ranks


def score_with(
    ranker: Ranker, features: Mapping[str, Any], candidates: Sequence[Candidate]
) -> list[tuple[float, dict[str, float]]]:
    scores, ranks = source_matrix(candidates, ranker.sources)
    return ranker.score(
        features,
        [c.item_id for c in candidates],
        [c.category for c in candidates],
        scores,
        ranks,
    )


def rank(
    request: Request,
    candidates: list[Candidate],
    weights: Mapping[str, float],
    *,
    expected: bool = True,
) -> None:
    """Score ``candidates`` in place and sort them best first (ties by item id); without a ranker
    by the blend (``ranker`` degraded when one was ``expected``)."""
    ranker = request.models.ranker
    scored = None
    if ranker is None:
        if expected:
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
