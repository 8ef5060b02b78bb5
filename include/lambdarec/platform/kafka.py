"""Kafka: one KRaft broker+controller from Apache's jars (resolved with Maven from
env/kafka/pom.xml), formatted on first start, its topics ensured on every ``up``."""

from __future__ import annotations

import base64
import hashlib
import logging
import shutil
import subprocess
import uuid
from typing import TYPE_CHECKING, Any

from lambdarec.platform.base import CONF_DIR, PlatformError, Service, base_env, tcp_open

if TYPE_CHECKING:
    from pathlib import Path

    from lambdarec.config import Settings

log = logging.getLogger(__name__)


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
    env = {**base_env(), "JAVA_HOME": str(settings.java_home)}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0 or not any(staging.glob("kafka_*.jar")):
        output = (done.stdout + done.stderr).strip().splitlines()[-30:]
        raise PlatformError("mvn could not resolve the Kafka jars:\n" + "\n".join(output))
    (staging / ".pom.sha256").write_text(digest + "\n")
    shutil.rmtree(target, ignore_errors=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging.rename(target)
    return libs


def broker_properties(settings: Settings) -> dict[str, str]:
    """The local broker's ``server.properties`` (a combined broker and controller, plaintext on
    ``bind_host``), as a dict a caller may override (the TLS test adds the deployment's)."""
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
    return props


def _kafka_properties(settings: Settings) -> str:
    props = broker_properties(settings)
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


def format_storage(settings: Settings, config: Path, cluster_id: str) -> None:
    """Format the log dir of the node that ``config`` describes for ``cluster_id`` (KRaft's
    ``kafka-storage format``; a formatted dir is left as it is)."""
    cmd = [
        str(_java(settings)),
        f"-Dlog4j2.configurationFile={CONF_DIR / 'kafka-log4j2.xml'}",
        "-cp",
        f"{kafka_libs_dir(settings)}/*",
        "kafka.tools.StorageTool",
        "format",
        "-t",
        cluster_id,
        "-c",
        str(config),
        "--ignore-formatted",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, env=base_env())
    if done.returncode != 0:
        output = (done.stdout + done.stderr).strip().splitlines()[-30:]
        raise PlatformError(
            f"formatting the Kafka storage of {config} failed:\n" + "\n".join(output)
        )


def _kafka_prepare(settings: Settings) -> None:
    _java(settings)
    resolve_kafka_jars(settings)
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
    log.info("formatting the Kafka log dir (cluster id %s)", cluster_id)
    format_storage(settings, config, cluster_id)


def _kafka_health(settings: Settings) -> bool:
    """Whether the broker (or the cluster ``LAMBDAREC_KAFKA_BOOTSTRAP`` names) lists its topics."""
    if not settings.kafka_bootstrap and not tcp_open(settings.bind_host, settings.kafka_port):
        return False
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    from lambdarec.streaming.kafka import security_config

    quiet = logging.getLogger("lambdarec.platform.librdkafka")
    quiet.setLevel(logging.CRITICAL)
    try:  # a cluster's SASL login, as every client of the project has it
        login = security_config(settings)
    except ValueError:  # a CA file that is not there: the clients name it; here, not reachable
        return False
    config: dict[str, Any] = {
        "bootstrap.servers": settings.bootstrap_servers,
        "logger": quiet,
        **login,
    }
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
    """The local KRaft broker; with ``LAMBDAREC_KAFKA_BOOTSTRAP`` set, a reserved row for that
    cluster (``up`` starts no broker of its own, ``status`` asks the cluster for its topics)."""
    if settings.kafka_bootstrap:
        return Service(
            name="kafka",
            title="Kafka (external cluster: LAMBDAREC_KAFKA_BOOTSTRAP)",
            ports={},
            url=settings.kafka_bootstrap,
            health=lambda: _kafka_health(settings),
            external=True,
        )
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
