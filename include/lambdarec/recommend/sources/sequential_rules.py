"""Items that follow the session's recent items (the batch layer's ``sequential_rules`` view,
read from the online store).

The table (:mod:`lambdarec.batch.neighbours`, the daily Spark job): in each session, ordered by
time with consecutive repeats collapsed, the rule a=s_i -> b=s_j (a != b, j in i+1..i+W, W =
LAMBDAREC_SR_WINDOW) gets weight 1/(j-i); per item a the ``top_n`` next items by total weight.

The source: for the request's recent items r_0 (newest) .. r_4, score(b) = sum_k decay**k *
w(r_k -> b) (decay = LAMBDAREC_SR_DECAY), normalised so the best is 1.0; items the rules never
reach are not candidates. The recent items are the session's viewed items, newest first, with
consecutive repeats collapsed as the table's sessions are (the speed layer keeps repeats).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lambdarec.config import get_settings
from lambdarec.recommend.sources.base import RECENT_ITEMS, Pool

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from lambdarec.recommend.sources.base import Request, Stores
    from lambdarec.recommend.types import FeatureReader

VIEW = "sequential_rules"
REFS = [f"{VIEW}:next_items", f"{VIEW}:next_weights"]


def session_history(features: Mapping[str, Any], n: int) -> list[str]:
    """The session's viewed items, newest first, consecutive repeats collapsed, at most ``n``."""
    out: list[str] = []
    for item in features.get("session_features__last_viewed_items") or ():
        if item is not None and (not out or out[-1] != str(item)):
            out.append(str(item))
            if len(out) == n:
                break
    return out


def normalised(scores: Mapping[str, float]) -> list[tuple[str, float]]:
    """(item, score / best) for the positive scores, best first, ties by item id."""
    best = max(scores.values(), default=0.0)
    if best <= 0:
        return []
    return sorted(
        ((item, s / best) for item, s in scores.items() if s > 0), key=lambda kv: (-kv[1], kv[0])
    )


def following(
    reader: FeatureReader, item_ids: Sequence[str], decay: float
) -> list[tuple[str, float]]:
    """The items the rules of ``item_ids`` (newest first) reach, scored, best first."""
    if not item_ids:
        return []
    cols = reader.read(REFS, [{"item_id": i} for i in item_ids])
    nexts = cols.get(f"{VIEW}__next_items") or [None] * len(item_ids)
    weights = cols.get(f"{VIEW}__next_weights") or [None] * len(item_ids)
    scores: dict[str, float] = {}
    for k in range(len(item_ids)):
        recency = decay**k
        for item, w in zip(nexts[k] or (), weights[k] or (), strict=False):
            scores[item] = scores.get(item, 0.0) + recency * float(w or 0.0)
    return normalised(scores)


class SequentialRulesSource:
    name = "sequential_rules"
    # Below co-occurrence (0.8): alone the rules are about as good, and their items mostly
    # overlap co-views and session-kNN's; in the blend they add the order of clicks (what comes
    # next, not only what comes along), a tie-breaker more than a leader.
    weight = 0.6

    def __init__(self, stores: Stores, *, decay: float | None = None) -> None:
        self.features = stores.features
        self.decay = get_settings().sr_decay if decay is None else decay

    def candidates(self, request: Request, fetch: int) -> Pool:
        if self.name not in request.memo:
            recent = session_history(request.features, RECENT_ITEMS)
            pairs = None
            if self.features is not None and recent and "online_store" not in request.degraded:
                pairs = request.attempt(
                    "online_store", following, self.features, recent, self.decay
                )
            request.memo[self.name] = pairs or []
        pairs = request.memo[self.name]
        return Pool(pairs[:fetch], more=len(pairs) > fetch)
