"""The speed layer on the local platform: the Flink job on a mini-cluster (``speed-layer``) and the
feature pusher that writes its topics into Feast's online store (``feature-pusher``).

The job runs on a local mini-cluster inside its own process (the PyFlink venv's python, which
starts the JVM): ``include/flink/speed_layer.py``, with the command line of
:mod:`lambdarec.speed.job`. It resumes from its newest checkpoint under
``<state_dir>/flink/checkpoints``, so ``down`` + ``up`` continues where it stopped. The job runs
under :mod:`lambdarec.platform.supervise`, which restarts it (from that checkpoint) with
exponential back-off whenever its process dies, so the local stream heals without anyone watching.
:mod:`lambdarec.platform.speed_control` starts and stops the pair for the Airflow operator.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from lambdarec.platform.base import PlatformError, Service, venv_bin
from lambdarec.speed.job import speed_layer_command, speed_layer_env, speed_layer_running
from lambdarec.speed.pusher import is_healthy, speed_topics

if TYPE_CHECKING:
    from lambdarec.config import Settings

#: The services that make the local speed layer: the job and what pushes its output to Feast.
SPEED_LAYER = ("speed-layer", "feature-pusher")


def _speed_layer_prepare(settings: Settings) -> None:
    from lambdarec.speed.jars import JarError, ensure_jars
    from lambdarec.streaming.kafka import ensure_topics

    try:
        ensure_jars(settings)
    except JarError as error:
        raise PlatformError(str(error)) from None
    (settings.log_dir / "flink").mkdir(parents=True, exist_ok=True)
    if "://" not in settings.checkpoint_dir:
        Path(settings.checkpoint_dir).mkdir(parents=True, exist_ok=True)
    settings.archive_dir.mkdir(parents=True, exist_ok=True)
    ensure_topics(settings, extra=speed_topics(settings))


def speed_layer(settings: Settings) -> Service:
    port = settings.flink_rest_port
    return Service(
        name="speed-layer",
        title="Flink speed layer (mini-cluster)",
        ports={port: "flink_rest_port"},
        url=f"http://{settings.bind_host}:{port}",
        health=lambda: speed_layer_running(settings),
        command=[
            str(venv_bin() / "python"),
            "-m",
            "lambdarec.platform.supervise",
            "--name",
            "speed-layer",
            "--",
            *speed_layer_command(settings),
        ],
        env=speed_layer_env(settings),
        cwd=settings.state_dir / "flink",
        requires=("kafka",),
        prepare=lambda: _speed_layer_prepare(settings),
        stop_timeout_s=30.0,
    )


def _pusher_prepare(settings: Settings) -> None:
    """The topics, and the push views in the registry: applied unless both are there (the
    registry file alone proves nothing: opening the store creates it empty, and a pusher
    started on an empty registry had every push refused, retried for ever)."""
    from lambdarec.features.store import apply, missing_views
    from lambdarec.streaming.kafka import ensure_topics
    from lambdarec.tables import SPEED_TABLES

    ensure_topics(settings, extra=speed_topics(settings))
    if missing_views([table.name for table in SPEED_TABLES], settings):
        apply(settings)


def feature_pusher(settings: Settings) -> Service:
    requires = ("kafka", "redis") if settings.online_store == "redis" else ("kafka",)
    return Service(
        name="feature-pusher",
        title=f"Feature pusher (speed-layer topics -> Feast online, {settings.online_store})",
        ports={},
        url=settings.topic_session_features,
        health=lambda: is_healthy(settings),
        command=[str(venv_bin() / "python"), "-m", "lambdarec.speed.pusher"],
        env={"PYTHONUNBUFFERED": "1"},
        cwd=settings.state_dir,
        requires=requires,
        prepare=lambda: _pusher_prepare(settings),
        stop_timeout_s=15.0,
    )
