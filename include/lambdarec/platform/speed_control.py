"""Start and stop the local speed layer (the job on its mini-cluster and the feature pusher): what
the Airflow operator does for the ``local`` target, through the platform manager.

The job on a Flink session cluster is :mod:`lambdarec.speed.control`'s; both share the job's
command line (:mod:`lambdarec.speed.job`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lambdarec.platform import manager
from lambdarec.platform.speed import SPEED_LAYER

if TYPE_CHECKING:
    from lambdarec.config import Settings


def start_local(settings: Settings, timeout_s: float) -> None:
    """Start the speed layer's services (and Kafka, Redis they require); returns once healthy."""
    manager.up(list(SPEED_LAYER), settings=settings, timeout_s=timeout_s)


def stop_local(settings: Settings) -> bool:
    """Stop the job's service, which keeps its checkpoints for the next start (the pusher stays:
    it idles without new output); returns whether it was running."""
    return "speed-layer" in manager.down(["speed-layer"], settings=settings)
