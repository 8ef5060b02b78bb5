"""The speed layer on a Flink session cluster on loopback, and the TaskManager-loss drill (#25).

:func:`loopback_flink` starts :class:`lambdarec.platform.flink_cluster.FlinkCluster` (one
JobManager, ``taskmanagers`` one-slot TaskManagers, free ports) next to a Kafka cluster, with
settings that name it as the JobManager (``LAMBDAREC_FLINK_JOBMANAGER``, what the Airflow
connection ``flink_default`` is made of) and run the job at ``LAMBDAREC_FLINK_PARALLELISM``.
:func:`submit_speed_layer` runs the ``speed_layer`` DAG's operator, which submits the job there
through ``flink_default`` (:func:`lambdarec.speed.control.ensure_running` with
:func:`~lambdarec.speed.control.submit`). :func:`taskmanager_loss_drill` replays events through
the project's producer while the job runs, SIGKILLs one TaskManager once a checkpoint is complete,
and starts a replacement in its place (what compose's ``restart: unless-stopped`` or a Kubernetes
Deployment does: parallelism 2 on one-slot TaskManagers needs both again). The job must go
RESTARTING, restore the latest checkpoint (REST ``latest.restored``) and run again; afterwards
every event must be counted in the session features topic (the sink is at-least-once: a session's
features may be written twice, its counts never go short).
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import requests

from lambdarec.harness.kafka_cluster import read_from_start
from lambdarec.harness.platform import free_ports, link_shared, private_settings
from lambdarec.harness.waiting import eventually
from lambdarec.platform.airflow import airflow_process_env
from lambdarec.platform.flink_cluster import FlinkCluster

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    import pandas as pd

    from lambdarec.config import Settings
    from lambdarec.speed.control import JobInfo


def link_flink_jars(settings: Settings) -> None:
    """The resolved connector and UDF jars (the shared state folder's) in ``settings``' folder."""
    from lambdarec.config import get_settings
    from lambdarec.speed.jars import ensure_jars, flink_lib_dir

    link_shared(ensure_jars(get_settings()), flink_lib_dir(settings))


@contextlib.contextmanager
def loopback_flink(
    state_dir: Path, bootstrap: str, *, taskmanagers: int = 2, parallelism: int = 2
) -> Iterator[FlinkCluster]:
    """A running session cluster under ``state_dir`` whose settings (``cluster.settings``) are a
    private platform's there, pointed at the Kafka cluster ``bootstrap`` and at the cluster."""
    rest, rpc, blob, *tm_ports = free_ports(3 + taskmanagers)
    settings = private_settings(
        state_dir,
        kafka_bootstrap=bootstrap,
        topic_replication=len(bootstrap.split(",")),
        flink_jobmanager=f"127.0.0.1:{rest}",
        flink_parallelism=parallelism,
    )
    link_flink_jars(settings)
    cluster = FlinkCluster(
        settings,
        state_dir / "flink-cluster",
        rest_port=rest,
        rpc_port=rpc,
        blob_port=blob,
        taskmanager_ports=tm_ports,
        checkpoint_dir=settings.checkpoint_dir,
    )
    with cluster:
        yield cluster


#: What an Airflow worker runs for the ``speed_layer`` DAG's task, minus the scheduler.
_RUN_OPERATOR = """
import json, sys
from lambdarec_airflow.flink import SpeedLayerOperator
info = SpeedLayerOperator(task_id="speed_layer", start_timeout_s=float(sys.argv[1])).execute({})
print("LAMBDAREC_SPEED_JOB " + json.dumps(info))
"""


def submit_speed_layer(settings: Settings, timeout_s: float = 300.0) -> JobInfo:
    """The speed layer running on ``settings.flink_jobmanager``, submitted by the DAG's operator
    (``SpeedLayerOperator``, target from the ``flink_default`` connection) in a subprocess with
    the environment the platform gives Airflow's tasks."""
    from lambdarec.speed.control import JobInfo, SpeedLayerError
    from lambdarec.speed.job import prepare_job
    from lambdarec.speed.pusher import speed_topics

    prepare_job(
        settings,
        checkpoint_dir=settings.checkpoint_dir,
        archive_dir=settings.archive_dir,
        topics=speed_topics(settings),
    )
    done = subprocess.run(  # noqa: S603 - our own interpreter and program
        [sys.executable, "-c", _RUN_OPERATOR, str(timeout_s)],
        env=airflow_process_env(settings),
        capture_output=True,
        text=True,
        timeout=timeout_s + 60,
        check=False,
    )
    for line in reversed(done.stdout.splitlines()):
        if line.startswith("LAMBDAREC_SPEED_JOB "):
            return JobInfo(**json.loads(line.removeprefix("LAMBDAREC_SPEED_JOB ")))
    tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-30:])
    raise SpeedLayerError(f"the speed_layer operator did not start the job:\n{tail}")


def job_details(rest_url: str, job_id: str) -> dict[str, Any]:
    details: dict[str, Any] = requests.get(f"{rest_url}/jobs/{job_id}", timeout=5).json()
    return details


def job_parallelism(rest_url: str, job_id: str) -> int:
    """The highest parallelism among the job's vertices (the source's is the job's)."""
    return max(v["parallelism"] for v in job_details(rest_url, job_id)["vertices"])


def checkpoints(rest_url: str, job_id: str) -> dict[str, Any]:
    stats: dict[str, Any] = requests.get(f"{rest_url}/jobs/{job_id}/checkpoints", timeout=5).json()
    return stats


