"""The services of the local platform: what each runs, where it listens, how it proves healthy.

A :class:`Service` is plain data plus a few callables, built from the settings by
:func:`build_services` in start order. The manager knows nothing service-specific, so a later layer
(the Flink job, the Flask app, a Milvus server) is one more factory here. A service without a
command is a reserved row: ``status`` shows whether something answers there, ``up`` skips it.
A service with ``parts`` is a group: its name stands for those services (``airflow`` for the
API server, scheduler, DAG processor and triggerer).
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    from lambdarec.config import Settings

log = logging.getLogger(__name__)

#: Configuration files shipped with the package (log4j2 for Kafka).
CONF_DIR = Path(__file__).resolve().parent / "conf"


class PlatformError(RuntimeError):
    """A service cannot be prepared, started or stopped; the message says what to do about it."""


@dataclass(frozen=True)
class Service:
    """One process of the local platform (or a reserved row when ``command`` is empty)."""

    name: str
    title: str
    #: Port -> the settings field that moves it, e.g. ``{9092: "kafka_port"}``; the field is named in
    #: port-conflict errors.
    ports: Mapping[int, str]
    url: str
    health: Callable[[], bool]
    command: Sequence[str] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    #: Services started first when this one is asked for.
    requires: tuple[str, ...] = ()
    #: Runs before each start: folders, config files, one-time initialisation (may be slow).
    prepare: Callable[[], None] | None = None
    #: Runs after the service is healthy, on every ``up``: idempotent setup such as topics.
    ready: Callable[[], None] | None = None
    #: Extra text for the status table (e.g. the Airflow login); called only when up.
    details: Callable[[], str] | None = None
    #: Seconds between SIGTERM and SIGKILL on ``down``.
    stop_timeout_s: float = 30.0
    #: A group (no command): its name stands for these services in ``up``, ``down`` and ``status``.
    parts: tuple[str, ...] = ()
    #: The signal ``down`` sends first (SIGKILL follows after ``stop_timeout_s``).
    stop_signal: signal.Signals = signal.SIGTERM
    #: Whether ``up`` without names starts it (opt-in services are started only when named).
    default: bool = True

    @property
    def managed(self) -> bool:
        """Whether ``up``/``down`` start and stop it (reserved rows are only probed)."""
        return bool(self.command)


# -- health probes -----------------------------------------------------------------------------


def tcp_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """Whether something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def http_ok(url: str, timeout: float = 2.0) -> bool:
    import requests

    try:
        return requests.get(url, timeout=timeout).ok
    except requests.RequestException:
        return False


# -- Kafka -------------------------------------------------------------------------------------


def kafka_libs_dir(settings: Settings) -> Path:
    """Where the broker jars live: ``<state_dir>/kafka/libs`` (may be a symlink to a shared copy)."""
    return settings.state_dir / "kafka" / "libs"


