"""The stores of the local platform: Redis (Feast's online store), the MLflow tracking server and
registry, and the opt-in Milvus standalone server (large catalogs)."""

from __future__ import annotations

import shutil
import signal
from pathlib import Path
from typing import TYPE_CHECKING

from lambdarec.platform.base import PlatformError, Service, http_ok, venv_bin

if TYPE_CHECKING:
    from lambdarec.config import Settings


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


def mlflow_backend_store(settings: Settings) -> str:
    """The MLflow server's backend store: ``settings.mlflow_backend_store_uri`` (PostgreSQL in
    the deployment and the cluster rehearsal), or SQLite under the state folder by default."""
    configured = settings.mlflow_backend_store_uri.get_secret_value()
    return configured or f"sqlite:///{settings.state_dir / 'mlflow' / 'mlflow.db'}"


def mlflow(settings: Settings) -> Service:
    home = settings.state_dir / "mlflow"
    url = f"http://{settings.bind_host}:{settings.mlflow_port}"
    command = [
        str(venv_bin() / "mlflow"),
        "server",
        "--host",
        settings.bind_host,
        "--port",
        str(settings.mlflow_port),
        "--workers",
        "1",
        "--backend-store-uri",
        mlflow_backend_store(settings),
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


def milvus_ports(settings: Settings) -> tuple[int, ...]:
    """Every port a Milvus server of these settings listens on: the proxy, the health endpoint
    (fixed by the wheel), embedded etcd and its peer port."""
    etcd = settings.milvus_etcd_port
    return (settings.milvus_port, MILVUS_METRICS_PORT, etcd, etcd + 1)


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
