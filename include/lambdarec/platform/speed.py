"""The speed layer on the local platform: the Flink job on a mini-cluster (``speed-layer``), the
feature pusher that writes its topics into Feast's online store (``feature-pusher``), and the
online attribution job on a mini-cluster of its own (``attribution``).

Each Flink job runs on a local mini-cluster inside its own process (the PyFlink venv's python,
which starts the JVM): ``include/flink/speed_layer.py`` with the command line of
:mod:`lambdarec.speed.job`, ``include/flink/attribution.py`` with that of
:mod:`lambdarec.attribution`. Each resumes from its newest checkpoint (``<state_dir>/flink/
checkpoints`` and ``<state_dir>/flink/attribution-checkpoints``), so ``down`` + ``up`` continues
where it stopped, and runs under :mod:`lambdarec.platform.supervise`, which restarts it (from that
checkpoint) with exponential back-off whenever its process dies, so the local stream heals without
anyone watching. Their REST APIs (the Flink web UI) listen on loopback only.
:mod:`lambdarec.platform.speed_control` starts and stops the speed layer for the Airflow operator.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lambdarec.attribution import attribution_command, attribution_running
from lambdarec.attribution import prepare as prepare_attribution
from lambdarec.platform.base import PlatformError, Service, venv_bin
from lambdarec.speed.job import (
    prepare_job,
    speed_layer_command,
    speed_layer_env,
    speed_layer_running,
)
from lambdarec.speed.pusher import is_healthy, speed_topics

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from lambdarec.config import Settings

#: The services that make the local speed layer: the job and what pushes its output to Feast.
SPEED_LAYER = ("speed-layer", "feature-pusher")


def _prepared(prepare: Callable[[], None]) -> Callable[[], None]:
    """``prepare`` with a connector-jar problem turned into the platform's error."""

    def run() -> None:
        from lambdarec.speed.jars import JarError

        try:
            prepare()
        except JarError as error:
            raise PlatformError(str(error)) from None

    return run


def flink_job_service(
    settings: Settings,
    *,
    name: str,
    title: str,
    port: int,
    port_field: str,
    command: Sequence[str],
    health: Callable[[], bool],
    prepare: Callable[[], None],
) -> Service:
    """A Flink job on its own local mini-cluster, run by the supervisor (restarted from its newest
    checkpoint when its process dies), its REST API and web UI on ``port`` (loopback)."""
    return Service(
        name=name,
        title=title,
        ports={port: port_field},
        url=f"http://{settings.bind_host}:{port}",
        health=health,
        command=[
            str(venv_bin() / "python"),
            "-m",
            "lambdarec.platform.supervise",
            "--name",
            name,
            "--",
            *command,
        ],
        env=speed_layer_env(settings),
        cwd=settings.state_dir / "flink",
        requires=("kafka",),
        prepare=_prepared(prepare),
        stop_timeout_s=30.0,
    )


def speed_layer(settings: Settings) -> Service:
    """The speed layer on its supervised mini-cluster; with ``LAMBDAREC_FLINK_JOBMANAGER`` set, a
    reserved row for the job on that session cluster, where the ``speed_layer`` DAG submits it
    (``up`` starts no mini-cluster beside it, ``status`` asks the JobManager whether it runs)."""
    if settings.flink_jobmanager:
        return Service(
            name="speed-layer",
            title="Flink speed layer (session cluster: LAMBDAREC_FLINK_JOBMANAGER)",
            ports={},
            url=f"http://{settings.flink_jobmanager}",
            health=lambda: speed_layer_running(settings),
            external=True,
        )
    return flink_job_service(
        settings,
        name="speed-layer",
        title="Flink speed layer (mini-cluster)",
        port=settings.flink_rest_port,
        port_field="flink_rest_port",
        command=speed_layer_command(settings),
        health=lambda: speed_layer_running(settings),
        prepare=lambda: prepare_job(
            settings,
            checkpoint_dir=settings.checkpoint_dir,
            archive_dir=settings.archive_dir,
            topics=speed_topics(settings),
        ),
    )


def attribution(settings: Settings) -> Service:
    """The online attribution job (:mod:`lambdarec.attribution`): clicks joined to the
    impressions that showed them, into the attributed topic and the lake's archive."""
    return flink_job_service(
        settings,
        name="attribution",
        title="Flink attribution (events x impressions; mini-cluster)",
        port=settings.attribution_rest_port,
        port_field="attribution_rest_port",
        command=attribution_command(settings),
        health=lambda: attribution_running(settings),
        prepare=lambda: prepare_attribution(settings),
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
