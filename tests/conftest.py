"""Shared fixtures: real engines found or started by the tests themselves, and small datasets."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import pytest

# TFRS needs the legacy Keras; every process that may import TensorFlow sets this first.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

if TYPE_CHECKING:
    from collections.abc import Iterator

    import pandas as pd

    from lambdarec.config import Settings


@pytest.fixture(scope="session")
def kafka_settings() -> Iterator[Settings]:
    """A real Kafka broker: the configured one if it answers, else a private throwaway broker."""
    from lambdarec.platform.testing import kafka_broker
    from lambdarec.streaming.kafka import ensure_topics

    with kafka_broker() as settings:
        ensure_topics(settings)
        yield settings


@pytest.fixture(scope="session")
def small_events() -> pd.DataFrame:
    """About 20k seeded synthetic events in the canonical table, in event-time order."""
    from lambdarec.data.generator import GeneratorConfig, generate_events

    return generate_events(GeneratorConfig(n_users=500, n_items=2000, n_categories=40, days=3,
                                           n_events=20_000, seed=11))
