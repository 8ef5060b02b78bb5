"""A Spark standalone cluster on 127.0.0.1: one master and N workers from pyspark's own Spark.

The same two programs as the compose deployment's ``spark-master`` and ``spark-worker``
(``spark-class org.apache.spark.deploy.master.Master`` / ``...worker.Worker``), started as services
of the local platform (:mod:`lambdarec.platform.processes`: own process group, PID file, log under
``settings.log_dir``), so the daily job can be submitted to ``spark://127.0.0.1:<port>`` the way the
DAG submits it to ``spark://spark-master:7077``. Everything the cluster writes (worker work dirs,
shuffle and spill folders, Spark's logs) is under ``<state_dir>/spark``.

A worker is healthy once the master's ``/json/`` lists it ALIVE at its port; :meth:`kill_worker`
SIGKILLs a worker's process group (the worker and its executors: a lost host) for failover drills.

Python API::

    with spark_cluster(settings, master_port=7077, webui_port=8090, worker_ports=[7078, 7079]) as c:
        submit_to(c.master_url)

Not (yet) a service of ``lambdarec platform up``: its ports are the caller's, not settings.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lambdarec.platform import processes
from lambdarec.platform.base import PlatformError, Service, http_ok, venv_bin
from lambdarec.platform.manager import _healthy_yet

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence
    from pathlib import Path

    from lambdarec.config import Settings

__all__ = ["SparkCluster", "spark_cluster"]

MASTER_CLASS = "org.apache.spark.deploy.master.Master"
WORKER_CLASS = "org.apache.spark.deploy.worker.Worker"
#: Heap of the master and worker daemons themselves (executors get the worker's ``memory``).
DAEMON_MEMORY = "512m"


@dataclass(frozen=True)
class SparkCluster:
    """A master on ``master_port`` (web UI on ``webui_port``) and one worker per ``worker_ports``
    entry, each offering ``worker_cores`` cores and ``worker_memory`` to executors."""

    settings: Settings
    master_port: int
    webui_port: int
    worker_ports: tuple[int, ...]
    worker_cores: int = 1
    worker_memory: str = "1g"

    @property
    def host(self) -> str:
        return self.settings.bind_host

    @property
    def master_url(self) -> str:
        """What ``--master`` and the ``spark_default`` connection's host take."""
        return f"spark://{self.host}:{self.master_port}"

    @property
    def ui_url(self) -> str:
        return f"http://{self.host}:{self.webui_port}"

    @property
    def spark_dir(self) -> Path:
        return self.settings.state_dir / "spark"

    @property
    def work_dir(self) -> Path:
        """Workers' work folder: one ``app-*`` folder per application that ran executors here."""
        return self.spark_dir / "work"

    # -- services ------------------------------------------------------------------------------

    def _env(self) -> dict[str, str]:
        return {
            "JAVA_HOME": str(self.settings.java_home),
            "SPARK_LOCAL_IP": self.host,
            "SPARK_LOG_DIR": str(self.spark_dir / "logs"),
            "SPARK_WORKER_DIR": str(self.work_dir),
            "SPARK_LOCAL_DIRS": str(self.spark_dir / "local"),
            "SPARK_DAEMON_MEMORY": DAEMON_MEMORY,
            "SPARK_NO_DAEMONIZE": "1",
        }

    def _prepare(self) -> None:
        for name in ("logs", "work", "local"):
            (self.spark_dir / name).mkdir(parents=True, exist_ok=True)

    def master_service(self) -> Service:
        command = [str(venv_bin() / "spark-class"), MASTER_CLASS, "--host", self.host]
        command += ["--port", str(self.master_port), "--webui-port", str(self.webui_port)]
        return Service(
            name="spark-master",
            title="Spark standalone master",
            ports={},
            url=self.ui_url,
            health=lambda: http_ok(f"{self.ui_url}/json/"),
            command=command,
            env=self._env(),
            prepare=self._prepare,
            stop_timeout_s=15.0,
        )

    def worker_service(self, index: int) -> Service:
        """Worker ``index`` (0-based), listening on ``worker_ports[index]``."""
        port = self.worker_ports[index]
        command = [str(venv_bin() / "spark-class"), WORKER_CLASS, self.master_url]
        command += ["--host", self.host, "--port", str(port), "--webui-port", "0"]
        command += ["--cores", str(self.worker_cores), "--memory", self.worker_memory]
        command += ["--work-dir", str(self.work_dir)]
        return Service(
            name=f"spark-worker-{index + 1}",
            title=f"Spark standalone worker {index + 1}",
            ports={},
            url=f"{self.host}:{port}",
            health=lambda: self.worker_state(port) == "ALIVE",
            command=command,
            env=self._env(),
            prepare=self._prepare,
            stop_timeout_s=15.0,
            requires=("spark-master",),
        )

    def services(self) -> list[Service]:
        """The master, then the workers (start order)."""
        return [self.master_service()] + [
            self.worker_service(i) for i in range(len(self.worker_ports))
        ]

    # -- the master's view ----------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """The master's ``/json/``: workers, active and completed applications, cores."""
        import requests

        response = requests.get(f"{self.ui_url}/json/", timeout=5)
        response.raise_for_status()
        state: dict[str, Any] = response.json()
        return state

    def worker_state(self, port: int) -> str | None:
        """ALIVE, DEAD, ... as the master last saw the worker on ``port``; None if unknown (or the
        master does not answer). A restarted worker is listed again: the newest entry counts."""
        try:
            workers = self.state().get("workers", [])
        except (OSError, ValueError):
            return None
        mine = [w for w in workers if w.get("port") == port and w.get("host") == self.host]
        if not mine:
            return None
        return str(max(mine, key=lambda w: w.get("lastheartbeat", 0))["state"])

    def alive_workers(self) -> int:
        return sum(w.get("state") == "ALIVE" for w in self.state().get("workers", []))

    # -- start, stop, failures -------------------------------------------------------------------

    def start(self, timeout_s: float | None = None) -> None:
        """Start the master, then every worker; returns once the master lists each one ALIVE.

        Raises :class:`PlatformError` naming the service, the problem and the tail of its log
        when one exits or is not up within ``timeout_s`` (default ``settings.start_timeout_s``);
        what was started is stopped again."""
        timeout = self.settings.start_timeout_s if timeout_s is None else timeout_s
        try:
            master = self._launch(self.master_service(), [self.master_port, self.webui_port])
            self._await([master], timeout)
            workers = [
                self._launch(self.worker_service(i), [port])
                for i, port in enumerate(self.worker_ports)
            ]
            self._await(workers, timeout)
        except BaseException:
            self.stop()
            raise

    def _launch(self, service: Service, ports: Sequence[int]) -> tuple[Service, int, float]:
        if processes.running(self.settings, service.name) is not None:
            raise PlatformError(
                f"{service.name} already runs from {self.settings.state_dir}; stop that cluster "
                "first (SparkCluster.stop) or use another state folder"
            )
        for port in ports:
            owner = processes.port_owner(self.host, port)
            if owner:
                raise PlatformError(
                    f"{service.name}: port {port} is taken by {owner}; stop it or pick other ports"
                )
        if service.prepare:
            service.prepare()
        return service, processes.spawn(service, self.settings), time.monotonic()

    def _await(self, launched: Sequence[tuple[Service, int, float]], timeout_s: float) -> None:
        waiting = list(launched)
        while waiting:
            waiting = [
                (service, pid, began)
                for service, pid, began in waiting
                if not _healthy_yet(service, self.settings, pid, timeout_s, began)
            ]
            if waiting:
                time.sleep(0.5)

    def stop(self) -> list[str]:
        """Stop the workers (with their executors), then the master; returns the names stopped."""
        return [s.name for s in reversed(self.services()) if processes.stop(s, self.settings)]

    def kill_worker(self, index: int) -> int:
        """SIGKILL worker ``index``'s process group, its executors included (a host lost without
        warning); returns the worker's pid. The master sees it DEAD when its connection drops."""
        name = self.worker_service(index).name
        process = processes.running(self.settings, name)
        if process is None:
            raise PlatformError(f"{name} is not running; start the cluster first")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # spawned with setsid: pgid == pid
        with contextlib.suppress(Exception):
            process.wait(timeout=10)
        processes.is_gone(process.pid)  # reaps it if it was our child
        processes.pid_file(self.settings, name).unlink(missing_ok=True)
        return process.pid


@contextlib.contextmanager
def spark_cluster(
    settings: Settings,
    *,
    master_port: int,
    webui_port: int,
    worker_ports: Sequence[int],
    worker_cores: int = 1,
    worker_memory: str = "1g",
    timeout_s: float | None = None,
) -> Iterator[SparkCluster]:
    """A running cluster for the duration of the block; stopped (no process left) on exit."""
    if not worker_ports:
        raise PlatformError("a Spark cluster needs at least one worker; pass worker_ports")
    cluster = SparkCluster(
        settings,
        master_port=master_port,
        webui_port=webui_port,
        worker_ports=tuple(worker_ports),
        worker_cores=worker_cores,
        worker_memory=worker_memory,
    )
    cluster.start(timeout_s)
    try:
        yield cluster
    finally:
        cluster.stop()
