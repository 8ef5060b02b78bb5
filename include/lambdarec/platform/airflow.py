"""Airflow on the local platform: four services and the ``airflow`` group of them, plus the
configuration every Airflow process of the platform runs with (:func:`airflow_process_env`,
:func:`prepare_airflow`; :mod:`lambdarec.platform.dag_run` runs a DAG with them).

Airflow runs as four services instead of ``airflow standalone``, whose worker and triggerer log
servers listen on all interfaces (Airflow hard-codes the host): the API server on 127.0.0.1, and
the scheduler, DAG processor and triggerer, which listen on nothing. The scheduler and triggerer
run with ``--skip-serve-logs`` (the DAG processor has no log server); the API server reads task
logs from the files under ``$AIRFLOW_HOME/logs``, which the LocalExecutor's workers write on this
machine. ``airflow`` is a group of the four: ``up airflow`` / ``down airflow`` act on all of them.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import sqlite3
import subprocess
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from lambdarec.platform.base import PlatformError, Service, base_env, settings_env, venv_bin
from lambdarec.platform.processes import pid_file

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    from lambdarec.config import Settings

log = logging.getLogger(__name__)

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


def airflow_database_uri(settings: Settings) -> str:
    """Airflow's metadata database: ``settings.airflow_sql_alchemy_conn`` (PostgreSQL in the
    deployment and the cluster rehearsal), or SQLite under AIRFLOW_HOME by default."""
    configured = settings.airflow_sql_alchemy_conn.get_secret_value()
    return configured or f"sqlite:///{settings.airflow_home / 'airflow.db'}"


def _on_sqlite(settings: Settings) -> bool:
    return airflow_database_uri(settings).startswith("sqlite:")


def airflow_env(settings: Settings) -> dict[str, str]:
    """The Airflow configuration every component (and ``airflow db migrate``) runs with."""
    host, port, home = settings.bind_host, settings.airflow_port, settings.airflow_home
    return {
        "AIRFLOW_HOME": str(home),
        # Explicit, so an AIRFLOW__* variable in the developer's shell cannot move them.
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": airflow_database_uri(settings),
        # Airflow 3 allows the LocalExecutor on SQLite too (standalone uses the same pair).
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
    return {**base_env(), **settings_env(settings), **airflow_env(settings)}


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
    # The marker names the database too: pointing the settings at another one migrates it.
    stamp = installed if _on_sqlite(settings) else f"{installed} {_database_identity(settings)}"

    def current() -> bool:
        files = [home / "airflow.cfg", marker]
        if _on_sqlite(settings):
            files.append(home / "airflow.db")
        return all(f.is_file() for f in files) and marker.read_text().strip() == stamp

    if current():
        return
    _check_drivers(settings)
    with (home / ".db-migrate.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if current():  # migrated by whoever held the lock
            return
        settings.log_dir.mkdir(parents=True, exist_ok=True)
        cmd = [str(venv_bin() / "airflow"), "db", "migrate"]
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
        marker.write_text(stamp + "\n")


def _check_drivers(settings: Settings) -> None:
    """On PostgreSQL, Airflow 3 needs psycopg2 and asyncpg (its async engine): name a missing one."""
    from importlib.util import find_spec

    if not airflow_database_uri(settings).startswith("postgresql"):
        return
    missing = [name for name in ("psycopg2", "asyncpg") if find_spec(name) is None]
    if missing:
        raise PlatformError(
            f"Airflow's metadata database is PostgreSQL but {' and '.join(missing)} is not "
            "installed: run `make setup` (requirements.txt pins psycopg2-binary and asyncpg)"
        )


def _database_identity(settings: Settings) -> str:
    """The metadata database's URI without its password (what the migration marker records)."""
    from sqlalchemy.engine import make_url

    return make_url(airflow_database_uri(settings)).render_as_string(hide_password=True)


def _airflow_api_health(settings: Settings) -> bool:
    import requests

    url = f"http://{settings.bind_host}:{settings.airflow_port}/api/v2/monitor/health"
    try:
        response = requests.get(url, timeout=2)
        body = response.json() if response.ok else {}
    except (requests.RequestException, ValueError):
        return False
    return (body.get("metadatabase") or {}).get("status") == "healthy"


