"""The loopback Flink cluster runs the compose deployment's Flink programs with its settings:
only addresses, ports, sizes and folders differ."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from lambdarec.config import REPO_ROOT, Settings
from lambdarec.platform.base import PlatformError
from lambdarec.platform.flink_cluster import COMPOSE_KEYS, FlinkCluster


def _compose_properties(service: str) -> dict[str, str]:
    compose = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
    text = compose["services"][service]["environment"]["FLINK_PROPERTIES"]
    return {k: str(v) for k, v in yaml.safe_load(text).items()}


@pytest.fixture
def cluster(tmp_path: Path) -> FlinkCluster:
    return FlinkCluster(
        Settings(state_dir=tmp_path),
        tmp_path / "flink-cluster",
        rest_port=18081,
        rpc_port=16123,
        blob_port=16124,
        taskmanager_ports=(16125, 16126),
    )


def test_the_conf_sets_the_compose_services_settings(cluster: FlinkCluster) -> None:
    jobmanager = _compose_properties("flink-jobmanager")
    assert _compose_properties("flink-taskmanager") == jobmanager
    assert set(jobmanager) == set(COMPOSE_KEYS)
    conf = cluster.conf()
    assert set(COMPOSE_KEYS) <= set(conf)
    # Values that are not addresses, sizes or paths are the compose services'.
    assert conf["restart-strategy.type"] == jobmanager["restart-strategy.type"]
    assert conf["jobmanager.rpc.address"] == conf["rest.address"] == "127.0.0.1"
    assert conf["taskmanager.numberOfTaskSlots"] == "1"
    assert conf["python.executable"] == conf["python.client.executable"]
    assert conf["python.executable"].endswith(".venv-flink/bin/python")


def test_the_conf_is_loopback_with_the_clusters_ports_and_folders(
    cluster: FlinkCluster, tmp_path: Path
) -> None:
    conf = cluster.conf()
    for key in ("jobmanager.bind-host", "rest.bind-address", "taskmanager.host"):
        assert conf[key] == "127.0.0.1", key
    assert (conf["rest.port"], conf["jobmanager.rpc.port"], conf["blob.server.port"]) == (
        "18081",
        "16123",
        "16124",
    )
    assert conf["execution.checkpointing.dir"] == (cluster.home / "checkpoints").as_uri()
    for key in ("io.tmp.dirs", "env.log.dir"):
        assert Path(conf[key]).is_relative_to(tmp_path), key
    assert cluster.jobmanager == "127.0.0.1:18081"


def test_the_written_config_yaml_reads_back(cluster: FlinkCluster, tmp_path: Path) -> None:
    flink = tmp_path / "pyflink"
    (flink / "bin").mkdir(parents=True)
    (flink / "conf").mkdir()
    (flink / "bin" / "jobmanager.sh").touch()
    for name in ("log4j-console.properties", "log4j.properties", "log4j-cli.properties"):
        (flink / "conf" / name).write_text("# log4j\n")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("lambdarec.platform.flink_cluster.flink_home", lambda _settings: flink)
        cluster.write_conf()
        written = yaml.safe_load((cluster.conf_dir / "config.yaml").read_text())
        assert {k: str(v) for k, v in written.items()} == cluster.conf()
        assert (cluster.conf_dir / "log4j-console.properties").is_file()
        jobmanager = cluster.jobmanager_command()
        taskmanager = cluster.taskmanager_command(1)
    assert jobmanager == [str(flink / "bin" / "jobmanager.sh"), "start-foreground"]
    assert taskmanager[:2] == [str(flink / "bin" / "taskmanager.sh"), "start-foreground"]
    assert "taskmanager.rpc.port=16126" in taskmanager
    assert "taskmanager.resource-id=taskmanager-2" in taskmanager
    assert cluster.env()["FLINK_CONF_DIR"] == str(cluster.conf_dir)


def test_a_missing_distribution_is_named(tmp_path: Path) -> None:
    from lambdarec.platform.flink_cluster import flink_home

    with pytest.raises(PlatformError, match="make setup"):
        flink_home(Settings(state_dir=tmp_path, home=tmp_path))


def test_submit_runs_flink_run_at_the_configured_parallelism(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import subprocess

    from lambdarec.speed import control

    flink = tmp_path / ".venv-flink/lib/python3.11/site-packages/pyflink/bin/flink"
    flink.parent.mkdir(parents=True)
    flink.touch()
    ran: list[list[str]] = []

    def run(argv: list[str], **_kwargs: object) -> subprocess.CompletedProcess[str]:
        ran.append(argv)
        return subprocess.CompletedProcess(argv, 0, "", "")

    monkeypatch.setattr(control.subprocess, "run", run)
    settings = Settings(
        state_dir=tmp_path, home=tmp_path, flink_jobmanager="127.0.0.1:18081", flink_parallelism=2
    )
    control.submit(settings, control.Target.parse(settings.flink_jobmanager))
    (argv,) = ran
    assert argv[:4] == [str(flink), "run", "-m", "127.0.0.1:18081"]
    python = str(tmp_path / ".venv-flink" / "bin" / "python")
    # The client side runs the job file too: the PyFlink venv's python, not a `python` on PATH.
    assert argv[argv.index("-pyclientexec") + 1] == argv[argv.index("-pyexec") + 1] == python
    assert argv[argv.index("--parallelism") + 1] == "2"
    assert "--rest-port" not in argv and "--detached" in argv
