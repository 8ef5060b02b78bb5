"""The spark-submit command of the daily feature job, for Airflow's SparkSubmitOperator or a shell.

``spark_job(day, settings)`` describes one run (application, arguments, conf, environment) in the
terms SparkSubmitOperator takes; ``spark_submit_args(day, settings)`` is the same run as a
command line. Nothing here starts Spark.

The master decides the rest: in ``local[*]`` the driver does all the work (4g of heap); on a
cluster (``spark://``, ``yarn``, ``k8s://``) the driver, in client mode on the submitting host,
only plans (1g), executors get ``settings.spark_executor_memory`` and at most
``settings.spark_cores_max`` cores, and the driver binds to loopback only when the master is on
loopback too (executors elsewhere must reach it). Lake paths are made absolute: executors run in
their worker's folder, where a relative path means something else.

A short local job (a window of input under :data:`SHORT_JOB_BYTES` on disk) runs its JVM on the
quick compiler alone (:func:`short_job_conf`): the optimising one spends more CPU compiling than
a job of a few seconds of work gets back.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from lambdarec.batch.spec import (
    DEFAULT_MAX_ITEMS,
    DEFAULT_SHUFFLE_PARTITIONS,
    DEFAULT_TOP_N,
    SPARK_CONF,
    TABLES,
    first_day,
    parse_tables,
)
from lambdarec.config import REPO_ROOT
from lambdarec.tables import as_day, events_path, partitions

if TYPE_CHECKING:
    from collections.abc import Sequence
    from datetime import date

    from lambdarec.config import Settings

#: The standalone Spark programs.
SPARK_JOBS_DIR = REPO_ROOT / "include" / "spark"
DAILY_FEATURES = SPARK_JOBS_DIR / "daily_features.py"

DEFAULT_MASTER = "local[*]"
DEFAULT_DRIVER_MEMORY = "4g"
#: The driver's heap on a cluster: it plans and tracks tasks, executors hold the data.
CLUSTER_DRIVER_MEMORY = "1g"
_LOOPBACK = {"127.0.0.1", "localhost", "::1"}
#: Below this many bytes of events in a run's window, a local job's JVM compiles with C1 only
#: (``-XX:TieredStopAtLevel=1``). bench/bench_batch.py, whole spark-submit runs, each pair in one
#: quiet run (the lake takes ~18 bytes per event): 300k events 32.9 -> 27.4 s (CPU 59 -> 40 s),
#: 1M 59.9 -> 58.1 s (CPU 111 -> 95 s), 3M 86.9 -> 114.9 s (slower: C2's code pays off there).
SHORT_JOB_BYTES = 16 * 2**20
#: The JVM option of a short job.
QUICK_COMPILER = "-XX:TieredStopAtLevel=1"


@dataclass(frozen=True)
class SparkJob:
    """One spark-submit run; the fields map one to one onto SparkSubmitOperator's arguments."""

    application: str
    application_args: list[str]
    name: str
    master: str = DEFAULT_MASTER
    driver_memory: str = DEFAULT_DRIVER_MEMORY
    conf: dict[str, str] = field(default_factory=dict)
    env_vars: dict[str, str] = field(default_factory=dict)

    def command(self, spark_submit: str | None = None) -> list[str]:
        """The full command line (``spark_submit`` defaults to the one beside this Python)."""
        cmd = [spark_submit or default_spark_submit(), "--master", self.master, "--name", self.name]
        cmd += ["--driver-memory", self.driver_memory]
        for key, value in self.conf.items():
            cmd += ["--conf", f"{key}={value}"]
        return [*cmd, self.application, *self.application_args]


def is_local(master: str) -> bool:
    """Whether ``master`` runs everything in the submitting JVM (``local``, ``local[4]``, ...)."""
    return master == "local" or master.startswith("local[")


def driver_memory_for(master: str) -> str:
    """The driver's default heap: the whole job's in local mode, a planner's on a cluster."""
    return DEFAULT_DRIVER_MEMORY if is_local(master) else CLUSTER_DRIVER_MEMORY


def cluster_conf(master: str, settings: Settings) -> dict[str, str]:
    """Executor sizing for a cluster master (nothing for a local one, where it means nothing)."""
    if is_local(master):
        return {}
    conf = {"spark.executor.memory": settings.spark_executor_memory}
    if settings.spark_cores_max:
        conf["spark.cores.max"] = str(settings.spark_cores_max)
    return conf


def window_bytes(table_root: Path, first: date, last: date) -> int:
    """Bytes of the Parquet files in the day partitions ``first`` .. ``last`` of a lake table."""
    total = 0
    for day, folder in partitions(table_root):
        if first <= day <= last:
            total += sum(f.stat().st_size for f in folder.glob("*.parquet"))
    return total


