"""The one settings object: local defaults, LAMBDAREC_* overrides, errors that name the variable
to fix, and no side effects (reading settings creates no folder)."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import TYPE_CHECKING

import pytest
from pydantic import ValidationError

from lambdarec.config import REPO_ROOT, Settings, get_settings

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No LAMBDAREC_* variable from the caller's shell, and a fresh get_settings() cache on
    both sides so no other test sees settings read under this test's environment."""
    for name in list(os.environ):
        if name.startswith("LAMBDAREC_"):
            monkeypatch.delenv(name)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def local() -> Settings:
    """Settings from the environment only (ignoring a developer's .env file)."""
    return Settings(_env_file=None)


def test_defaults() -> None:
    s = local()
    assert s.state_dir == REPO_ROOT / ".state"
    assert s.bootstrap_servers == "127.0.0.1:9092"
    assert s.mlflow_uri == "http://127.0.0.1:5000"
    assert (s.online_store, s.feast_project, s.redis_db) == ("sqlite", "lambdarec", 0)
    assert (s.dq_row_count_min_ratio, s.dq_row_count_max_ratio) == (0.5, 2.0)
    assert s.dq_max_price == 1_000_000.0
    # Every generated folder is derived from the state dir.
    assert s.run_dir == s.state_dir / "run"
    assert s.lake_dir == s.state_dir / "lake"
    assert s.feast_dir == s.state_dir / "feast"
    assert s.data_docs_dir == s.state_dir / "data_docs"
    assert s.gx_dir == s.state_dir / "gx"


def test_env_overrides(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LAMBDAREC_STATE_DIR", str(tmp_path / "elsewhere"))
    monkeypatch.setenv("LAMBDAREC_KAFKA_BOOTSTRAP", "broker-1:9092,broker-2:9092")
    monkeypatch.setenv("LAMBDAREC_ONLINE_STORE", "redis")
    monkeypatch.setenv("LAMBDAREC_FEAST_PROJECT", "staging")
    monkeypatch.setenv("LAMBDAREC_REDIS_DB", "3")
    monkeypatch.setenv("LAMBDAREC_DQ_ROW_COUNT_MIN_RATIO", "0.8")
    monkeypatch.setenv("LAMBDAREC_DQ_ROW_COUNT_MAX_RATIO", "1.25")
    monkeypatch.setenv("LAMBDAREC_DQ_MAX_PRICE", "5000")
    get_settings.cache_clear()
    s = get_settings()
    assert s.state_dir == tmp_path / "elsewhere"
    assert s.feast_dir == tmp_path / "elsewhere" / "feast"
    assert s.data_docs_dir == tmp_path / "elsewhere" / "data_docs"
    assert s.bootstrap_servers == "broker-1:9092,broker-2:9092"
    assert (s.online_store, s.feast_project, s.redis_db) == ("redis", "staging", 3)
    assert (s.dq_row_count_min_ratio, s.dq_row_count_max_ratio) == (0.8, 1.25)
    assert s.dq_max_price == 5000.0
    assert get_settings() is s  # read once per process


def test_online_store_drives_the_feast_yaml(tmp_path: Path) -> None:
    from lambdarec.features.store import render_feature_store_yaml

    sqlite = Settings(state_dir=tmp_path)
    assert f"path: {(tmp_path / 'feast' / 'online_store.db').resolve()}" in (
        render_feature_store_yaml(sqlite)
    )
    redis = Settings(state_dir=tmp_path, online_store="redis", redis_port=6390, redis_db=2)
    text = render_feature_store_yaml(redis)
    assert 'connection_string: "127.0.0.1:6390,db=2"' in text
    assert "project: lambdarec" in text


@pytest.mark.parametrize(
    ("env", "needles"),
    [
        ({"LAMBDAREC_KAFKA_BOOTSTRAP": "broker-1"}, ["LAMBDAREC_KAFKA_BOOTSTRAP", "'broker-1'"]),
        (
            {"LAMBDAREC_REDIS_PORT": "9092"},
            ["LAMBDAREC_REDIS_PORT", "LAMBDAREC_KAFKA_PORT", "both 9092"],
        ),
        (
            {"LAMBDAREC_DQ_ROW_COUNT_MIN_RATIO": "3", "LAMBDAREC_DQ_ROW_COUNT_MAX_RATIO": "2"},
            ["LAMBDAREC_DQ_ROW_COUNT_MIN_RATIO (3.0)", "LAMBDAREC_DQ_ROW_COUNT_MAX_RATIO (2.0)"],
        ),
        ({"LAMBDAREC_ONLINE_STORE": "dynamodb"}, ["LAMBDAREC_ONLINE_STORE", "'dynamodb'"]),
        (
            {"LAMBDAREC_FLINK_STATE_BACKEND": "forst"},
            ["LAMBDAREC_FLINK_STATE_BACKEND", "'forst'", "'rocksdb'"],
        ),
    ],
    ids=["bootstrap", "duplicate-ports", "dq-band", "online-store", "flink-state-backend"],
)
def test_errors_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], needles: list[str]
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    with pytest.raises(ValidationError) as info:
        get_settings()
    for needle in needles:
        assert needle in str(info.value)


def test_reading_settings_creates_no_folder(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    monkeypatch.setenv("LAMBDAREC_STATE_DIR", str(state))
    get_settings.cache_clear()
    s = get_settings()
    derived = [name for name, attr in vars(Settings).items() if isinstance(attr, property)]
    assert {"run_dir", "log_dir", "lake_dir", "feast_dir", "data_docs_dir", "gx_dir"} <= set(
        derived
    )
    for name in derived:
        getattr(s, name)
    from lambdarec.features.store import render_feature_store_yaml

    render_feature_store_yaml(s)
    assert not state.exists()


def test_importing_creates_no_folder(tmp_path: Path) -> None:
    """A fresh interpreter importing the settings and the modules that use them."""
    state = tmp_path / "state"
    code = (
        "import lambdarec.config, lambdarec.features.paths, lambdarec.features.store, "
        "lambdarec.quality.paths, lambdarec.quality.cli, lambdarec.features.cli\n"
        "lambdarec.config.get_settings()\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAMBDAREC_")}
    env["LAMBDAREC_STATE_DIR"] = str(state)
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=120)
    assert not state.exists()
