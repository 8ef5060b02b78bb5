"""What flows through the pipeline: the query, candidates, the result, and what it calls.

A *part* is a dependency the pipeline calls (``online_store``, ``index``, ``model``, ``ranker``);
every call goes through a :data:`Call`, which the caller chooses: serving passes its guards
(timeouts, back-off), evaluation calls directly. A part that cannot answer raises
:class:`PartUnavailable`; the pipeline then lists it in ``degraded_parts`` and goes on without it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    import numpy as np

T = TypeVar("T")


class PartUnavailable(RuntimeError):
    """A part is absent, failed, timed out or is backing off; the request degrades without it."""


class Call(Protocol):
    """How the pipeline calls a part: ``call(part, fn, *args)`` returns ``fn(*args)`` or raises
    :class:`PartUnavailable`."""

    def __call__(self, part: str, fn: Callable[..., T], /, *args: Any) -> T: ...


def direct_call(part: str, fn: Callable[..., T], /, *args: Any) -> T:
    """Call the part as is (offline evaluation): a failure is a failure, not a degradation."""
    return fn(*args)


@dataclass(frozen=True)
class Query:
    """One request: who, in which session, how many items, which ones never."""

    user_id: str
    session_id: str | None
    k: int
    exclude: tuple[str, ...] = ()


@dataclass
class Candidate:
    item_id: str
    #: source -> normalised score in [0, 1]
    sources: dict[str, float] = field(default_factory=dict)
    #: source -> the candidate's place in that source's list (0 = its first)
    ranks: dict[str, int] = field(default_factory=dict)
    category: str | None = None
    #: The sources' scores weighted by each source's blend weight (the ranking without a ranker).
    blend: float = 0.0
    #: The source that contributed most to ``blend``.
    source: str = ""
    score: float = 0.0
    contributions: dict[str, float] = field(default_factory=dict)


@dataclass
class Recommendation:
    items: list[Candidate]
    degraded_parts: list[str]
    features: dict[str, Any]
    timings_ms: dict[str, float]
    #: How many candidates each source gave (before the filters): which sources answered.
    candidates: dict[str, int] = field(default_factory=dict)
    #: Every candidate that passed the filters, ranked (the evaluation's candidate statistics).
    pool: list[Candidate] = field(default_factory=list, repr=False)

    @property
    def degraded(self) -> bool:
        return bool(self.degraded_parts)


class FeatureReader(Protocol):
    """The online feature store as the pipeline reads it."""

    def context(self, user_id: str, session_id: str | None) -> dict[str, Any]:
        """The request's features (the ``retrieval_v1`` service), named ``view__feature``."""
        ...

    def read(self, refs: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> dict[str, list[Any]]:
        """Columns ``view__feature`` of ``refs`` (``view:feature``) for entity ``rows``."""
        ...


class VectorSearch(Protocol):
    """A vector index: the ``k`` nearest items of each query vector, best first."""

    def search(
        self, vectors: np.ndarray, k: int, timeout_s: float | None = None
    ) -> list[list[tuple[str, float]]]: ...


class QueryEncoder(Protocol):
    def encode(self, features: dict[str, Any]) -> np.ndarray: ...


class Ranker(Protocol):
    """Scores one request's candidates: per item (score, {feature: contribution}).

    ``source_scores`` and ``source_ranks`` are (candidates x ``sources``): what each of the
    ranker's sources said of each candidate, NaN where it did not propose it."""

    @property
    def sources(self) -> Sequence[str]: ...

    def score(
        self,
        features: Mapping[str, Any],
        item_ids: Sequence[str],
        categories: Sequence[str | None],
        source_scores: np.ndarray,
        source_ranks: np.ndarray,
    ) -> list[tuple[float, dict[str, float]]]: ...


@dataclass(frozen=True)
class Models:
    """The query tower and the ranker of one champion: swapped together, by one assignment."""

    encoder: QueryEncoder | None = None
    ranker: Ranker | None = None
    #: The two-tower's registry version: the index version the query tower may search (None:
    #: unknown, e.g. a pinned folder outside a run folder).
    version: str | None = None
