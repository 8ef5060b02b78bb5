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
import time
from typing import TYPE_CHECKING

import psutil
import pytest
import requests

from lambdarec.config import Settings
from lambdarec.platform import manager
from lambdarec.platform.services import (
    PlatformError,
    airflow_password,
    kafka_libs_dir,
    resolve_kafka_jars,
)

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

pytestmark = pytest.mark.integration


def _free_ports(count: int) -> list[int]:
    sockets = []
    for _ in range(count):
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sockets.append(sock)
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


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


@pytest.fixture(scope="session")
def shared_kafka_libs() -> Path:
    return resolve_kafka_jars(Settings())


@pytest.fixture
def settings(tmp_path: Path, shared_kafka_libs: Path) -> Iterator[Settings]:
    state = tmp_path / "state"
    (state / "kafka").mkdir(parents=True)
    ports = _free_ports(6)
    throwaway = Settings(
        state_dir=state,
        kafka_bootstrap="",
        mlflow_tracking_uri="",
        kafka_port=ports[0],
        kafka_controller_port=ports[1],
        redis_port=ports[2],
        mlflow_port=ports[3],
        airflow_port=ports[4],
        serving_port=ports[5],
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
    assert table["airflow"].state == "down"
    assert table["serving"].state == "not started"
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
    listening = [
        conn
        for conn in psutil.net_connections(kind="tcp")
        if conn.status == psutil.CONN_LISTEN and conn.pid in ours
    ]
    assert listening
    assert {conn.laddr.ip for conn in listening} <= {"127.0.0.1", "::ffff:127.0.0.1"}

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
    deadline = time.monotonic() + 10
    while manager.status(["redis"], settings=settings)[0].state != "down":
        assert time.monotonic() < deadline, "status still reports a SIGKILLed redis"
        time.sleep(0.2)
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
    for name in ("kafka", "redis", "mlflow", "airflow", "serving", "data-docs"):
        assert name in shown.stdout
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", settings.redis_port))
        blocker.listen()
        failed = subprocess.run(
            [*cli, "up", "redis"], env=env, capture_output=True, text=True, timeout=60
        )
    assert failed.returncode == 1
    assert "LAMBDAREC_REDIS_PORT" in " ".join(failed.stderr.split())


@pytest.mark.slow
def test_airflow_standalone_up_login_down(settings: Settings) -> None:
    started = time.monotonic()
    (row,) = manager.up(["airflow"], settings=settings)
    print(f"airflow up in {time.monotonic() - started:.1f} s")
    assert row.state == "up" and row.url == f"http://127.0.0.1:{settings.airflow_port}"

    health = requests.get(f"{row.url}/api/v2/monitor/health", timeout=10).json()
    assert health["metadatabase"]["status"] == "healthy"
    assert health["scheduler"]["status"] == "healthy"
    password = airflow_password(settings)
    assert password and row.details == f"login admin / {password}"
    token = requests.post(
        f"{row.url}/auth/token", json={"username": "admin", "password": password}, timeout=10
    )
    assert token.ok, token.text
    dags = requests.get(
        f"{row.url}/api/v2/dags",
        headers={"Authorization": f"Bearer {token.json()['access_token']}"},
        timeout=10,
    )
    assert dags.status_code == 200, dags.text
    assert "total_entries" in dags.json()

    processes = _project_processes(settings.state_dir)
    assert len(processes) > 1, "standalone runs scheduler, api-server, ... in its process group"
    api = [
        conn
        for conn in psutil.net_connections(kind="tcp")
        if conn.status == psutil.CONN_LISTEN and conn.laddr.port == settings.airflow_port
    ]
    assert api and {conn.laddr.ip for conn in api} == {"127.0.0.1"}

    started = time.monotonic()
    assert manager.down(["airflow"], settings=settings) == ["airflow"]
    print(f"airflow down in {time.monotonic() - started:.1f} s")
    assert _project_processes(settings.state_dir) == []