def short_job_conf(conf: dict[str, str], input_bytes: int) -> dict[str, str]:
    """A local job's ``conf`` with the driver's JVM on the quick compiler when its input is under
    :data:`SHORT_JOB_BYTES`; unchanged otherwise. Callers ask only for a local master (on a
    cluster, executors live long and do the work)."""
    if input_bytes >= SHORT_JOB_BYTES:
        return conf
    key = "spark.driver.extraJavaOptions"
    return {**conf, key: f"{conf.get(key, '')} {QUICK_COMPILER}".strip()}


def driver_env(master: str, settings: Settings) -> dict[str, str]:
    """The environment of spark-submit: Java, the Python of this environment for the driver and,
    when the master is local or on loopback, the loopback address for the driver to bind.

    Against a master on another host the address is left to Spark (the host's name), so that
    executors there can connect back to the driver; SPARK_LOCAL_IP set by the caller still wins.
    """
    python = sys.executable
    env = {
        "JAVA_HOME": str(settings.java_home),
        # The driver imports lambdarec (installed in this environment); executors run no Python.
        "PYSPARK_PYTHON": python,
        "PYSPARK_DRIVER_PYTHON": python,
    }
    host = urlsplit(master.split(",")[0]).hostname if "://" in master else None
    if is_local(master) or host in _LOOPBACK:
        env["SPARK_LOCAL_IP"] = settings.bind_host
    return env


def default_spark_submit() -> str:
    """pyspark's launcher installed in this environment, else whatever ``spark-submit`` is on PATH."""
    local = Path(sys.executable).parent / "spark-submit"
    return str(local) if local.exists() else "spark-submit"


def spark_job(
    day: date | str,
    settings: Settings,
    *,
    tables: str | Sequence[str] = "all",
    lake_dir: Path | None = None,
    out_dir: Path | None = None,
    master: str | None = None,
    driver_memory: str | None = None,
    shuffle_partitions: int = DEFAULT_SHUFFLE_PARTITIONS,
    top_n: int = DEFAULT_TOP_N,
    max_items: int = DEFAULT_MAX_ITEMS,
    window: int | None = None,
    sample: int | None = None,
    through: date | str | None = None,
) -> SparkJob:
    """The daily feature job for ``day`` (the run's data interval, UTC) over the settings' lake;
    with ``through``, a backfill: every day from ``day`` through that one in one submit.

    ``master`` defaults to ``settings.spark_master`` (LAMBDAREC_SPARK_MASTER; the DAG's operator
    passes the master of the connection it submits to, ``spark_default``),
    ``driver_memory`` to :func:`driver_memory_for` it, ``window`` to
    ``settings.sr_window`` (LAMBDAREC_SR_WINDOW), ``sample`` to ``settings.sknn_sample``
    (LAMBDAREC_SKNN_SAMPLE).
    """
    day = as_day(day)
    names = parse_tables(tables)
    lake = (lake_dir if lake_dir is not None else settings.lake_dir).absolute()
    master = master or settings.spark_master
    args = [
        "--lake-dir",
        str(lake),
        "--date",
        day.isoformat(),
        "--tables",
        ",".join(names),
        "--shuffle-partitions",
        str(shuffle_partitions),
        "--top-n",
        str(top_n),
        "--max-items",
        str(max_items),
        "--sr-window",
        str(settings.sr_window if window is None else window),
        "--sknn-sample",
        str(settings.sknn_sample if sample is None else sample),
    ]
    if out_dir is not None:
        args += ["--out-dir", str(out_dir.absolute())]
    days = day.isoformat()
    if through is not None:
        last = as_day(through)
        if last < day:
            raise ValueError(f"a backfill through {last} must not end before its first day {day}")
        args += ["--through", last.isoformat()]
        days = f"{day.isoformat()}..{last.isoformat()}"
    conf = {
        **SPARK_CONF,
        "spark.sql.shuffle.partitions": str(shuffle_partitions),
        **cluster_conf(master, settings),
    }
    if is_local(master):
        last = as_day(through) if through is not None else day
        conf = short_job_conf(conf, window_bytes(events_path(lake), first_day(day), last))
    suffix = "all" if len(names) == len(TABLES) else "+".join(names)
    return SparkJob(
        application=str(DAILY_FEATURES),
        application_args=args,
        name=f"lambdarec-daily-features-{days}-{suffix}",
        master=master,
        driver_memory=driver_memory or driver_memory_for(master),
        conf=conf,
        env_vars=driver_env(master, settings),
    )


def spark_submit_args(day: date | str, settings: Settings, **kwargs: object) -> list[str]:
    """``spark_job(day, settings, **kwargs).command()``: the run as a command line."""
    return spark_job(day, settings, **kwargs).command()  # type: ignore[arg-type]
