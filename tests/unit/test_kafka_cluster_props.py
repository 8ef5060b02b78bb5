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
