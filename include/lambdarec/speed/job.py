"""The speed-layer job as a program: its command line, its environment, and whether it runs.

The job is ``include/flink/speed_layer.py`` on the PyFlink venv's python, which starts a local
mini-cluster (or is shipped to a session cluster by ``flink run``). Whoever launches it (the
platform's ``speed-layer`` service, :mod:`lambdarec.speed.control` for a cluster, the test harness)
builds the command line here, and whoever waits for it asks the Flink REST API through
:func:`find_job` and :func:`speed_layer_running`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import requests

from lambdarec.speed.jars import flink_lib_dir, flink_python

if TYPE_CHECKING:
    from collections.abc import Iterable

    from lambdarec.config import Settings
    from lambdarec.streaming.kafka import TopicSpec

#: The job's ``pipeline.name`` (set by include/flink/speed_layer.py), how the REST API lists it.
JOB_NAME = "lambdarec-speed-layer"


def speed_layer_command(settings: Settings, *extra: str) -> list[str]:
    """The job's command line for these settings (tests and benches add options)."""
    return [
        str(flink_python(settings)),
        str(settings.home / "include" / "flink" / "speed_layer.py"),
        "--bootstrap-servers",
        settings.bootstrap_servers,
        "--events-topic",
        settings.topic_events,
        "--dead-letter-topic",
        settings.topic_dead_letter,
        "--features-topic",
        settings.topic_session_features,
        "--trending-topic",
        settings.topic_trending_items,
        "--archive-dir",
        str(settings.archive_dir),
        "--checkpoint-dir",
        settings.checkpoint_dir,
        "--state-backend",
        settings.flink_state_backend,
        "--dedup-ttl-s",
        str(settings.speed_dedup_ttl_s),
        "--parallelism",
        str(settings.flink_parallelism),
        "--jars",
        str(flink_lib_dir(settings)),
        "--rest-port",
        str(settings.flink_rest_port),
        *extra,
    ]


def speed_layer_env(settings: Settings) -> dict[str, str]:
    """JAVA_HOME (Java 17), a bounded heap, logs under the state folder (not inside the venv),
    and the Kafka login when there is one (the job reads it from the environment, never from
    its arguments, which the process list shows)."""
    heap = settings.flink_heap
    env = {
        "JAVA_HOME": str(settings.java_home),
        "JVM_ARGS": f"-Xms{heap} -Xmx{heap}",
        "FLINK_LOG_DIR": str(settings.log_dir / "flink"),
        "PYTHONUNBUFFERED": "1",
    }
    if settings.kafka_sasl_username:
        env.update(
            LAMBDAREC_KAFKA_SECURITY_PROTOCOL=settings.kafka_security_protocol,
            LAMBDAREC_KAFKA_SASL_MECHANISM=settings.kafka_sasl_mechanism,
            LAMBDAREC_KAFKA_SASL_USERNAME=settings.kafka_sasl_username,
            LAMBDAREC_KAFKA_SASL_PASSWORD=settings.kafka_sasl_password.get_secret_value(),
            LAMBDAREC_KAFKA_SSL_CA_LOCATION=settings.kafka_ssl_ca_location,
        )
    return env


def prepare_job(
    settings: Settings,
    *,
    checkpoint_dir: str,
    archive_dir: Path,
    topics: Iterable[TopicSpec] = (),
) -> None:
    """What a Flink job of the project needs before it starts (the speed layer's and the
    attribution's): the connector jars (:class:`~lambdarec.speed.jars.JarError` when they cannot
    be resolved), the Flink log folder, its checkpoint folder (when local), its archive folder,
    and the project's topics with ``topics`` besides."""
    from lambdarec.speed.jars import ensure_jars
    from lambdarec.streaming.kafka import ensure_topics

    ensure_jars(settings)
    (settings.log_dir / "flink").mkdir(parents=True, exist_ok=True)
    if "://" not in checkpoint_dir:
        Path(checkpoint_dir).mkdir(parents=True, exist_ok=True)
    archive_dir.mkdir(parents=True, exist_ok=True)
    ensure_topics(settings, extra=topics)


def alive_jobs(rest_url: str, name: str = JOB_NAME, timeout_s: float = 3.0) -> list[dict[str, Any]]:
    """Jobs called ``name`` that are not finished, from ``/jobs/overview`` (none if unreachable)."""
    try:
        jobs = requests.get(f"{rest_url}/jobs/overview", timeout=timeout_s).json().get("jobs", [])
    except (requests.RequestException, ValueError):
        return []
    return [
        j
        for j in jobs
        if j.get("name") == name and j.get("state") not in ("FINISHED", "CANCELED", "FAILED")
    ]


def find_job(rest_url: str, name: str = JOB_NAME) -> dict[str, Any] | None:
    """The newest job called ``name`` that is not finished (or None)."""
    alive = alive_jobs(rest_url, name)
    return max(alive, key=lambda j: j.get("start-time", 0)) if alive else None


def all_running(job: dict[str, Any] | None) -> bool:
    """Whether ``job`` (a ``/jobs/overview`` entry) is RUNNING with every task running."""
    if not job:
        return False
    tasks = job.get("tasks", {})
    return job.get("state") == "RUNNING" and tasks.get("running") == tasks.get("total")


def speed_layer_running(
    settings: Settings, port: int | None = None, timeout_s: float = 2.0
) -> bool:
    """Whether the mini-cluster's REST API (on ``port``, default the platform's; the session
    cluster's JobManager when ``flink_jobmanager`` names one) reports the job RUNNING with every
    task running: the platform's health check."""
    if settings.flink_jobmanager and port is None:
        rest_url = f"http://{settings.flink_jobmanager}"
    else:
        rest_url = f"http://{settings.bind_host}:{port or settings.flink_rest_port}"
    return any(all_running(j) for j in alive_jobs(rest_url, timeout_s=timeout_s))