def resolve_kafka_jars(settings: Settings) -> Path:
    """Copy the Kafka broker jars named by env/kafka/pom.xml into :func:`kafka_libs_dir`.

    Does nothing when the folder already holds the jars of the current pom (a hash of the pom is
    kept beside them). Maven's local repository caches the downloads, so a re-resolve is ~2 s.
    """
    pom = settings.home / "env" / "kafka" / "pom.xml"
    if not pom.is_file():
        raise PlatformError(f"{pom} not found; the Kafka broker jars are resolved from it")
    digest = hashlib.sha256(pom.read_bytes()).hexdigest()
    libs = kafka_libs_dir(settings)
    marker = libs / ".pom.sha256"
    if marker.is_file() and marker.read_text().strip() == digest and any(libs.glob("kafka_*.jar")):
        return libs
    mvn = shutil.which("mvn")
    if mvn is None:
        raise PlatformError("mvn not found; run `make system-deps` (apt-get install maven)")
    target = libs.resolve()  # a symlinked shared copy is refreshed in place
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    cmd = [
        mvn,
        "-q",
        "-B",
        "-f",
        str(pom),
        "dependency:copy-dependencies",
        f"-DoutputDirectory={staging}",
        "-DincludeScope=runtime",
    ]
    log.info("resolving Kafka broker jars into %s: %s", target, " ".join(cmd))
    env = {**_base_env(), "JAVA_HOME": str(settings.java_home)}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0 or not any(staging.glob("kafka_*.jar")):
        output = (done.stdout + done.stderr).strip().splitlines()[-30:]
        raise PlatformError("mvn could not resolve the Kafka jars:\n" + "\n".join(output))
    (staging / ".pom.sha256").write_text(digest + "\n")
    shutil.rmtree(target, ignore_errors=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging.rename(target)
    return libs


def _kafka_properties(settings: Settings) -> str:
    host, kport, cport = settings.bind_host, settings.kafka_port, settings.kafka_controller_port
    props = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@{host}:{cport}",
        "listeners": f"PLAINTEXT://{host}:{kport},CONTROLLER://{host}:{cport}",
        "advertised.listeners": f"PLAINTEXT://{host}:{kport}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "log.dirs": str(settings.state_dir / "kafka" / "data"),
        # Topics come from lambdarec.streaming.kafka.ensure_topics with their own settings; a typo
        # in a producer must fail, not create a stray topic.
        "auto.create.topics.enable": "false",
        "num.partitions": str(settings.topic_partitions),
        "default.replication.factor": "1",
        "offsets.topic.replication.factor": "1",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "group.initial.rebalance.delay.ms": "0",
        "log.retention.hours": "168",
    }
    lines = [
        "# Written by `lambdarec platform up` from the settings on each start; edits are lost."
    ]
    lines += [f"{key}={value}" for key, value in props.items()]
    return "\n".join(lines) + "\n"


def _java(settings: Settings) -> Path:
    java = settings.java_home / "bin" / "java"
    if not java.is_file():
        raise PlatformError(
            f"{java} not found; install Java 17 (apt-get install openjdk-17-jdk-headless) "
            "or set LAMBDAREC_JAVA_HOME"
        )
    return java


