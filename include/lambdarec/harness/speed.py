"""Run the speed-layer job (and the pusher) outside the platform manager: tests and benchmarks.

:func:`speed_job` starts ``include/flink/speed_layer.py`` with the job's command line
(:func:`lambdarec.speed.job.speed_layer_command`) in its own process group, on its own
REST port, waits until every task runs, and kills the whole group on exit (or on
:meth:`SpeedJob.kill`, the fault tests' crash). :func:`pusher_threads` runs the
default :class:`~lambdarec.speed.pusher.FeaturePusher` pair in threads of the caller.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from lambdarec.harness.platform import free_ports
from lambdarec.harness.waiting import eventually
from lambdarec.platform.base import settings_env
from lambdarec.speed.control import GROUP_ID as JOB_GROUP_ID
from lambdarec.speed.jars import ensure_jars
from lambdarec.speed.job import speed_layer_command, speed_layer_env, speed_layer_running
from lambdarec.speed.pusher import GROUP_ID, FeaturePusher, default_pushers, speed_topics

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence
    from pathlib import Path

    from lambdarec.config import Settings


@dataclass
class SpeedJob:
    process: subprocess.Popen[bytes]
    rest_port: int
    log: Path

    def running(self, settings: Settings) -> bool:
        return self.process.poll() is None and speed_layer_running(settings, self.rest_port)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Kill the job's process group (the Python driver and the mini-cluster's JVM)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=30)
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)

    def crash(self) -> int:
        """SIGKILL the job's processes but not its supervisor (a supervised job's crash, which the
        supervisor must heal); returns how many processes were killed."""
        from lambdarec.platform.processes import kill_group_except

        return kill_group_except(self.process.pid, keep=self.process.pid)

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def start_job(
    settings: Settings,
    extra: Sequence[str] = (),
    *,
    name: str = "speed-layer",
    supervised: bool = False,
) -> SpeedJob:
    """Start the job (not waiting for it); ``extra`` options override the platform's.

    ``supervised`` runs it under :mod:`lambdarec.platform.supervise`, as the local platform does,
    so :meth:`SpeedJob.crash` is healed by a restart from the newest checkpoint.
    """
    from lambdarec.streaming.kafka import ensure_topics

    ensure_jars(settings)
    ensure_topics(settings, extra=speed_topics(settings))
    (rest_port,) = free_ports(1)
    command = [*speed_layer_command(settings), "--rest-port", str(rest_port), *extra]
    if supervised:
        supervise = [sys.executable, "-m", "lambdarec.platform.supervise", "--name", name, "--"]
        command = [*supervise, *command]
    env = {**os.environ, **settings_env(settings), **speed_layer_env(settings)}
    settings.log_dir.mkdir(parents=True, exist_ok=True)
    (settings.log_dir / "flink").mkdir(parents=True, exist_ok=True)
    log = settings.log_dir / f"{name}.log"
    with log.open("ab") as out:
        process = subprocess.Popen(  # noqa: S603 - our own command line
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            cwd=settings.state_dir,
        )
    return SpeedJob(process, rest_port, log)


def wait_running(job: SpeedJob, settings: Settings, timeout_s: float = 180.0) -> float:
    """Seconds until every task of the job runs; raises with the log tail if it does not."""
    began = time.monotonic()

    def running() -> bool:
        if job.running(settings):
            return True
        if job.process.poll() is not None:
            raise RuntimeError(f"the speed layer exited ({job.process.returncode}):\n{job.tail()}")
        return False

    eventually(
        running,
        timeout_s,
        message=lambda: f"every task of the speed layer to run; its log ends:\n{job.tail()}",
    )
    return time.monotonic() - began


@contextlib.contextmanager
def speed_job(
    settings: Settings, extra: Sequence[str] = (), timeout_s: float = 180.0
) -> Iterator[SpeedJob]:
    """The running job for the duration of the block; its process group is killed afterwards."""
    job = start_job(settings, extra)
    try:
        wait_running(job, settings, timeout_s)
        yield job
    finally:
        job.kill(signal.SIGTERM)


def committed(settings: Settings) -> int:
    """Events the job's consumer group has committed on the events topic (on checkpoints)."""
    from lambdarec.streaming.kafka import committed_offsets, probe_consumer

    with probe_consumer(settings, JOB_GROUP_ID) as probe:
        offsets = committed_offsets(probe, settings.topic_events, range(settings.topic_partitions))
    return sum(max(offset, 0) for offset in offsets.values())


@contextlib.contextmanager
def pusher_threads(settings: Settings, group_id: str = GROUP_ID) -> Iterator[list[FeaturePusher]]:
    """The default pushers (sessions, trending) consuming in background threads."""
    pushers = default_pushers(settings, group_id=group_id)
    threads = []
    for pusher in pushers:
        pusher.open()  # topics, registry and subscription before the caller produces anything
        threads.append(threading.Thread(target=pusher.run, name="feature-pusher", daemon=True))
    for thread in threads:
        thread.start()
    try:
        yield pushers
    finally:
        for pusher in pushers:
            pusher.stop()
        for thread in threads:
            thread.join(timeout=30)
