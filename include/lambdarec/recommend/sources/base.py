"""What every candidate source is given and gives back.

A source is built once per pipeline from the :class:`Stores` (the feature reader, the vector
index, the lake snapshot) and asked per request for up to ``fetch`` items with a score in [0, 1],
best first. It reads the request through :class:`Request` (the query, its online features, the
models of this request) and calls any dependency through :meth:`Request.attempt`, which lists a
part that cannot answer as degraded instead of failing the request.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from lambdarec.recommend.types import PartUnavailable

if TYPE_CHECKING:
    from collections.abc import Callable

    from lambdarec.recommend.snapshot import Snapshot
    from lambdarec.recommend.types import Call, FeatureReader, Models, Query, VectorSearch

T = TypeVar("T")

#: How many of the session's recent items (newest first) the sources look at.
RECENT_ITEMS = 5


@dataclass(frozen=True)
class Stores:
    """The dependencies sources are built with; any may be absent (the part then degrades)."""

    snapshot: Snapshot
    features: FeatureReader | None = None
    index: VectorSearch | None = None


@dataclass
class Request:
    """One request as the sources see it."""

    query: Query
    #: The online features (``view__feature``); empty when the store did not answer.
    features: dict[str, Any]
    models: Models
    call: Call
    #: Parts that could not answer, in the order they failed (the response lists them).
    degraded: list[str]
    #: Items that must not be recommended (excluded, purchased).
    blocked: set[str] = field(default_factory=set)
    #: How many candidates each source gave in the last round (the response's ``candidates``).
    counts: dict[str, int] = field(default_factory=dict)
    #: Per-request results a source keeps between over-fetch rounds.
    memo: dict[str, Any] = field(default_factory=dict)

    @property
    def recent(self) -> list[str]:
        """The session's most recently viewed items, newest first."""
        items = self.features.get("session_features__last_viewed_items") or ()
        return [str(i) for i in items if i is not None][:RECENT_ITEMS]

    def missing(self, part: str) -> None:
        """Record ``part`` as degraded (absent or failed), once."""
        if part not in self.degraded:
            self.degraded.append(part)

    def attempt(self, part: str, fn: Callable[..., T], *args: Any) -> T | None:
        """``fn(*args)`` through the request's call; None (and ``part`` degraded) on failure."""
        try:
            return self.call(part, fn, *args)
        except PartUnavailable:
            self.missing(part)
            return None


@dataclass
class Pool:
    """A source's answer: (item_id, score in [0, 1]) best first; ``more``: a larger ``fetch``
    would give more items (the pipeline asks again when too few survive the filters)."""

    pairs: list[tuple[str, float]]
    more: bool = False


class CandidateSource(Protocol):
    #: The name responses and metrics use (the registry's key).
    name: str
    #: Weight of this source's score in the blend that ranks without a ranker.
    weight: float

    def candidates(self, request: Request, fetch: int) -> Pool: ...


class SourceFactory(Protocol):
    def __call__(self, stores: Stores) -> CandidateSource: ...