def kafka_cluster_id() -> str:
    """A new cluster id in Kafka's ``Uuid.randomUuid()`` format: 16 random bytes, URL-safe
    base64 without padding, and, as Kafka does, never one that starts with ``-``: the storage
    tool's argument parser reads ``-t -abc...`` as a flag (one format in 64 failed so in CI)."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cluster_id.startswith("-"):
            return cluster_id


def _kafka_prepare(settings: Settings) -> None:
    java = _java(settings)
    libs = resolve_kafka_jars(settings)
    home = settings.state_dir / "kafka"
    (home / "data").mkdir(parents=True, exist_ok=True)
    config = home / "server.properties"
    config.write_text(_kafka_properties(settings))
    if (home / "data" / "meta.properties").is_file():
        return
    id_file = home / "cluster.id"
    if id_file.is_file():
        cluster_id = id_file.read_text().strip()
    else:
        cluster_id = kafka_cluster_id()
        id_file.write_text(cluster_id + "\n")
    cmd = [
        str(java),
        f"-Dlog4j2.configurationFile={CONF_DIR / 'kafka-log4j2.xml'}",
        "-cp",
        f"{libs}/*",
        "kafka.tools.StorageTool",
        "format",
        "-t",
        cluster_id,
        "-c",
        str(config),
        "--ignore-formatted",
    ]
    log.info("formatting the Kafka log dir (cluster id %s)", cluster_id)
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, env=_base_env())
    if done.returncode != 0:
        output = (done.stdout + done.stderr).strip().splitlines()[-30:]
        raise PlatformError("formatting the Kafka storage failed:\n" + "\n".join(output))


def _kafka_health(settings: Settings) -> bool:
    host, port = settings.bind_host, settings.kafka_port
    if not tcp_open(host, port):
        return False
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    quiet = logging.getLogger("lambdarec.platform.librdkafka")
    quiet.setLevel(logging.CRITICAL)
    config: dict[str, Any] = {"bootstrap.servers": f"{host}:{port}", "logger": quiet}
    client = AdminClient(config)
    try:
        client.list_topics(timeout=3)
    except KafkaException:
        return False
    return True


def _kafka_ready(settings: Settings) -> None:
    from lambdarec.streaming.kafka import ensure_topics

    created = ensure_topics(settings)
    log.info("kafka topics ensured: %s", ", ".join(created) if created else "(none)")


def kafka(settings: Settings) -> Service:
    libs = kafka_libs_dir(settings)
    heap = settings.kafka_heap
    command = [
        str(settings.java_home / "bin" / "java"),
        f"-Xms{heap}",
        f"-Xmx{heap}",
        "-XX:+UseG1GC",
        "-XX:MaxGCPauseMillis=20",
        "-XX:+ExplicitGCInvokesConcurrent",
        "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={CONF_DIR / 'kafka-log4j2.xml'}",
        f"-Dkafka.logs.dir={settings.log_dir}",
        "-cp",
        f"{libs}/*",
        "kafka.Kafka",
        str(settings.state_dir / "kafka" / "server.properties"),
    ]
    return Service(
        name="kafka",
        title="Kafka (KRaft broker+controller)",
        ports={
            settings.kafka_port: "kafka_port",
            settings.kafka_controller_port: "kafka_controller_port",
        },
        url=f"{settings.bind_host}:{settings.kafka_port}",
        health=lambda: _kafka_health(settings),
        command=command,
        env={"JAVA_HOME": str(settings.java_home)},
        cwd=settings.state_dir / "kafka",
        prepare=lambda: _kafka_prepare(settings),
        ready=lambda: _kafka_ready(settings),
    )


# -- Redis -------------------------------------------------------------------------------------


def _redis_health(settings: Settings) -> bool:
    import redis

    client = redis.Redis(
        host=settings.bind_host,
        port=settings.redis_port,
        socket_connect_timeout=1,
        socket_timeout=1,
    )
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


def _redis_prepare(settings: Settings) -> None:
    if shutil.which("redis-server") is None:
        raise PlatformError(
            "redis-server not found; run `make system-deps` (apt-get install redis-server)"
        )
    (settings.state_dir / "redis").mkdir(parents=True, exist_ok=True)


def redis(settings: Settings) -> Service:
    data = settings.state_dir / "redis"
    command = [
        shutil.which("redis-server") or "redis-server",
        "--bind",
        settings.bind_host,
        "--port",
        str(settings.redis_port),
        "--dir",
        str(data),
        "--daemonize",
        "no",
        "--protected-mode",
        "yes",
        "--save",
        "300 10",
        "--appendonly",
        "no",
    ]
    return Service(
        name="redis",
        title="Redis (Feast online store)",
        ports={settings.redis_port: "redis_port"},
        url=f"redis://{settings.bind_host}:{settings.redis_port}/0",
        health=lambda: _redis_health(settings),
        command=command,
        cwd=data,
        prepare=lambda: _redis_prepare(settings),
        stop_timeout_s=20.0,
    )


# -- MLflow ------------------------------------------------------------------------------------


def _venv_bin() -> Path:
    # Not resolved: .venv/bin/python is a symlink to the base interpreter.
    return Path(sys.executable).parent


def mlflow(settings: Settings) -> Service:
    home = settings.state_dir / "mlflow"
    url = f"http://{settings.bind_host}:{settings.mlflow_port}"
    command = [
        str(_venv_bin() / "mlflow"),
        "server",
        "--host",
        settings.bind_host,
        "--port",
        str(settings.mlflow_port),
        "--workers",
        "1",
        "--backend-store-uri",
        f"sqlite:///{home / 'mlflow.db'}",
        "--artifacts-destination",
        (home / "artifacts").as_uri(),
        "--serve-artifacts",
    ]
    return Service(
        name="mlflow",
        title="MLflow tracking + registry",
        ports={settings.mlflow_port: "mlflow_port"},
        url=url,
        health=lambda: http_ok(f"{url}/health"),
        command=command,
        # The job runner (7 huey consumers, ~1 GB) only serves GenAI scorer/discovery jobs; the
        # project uses tracking and the registry.
        env={"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        cwd=home,  # anything MLflow writes relative to its working directory stays in state
        prepare=lambda: (home / "artifacts").mkdir(parents=True, exist_ok=True),
    )


# -- Airflow -----------------------------------------------------------------------------------
#
# Airflow runs as four services instead of `airflow standalone`, whose worker and triggerer log
# servers listen on all interfaces (Airflow hard-codes the host): the API server on 127.0.0.1, and
# the scheduler, DAG processor and triggerer, which listen on nothing. The scheduler and triggerer
# run with --skip-serve-logs (the DAG processor has no log server); the API server reads task logs
# from the files under $AIRFLOW_HOME/logs, which the LocalExecutor's workers write on this machine.
# ``airflow`` is a group of the four: ``up airflow`` / ``down airflow`` act on all of them.

#: How a running component must look in Airflow's ``job`` table, per service.
AIRFLOW_JOBS = {
    "airflow-scheduler": "SchedulerJob",
    "airflow-dag-processor": "DagProcessorJob",
    "airflow-triggerer": "TriggererJob",
}
#: A component whose last heartbeat is older than this is unhealthy (Airflow's default thresholds).
AIRFLOW_HEARTBEAT_LIMIT_S = 30.0
_SIMPLE_AUTH_MANAGER = (
    "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
)


def airflow_password(settings: Settings, user: str = "admin") -> str | None:
    """The password Airflow's SimpleAuthManager generated for ``user`` (None before the API
    server's first start, which writes it to ``$AIRFLOW_HOME/simple_auth_manager_passwords.json.generated``).
    """
    path = settings.airflow_home / "simple_auth_manager_passwords.json.generated"
    try:
        return json.loads(path.read_text()).get(user)
    except (OSError, ValueError):
        return None


def airflow_env(settings: Settings) -> dict[str, str]:
    """The Airflow configuration every component (and ``airflow db migrate``) runs with."""
    host, port, home = settings.bind_host, settings.airflow_port, settings.airflow_home
    return {
        "AIRFLOW_HOME": str(home),
        # Explicit, so an AIRFLOW__* variable in the developer's shell cannot move them.
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        # Airflow 3 allows the LocalExecutor on SQLite (standalone uses the same pair).
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__AUTH_MANAGER": _SIMPLE_AUTH_MANAGER,
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
        "AIRFLOW__CORE__DAGS_FOLDER": str(settings.home / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(settings.home / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__PARALLELISM": str(settings.airflow_parallelism),
        "AIRFLOW__API__HOST": host,
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__WORKERS": "1",
        # Tasks call back into the API server; the default assumes port 8080.
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://{host}:{port}/execution/",
        # One parsing process; a DAG file is re-parsed at most every minute and the folder is
        # listed every minute (default 300 s, so a new file shows up sooner than by default).
        "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1",
        "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "60",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "60",
        # The scheduler's health server would listen on 0.0.0.0; health comes from the job table.
        "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
        "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_HOST": host,
        "TF_USE_LEGACY_KERAS": "1",
        "SPARK_LOCAL_IP": host,
        "AIRFLOW_CONN_SPARK_DEFAULT": json.dumps(
            {"conn_type": "spark", "host": settings.spark_master}
        ),
        "AIRFLOW_CONN_FLINK_DEFAULT": json.dumps(_flink_connection(settings)),
    }


def _flink_connection(settings: Settings) -> dict[str, object]:
    """``flink_default``: host ``local`` (the mini-cluster) or the JobManager's REST host:port."""
    if not settings.flink_jobmanager:
        return {"conn_type": "generic", "host": "local"}
    host, _, port = settings.flink_jobmanager.rpartition(":")
    return {"conn_type": "generic", "host": host, "port": int(port)}


