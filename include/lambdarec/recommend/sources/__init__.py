"""Candidate sources, one module each, and the registry the configuration selects from.

A new source is one new module (a class with ``name``, ``weight`` and ``candidates(request,
fetch)``, built from the :class:`~lambdarec.recommend.sources.base.Stores`) plus its line in
:data:`REGISTRY` (or a :func:`register` call); ``LAMBDAREC_CANDIDATE_SOURCES`` lists the sources a
pipeline runs, in order.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lambdarec.recommend.sources.cooccurrence import CoOccurrenceSource
from lambdarec.recommend.sources.popular import PopularSource
from lambdarec.recommend.sources.sequential_rules import SequentialRulesSource
from lambdarec.recommend.sources.session_knn import SessionKnnSource
from lambdarec.recommend.sources.trending import TrendingSource
from lambdarec.recommend.sources.vector import VectorSource

if TYPE_CHECKING:
    from collections.abc import Sequence

    from lambdarec.recommend.sources.base import CandidateSource, SourceFactory, Stores

REGISTRY: dict[str, SourceFactory] = {
    "vector": VectorSource,
    "cooccurrence": CoOccurrenceSource,
    "trending": TrendingSource,
    "popular": PopularSource,
    "sequential_rules": SequentialRulesSource,
    "session_knn": SessionKnnSource,
}


def register(name: str, factory: SourceFactory) -> None:
    """Make ``factory`` selectable as ``name`` (a plug-in's source)."""
    REGISTRY[name] = factory


def build_sources(names: Sequence[str], stores: Stores) -> list[CandidateSource]:
    """The sources ``names`` lists, built in that order; an unknown name is a ValueError naming
    the setting and the choices."""
    unknown = [n for n in names if n not in REGISTRY]
    if unknown or not names:
        raise ValueError(
            f"LAMBDAREC_CANDIDATE_SOURCES names {unknown or 'no source'}; choose from "
            f"{', '.join(REGISTRY)} (comma-separated, in order)"
        )
    return [REGISTRY[name](stores) for name in names]
