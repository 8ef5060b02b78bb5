"""A Flink standalone session cluster on 127.0.0.1: one JobManager and N TaskManagers from the
Flink distribution PyFlink ships (``.venv-flink/.../pyflink``).

The same two programs as the compose deployment's ``flink-jobmanager`` and ``flink-taskmanager``
(``bin/jobmanager.sh`` / ``bin/taskmanager.sh`` in ``start-foreground`` mode, which ``exec`` the
JVM: the process started here *is* the daemon), with the compose services' settings
(:data:`COMPOSE_KEYS`, from its ``FLINK_PROPERTIES``) plus loopback addresses and free ports, in a
``config.yaml`` (what Flink 2 reads; ``flink-conf.yaml`` is ignored) under
``<home>/conf``. Each daemon runs in its own process group with its log under ``<home>/log``;
checkpoints default to ``file://<home>/checkpoints`` and a lost TaskManager restarts the job
from its last checkpoint (exponential-delay restarts, as the speed layer sets for itself).

A TaskManager counts once the JobManager's REST ``/taskmanagers`` lists it;
:meth:`FlinkCluster.kill_taskmanager` SIGKILLs one (a lost host) and
:meth:`FlinkCluster.start_taskmanager` starts a replacement, as a compose or Kubernetes restart
would. Python API::

    with FlinkCluster(settings, home, rest_port=8081, rpc_port=6123, blob_port=6124,
                      taskmanager_ports=[6125, 6126]) as cluster:
        submit_to(cluster.jobmanager)  # host:port, what LAMBDAREC_FLINK_JOBMANAGER takes
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from lambdarec.platform.base import PlatformError, base_env

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

    from lambdarec.config import Settings

__all__ = ["COMPOSE_KEYS", "FlinkCluster"]

log = logging.getLogger(__name__)

#: The settings the compose services set (``FLINK_PROPERTIES``) that the loopback cluster sets
#: too, with its own values; tests/unit/test_flink_cluster_conf.py keeps the two lists equal.
COMPOSE_KEYS = (
    "jobmanager.rpc.address",
    "rest.address",
    "jobmanager.memory.process.size",
    "taskmanager.memory.process.size",
    "taskmanager.numberOfTaskSlots",
    "python.executable",
    "python.client.executable",
    "execution.checkpointing.dir",
    "restart-strategy.type",
)


def flink_home(settings: Settings) -> Path:
    """The Flink distribution inside the PyFlink venv (bin/, lib/, conf/)."""
    from lambdarec.speed.jars import flink_venv

    found = sorted(flink_venv(settings).glob("lib/python3*/site-packages/pyflink"))
    if not found or not (found[0] / "bin" / "jobmanager.sh").is_file():
        raise PlatformError(f"no Flink distribution in {flink_venv(settings)}; run `make setup`")
    return found[0]


@dataclass
class FlinkCluster:
    """A JobManager (REST on ``rest_port``, RPC on ``rpc_port``, blob server on ``blob_port``) and
    one TaskManager per ``taskmanager_ports`` entry (its RPC port), ``slots`` slots each."""

    settings: Settings
    home: Path
    rest_port: int
    rpc_port: int
    blob_port: int
    taskmanager_ports: Sequence[int]
    slots: int = 1
    jobmanager_memory: str = "768m"
    taskmanager_memory: str = "1g"
    #: Managed memory (RocksDB, batch operators) of each TaskManager: the speed layer's default
    #: hashmap backend keeps state on the heap, so a 1g TaskManager gives the heap the rest.
    managed_memory: str = "64m"
    checkpoint_dir: str = ""
    jobmanager_process: subprocess.Popen[bytes] | None = field(default=None, init=False)
    taskmanager_processes: dict[int, subprocess.Popen[bytes]] = field(
        default_factory=dict, init=False
    )

    @property
    def host(self) -> str:
        return self.settings.bind_host

    @property
    def jobmanager(self) -> str:
        """The REST address ``host:port``: what LAMBDAREC_FLINK_JOBMANAGER and ``flink run -m``
        take."""
        return f"{self.host}:{self.rest_port}"

    @property
    def rest_url(self) -> str:
        return f"http://{self.jobmanager}"

    @property
    def conf_dir(self) -> Path:
        return self.home / "conf"

    @property
    def log_dir(self) -> Path:
        return self.home / "log"

    def checkpoints(self) -> str:
        """The cluster's default checkpoint storage (a ``file://`` URI)."""
        return self.checkpoint_dir or (self.home / "checkpoints").resolve().as_uri()

    # -- configuration --------------------------------------------------------------------------

    def conf(self) -> dict[str, str]:
        """The cluster's ``config.yaml`` (flattened keys): the compose services' settings with
        loopback addresses and this cluster's ports, memory and folders."""
        from lambdarec.speed.jars import flink_python

        python = str(flink_python(self.settings))
        return {
            # The compose services' keys (COMPOSE_KEYS), loopback values.
            "jobmanager.rpc.address": self.host,
            "rest.address": self.host,
            "jobmanager.memory.process.size": self.jobmanager_memory,
            "taskmanager.memory.process.size": self.taskmanager_memory,
            "taskmanager.numberOfTaskSlots": str(self.slots),
            "python.executable": python,
            "python.client.executable": python,
            "execution.checkpointing.dir": self.checkpoints(),
            # A job that sets no strategy of its own restarts too (the speed layer sets this one).
            "restart-strategy.type": "exponential-delay",
            # Loopback only, fixed ports.
            "jobmanager.bind-host": self.host,
            "jobmanager.rpc.port": str(self.rpc_port),
            "rest.bind-address": self.host,
            "rest.port": str(self.rest_port),
            "blob.server.port": str(self.blob_port),
            "taskmanager.host": self.host,
            "taskmanager.bind-host": self.host,
            "taskmanager.memory.managed.size": self.managed_memory,
            "jobmanager.execution.failover-strategy": "region",
            # A lost TaskManager is declared dead after 15 s without heartbeats (default 50 s).
            "heartbeat.timeout": "15000",
            "io.tmp.dirs": str(self.home / "tmp"),
            "web.tmpdir": str(self.home / "tmp" / "web"),
            "env.log.dir": str(self.log_dir),
        }

    def write_conf(self) -> None:
        """``<home>/conf``: config.yaml and the distribution's log4j files (the daemons read both
        from FLINK_CONF_DIR)."""
        self.conf_dir.mkdir(parents=True, exist_ok=True)
        for name in ("log4j-console.properties", "log4j.properties", "log4j-cli.properties"):
            shutil.copy(flink_home(self.settings) / "conf" / name, self.conf_dir / name)
        lines = [f"{key}: {_yaml_scalar(value)}\n" for key, value in self.conf().items()]
        (self.conf_dir / "config.yaml").write_text("".join(lines))

    def env(self) -> dict[str, str]:
        return {
            **base_env(),
            "JAVA_HOME": str(self.settings.java_home),
            "FLINK_CONF_DIR": str(self.conf_dir),
            "FLINK_LOG_DIR": str(self.log_dir),
        }

    def jobmanager_command(self) -> list[str]:
        return [str(flink_home(self.settings) / "bin" / "jobmanager.sh"), "start-foreground"]

    def taskmanager_command(self, index: int) -> list[str]:
        """TaskManager ``index`` (0-based) with its own RPC port and resource id."""
        port = self.taskmanager_ports[index]
        return [
            str(flink_home(self.settings) / "bin" / "taskmanager.sh"),
            "start-foreground",
            "-D",
            f"taskmanager.rpc.port={port}",
            "-D",
            f"taskmanager.resource-id=taskmanager-{index + 1}",
        ]

    # -- processes -------------------------------------------------------------------------------

    def _spawn(self, name: str, command: list[str]) -> subprocess.Popen[bytes]:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with (self.log_dir / f"{name}.out").open("ab") as out:
            process = subprocess.Popen(  # noqa: S603 - the distribution's own scripts
                command,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.home,
                env=self.env(),
                start_new_session=True,
            )
        log.info("flink %s: pid %d", name, process.pid)
        return process

    def pids(self) -> list[int]:
        """The daemons that run now (JobManager first): for RSS sampling and drills."""
        procs = [self.jobmanager_process, *self.taskmanager_processes.values()]
        return [p.pid for p in procs if p is not None and p.poll() is None]

    def start(self, timeout_s: float = 180.0) -> None:
        """Write the configuration, start the JobManager and every TaskManager; returns once the
        REST API lists them all. Stops what it started on failure."""
        java = self.settings.java_home / "bin" / "java"
        if not java.is_file():
            raise PlatformError(f"{java} not found: install Java 17 or set LAMBDAREC_JAVA_HOME")
        try:
            (self.home / "tmp" / "web").mkdir(parents=True, exist_ok=True)
            self.write_conf()
            self.jobmanager_process = self._spawn("jobmanager", self.jobmanager_command())
            for index in range(len(self.taskmanager_ports)):
                self.start_taskmanager(index)
            self.wait_taskmanagers(len(self.taskmanager_ports), timeout_s)
        except BaseException:
            self.stop()
            raise

    def start_taskmanager(self, index: int) -> int:
        """Start (or restart) TaskManager ``index``; returns its pid."""
        running = self.taskmanager_processes.get(index)
        if running is not None and running.poll() is None:
            return running.pid
        process = self._spawn(f"taskmanager-{index + 1}", self.taskmanager_command(index))
        self.taskmanager_processes[index] = process
        return process.pid

    def overview(self) -> dict[str, Any]:
        import requests

        response = requests.get(f"{self.rest_url}/overview", timeout=5)
        response.raise_for_status()
        overview: dict[str, Any] = response.json()
        return overview

    def taskmanagers(self) -> list[dict[str, Any]]:
        """The JobManager's ``/taskmanagers`` (empty while it does not answer)."""
        import requests

        try:
            response = requests.get(f"{self.rest_url}/taskmanagers", timeout=5)
            listed: list[dict[str, Any]] = response.json().get("taskmanagers", [])
        except (requests.RequestException, ValueError):
            return []
        return listed

    def wait_taskmanagers(self, count: int, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.jobmanager_process is not None and self.jobmanager_process.poll() is not None:
                raise PlatformError(
                    f"the Flink JobManager exited ({self.jobmanager_process.returncode}): see "
                    f"{self.log_dir}/jobmanager.out and flink-*-standalonesession-*.log"
                )
            if len(self.taskmanagers()) >= count:
                return
            time.sleep(0.5)
        raise PlatformError(
            f"the Flink JobManager at {self.rest_url} did not list {count} TaskManagers within "
            f"{timeout_s:.0f} s (it lists {len(self.taskmanagers())}): see {self.log_dir}/"
        )

    def kill_taskmanager(self, index: int) -> int:
        """SIGKILL TaskManager ``index``'s process group (a host lost without warning); returns
        its pid."""
        process = self.taskmanager_processes.get(index)
        if process is None or process.poll() is not None:
            raise PlatformError(f"flink taskmanager-{index + 1} is not running; start it first")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # start_new_session: pgid == pid
        process.wait(30)
        log.info("flink taskmanager-%d killed", index + 1)
        return process.pid

    def stop(self) -> None:
        """SIGTERM every daemon (TaskManagers first), SIGKILL what is left after 30 s."""
        daemons = [*self.taskmanager_processes.values(), self.jobmanager_process]
        alive = [p for p in daemons if p is not None and p.poll() is None]
        for process in alive:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        for process in alive:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)

    def __enter__(self) -> FlinkCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _yaml_scalar(value: str) -> str:
    """A value as a YAML scalar: quoted unless it is plain (paths and URIs with ':' are)."""
    plain = value.replace("-", "").replace(".", "").replace("_", "").isalnum()
    return value if plain else "'" + value.replace("'", "''") + "'"
