"""A Kafka cluster of several KRaft nodes on loopback: the scale-out path rehearsed on one host.

The local platform runs one combined broker+controller (:mod:`lambdarec.platform.kafka`); a
deployment runs three (``docker-compose.yml``: ``kafka``, ``kafka-2``, ``kafka-3``). This starts the
same topology as real processes from the same Maven Central jars: ``nodes`` combined nodes (each a
broker and a voter of the controller quorum), each with its own client and controller port, log
dir and ``server.properties``, the cluster's defaults those of a replicated deployment
(``default.replication.factor`` = the node count, ``min.insync.replicas=2``, the internal topics
replicated). :meth:`KafkaCluster.settings` points the project's clients at it
(``LAMBDAREC_KAFKA_BOOTSTRAP`` with every node, ``LAMBDAREC_TOPIC_REPLICATION``), which is all a
deployment changes too. :meth:`kill` SIGKILLs one node (the failover drill) and :meth:`start_node`
brings it back on its own log dir.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from lambdarec.platform.base import CONF_DIR, PlatformError, base_env, tcp_open
from lambdarec.platform.kafka import format_storage, kafka_cluster_id, kafka_libs_dir

if TYPE_CHECKING:
    from pathlib import Path

    from lambdarec.config import Settings

log = logging.getLogger(__name__)

#: What each node's JVM gets: three of them fit beside the rest of a rehearsal.
NODE_HEAP = "384m"


@dataclass
class KafkaNode:
    node_id: int
    port: int
    controller_port: int
    home: Path
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


def node_properties(
    node: KafkaNode, nodes: list[KafkaNode], host: str, *, min_insync: int = 2
) -> dict[str, str]:
    """``server.properties`` of one combined node of the cluster ``nodes`` on ``host``."""
    replicas = str(len(nodes))
    insync = str(min(min_insync, len(nodes)))
    return {
        "process.roles": "broker,controller",
        "node.id": str(node.node_id),
        "controller.quorum.voters": ",".join(
            f"{n.node_id}@{host}:{n.controller_port}" for n in nodes
        ),
        "listeners": f"PLAINTEXT://{host}:{node.port},CONTROLLER://{host}:{node.controller_port}",
        "advertised.listeners": f"PLAINTEXT://{host}:{node.port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "log.dirs": str(node.home / "data"),
        "auto.create.topics.enable": "false",
        "default.replication.factor": replicas,
        "min.insync.replicas": insync,
        "offsets.topic.replication.factor": replicas,
        "transaction.state.log.replication.factor": replicas,
        "transaction.state.log.min.isr": insync,
        "share.coordinator.state.topic.replication.factor": replicas,
        "share.coordinator.state.topic.min.isr": insync,
        "group.initial.rebalance.delay.ms": "0",
        # A killed node's partitions move to the others within seconds, not the default 18 s.
        "broker.session.timeout.ms": "6000",
        "broker.heartbeat.interval.ms": "1000",
        "unclean.leader.election.enable": "false",
    }


class KafkaCluster:
    """``nodes`` KRaft nodes under ``home`` on ``ports`` (2 per node: client, controller)."""

    def __init__(
        self,
        settings: Settings,
        home: Path,
        ports: list[int],
        *,
        nodes: int = 3,
        heap: str = NODE_HEAP,
    ) -> None:
        if nodes < 1 or len(ports) != 2 * nodes:
            raise ValueError(f"{nodes} nodes need {2 * nodes} ports, got {len(ports)}")
        self.base = settings
        self.home = home
        self.heap = heap
        self.host = settings.bind_host
        self.nodes = [
            KafkaNode(i + 1, ports[2 * i], ports[2 * i + 1], home / f"node-{i + 1}")
            for i in range(nodes)
        ]

    @property
    def bootstrap(self) -> str:
        return ",".join(f"{self.host}:{n.port}" for n in self.nodes)

    def settings(self) -> Settings:
        """The base settings pointed at this cluster, as a deployment's environment does."""
        return self.base.model_copy(
            update={"kafka_bootstrap": self.bootstrap, "topic_replication": len(self.nodes)}
        )

    def node(self, node_id: int) -> KafkaNode:
        return self.nodes[node_id - 1]

    # -- lifecycle ---------------------------------------------------------------------------

    def _java(self) -> str:
        """The JVM, once the Kafka jars are known to be there."""
        java = self.base.java_home / "bin" / "java"
        if not java.is_file():
            raise PlatformError(f"{java} not found: install Java 17 or set LAMBDAREC_JAVA_HOME")
        libs = kafka_libs_dir(self.base)
        if not any(libs.glob("kafka_*.jar")):
            raise PlatformError(f"no Kafka jars in {libs}: run `make setup` first")
        return str(java)

    def _format(self, cluster_id: str) -> None:
        for node in self.nodes:
            (node.home / "data").mkdir(parents=True, exist_ok=True)
            props = node_properties(node, self.nodes, self.host)
            (node.home / "server.properties").write_text(
                "".join(f"{k}={v}\n" for k, v in props.items())
            )
            if (node.home / "data" / "meta.properties").is_file():
                continue
            format_storage(self.base, node.home / "server.properties", cluster_id)

    def start_node(self, node_id: int) -> None:
        """Start (or restart, on its own log dir) one node."""
        node = self.node(node_id)
        if node.alive:
            return
        libs = kafka_libs_dir(self.base)
        logs = node.home / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        command = [
            self._java(),
            f"-Dlog4j2.configurationFile={CONF_DIR / 'kafka-log4j2.xml'}",
            f"-Xms{self.heap}",
            f"-Xmx{self.heap}",
            "-XX:+UseG1GC",
            "-Djava.awt.headless=true",
            f"-Dkafka.logs.dir={logs}",
            "-cp",
            f"{libs}/*",
            "kafka.Kafka",
            str(node.home / "server.properties"),
        ]
        with (logs / "stdout.log").open("ab") as out:
            node.process = subprocess.Popen(
                command,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=node.home,
                env={**base_env(), "JAVA_HOME": str(self.base.java_home)},
                start_new_session=True,
            )
        log.info("kafka node %d: pid %d on %d", node_id, node.process.pid, node.port)

    def start(self, timeout_s: float = 180.0) -> None:
        """Format every node (first start), start them all, wait until all are brokers."""
        self._java()  # a missing JVM or jar fails here, in one line, before any formatting
        self.home.mkdir(parents=True, exist_ok=True)
        id_file = self.home / "cluster.id"
        if not id_file.is_file():
            id_file.write_text(kafka_cluster_id() + "\n")
        self._format(id_file.read_text().strip())
        for node in self.nodes:
            self.start_node(node.node_id)
        self.wait_brokers(len(self.nodes), timeout_s)

    def brokers(self) -> set[int]:
        """Node ids the cluster's metadata lists as brokers now (empty when none answers)."""
        from confluent_kafka import KafkaException
        from confluent_kafka.admin import AdminClient

        up = [n for n in self.nodes if n.alive and tcp_open(self.host, n.port)]
        if not up:
            return set()
        quiet = logging.getLogger("lambdarec.platform.librdkafka")
        quiet.setLevel(logging.CRITICAL)
        conf: dict[str, Any] = {
            "bootstrap.servers": ",".join(f"{self.host}:{n.port}" for n in up),
            "logger": quiet,
        }
        try:
            meta = AdminClient(conf).list_topics(timeout=3)
        except KafkaException:
            return set()
        return set(meta.brokers)

    def wait_brokers(self, count: int, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            dead = [n.node_id for n in self.nodes if n.process is not None and not n.alive]
            if len(self.nodes) - len(dead) < count:
                raise PlatformError(
                    f"kafka node(s) {dead} exited: see {self.home}/node-N/logs/stdout.log"
                )
            if len(self.brokers()) >= count:
                return
            time.sleep(0.5)
        raise PlatformError(
            f"the Kafka cluster did not list {count} brokers within {timeout_s:.0f} s "
            f"(it lists {sorted(self.brokers())}): see {self.home}/node-N/logs/"
        )

    def kill(self, node_id: int) -> None:
        """SIGKILL one node's JVM (no clean shutdown: the drill's fault)."""
        node = self.node(node_id)
        if node.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(node.process.pid, signal.SIGKILL)
        node.process.wait(30)
        log.info("kafka node %d killed", node_id)

    def stop(self) -> None:
        for node in self.nodes:
            if node.alive and node.process is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(node.process.pid, signal.SIGTERM)
        for node in self.nodes:
            if node.process is None:
                continue
            try:
                node.process.wait(30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(node.process.pid, signal.SIGKILL)
                node.process.wait(10)

    def __enter__(self) -> KafkaCluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
