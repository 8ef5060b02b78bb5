"""The pipeline: features -> candidates -> filter -> rank -> rules, each stage timed.

One :class:`Pipeline` object is built per process (serving) or per evaluation; it holds the
sources and the snapshot, and nothing per request: :meth:`Pipeline.recommend` takes the request's
models (a reload swaps them between requests, never during one) and the :data:`~lambdarec.
recommend.types.Call` its dependencies are called through, and the name of the
:mod:`~lambdarec.recommend.policies` policy to run (default: every source, ranked by the ranker).
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import replace
from typing import TYPE_CHECKING

from lambdarec.recommend.policies import PIPELINE, POLICIES
from lambdarec.recommend.policies import policy as get_policy
from lambdarec.recommend.ranking import blend, rank
from lambdarec.recommend.rules import CATEGORY_CAP, diversify
from lambdarec.recommend.sources import build_sources
from lambdarec.recommend.sources.base import Request, Stores
from lambdarec.recommend.types import Candidate, Recommendation, direct_call

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Sequence

    from lambdarec.recommend.snapshot import Snapshot
    from lambdarec.recommend.sources.base import CandidateSource
    from lambdarec.recommend.types import Call, FeatureReader, Models, Query, VectorSearch

#: The sources a pipeline runs unless the configuration says otherwise.
DEFAULT_SOURCES = (
    "vector",
    "session_knn",
    "sequential_rules",
    "cooccurrence",
    "trending",
    "popular",
)
#: Over-fetch stops at this many candidates per source.
OVERFETCH_MAX = 1000
#: The first round asks each source for ``max(FETCH_MIN, 3k + blocked)`` items.
FETCH_MIN = 50
#: Where a request's recent items are: the session's (the speed layer), or, for a returning user
#: without a session yet, the user's own (the batch layer's ``user_recent_items``).
SESSION_ITEMS = "session_features__last_viewed_items"
USER_ITEMS = "user_recent_items:items"


class Pipeline:
    def __init__(
        self,
        snapshot: Snapshot,
        *,
        features: FeatureReader | None = None,
        index: VectorSearch | None = None,
        sources: Sequence[str] = DEFAULT_SOURCES,
        category_cap: float = CATEGORY_CAP,
        ranker_expected: bool = True,
    ) -> None:
        """``ranker_expected``: a request ranked without a ranker is degraded (``ranker`` in its
        ``degraded_parts``); False for a pipeline meant to rank by the blend of its sources."""
        self.snapshot = snapshot
        self.ranker_expected = ranker_expected
        self.features = features
        self.index = index
        self.sources: list[CandidateSource] = build_sources(
            list(sources), Stores(snapshot, features, index)
        )
        self.weights = {s.name: s.weight for s in self.sources}
        self.category_cap = category_cap
        #: Each policy's sources and their blend weights, built once: the pipeline's own
        #: instances where a policy names one of its sources.
        own = {s.name: s for s in self.sources}
        stores = Stores(snapshot, features, index)
        self._runs: dict[str, tuple[list[CandidateSource], dict[str, float]]] = {}
        for name, p in POLICIES.items():
            if p.sources is None:
                self._runs[name] = (self.sources, self.weights)
                continue
            chosen = [own.get(n) or build_sources([n], stores)[0] for n in p.sources]
            self._runs[name] = (chosen, {s.name: s.weight for s in chosen})

    def recommend(
        self,
        query: Query,
        models: Models,
        call: Call = direct_call,
        *,
        blocked: Iterable[str] = (),
        policy: str = PIPELINE,
    ) -> Recommendation:
        """The top ``query.k`` items; ``blocked`` adds items the caller knows are out (e.g. this
        process's record of the user's purchases) to the query's own exclusions. ``policy``
        (:mod:`lambdarec.recommend.policies`) picks the sources and whether the ranker ranks; an
        unknown one is a ValueError listing them."""
        chosen = get_policy(policy)
        sources, weights = self._runs[chosen.name]
        if not chosen.ranked:
            models = replace(models, ranker=None)
        timings: dict[str, float] = {}
        request, survivors = self._candidates(
            query, models, call, blocked, timings, sources, weights
        )
        with _stage("rank", timings):
            rank(request, survivors, weights, expected=self.ranker_expected and chosen.ranked)
        with _stage("rules", timings):
            items = diversify(survivors, query.k, self.category_cap)
        return Recommendation(
            items,
            request.degraded,
            request.features,
            {s: round(v, 3) for s, v in timings.items()},
            request.counts,
            survivors,
        )

    def candidates(
        self, query: Query, models: Models, call: Call = direct_call
    ) -> tuple[Request, list[Candidate]]:
        """The request and its filtered candidates before ranking (each with every source's score
        and rank, and the blend): what a ranker is trained on."""
        return self._candidates(query, models, call, (), {}, self.sources, self.weights)

    def _candidates(
        self,
        query: Query,
        models: Models,
        call: Call,
        blocked: Iterable[str],
        timings: dict[str, float],
        sources: Sequence[CandidateSource],
        weights: dict[str, float],
    ) -> tuple[Request, list[Candidate]]:
        request = Request(query, {}, models, call, [])
        with _stage("features", timings):
            if self.features is None:
                request.missing("online_store")
            else:
                got = request.attempt(
                    "online_store", self.features.context, query.user_id, query.session_id
                )
                request.features = dict(got or {})
                if (
                    not request.features.get(SESSION_ITEMS)
                    and "online_store" not in request.degraded
                ):
                    self._user_history(request)

        features = request.features
        request.blocked = set(query.exclude) | set(blocked)
        request.blocked |= {
            str(i) for i in features.get("session_features__last_purchased_items") or ()
        }
        catalog = self.snapshot.categories
        fetch = max(FETCH_MIN, 3 * query.k + len(request.blocked))
        survivors: list[Candidate] = []
        while True:
            with _stage("candidates", timings):
                merged: dict[str, Candidate] = {}
                more = False
                for source in sources:
                    pool = source.candidates(request, fetch)
                    more = more or pool.more
                    name = source.name
                    request.counts[name] = len(pool.pairs)
                    for place, (item, s) in enumerate(pool.pairs):
                        cand = merged.get(item)
                        if cand is None:
                            cand = merged[item] = Candidate(item)
                        if name not in cand.sources:
                            cand.ranks[name] = place
                        cand.sources[name] = max(cand.sources.get(name, 0.0), float(s))
            with _stage("filter", timings):
                blocked_items = request.blocked
                survivors = [
                    c
                    for c in merged.values()
                    if c.item_id not in blocked_items and (not catalog or c.item_id in catalog)
                ]
                for c in survivors:
                    c.category = catalog.get(c.item_id)
            # Over-fetch again only while a source can still give more than it gave.
            if len(survivors) >= 2 * query.k or not more or fetch >= OVERFETCH_MAX:
                break
            fetch = min(fetch * 4, OVERFETCH_MAX)
        with _stage("rank", timings):
            blend(survivors, weights)
        return request, survivors

    def _user_history(self, request: Request) -> None:
        """A request without session items takes the user's recent items as its context, so a
        returning shopper gets personal candidates from every source (the query tower too)."""
        assert self.features is not None
        got = request.attempt(
            "online_store", self.features.read, [USER_ITEMS], [{"user_id": request.query.user_id}]
        )
        items = ((got or {}).get(USER_ITEMS.replace(":", "__")) or [None])[0]
        if items:
            request.features[SESSION_ITEMS] = list(items)
            request.features["context"] = "user_history"


@contextmanager
def _stage(name: str, timings: dict[str, float]) -> Iterator[None]:
    t0 = time.perf_counter()
    try:
        yield
    finally:  # a stage may run more than once (over-fetch): its times add up
        timings[name] = timings.get(name, 0.0) + (time.perf_counter() - t0) * 1000


__all__ = ["DEFAULT_SOURCES", "Pipeline"]
