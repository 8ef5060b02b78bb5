"""The loopback Spark cluster runs the compose deployment's Spark programs: only addresses differ."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from lambdarec.config import REPO_ROOT, Settings
from lambdarec.platform.base import PlatformError
from lambdarec.platform.spark_cluster import SparkCluster, spark_cluster


def _compose_command(service: str) -> list[str]:
    compose = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
    return [str(part) for part in compose["services"][service]["command"]]


def _shape(command: list[str]) -> tuple[str, list[str]]:
    """The program's class and its flags, without values or addresses."""
    cls = next(part for part in command if part.startswith("org.apache.spark."))
    return cls, sorted(part for part in command if part.startswith("--"))


def test_master_and_workers_are_the_compose_services_programs(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path)
    cluster = SparkCluster(settings, master_port=7177, webui_port=8190, worker_ports=(7178, 7179))
    master, *workers = cluster.services()
    assert [w.name for w in workers] == ["spark-worker-1", "spark-worker-2"]
    assert Path(master.command[0]).name == "spark-class"
    assert _shape(list(master.command)) == _shape(_compose_command("spark-master"))
    cls, flags = _shape(list(workers[0].command))
    compose_cls, compose_flags = _shape(_compose_command("spark-worker"))
    # The rehearsal also pins each worker's address and its folder (compose: SPARK_WORKER_DIR).
    assert cls == compose_cls and set(compose_flags) <= set(flags)
    assert set(flags) - set(compose_flags) == {"--host", "--port", "--work-dir"}
    assert cluster.master_url == "spark://127.0.0.1:7177" in workers[1].command
    for service in (master, *workers):
        assert service.env["JAVA_HOME"] == str(settings.java_home)
        assert service.env["SPARK_LOCAL_IP"] == "127.0.0.1"
        for var in ("SPARK_LOG_DIR", "SPARK_WORKER_DIR", "SPARK_LOCAL_DIRS"):
            assert Path(service.env[var]).is_relative_to(tmp_path / "spark"), var


def test_a_cluster_without_workers_is_refused(tmp_path: Path) -> None:
    with (
        pytest.raises(PlatformError, match="at least one worker"),
        spark_cluster(Settings(state_dir=tmp_path), master_port=1, webui_port=2, worker_ports=[]),
    ):
        pass
