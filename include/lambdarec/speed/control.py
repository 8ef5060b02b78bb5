"""Start, find, cancel and watch the speed-layer job: the logic behind the Airflow operator and the
``speed_layer`` DAG.

Two targets, chosen by configuration (``LAMBDAREC_FLINK_JOBMANAGER``, or the Airflow connection
``flink_default`` whose host is ``local`` or a JobManager's REST ``host:port``):

* **local**: the PyFlink mini-cluster, which is the local platform's ``speed-layer`` service (plus
  the ``feature-pusher``). The core does not start local services: the caller passes the
  platform's launcher (:func:`lambdarec.platform.speed.start_local`) as ``start``, as the Airflow
  operator does;
* **a Flink session cluster**: :func:`submit` runs ``flink run -m host:port -d -py
  include/flink/speed_layer.py`` with the same job file and options (the connector jars travel as
  ``pipeline.jars``); :func:`cancel` cancels the job through the REST API.

:func:`consumer_lag` reads how far the job's consumer group is behind the events topic (committed
offsets, which the job commits on each checkpoint, against the partitions' high watermarks) and
how many events sit on the dead-letter topic.
"""

from __future__ import annotations

import logging
import subprocess
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import requests

from lambdarec.speed.job import all_running, find_job, speed_layer_command, speed_layer_env

if TYPE_CHECKING:
    from collections.abc import Callable

    from lambdarec.config import Settings

log = logging.getLogger(__name__)

GROUP_ID = "lambdarec-speed-layer"
LOCAL = "local"
_LOCAL_IS_THE_PLATFORMS = (
    "the local mini-cluster is the platform's speed-layer service: start or stop it with "
    "`lambdarec platform up|down speed-layer` (lambdarec.platform.speed)"
)


class SpeedLayerError(RuntimeError):
    """The job could not be started, found or cancelled; the message says why and what to do."""


@dataclass(frozen=True)
class Target:
    """Where the job runs: ``local`` or a JobManager REST address ``host:port``."""

    jobmanager: str = LOCAL

    @classmethod
    def parse(cls, value: str | None) -> Target:
        text = (value or "").strip().removeprefix("http://").rstrip("/")
        if not text or text == LOCAL:
            return cls(LOCAL)
        host, sep, port = text.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise SpeedLayerError(
                f"Flink JobManager {value!r} is not 'local' or host:port (its REST port, e.g. "
                "flink-jobmanager:8081); fix LAMBDAREC_FLINK_JOBMANAGER or the flink_default "
                "connection's host and port"
            )
        return cls(text)

    @property
    def local(self) -> bool:
        return self.jobmanager == LOCAL

    def rest_url(self, settings: Settings) -> str:
        if self.local:
            return f"http://{settings.bind_host}:{settings.flink_rest_port}"
        return f"http://{self.jobmanager}"


@dataclass(frozen=True)
class JobInfo:
    job_id: str
    state: str
    target: str
    submitted: bool
    rest_url: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def wait_running(rest_url: str, timeout_s: float) -> dict[str, Any]:
    began = time.monotonic()
    while True:
        job = find_job(rest_url)
        if all_running(job):
            assert job is not None
            return job
        if time.monotonic() - began > timeout_s:
            state = job.get("state") if job else "not found"
            raise SpeedLayerError(
                f"the speed layer is not running at {rest_url} after {timeout_s:.0f} s (job "
                f"{state}); see its log (`lambdarec platform logs speed-layer`) or the Flink UI"
            )
        time.sleep(1)


def submit(settings: Settings, target: Target) -> None:
    """``flink run`` the job, detached, on the session cluster ``target``."""
    from lambdarec.speed.jars import flink_venv

    if target.local:
        raise SpeedLayerError(_LOCAL_IS_THE_PLATFORMS)
    command = speed_layer_command(settings)  # [python, job.py, options...]
    flink = next(flink_venv(settings).glob("lib/python3*/site-packages/pyflink/bin/flink"), None)
    if flink is None:
        raise SpeedLayerError("no flink CLI in the PyFlink venv; run `make setup`")
    options = list(command[2:])
    if "--rest-port" in options:  # the mini-cluster's option; a cluster has its own
        i = options.index("--rest-port")
        del options[i : i + 2]
    argv = [
        str(flink),
        "run",
        "-m",
        target.jobmanager,
        "-d",
        "-pyexec",
        command[0],
        # The client side runs the job file too (it builds the plan): without this the CLI
        # looks for a `python` on PATH, which has no PyFlink (or is not there at all).
        "-pyclientexec",
        command[0],
        "-py",
        command[1],
        *options,
        "--detached",
    ]
    env = {**speed_layer_env(settings), "PATH": "/usr/bin:/bin"}
    log.info("submitting the speed layer to %s", target.jobmanager)
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300, check=False)  # noqa: S603
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-20:])
        raise SpeedLayerError(f"flink run failed against {target.jobmanager}:\n{tail}")


def ensure_running(
    settings: Settings, target: Target, timeout_s: float = 300.0, *, start: Callable[[], None]
) -> JobInfo:
    """The job running on ``target``, launched by ``start`` if it is not there (the cluster's:
    :func:`submit`; the local mini-cluster's: the platform's); waits until every task runs."""
    rest = target.rest_url(settings)
    job = find_job(rest)
    submitted = False
    if not all_running(job):
        if job is None:
            submitted = True
            start()
        job = wait_running(rest, timeout_s)
    assert job is not None
    info = JobInfo(str(job["jid"]), str(job["state"]), target.jobmanager, submitted, rest)
    log.info("speed layer %s on %s (%s)", info.state, target.jobmanager, info.job_id)
    return info


def cancel(settings: Settings, target: Target, job_id: str | None = None) -> bool:
    """Cancel the job on the session cluster ``target``; returns whether one was found to cancel.

    The local job is the platform's service: stopping it
    (:func:`lambdarec.platform.speed.stop_local`) keeps its checkpoints for the next start.
    """
    if target.local:
        raise SpeedLayerError(_LOCAL_IS_THE_PLATFORMS)
    rest = target.rest_url(settings)
    job_id = job_id or (find_job(rest) or {}).get("jid")
    if not job_id:
        return False
    response = requests.patch(f"{rest}/jobs/{job_id}", params={"mode": "cancel"}, timeout=10)
    if response.status_code not in (200, 202):
        raise SpeedLayerError(f"cancelling {job_id} at {rest}: HTTP {response.status_code}")
    return True


def consumer_lag(settings: Settings, group: str = GROUP_ID) -> dict[str, Any]:
    """Events the job has not yet committed, per partition and in total."""
    from confluent_kafka import TopicPartition

    from lambdarec.streaming.kafka import committed_offsets, probe_consumer

    topic = settings.topic_events
    with probe_consumer(settings, group) as consumer:
        meta = consumer.list_topics(topic, timeout=10).topics.get(topic)
        if meta is None or meta.error is not None:
            raise SpeedLayerError(f"topic {topic} not found at {settings.bootstrap_servers}")
        per: dict[str, int] = {}
        for partition, offset in committed_offsets(
            consumer, topic, sorted(meta.partitions)
        ).items():
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
            done = offset if offset >= 0 else low
            per[str(partition)] = max(0, high - done)
    from lambdarec.streaming.kafka import topic_size

    return {
        "group": group,
        "topic": topic,
        "lag": sum(per.values()),
        "partitions": per,
        # Every invalid event the job (and the producers) rejected, with its reason, is there.
        "dead_letters": topic_size(settings, settings.topic_dead_letter),
    }