def airflow_process_env(settings: Settings) -> dict[str, str]:
    """The full environment of an Airflow process of the platform (what each component gets)."""
    return {**_base_env(), **settings_env(settings), **airflow_env(settings)}


def prepare_airflow(settings: Settings) -> None:
    """Create AIRFLOW_HOME and migrate the metadata DB (once per Airflow version; safe to call often).

    The first ``airflow db migrate`` also writes airflow.cfg with the generated secrets (fernet
    key, API secret key, JWT secret) that all components must share, so it runs before any of them
    starts. Concurrent callers (``up`` in two shells, a ``dag.test()`` run) wait on a file lock.
    Its output goes to ``<log_dir>/airflow-db-migrate.log``.
    """
    from importlib.metadata import version

    home = settings.airflow_home
    home.mkdir(parents=True, exist_ok=True)
    installed = version("apache-airflow")
    marker = home / ".lambdarec-db-migrated"

    def current() -> bool:
        files = (home / "airflow.db", home / "airflow.cfg", marker)
        return all(f.is_file() for f in files) and marker.read_text().strip() == installed

    if current():
        return
    with (home / ".db-migrate.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if current():  # migrated by whoever held the lock
            return
        settings.log_dir.mkdir(parents=True, exist_ok=True)
        cmd = [str(_venv_bin() / "airflow"), "db", "migrate"]
        log.info("airflow: migrating the metadata DB in %s (Airflow %s)", home, installed)
        done = subprocess.run(
            cmd,
            env=airflow_process_env(settings),
            cwd=home,
            capture_output=True,
            text=True,
            check=False,
            timeout=600,
        )
        (settings.log_dir / "airflow-db-migrate.log").write_text(done.stdout + done.stderr)
        if done.returncode != 0:
            output = (done.stdout + done.stderr).strip().splitlines()[-30:]
            raise PlatformError("`airflow db migrate` failed:\n" + "\n".join(output))
        marker.write_text(installed + "\n")


#: The former private name (kept for callers that imported it).
def _airflow_api_health(settings: Settings) -> bool:
    import requests

    url = f"http://{settings.bind_host}:{settings.airflow_port}/api/v2/monitor/health"
    try:
        response = requests.get(url, timeout=2)
        body = response.json() if response.ok else {}
    except (requests.RequestException, ValueError):
        return False
    return (body.get("metadatabase") or {}).get("status") == "healthy"


def _utc_timestamp(text: str) -> float:
    moment = datetime.fromisoformat(text)
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def _spawned_at(settings: Settings, name: str) -> float | None:
    """Start time (epoch s) of the process in the service's PID file (written by the manager)."""
    try:
        return float(json.loads((settings.run_dir / f"{name}.pid").read_text())["create_time"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _airflow_job_health(settings: Settings, name: str) -> bool:
    """Whether the component's newest job row is running, heartbeating, and started by our process.

    Read straight from the SQLite metadata DB (read-only), so a component's health does not depend
    on the API server; the start-time check ignores a row left ``running`` by a killed predecessor.
    """
    spawned = _spawned_at(settings, name)
    db = settings.airflow_home / "airflow.db"
    if spawned is None or not db.is_file():
        return False
    query = (
        "SELECT state, start_date, latest_heartbeat FROM job WHERE job_type = ? "
        "ORDER BY id DESC LIMIT 1"
    )
    try:
        with contextlib.closing(
            sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True, timeout=2)
        ) as connection:
            row = connection.execute(query, (AIRFLOW_JOBS[name],)).fetchone()
        if row is None or row[0] != "running" or not row[1] or not row[2]:
            return False
        started, beat = _utc_timestamp(row[1]), _utc_timestamp(row[2])
    except (sqlite3.Error, ValueError):
        return False
    return started >= spawned - 2.0 and time.time() - beat < AIRFLOW_HEARTBEAT_LIMIT_S


def _airflow_component(
    settings: Settings,
    name: str,
    title: str,
    args: Sequence[str],
    *,
    health: Callable[[], bool] | None = None,
    ports: Mapping[int, str] | None = None,
    requires: tuple[str, ...] = ("airflow-api",),
    details: Callable[[], str] | None = None,
    stop_timeout_s: float = 30.0,
) -> Service:
    """One Airflow component: the venv's ``airflow <args>`` in AIRFLOW_HOME, its own process group.

    Each component requires the API server by default: tasks report to its execution API.
    """
    return Service(
        name=name,
        title=title,
        ports=ports or {},
        url=f"http://{settings.bind_host}:{settings.airflow_port}",
        health=health or (lambda: _airflow_job_health(settings, name)),
        command=[str(_venv_bin() / "airflow"), *args],
        env=airflow_env(settings),
        cwd=settings.airflow_home,
        requires=requires,
        prepare=lambda: prepare_airflow(settings),
        details=details,
        stop_timeout_s=stop_timeout_s,
    )


def airflow_api(settings: Settings) -> Service:
    host, port = settings.bind_host, settings.airflow_port

    def details() -> str:
        password = airflow_password(settings)
        return (
            f"login admin / {password}" if password else "login admin (password not generated yet)"
        )

    return _airflow_component(
        settings,
        "airflow-api",
        "Airflow API server + UI",
        ["api-server", "--host", host, "--port", str(port), "--workers", "1"],
        health=lambda: _airflow_api_health(settings),
        ports={port: "airflow_port"},
        requires=(),
        details=details,
    )


def airflow_scheduler(settings: Settings) -> Service:
    return _airflow_component(
        settings,
        "airflow-scheduler",
        f"Airflow scheduler (LocalExecutor, parallelism {settings.airflow_parallelism})",
        ["scheduler", "--skip-serve-logs"],
        stop_timeout_s=45.0,
    )


def airflow_dag_processor(settings: Settings) -> Service:
    return _airflow_component(
        settings,
        "airflow-dag-processor",
        "Airflow DAG processor",
        ["dag-processor"],  # serves no logs: it has no --skip-serve-logs
    )


def airflow_triggerer(settings: Settings) -> Service:
    return _airflow_component(
        settings,
        "airflow-triggerer",
        "Airflow triggerer",
        ["triggerer", "--skip-serve-logs"],
    )


def airflow(settings: Settings) -> Service:
    """The group: ``up airflow`` starts the four components, ``down airflow`` stops them.

    Also stops what a PID file named ``airflow`` still records (``airflow standalone`` started by
    an older version of this module).
    """
    return Service(
        name="airflow",
        title="Airflow (all components)",
        ports={},
        url=f"http://{settings.bind_host}:{settings.airflow_port}",
        health=lambda: _airflow_api_health(settings),
        parts=("airflow-api", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer"),
        stop_timeout_s=45.0,
    )


# -- speed layer ---------------------------------------------------------------------------------
#
# The Flink job runs on a local mini-cluster inside its own process (the PyFlink venv's python,
# which starts the JVM): `include/flink/speed_layer.py`. It resumes from its newest checkpoint
# under <state_dir>/flink/checkpoints, so `down` + `up` continues where it stopped. Until Settings
# has them, the REST port, heap and trending topic use the defaults below (getattr fallbacks).


def speed_layer_command(settings: Settings, *extra: str) -> list[str]:
    """The job's command line for these settings (tests and benches add options)."""
    from lambdarec.speed.jars import flink_lib_dir, flink_python

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
        "--jars",
        str(flink_lib_dir(settings)),
        "--rest-port",
        str(settings.flink_rest_port),
        *extra,
    ]


def speed_layer_env(settings: Settings) -> dict[str, str]:
    """JAVA_HOME (Java 17), a bounded heap, logs under the state folder (not inside the venv)."""
    heap = settings.flink_heap
    return {
        "JAVA_HOME": str(settings.java_home),
        "JVM_ARGS": f"-Xms{heap} -Xmx{heap}",
        "FLINK_LOG_DIR": str(settings.log_dir / "flink"),
        "PYTHONUNBUFFERED": "1",
    }


def speed_layer_running(settings: Settings, port: int | None = None) -> bool:
    """Whether the mini-cluster's REST API reports the job RUNNING with every task running."""
    from lambdarec.speed.control import is_running

    return is_running(f"http://{settings.bind_host}:{port or settings.flink_rest_port}")


def _speed_layer_prepare(settings: Settings) -> None:
    from lambdarec.speed.jars import JarError, ensure_jars
    from lambdarec.speed.pusher import speed_topics
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
        command=speed_layer_command(settings),
        env=speed_layer_env(settings),
        cwd=settings.state_dir / "flink",
        requires=("kafka",),
        prepare=lambda: _speed_layer_prepare(settings),
        stop_timeout_s=30.0,
    )


def _pusher_prepare(settings: Settings) -> None:
    from lambdarec.features.paths import feast_paths
    from lambdarec.speed.pusher import speed_topics
    from lambdarec.streaming.kafka import ensure_topics

    ensure_topics(settings, extra=speed_topics(settings))
    if not feast_paths(settings).registry.is_file():
        from lambdarec.features.store import apply

        apply(settings)


def feature_pusher(settings: Settings) -> Service:
    from lambdarec.speed.pusher import is_healthy

    requires = ("kafka", "redis") if settings.online_store == "redis" else ("kafka",)
    return Service(
        name="feature-pusher",
        title=f"Feature pusher (speed-layer topics -> Feast online, {settings.online_store})",
        ports={},
        url=settings.topic_session_features,
        health=lambda: is_healthy(settings),
        command=[str(_venv_bin() / "python"), "-m", "lambdarec.speed.pusher"],
        env={"PYTHONUNBUFFERED": "1"},
        cwd=settings.state_dir,
        requires=requires,
        prepare=lambda: _pusher_prepare(settings),
        stop_timeout_s=15.0,
    )


# -- Milvus (opt-in: large catalogs) -------------------------------------------------------------
#
# A real Milvus 2.3.5 standalone server from PyPI's `milvus` wheel, in its own virtualenv
# (.venv-milvus, env/requirements-milvus.txt: the wrapper needs pymilvus<2.4 and protobuf<5). The
# small-catalog default is Milvus Lite inside the client process, so `up` without names does not
# start it: `lambdarec platform up milvus`, then LAMBDAREC_MILVUS_URI=http://127.0.0.1:19530.
# Until Settings has them, the ports use the defaults below (getattr fallbacks). What the server
# does not let us choose: the health/metrics port is 9091; the internal gRPC ports (19529, 19531,
# 53100, 13333, 21121-21124) listen on all interfaces; it writes /run/milvus/standalone.pid, so one
# server per host. SIGTERM to its wrapper hangs; SIGINT stops it cleanly.

MILVUS_PORT = 19530
MILVUS_METRICS_PORT = 9091
MILVUS_ETCD_PORT = 2379


def milvus_server_bin(settings: Settings) -> Path:
    return settings.home / ".venv-milvus" / "bin" / "milvus-server"


def _milvus_port(settings: Settings) -> int:
    return int(getattr(settings, "milvus_port", MILVUS_PORT))


def _milvus_prepare(settings: Settings) -> None:
    if not milvus_server_bin(settings).is_file():
        raise PlatformError(
            f"{milvus_server_bin(settings)} not found; create the Milvus virtualenv "
            "(`make milvus-venv`, from env/requirements-milvus.txt)"
        )
    (settings.state_dir / "milvus-server").mkdir(parents=True, exist_ok=True)


def milvus(settings: Settings) -> Service:
    host, port = settings.bind_host, _milvus_port(settings)
    etcd = int(getattr(settings, "milvus_etcd_port", MILVUS_ETCD_PORT))
    data = settings.state_dir / "milvus-server"
    # The wrapper's own main, through our launcher: it keeps the ports clients use where they
    # were asked to be (milvus_launcher.py: a restart within a minute otherwise moved them).
    command = [
        str(milvus_server_bin(settings).with_name("python")),
        str(Path(__file__).with_name("milvus_launcher.py")),
        "--data",
        str(data),
        "--proxy-port",
        str(port),
        "--etcd-port",
        str(etcd),
    ]

    def details() -> str:
        return (
            f"health :{MILVUS_METRICS_PORT}/healthz; embedded etcd {host}:{etcd}/{etcd + 1}; "
            "lock /run/milvus/standalone.pid (one server per host); "
            "internal gRPC ports listen on all interfaces"
        )

    return Service(
        name="milvus",
        title="Milvus 2.3 standalone (vector index for large catalogs; opt-in)",
        ports={
            port: "milvus_port",
            MILVUS_METRICS_PORT: "milvus_metrics_port",
            etcd: "milvus_etcd_port",
            etcd + 1: "milvus_etcd_port",
        },
        url=f"http://{host}:{port}",
        health=lambda: http_ok(f"http://{host}:{MILVUS_METRICS_PORT}/healthz"),
        command=command,
        cwd=data,
        prepare=lambda: _milvus_prepare(settings),
        details=details,
        stop_timeout_s=30.0,
        stop_signal=signal.SIGINT,
        default=False,
    )


# -- serving, reports and the Data Docs row ------------------------------------------------------


def serving_workers(settings: Settings) -> list[str]:
    """gunicorn's worker options: one process when the index is a Milvus Lite file (the file is
    locked by the first process that opens it: a second worker would serve without an index),
    three of two threads each with a Milvus server.

    Threads of one process share its GIL: each request thread is another contender for it, so
    fewer threads per process answered faster, and a third process keeps the cores busy while
    the others wait on the index and the online store. Measured on 2 cores, 200k items in the
    Milvus server, at 200 req/s (p50 / p99): 2x4 17 / 66 ms with 12 of 12,000 answers degraded
    by timeouts, 2x2 12 / 79 ms, 4x1 14 / 76 ms, 3x2 12 / 53 ms and none degraded; at 100 req/s
    2x4 9 / 27 ms, 2x2 8 / 21 ms.
    """
    if "://" in settings.milvus_uri:
        return ["-w", "3", "--threads", "2"]
    return ["-w", "1", "--threads", "8"]


def serving(settings: Settings) -> Service:
    """The Flask recommendation API under gunicorn (opt-in: ``lambdarec platform up serving``)."""
    host, port = settings.bind_host, settings.serving_port
    url = f"http://{host}:{port}"
    return Service(
        name="serving",
        title="Flask recommendation API (gunicorn; opt-in)",
        ports={port: "serving_port"},
        url=url,
        health=lambda: http_ok(f"{url}/health"),
        command=[
            str(_venv_bin() / "gunicorn"),
            "serving:create_app()",
            "-b",
            f"{host}:{port}",
            *serving_workers(settings),
        ],
        cwd=settings.home,
        stop_timeout_s=10.0,
        details=lambda: f"docs {url}/docs; readiness {url}/ready; metrics {url}/metrics",
        default=False,
    )


def _site_prepare(settings: Settings) -> None:
    """The served folder: an index page and links to the generated report folders."""
    from lambdarec.platform.site import prepare_site

    prepare_site(settings)


def reports(settings: Settings) -> Service:
    """A static web server (loopback) for Data Docs and the HTML reports."""
    host, port = settings.bind_host, settings.reports_port
    url = f"http://{host}:{port}/"
    return Service(
        name="reports",
        title="Reports: one index of Data Docs, drift and evaluation reports",
        ports={port: "reports_port"},
        url=url,
        health=lambda: http_ok(url),
        command=[
            sys.executable,
            "-m",
            "http.server",
            str(port),
            "--bind",
            host,
            "--directory",
            str(settings.site_dir),
        ],
        prepare=lambda: _site_prepare(settings),
        stop_timeout_s=5.0,
    )


def data_docs(settings: Settings) -> Service:
    index = settings.data_docs_dir / "index.html"
    return Service(
        name="data-docs",
        title="Great Expectations Data Docs",
        ports={},
        url=f"http://{settings.bind_host}:{settings.reports_port}/data_docs/index.html",
        health=index.is_file,
        details=lambda: f"served by `reports`; also {index.as_uri()}",
    )


#: Factories in start order; ``down`` stops in reverse.
FACTORIES: tuple[Callable[[Settings], Service], ...] = (
    kafka,
    redis,
    mlflow,
    airflow_api,
    airflow_scheduler,
    airflow_dag_processor,
    airflow_triggerer,
    airflow,
    speed_layer,
    feature_pusher,
    milvus,
    serving,
    reports,
    data_docs,
)


def build_services(settings: Settings) -> dict[str, Service]:
    """All services, keyed by name, in start order.

    Each service's environment carries the settings as ``LAMBDAREC_*`` variables, so whatever it
    runs (an Airflow task, a job) sees the same state folder and ports as the platform.
    """
    exported = settings_env(settings)
    services = [factory(settings) for factory in FACTORIES]
    return {s.name: dataclasses.replace(s, env={**exported, **s.env}) for s in services}


def settings_env(settings: Settings) -> dict[str, str]:
    """The settings as the ``LAMBDAREC_*`` environment variables that reproduce them."""
    exported = {}
    for name, value in settings.model_dump(mode="json").items():
        if value is not None:
            # pydantic-settings parses complex fields (lists, dicts) from JSON
            text = json.dumps(value) if isinstance(value, list | dict) else str(value)
            exported[f"LAMBDAREC_{name.upper()}"] = text
    return exported


def _base_env() -> dict[str, str]:
    env = dict(os.environ)
    # Console scripts of the venv (airflow, mlflow) spawn siblings by name.
    env["PATH"] = f"{_venv_bin()}{os.pathsep}{env.get('PATH', '')}"
    return env


def service_env(service: Service) -> dict[str, str]:
    """The environment a service process starts with: ours, the venv on PATH, its own variables."""
    return {**_base_env(), **service.env}
