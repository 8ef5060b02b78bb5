"""Throwaway platforms for tests and benchmarks: find the configured service or start a private one.

A private platform lives in a temporary state folder with free loopback ports, so it never meets
the developer's running platform, and is stopped (no process left) when the context exits. Kafka
jars are shared with the default state folder through a symlink, so Maven runs at most once.
"""

from __future__ import annotations

import contextlib
import random
import shutil
import socket
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from lambdarec.config import LOCAL_PORTS, Settings, get_settings
from lambdarec.platform import manager
from lambdarec.platform.kafka import kafka_libs_dir, resolve_kafka_jars

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports that were free on 127.0.0.1 a moment ago.

    Drawn below Linux's ephemeral range (32768-60999): a port the kernel hands out could be
    taken by any outgoing connection (another test lane's clients) before the service binds it.
    """
    ports: list[int] = []
    sockets = []
    while len(ports) < count:
        port = random.randint(20_000, 32_000)  # noqa: S311 - not a secret
        sock = socket.socket()
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            sock.close()
            continue
        if port in ports:
            sock.close()
            continue
        sockets.append(sock)
        ports.append(port)
    for sock in sockets:
        sock.close()
    return ports


def private_settings(state_dir: Path, **overrides: object) -> Settings:
    """Settings for a private platform in ``state_dir`` with a free port for every local service
    (:data:`~lambdarec.config.LOCAL_PORTS`), so it never meets the developer's running platform
    (``make demo`` leaves one up); the scheduled DAGs stay paused (a test's runs are its own);
    other values are the defaults."""
    values: dict[str, object] = dict(zip(LOCAL_PORTS, free_ports(len(LOCAL_PORTS)), strict=True))
    values.update(
        state_dir=state_dir,
        kafka_bootstrap="",
        mlflow_tracking_uri="",
        milvus_uri="",
        dags_paused=True,
    )
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


def link_shared(shared: Path, target: Path) -> None:
    """``target`` (a private state folder's) as a link to ``shared`` (the shared state folder's
    downloaded jars): private platforms do not download them again."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.exists():
        target.symlink_to(shared.resolve(), target_is_directory=True)


def link_kafka_jars(settings: Settings) -> None:
    link_shared(resolve_kafka_jars(get_settings()), kafka_libs_dir(settings))


@contextlib.contextmanager
def private_platform(
    services: Sequence[str], *, keep: bool = False, **overrides: object
) -> Iterator[Settings]:
    """Start ``services`` in a fresh temporary state folder; stop them and clean up on exit.
    With ``milvus`` among them, the index is that server unless ``milvus_uri`` says otherwise."""
    state = Path(tempfile.mkdtemp(prefix="lambdarec-"))
    settings = private_settings(state, **overrides)
    if "milvus" in services and "milvus_uri" not in overrides:
        uri = f"http://{settings.bind_host}:{settings.milvus_port}"
        settings = settings.model_copy(update={"milvus_uri": uri})
    try:
        if "kafka" in services:
            link_kafka_jars(settings)
        manager.up(list(services), settings=settings)
        yield settings
    finally:
        manager.down(settings=settings)
        if not keep:
            shutil.rmtree(state, ignore_errors=True)


@contextlib.contextmanager
def kafka_broker(settings: Settings | None = None) -> Iterator[Settings]:
    """The configured broker if it answers, otherwise a private one for the duration."""
    from lambdarec.streaming.kafka import wait_for_broker

    settings = settings or get_settings()
    if wait_for_broker(settings, timeout_s=2):
        yield settings
        return
    with private_platform(["kafka"]) as private:
        yield private
