"""The local platform's perimeter: with every service up at once, no process of it listens
anywhere but on loopback (read from the OS's socket table, not from the services' settings).

Every default service (Kafka, Redis, MLflow, the four Airflow components, the supervised speed
layer with its Flink mini-cluster, the feature pusher, the supervised attribution job on a
mini-cluster of its own, the reports site) and the opt-in serving behind its nginx proxy, on the
demo's private platform after the demo ran (tests/e2e/conftest.py): what the demo started is
left running, the rest is started beside it, and the demo fixture's teardown stops them all.
The Milvus server is the one service left out: its health port is fixed (9091), so it runs in
the serial test lane only (tests/integration/test_vector_index.py and the serving fault test
start it); this module runs with the demo's, beside them (tests/conftest.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import psutil
import pytest

from lambdarec.harness.waiting import eventually
from lambdarec.platform import manager
from lambdarec.platform.services import build_services

if TYPE_CHECKING:
    from lambdarec.config import Settings

pytestmark = [pytest.mark.e2e, pytest.mark.integration, pytest.mark.slow]

LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}


def _descendants(pids: list[int]) -> dict[int, str]:
    """Every live process of the services' trees: pid -> name."""
    found: dict[int, str] = {}
    for pid in pids:
        try:
            root = psutil.Process(pid)
            for process in [root, *root.children(recursive=True)]:
                found[process.pid] = process.name()
        except psutil.Error:
            continue
    return found


def _not_up(rows: list[manager.ServiceStatus], settings: Settings) -> str:
    """The rows that are not up, each with the tail of its log: what a failure must show."""
    return "\n".join(
        f"{row.name}: {row.state} {row.details}\n  "
        + "\n  ".join(manager.tail(manager.log_path(row.name, settings=settings), 15))
        for row in rows
        if row.state != "up" or not row.pid
    )


# After the demo's package fixture (~10 minutes when this module runs alone).
@pytest.mark.timeout(1800)
def test_the_whole_platform_listens_on_loopback_only(demo: tuple[Settings, object]) -> None:
    settings, _ = demo
    services = build_services(settings)
    wanted = [
        name
        for name, service in services.items()
        if service.managed
        and name != "milvus"
        and (service.default or name in ("serving", "proxy"))
    ]
    try:
        manager.up(wanted, settings=settings, timeout_s=400)
        # Each service was healthy when `up` returned; a later snapshot of all of them on a busy
        # machine can catch one health probe's 2 s timeout, so the rows get a minute to agree.
        snapshot: list[list[manager.ServiceStatus]] = []

        def all_up() -> bool:
            snapshot[:] = [manager.status(wanted, settings=settings)]
            return all(row.state == "up" and row.pid for row in snapshot[0])

        eventually(all_up, 60, interval_s=2, message=lambda: _not_up(snapshot[0], settings))
        rows = snapshot[0]
        ours = _descendants([row.pid for row in rows if row.pid])
        listening = [
            (conn.laddr.ip, conn.laddr.port, ours[conn.pid])
            for conn in psutil.net_connections(kind="tcp")
            if conn.status == psutil.CONN_LISTEN and conn.pid in ours
        ]
        # Each service that serves a port was seen listening (the scan found the processes).
        ports = {port for _, port, _ in listening}
        expected = {
            settings.kafka_port,
            settings.redis_port,
            settings.mlflow_port,
            settings.airflow_port,
            settings.serving_port,
            settings.proxy_port,
            settings.reports_port,
            settings.flink_rest_port,
            settings.attribution_rest_port,
        }
        assert expected <= ports, (sorted(expected - ports), listening)
        assert any(name == "java" for _, _, name in listening), "the speed layer's JVM was seen"
        wide = [entry for entry in listening if entry[0] not in LOOPBACK]
        assert wide == [], f"listening beyond loopback: {wide}"
        udp = [
            (conn.laddr.ip, conn.laddr.port, ours[conn.pid])
            for conn in psutil.net_connections(kind="udp")
            if conn.pid in ours and conn.laddr and conn.laddr.ip not in LOOPBACK
        ]
        assert udp == [], f"UDP sockets beyond loopback: {udp}"
    finally:
        # What only this test started (the demo fixture's teardown would stop it too): the
        # Airflow scheduler, on the demo's state, must not outlive the check.
        manager.down(["airflow", "mlflow", "proxy"], settings=settings)
