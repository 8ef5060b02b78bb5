"""Policies: the named ways one :class:`~lambdarec.recommend.pipeline.Pipeline` can run.

A policy chooses the candidate sources and whether the ranker orders the list; the features,
the exclusions (the query's, the caller's, the session's purchases), the catalog filter and the
business rules are the pipeline's, whatever the policy. Serving runs the policy of a user's A/B
variant (``LAMBDAREC_AB_POLICIES``), so a variant can serve a baseline beside the model; an
offline evaluation can run the same policies through the same pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Policy:
    name: str
    #: The candidate sources it runs, by registry name (None: the pipeline's own, in order).
    sources: tuple[str, ...] | None = None
    #: Whether the ranker orders the list; False: the blend of the sources' scores, and a
    #: missing ranker is not a degradation.
    ranked: bool = True

    @property
    def serves_model(self) -> bool:
        """Whether its lists come from the trained models (the two-tower's retrieval among the
        pipeline's sources, or the ranker): an A/B variant running it serves the champion."""
        return self.sources is None or self.ranked


#: What ``/recommend`` serves unless a variant's policy says otherwise.
PIPELINE = "pipeline"

POLICIES: dict[str, Policy] = {
    p.name: p
    for p in (
        # Every configured source, the ranker (DeepFM) when loaded, the rules.
        Policy(PIPELINE),
        # Every configured source ranked by the blend of their own scores: the ranker's lift.
        Policy("no_ranker", ranked=False),
        # The popularity baseline: the lake's popular items, same exclusions and rules.
        Policy("popular", ("popular",), ranked=False),
    )
}


def policy(name: str) -> Policy:
    """The policy called ``name``; an unknown name is a ValueError listing the policies."""
    found = POLICIES.get(name)
    if found is None:
        raise ValueError(f"unknown policy {name!r}; choose from {', '.join(POLICIES)}")
    return found


__all__ = ["PIPELINE", "POLICIES", "Policy", "policy"]