def _all_running(rest_url: str, job_id: str) -> bool:
    details = job_details(rest_url, job_id)
    counts = details.get("status-counts", {})
    total = sum(counts.values())
    return details.get("state") == "RUNNING" and counts.get("RUNNING", 0) == total > 0


@dataclass
class TaskManagerDrill:
    produced: int
    sessions: int
    events_lost: int
    #: Events counted more than once in their session's features (should be 0: state restored).
    double_counted: int
    killed_taskmanager: int
    killed_after_s: float
    #: Checkpoints completed before the kill.
    checkpoints_before: int
    #: The job's states seen while it came back (its RESTARTING timestamp is checked).
    states_seen: list[str]
    #: Seconds from the kill until every task ran again.
    restart_seconds: float
    restored_checkpoint: int | None
    replay_seconds: float


def read_events(settings: Settings) -> list[dict[str, Any]]:
    """Every event on the events topic from the start (read_committed), distinct by id."""
    import orjson

    by_id: dict[str, dict[str, Any]] = {}
    for msg in read_from_start(settings, settings.topic_events):
        event = orjson.loads(msg.value() or b"{}")
        by_id.setdefault(str(event.get("event_id")), event)
    return list(by_id.values())


def counted_per_session(settings: Settings) -> dict[str, int]:
    """Per session, the most events its features on the features topic ever counted."""
    import orjson

    counted: dict[str, int] = {}
    for msg in read_from_start(settings, settings.topic_session_features):
        if msg.value() is None:
            continue
        row = orjson.loads(msg.value() or b"{}")
        n = sum(int(row.get(k) or 0) for k in ("n_views", "n_carts", "n_removes", "n_purchases"))
        key = (msg.key() or b"").decode()
        counted[key] = max(counted.get(key, 0), n)
    return counted


def wait_caught_up(settings: Settings, timeout_s: float) -> None:
    """Until the job's group has committed every event (it commits on checkpoints)."""
    from lambdarec.speed.control import consumer_lag

    eventually(
        lambda: consumer_lag(settings)["lag"] == 0,
        timeout_s,
        interval_s=1.0,
        message="the speed layer to commit every event (consumer lag 0)",
    )


def taskmanager_loss_drill(
    cluster: FlinkCluster,
    job_id: str,
    events: pd.DataFrame,
    *,
    rate: float,
    victim: int = 1,
    timeout_s: float = 300.0,
) -> TaskManagerDrill:
    """Replay ``events`` at ``rate`` events/s; once a checkpoint is complete (and before the
    replay's end) SIGKILL TaskManager ``victim``, start its replacement, and check the job comes
    back from that checkpoint with every event counted."""
    from lambdarec.streaming.replay import replay

    settings = cluster.settings
    rest = cluster.rest_url
    span_s = len(events) / rate
    frame = events.sort_values("ts", kind="stable").reset_index(drop=True)
    real_span = (frame["ts"].iloc[-1] - frame["ts"].iloc[0]).total_seconds() or 1.0
    outcome: list[Any] = []
    replayer = threading.Thread(
        target=lambda: outcome.append(
            replay([frame], settings=settings, speed=real_span / span_s, progress=False)
        ),
        daemon=True,
    )
    began = time.monotonic()
    replayer.start()
    eventually(
        lambda: checkpoints(rest, job_id).get("counts", {}).get("completed", 0) >= 1,
        timeout_s,
        interval_s=0.5,
        message=f"a completed checkpoint of job {job_id}",
    )
    before = int(checkpoints(rest, job_id)["counts"]["completed"])
    if not replayer.is_alive():
        raise RuntimeError(
            f"the replay ({span_s:.0f} s) ended before the first checkpoint: raise the events"
        )
    cluster.kill_taskmanager(victim)
    killed = time.monotonic()
    killed_after = killed - began
    cluster.start_taskmanager(victim)
    seen: set[str] = set()

    def running_again() -> bool:
        details = job_details(rest, job_id)
        seen.add(str(details.get("state")))
        restarting = details.get("timestamps", {}).get("RESTARTING", 0) / 1000
        return restarting > time.time() - (time.monotonic() - killed) and _all_running(rest, job_id)

    eventually(
        running_again,
        timeout_s,
        interval_s=0.2,
        message=lambda: f"job {job_id} to restart and run again (states seen: {sorted(seen)})",
    )
    restart_seconds = time.monotonic() - killed
    restored = checkpoints(rest, job_id).get("latest", {}).get("restored")
    replayer.join(timeout_s)
    if not outcome:
        raise TimeoutError(f"the replay did not end within {timeout_s:g} s")
    wait_caught_up(settings, timeout_s)
    expected: dict[str, int] = {}
    for event in read_events(settings):
        session = str(event["session_id"])
        expected[session] = expected.get(session, 0) + 1
    counted = counted_per_session(settings)
    lost = sum(max(0, n - counted.get(s, 0)) for s, n in expected.items())
    double = sum(max(0, counted.get(s, 0) - n) for s, n in expected.items())
    return TaskManagerDrill(
        produced=outcome[0].produced,
        sessions=len(expected),
        events_lost=lost,
        double_counted=double,
        killed_taskmanager=victim,
        killed_after_s=killed_after,
        checkpoints_before=before,
        states_seen=sorted(seen),
        restart_seconds=restart_seconds,
        restored_checkpoint=int(restored["id"]) if restored else None,
        replay_seconds=outcome[0].seconds,
    )
