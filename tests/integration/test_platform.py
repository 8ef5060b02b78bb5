"""The local platform manager against the real Kafka, Redis, MLflow and Airflow processes.

Each test runs its own throwaway platform: a tmp state folder and free random ports, so it never
meets a platform the developer is running. The Kafka broker jars are resolved once per session into
the default state folder (``<repo>/.state/kafka/libs``, where ``lambdarec platform up`` puts them
too; Maven runs only when they are missing or env/kafka/pom.xml changed) and each tmp state folder
links its ``kafka/libs`` there, so the tests do not re-run Maven.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from typing import TYPE_CHECKING

import psutil
import pytest
import requests

from lambdarec.config import LOCAL_PORTS, Settings
from lambdarec.harness.platform import free_ports
from lambdarec.harness.waiting import eventually
from lambdarec.platform import manager
from lambdarec.platform.airflow import airflow_password, schedule_dags
from lambdarec.platform.base import PlatformError
from lambdarec.platform.kafka import kafka_libs_dir, resolve_kafka_jars

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

pytestmark = pytest.mark.integration

AIRFLOW_PARTS = ["airflow-api", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer"]
LOOPBACK = {"127.0.0.1", "::ffff:127.0.0.1"}  # the JVM binds IPv4 loopback as a mapped address


def _project_processes(state_dir: Path) -> list[psutil.Process]:
    """Live processes (but this one) running in ``state_dir`` or mentioning it in argv or env."""
    marker = str(state_dir)
    found = []
    for process in psutil.process_iter():
        if process.pid == os.getpid():
            continue
        with contextlib.suppress(psutil.Error):
            if process.status() == psutil.STATUS_ZOMBIE:
                continue
            # redis-server rewrites its title over argv and environ; its working dir still tells
            if (
                process.cwd().startswith(marker)
                or any(marker in part for part in process.cmdline())
                or any(marker in value for value in process.environ().values())
            ):
                found.append(process)
    return found


def _listening(state_dir: Path) -> list[tuple[str, int, int, str]]:
    """Every listening TCP socket of the project's processes: (address, port, pid, process name)."""
    ours = {p.pid: p for p in _project_processes(state_dir)}
    found = []
    for conn in psutil.net_connections(kind="tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.pid in ours:
            with contextlib.suppress(psutil.Error):
                found.append((conn.laddr.ip, conn.laddr.port, conn.pid, ours[conn.pid].name()))
    return found


@pytest.fixture(scope="session")
def shared_kafka_libs() -> Path:
    return resolve_kafka_jars(Settings())


@pytest.fixture
def settings(tmp_path: Path, shared_kafka_libs: Path) -> Iterator[Settings]:
    state = tmp_path / "state"
    (state / "kafka").mkdir(parents=True)
    ports = dict(zip(LOCAL_PORTS, free_ports(len(LOCAL_PORTS)), strict=True))
    throwaway = Settings(
        state_dir=state,
        kafka_bootstrap="",
        mlflow_tracking_uri="",
        **ports,  # type: ignore[arg-type]
        kafka_heap="384m",
        airflow_parallelism=2,
        start_timeout_s=240,
    )
    kafka_libs_dir(throwaway).symlink_to(shared_kafka_libs, target_is_directory=True)
    yield throwaway
    manager.down(settings=throwaway)
    assert _project_processes(state) == []


def _pids(rows: list[manager.ServiceStatus]) -> dict[str, int | None]:
    return {row.name: row.pid for row in rows}


def test_up_status_up_again_down(settings: Settings) -> None:
    started = time.monotonic()
    rows = manager.up(["kafka", "redis", "mlflow"], settings=settings)
    print(f"kafka+redis+mlflow up in {time.monotonic() - started:.1f} s")

    assert [row.name for row in rows] == ["kafka", "redis", "mlflow"]
    assert all(row.state == "up" and row.pid for row in rows), rows
    table = {row.name: row for row in manager.status(settings=settings)}
    assert table["kafka"].url == f"127.0.0.1:{settings.kafka_port}"
    assert table["redis"].url == f"redis://127.0.0.1:{settings.redis_port}/0"
    assert table["mlflow"].url == f"http://127.0.0.1:{settings.mlflow_port}"
    assert "airflow" not in table, "a group has no row of its own"
    assert all(table[name].state == "down" for name in AIRFLOW_PARTS)
    assert table["serving"].state == "down"  # an opt-in managed service, not running
    assert table["data-docs"].state in ("built", "not built")

    # The services answer real clients, and `up` created the project's topics.
    from confluent_kafka.admin import AdminClient

    topics = AdminClient({"bootstrap.servers": table["kafka"].url}).list_topics(timeout=10).topics
    assert {settings.topic_events, settings.topic_dead_letter} <= set(topics)
    import redis

    client = redis.Redis.from_url(table["redis"].url)
    assert client.set("lambdarec:test", "1") and client.get("lambdarec:test") == b"1"
    client.close()
    search = requests.get(
        f"{table['mlflow'].url}/api/2.0/mlflow/experiments/search",
        params={"max_results": 1},
        timeout=10,
    )
    assert search.status_code == 200, search.text
    assert (settings.state_dir / "mlflow" / "mlflow.db").is_file()

    # Everything the platform writes stays in the state folder, each service on loopback only.
    assert sorted(p.name for p in settings.run_dir.glob("*.pid")) == [
        "kafka.pid",
        "mlflow.pid",
        "redis.pid",
    ]
    for name in ("kafka", "redis", "mlflow"):
        assert manager.log_path(name, settings=settings).stat().st_size > 0
    kafka_log = manager.tail(manager.log_path("kafka", settings=settings), 10_000)
    assert not any("SLF4J" in line for line in kafka_log), "Kafka logs through log4j2"
    ours = {p.pid for p in _project_processes(settings.state_dir)}
    assert {row.pid for row in rows} <= ours
    listening = _listening(settings.state_dir)
    assert {port for _, port, _, _ in listening} >= {
        settings.kafka_port,
        settings.kafka_controller_port,
        settings.redis_port,
        settings.mlflow_port,
    }
    assert [s for s in listening if s[0] not in LOOPBACK] == [], "every socket on loopback"

    # A second `up` finds everything healthy and starts nothing.
    started = time.monotonic()
    again = manager.up(["kafka", "redis", "mlflow"], settings=settings)
    assert _pids(again) == _pids(rows)
    assert time.monotonic() - started < 15

    stopped = manager.down(settings=settings)
    assert sorted(stopped) == ["kafka", "mlflow", "redis"]
    assert _project_processes(settings.state_dir) == []
    assert list(settings.run_dir.glob("*.pid")) == []
    assert all(row.state != "up" for row in manager.status(settings=settings))
    assert manager.down(settings=settings) == []


def test_a_killed_service_is_detected_and_restarted(settings: Settings) -> None:
    (first,) = manager.up(["redis"], settings=settings)
    assert first.pid
    os.kill(first.pid, signal.SIGKILL)
    eventually(
        lambda: manager.status(["redis"], settings=settings)[0].state == "down",
        10,
        interval_s=0.2,
        message="status to report the SIGKILLed redis down",
    )
    assert not (settings.run_dir / "redis.pid").exists(), "stale PID file is removed"
    (second,) = manager.up(["redis"], settings=settings)
    assert second.state == "up" and second.pid != first.pid
    assert manager.down(["redis"], settings=settings) == ["redis"]


@pytest.mark.parametrize(
    ("service", "field"),
    [("redis", "redis_port"), ("mlflow", "mlflow_port"), ("kafka", "kafka_controller_port")],
)
def test_a_taken_port_names_the_port_and_the_setting(
    settings: Settings, service: str, field: str
) -> None:
    port = getattr(settings, field)
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", port))
        blocker.listen()
        with pytest.raises(PlatformError) as caught:
            manager.up([service], settings=settings)
    message = str(caught.value)
    assert f"port {port} is taken by another process (pid {os.getpid()}" in message
    assert f"LAMBDAREC_{field.upper()}" in message
    assert not (settings.run_dir / f"{service}.pid").exists()
    assert _project_processes(settings.state_dir) == []


def test_a_service_that_dies_fails_up_with_its_log(settings: Settings) -> None:
    broken = settings.model_copy(update={"kafka_heap": "lots"})
    with pytest.raises(PlatformError) as caught:
        manager.up(["kafka"], settings=broken)
    message = str(caught.value)
    assert message.startswith("kafka exited with code")
    assert "Invalid" in message and "heap" in message, message  # the JVM's own words, from the log
    assert not (settings.run_dir / "kafka.pid").exists()


def test_cli_status_and_failure_exit_code(settings: Settings) -> None:
    env = {
        **os.environ,
        "LAMBDAREC_STATE_DIR": str(settings.state_dir),
        "LAMBDAREC_REDIS_PORT": str(settings.redis_port),
        "LAMBDAREC_KAFKA_PORT": str(settings.kafka_port),
        "LAMBDAREC_KAFKA_CONTROLLER_PORT": str(settings.kafka_controller_port),
        "LAMBDAREC_MLFLOW_PORT": str(settings.mlflow_port),
        "LAMBDAREC_AIRFLOW_PORT": str(settings.airflow_port),
        "LAMBDAREC_SERVING_PORT": str(settings.serving_port),
        "COLUMNS": "200",
    }
    cli = [sys.executable, "-m", "lambdarec.platform.cli"]
    shown = subprocess.run([*cli, "status"], env=env, capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    for name in ("kafka", "redis", "mlflow", *AIRFLOW_PARTS, "serving", "data-docs"):
        assert name in shown.stdout
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", settings.redis_port))
        blocker.listen()
        failed = subprocess.run(
            [*cli, "up", "redis"], env=env, capture_output=True, text=True, timeout=60
        )
    assert failed.returncode == 1
    assert "LAMBDAREC_REDIS_PORT" in " ".join(failed.stderr.split())


SMOKE_DAG = """
    import time
    from datetime import datetime

    from airflow.sdk import dag, task


    @dag(dag_id="lambdarec_smoke", schedule=None, start_date=datetime(2024, 1, 1), catchup=False)
    def smoke():
        @task
        def hello():
            print("hello from the lambdarec smoke DAG")
            time.sleep(4)  # long enough to read the log of a running task
            return 42

        hello()


    smoke()
"""


@pytest.mark.slow
def test_airflow_components_run_a_dag_on_loopback(settings: Settings, tmp_path: Path) -> None:
    home = tmp_path / "home"  # the DAG folder is <home>/dags: only the smoke DAG is parsed
    (home / "dags").mkdir(parents=True)
    (home / "dags" / "smoke.py").write_text(textwrap.dedent(SMOKE_DAG))
    settings = settings.model_copy(update={"home": home})

    started = time.monotonic()
    rows = manager.up(["airflow"], settings=settings)
    print(f"airflow up in {time.monotonic() - started:.1f} s")
    assert [row.name for row in rows] == AIRFLOW_PARTS
    assert all(row.state == "up" and row.pid for row in rows), rows
    api = rows[0]
    assert api.url == f"http://127.0.0.1:{settings.airflow_port}"
    password = airflow_password(settings)
    assert password and api.details == f"login admin / {password}"
    assert [r.name for r in manager.status(["airflow"], settings=settings)] == AIRFLOW_PARTS
    # Each component is a session leader of its own process group.
    assert {os.getpgid(row.pid) for row in rows if row.pid} == {row.pid for row in rows}

    health = requests.get(f"{api.url}/api/v2/monitor/health", timeout=10).json()
    for part in ("metadatabase", "scheduler", "triggerer", "dag_processor"):
        assert health[part]["status"] == "healthy", health

    token = requests.post(
        f"{api.url}/auth/token", json={"username": "admin", "password": password}, timeout=10
    )
    assert token.ok, token.text
    http = requests.Session()
    http.headers["Authorization"] = f"Bearer {token.json()['access_token']}"
    dag_url = f"{api.url}/api/v2/dags/lambdarec_smoke"
    # What `lambdarec platform up` does with the scheduled DAGs, here with the smoke DAG: it
    # waits for the DAG processor to list it, then applies LAMBDAREC_DAGS_PAUSED.
    smoke = ["lambdarec_smoke"]
    paused = settings.model_copy(update={"dags_paused": True})
    assert schedule_dags(paused, dag_ids=smoke, wait_s=120) == {"lambdarec_smoke": True}
    assert http.get(dag_url).json()["is_paused"] is True
    assert schedule_dags(settings, dag_ids=smoke) == {"lambdarec_smoke": False}
    assert http.get(dag_url).json()["is_paused"] is False
    run = http.post(f"{dag_url}/dagRuns", json={"logical_date": None})
    assert run.ok, run.text
    run_url = f"{dag_url}/dagRuns/{run.json()['dag_run_id']}"
    task_url = f"{run_url}/taskInstances/hello"

    def task_state() -> str | None:
        response = http.get(task_url)
        return response.json().get("state") if response.ok else None

    eventually(
        lambda: task_state() in ("running", "success"),
        120,
        interval_s=0.2,
        message="the task to run",
    )
    while_running = http.get(f"{task_url}/logs/1", params={"full_content": True})
    assert while_running.status_code == 200, while_running.text
    # No Airflow component serves logs: all of the project's sockets are on loopback, and the only
    # port left is the API server's (checked while the task's worker process is alive).
    listening = _listening(settings.state_dir)
    assert [s for s in listening if s[0] not in LOOPBACK] == [], listening
    assert {port for _, port, _, _ in listening} == {settings.airflow_port}, listening

    def finished() -> str | None:
        state = http.get(run_url).json().get("state")
        return state if state in ("success", "failed") else None

    state = eventually(finished, 180, message="the DAG run to finish")
    print(f"smoke DAG {state} {time.monotonic() - started:.1f} s after `up`")
    assert state == "success"
    logs = http.get(f"{task_url}/logs/1", params={"full_content": True})
    assert logs.status_code == 200, logs.text
    events = [line.get("event", "") for line in logs.json()["content"]]
    assert "hello from the lambdarec smoke DAG" in events, events
    assert "Done. Returned value was: 42" in events, events

    # A second `up` finds all four healthy; the group has no log of its own.
    assert _pids(manager.up(["airflow"], settings=settings)) == _pids(rows)
    with pytest.raises(PlatformError, match="airflow-scheduler"):
        manager.log_path("airflow", settings=settings)
    scheduler_log = manager.log_path("airflow-scheduler", settings=settings)
    assert "--skip-serve-logs" in scheduler_log.read_text()

    # Stopping the API server stops what requires it.
    started = time.monotonic()
    assert sorted(manager.down(["airflow-api"], settings=settings)) == sorted(AIRFLOW_PARTS)
    print(f"airflow down in {time.monotonic() - started:.1f} s")
    assert _project_processes(settings.state_dir) == []
    assert manager.down(["airflow"], settings=settings) == []
