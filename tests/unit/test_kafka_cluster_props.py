"""The loopback Kafka cluster's node properties (make rehearse-cluster): one quorum of every node,
each on its own ports and log dir, the deployment's replication defaults."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from lambdarec.config import Settings
from lambdarec.platform.kafka_cluster import KafkaCluster, node_properties

if TYPE_CHECKING:
    from pathlib import Path


def test_three_nodes_form_one_quorum_with_replication_3_and_min_insync_2(tmp_path: Path) -> None:
    cluster = KafkaCluster(Settings(), tmp_path, [9101, 9102, 9201, 9202, 9301, 9302])
    props = [node_properties(n, cluster.nodes, "127.0.0.1") for n in cluster.nodes]
    voters = "1@127.0.0.1:9102,2@127.0.0.1:9202,3@127.0.0.1:9302"
    assert {p["controller.quorum.voters"] for p in props} == {voters}
    assert [p["node.id"] for p in props] == ["1", "2", "3"]
    assert len({p["listeners"] for p in props}) == 3
    assert len({p["log.dirs"] for p in props}) == 3
    for p in props:
        assert p["process.roles"] == "broker,controller"
        assert p["default.replication.factor"] == p["offsets.topic.replication.factor"] == "3"
        assert p["min.insync.replicas"] == p["transaction.state.log.min.isr"] == "2"
        assert p["auto.create.topics.enable"] == "false"
    assert cluster.bootstrap == "127.0.0.1:9101,127.0.0.1:9201,127.0.0.1:9301"
    pointed = cluster.settings()
    assert pointed.bootstrap_servers == cluster.bootstrap
    assert pointed.topic_replication == 3


def test_a_node_count_without_two_ports_each_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="3 nodes need 6 ports, got 4"):
        KafkaCluster(Settings(), tmp_path, [1, 2, 3, 4])


#: The kafka-cluster profile's variables (.env.example and docs/deployment.md).
CLUSTER_ENV = {
    "STACK_KAFKA_QUORUM_VOTERS": "1@kafka:9093,2@kafka-2:9093,3@kafka-3:9093",
    "STACK_TOPIC_REPLICATION": "3",
    "STACK_MIN_INSYNC_REPLICAS": "2",
    "STACK_KAFKA_BOOTSTRAP": "kafka:9092,kafka-2:9092,kafka-3:9092",
}


def _as_property(variable: str) -> str:
    return variable.removeprefix("KAFKA_").lower().replace("_", ".")


def test_the_compose_cluster_profile_is_the_rehearsed_topology(tmp_path: Path) -> None:
    """The compose kafka-cluster profile runs what `make rehearse-cluster` drills: three combined
    nodes in one three-voter quorum, with the same replication properties; the containers differ
    only in addresses and in their SASL_SSL listener."""
    from lambdarec.deploy import generate_secrets, load_compose, service_environment

    compose = load_compose({**generate_secrets(), **CLUSTER_ENV})
    cluster = KafkaCluster(Settings(), tmp_path, [9101, 9102, 9201, 9202, 9301, 9302])
    rehearsed = node_properties(cluster.nodes[0], cluster.nodes, "127.0.0.1")
    compared = (
        "process.roles",
        "default.replication.factor",
        "min.insync.replicas",
        "offsets.topic.replication.factor",
        "transaction.state.log.replication.factor",
        "transaction.state.log.min.isr",
        "share.coordinator.state.topic.replication.factor",
        "share.coordinator.state.topic.min.isr",
        "auto.create.topics.enable",
        "controller.listener.names",
    )
    ids = []
    for service in ("kafka", "kafka-2", "kafka-3"):
        env = service_environment(compose, service)
        props = {_as_property(k): v for k, v in env.items() if k.startswith("KAFKA_")}
        assert {k: props[k] for k in compared} == {k: rehearsed[k] for k in compared}, service
        assert props["controller.quorum.voters"] == CLUSTER_ENV["STACK_KAFKA_QUORUM_VOTERS"]
        assert props["listeners"] == "BROKER://:9092,CONTROLLER://:9093", service
        assert props["advertised.listeners"] == f"BROKER://{service}:9092"
        # A node waiting for `kafka` to be healthy would never start: the quorum needs two.
        assert "kafka" not in compose["services"][service].get("depends_on", {}), service
        ids.append(props["node.id"])
    assert ids == ["1", "2", "3"]
