"""What the blueprints share, kept on ``app.extensions["lambdarec"]`` by the app factory."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from flask import current_app

if TYPE_CHECKING:
    from lambdarec.config import Settings
    from serving.ab import LiveVariants, Variants
    from serving.champion import VariantRanker
    from serving.metrics import Metrics
    from serving.recommender import Recommender
    from serving.sessions import SessionOwners
    from serving.sinks import EventSink, ImpressionSink

EXTENSION = "lambdarec"


@dataclass
class ServingState:
    settings: Settings
    recommender: Recommender
    metrics: Metrics
    variants: Variants | LiveVariants
    impressions: ImpressionSink
    events: EventSink
    sessions: SessionOwners
    #: The A/B variants ranked by their own model (``LAMBDAREC_AB_RANKERS``), by variant.
    rankers: dict[str, VariantRanker] = field(default_factory=dict)


def state() -> ServingState:
    value: ServingState = current_app.extensions[EXTENSION]
    return value