def _utc_timestamp(value: object) -> float:
    """A job row's time as epoch seconds: SQLite gives text, PostgreSQL a datetime."""
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def _spawned_at(settings: Settings, name: str) -> float | None:
    """Start time (epoch s) of the process in the service's PID file."""
    try:
        return float(json.loads(pid_file(settings, name).read_text())["create_time"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _airflow_job_health(settings: Settings, name: str) -> bool:
    """Whether the component's newest job row is running, heartbeating, and started by our process.

    Read straight from the metadata DB (SQLite read-only, or the configured server), so a
    component's health does not depend on the API server; the start-time check ignores a row left
    ``running`` by a killed predecessor.
    """
    spawned = _spawned_at(settings, name)
    if spawned is None:
        return False
    try:
        row = _newest_job(settings, AIRFLOW_JOBS[name])
        if row is None or row[0] != "running" or not row[1] or not row[2]:
            return False
        started, beat = _utc_timestamp(row[1]), _utc_timestamp(row[2])
    except ValueError:
        return False
    return started >= spawned - 2.0 and time.time() - beat < AIRFLOW_HEARTBEAT_LIMIT_S


def _newest_job(settings: Settings, job_type: str) -> tuple[object, ...] | None:
    """(state, start_date, latest_heartbeat) of the newest ``job`` row of ``job_type``; None
    when there is none or the database does not answer."""
    query = (
        "SELECT state, start_date, latest_heartbeat FROM job WHERE job_type = :job_type "
        "ORDER BY id DESC LIMIT 1"
    )
    if _on_sqlite(settings):
        db = settings.airflow_home / "airflow.db"
        if not db.is_file():
            return None
        try:
            with contextlib.closing(
                sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True, timeout=2)
            ) as connection:
                found = connection.execute(query, {"job_type": job_type}).fetchone()
        except sqlite3.Error:
            return None
        return tuple(found) if found is not None else None
    import sqlalchemy

    engine = sqlalchemy.create_engine(
        airflow_database_uri(settings), poolclass=sqlalchemy.pool.NullPool
    )
    try:
        with engine.connect() as connection:
            found = connection.execute(sqlalchemy.text(query), {"job_type": job_type}).first()
    except sqlalchemy.exc.SQLAlchemyError:
        return None
    finally:
        engine.dispose()
    return tuple(found) if found is not None else None


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
        command=[str(venv_bin() / "airflow"), *args],
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


#: The DAGs that run on a schedule once unpaused (``speed_layer`` is active from its creation).
SCHEDULED_DAGS = (
    "daily_feature_pipeline",
    "drift_monitoring",
    "online_metrics",
    "weekly_model_retraining",
)


def schedule_dags(
    settings: Settings,
    *,
    paused: bool | None = None,
    wait_s: float = 180.0,
    dag_ids: Sequence[str] = SCHEDULED_DAGS,
) -> dict[str, bool]:
    """Pause or unpause the scheduled DAGs through Airflow's REST API (``settings.dags_paused``
    unless ``paused`` says); returns each DAG's ``is_paused`` afterwards.

    Waits up to ``wait_s`` for the DAG processor to have parsed them (a fresh Airflow lists a
    DAG some seconds after it starts). The DAGs are created paused (Airflow's default), so the
    platform's own ``dag.test()`` runs (``make demo``) and a test's private Airflow never start
    scheduled runs unless this is called. Raises :class:`PlatformError` naming what is missing.
    """
    import requests

    from lambdarec.monitoring.operations import Unavailable, airflow_login

    want = settings.dags_paused if paused is None else paused
    base = f"http://{settings.bind_host}:{settings.airflow_port}"
    password = airflow_password(settings)
    if password is None:
        raise PlatformError(
            "Airflow has no generated admin password yet: start it first (`lambdarec platform up "
            "airflow`)"
        )
    try:
        http = airflow_login(base, "admin", password, timeout_s=10)
    except (Unavailable, requests.RequestException, KeyError, ValueError) as error:
        raise PlatformError(f"Airflow's REST API at {base} failed: {error}") from None
    try:
        deadline = time.monotonic() + wait_s
        missing = list(dag_ids)
        while missing:
            missing = [d for d in missing if not http.get(f"{base}/api/v2/dags/{d}", timeout=10).ok]
            if not missing or time.monotonic() > deadline:
                break
            time.sleep(2)
        if missing:
            raise PlatformError(
                f"Airflow at {base} has not parsed {', '.join(missing)} after {wait_s:.0f} s: see "
                f"{settings.log_dir / 'airflow-dag-processor.log'} (import errors are listed in "
                "the UI)"
            )
        states = {}
        for dag_id in dag_ids:
            answer = http.patch(
                f"{base}/api/v2/dags/{dag_id}", json={"is_paused": want}, timeout=10
            )
            answer.raise_for_status()
            states[dag_id] = bool(answer.json()["is_paused"])
    except (requests.RequestException, KeyError, ValueError) as error:
        raise PlatformError(f"Airflow's REST API at {base} failed: {error}") from None
    finally:
        http.close()
    log.info("airflow: %s %s", "paused" if want else "unpaused", ", ".join(dag_ids))
    return states
