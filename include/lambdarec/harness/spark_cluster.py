"""The daily Spark job on a standalone cluster, for the cluster test and the rehearsal.

:func:`loopback_cluster` starts a private cluster (:mod:`lambdarec.platform.spark_cluster`) in a
state folder whose settings name it as the Spark master; :func:`submit_daily_job` runs the DAG's
own operator (``DailyFeaturesSparkOperator``, master from the ``spark_default`` connection) in a
subprocess with the environment the platform gives Airflow's tasks; :func:`worker_loss_drill`
kills a worker (and its executors) while that job runs.
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

from lambdarec.harness.platform import free_ports, private_settings
from lambdarec.harness.waiting import eventually
from lambdarec.platform.airflow import airflow_process_env
from lambdarec.platform.spark_cluster import SparkCluster, spark_cluster
from lambdarec.tables import FEATURE_TABLES, as_day

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from datetime import date
    from pathlib import Path

    from lambdarec.config import Settings

#: What an Airflow worker runs for the DAG's ``spark_daily_features`` task, minus the scheduler.
_RUN_OPERATOR = """
import sys
from lambdarec_airflow.operators import DailyFeaturesSparkOperator
DailyFeaturesSparkOperator(task_id="spark_daily_features", day=sys.argv[1]).execute({})
"""


@contextlib.contextmanager
def loopback_cluster(
    state_dir: Path, *, workers: int = 1, worker_memory: str = "1g"
) -> Iterator[SparkCluster]:
    """A cluster of ``workers`` one-core workers on free ports; its settings (``cluster.settings``)
    are a private platform's in ``state_dir`` with ``spark_master`` set to it."""
    master_port, webui_port, *worker_ports = free_ports(2 + workers)
    settings = private_settings(
        state_dir,
        spark_master=f"spark://127.0.0.1:{master_port}",
        spark_executor_memory=worker_memory,
    )
    with spark_cluster(
        settings,
        master_port=master_port,
        webui_port=webui_port,
        worker_ports=worker_ports,
        worker_memory=worker_memory,
    ) as cluster:
        yield cluster


@dataclass(frozen=True)
class Submitted:
    """One spark-submit of the daily job through the operator."""

    returncode: int
    seconds: float
    output: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0


def operator_command(day: date | str) -> list[str]:
    return [sys.executable, "-c", _RUN_OPERATOR, as_day(day).isoformat()]


def submit_daily_job(
    settings: Settings,
    day: date | str,
    timeout_s: float = 900,
    on_start: Callable[[int], object] | None = None,
) -> Submitted:
    """The DAG's Spark task for ``day`` against ``settings`` (and its ``spark_default``).

    It runs in its own process group (``on_start`` gets its id): on a timeout the whole group
    goes (the operator, spark-submit and the driver), not just the operator's process."""
    started = time.monotonic()
    task = subprocess.Popen(  # noqa: S603 - our own interpreter and program
        operator_command(day),
        env=airflow_process_env(settings),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    if on_start is not None:
        on_start(task.pid)
    try:
        output, _ = task.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(task.pid, signal.SIGKILL)
        output, _ = task.communicate()
        output += f"\n(killed after {timeout_s:g} s)"
    return Submitted(task.returncode, time.monotonic() - started, output)


def applications(cluster: SparkCluster, *, active: bool) -> list[dict[str, object]]:
    apps: list[dict[str, object]] = cluster.state()["activeapps" if active else "completedapps"]
    return apps


def first_table_written(settings: Settings, day: date | str) -> bool:
    """Whether the job has finished writing any table of ``day`` (its ``_SUCCESS`` marker)."""
    return any(
        (t.partition(settings.lake_dir, as_day(day).isoformat()) / "_SUCCESS").exists()
        for t in FEATURE_TABLES
    )


@dataclass(frozen=True)
class DrillResult:
    submitted: Submitted
    #: Seconds from the submit to the kill.
    killed_after_s: float
    #: The killed worker's state in the master's view afterwards (DEAD).
    worker_state: str | None


def worker_loss_drill(
    cluster: SparkCluster, day: date | str, *, victim: int = 1, timeout_s: float = 900
) -> DrillResult:
    """Submit the daily job; once every worker runs an executor and a first table is written,
    SIGKILL worker ``victim`` with its executor; returns how the job ended.

    Raises :class:`TimeoutError` if that moment never comes (the job ended, or failed, first);
    ``timeout_s`` bounds the whole job."""
    settings = cluster.settings
    outcome: list[Submitted] = []
    groups: list[int] = []
    runner = threading.Thread(
        target=lambda: outcome.append(submit_daily_job(settings, day, timeout_s, groups.append)),
        daemon=True,
    )
    started = time.monotonic()
    runner.start()
    try:
        return _drill(cluster, day, victim, timeout_s, runner, outcome, started)
    finally:
        if runner.is_alive():  # the drill failed: no driver left waiting for executors
            for group in groups:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(group, signal.SIGKILL)
            runner.join(30)


def _drill(
    cluster: SparkCluster,
    day: date | str,
    victim: int,
    timeout_s: float,
    runner: threading.Thread,
    outcome: list[Submitted],
    started: float,
) -> DrillResult:
    settings = cluster.settings

    def both_busy_and_a_table_written() -> bool:
        if outcome:
            raise TimeoutError(f"the job ended before the kill:\n{outcome[0].output[-3000:]}")
        workers = cluster.state().get("workers", [])
        busy = sum(w.get("state") == "ALIVE" and w.get("coresused", 0) > 0 for w in workers)
        return busy == len(cluster.worker_ports) and first_table_written(settings, day)

    eventually(
        both_busy_and_a_table_written,
        timeout_s,
        interval_s=0.2,
        message="every worker running an executor and a first table written",
    )
    cluster.kill_worker(victim)
    killed_after = time.monotonic() - started
    runner.join(timeout_s + 30)  # the submit ends itself at timeout_s
    if not outcome:
        raise TimeoutError(f"the daily job did not end within {timeout_s:g} s")
    return DrillResult(outcome[0], killed_after, cluster.worker_state(cluster.worker_ports[victim]))
