"""Airflow's and MLflow's metadata stores from the settings alone (no server): SQLite by default,
the configured PostgreSQL URLs when set, as the cluster rehearsal's harness builds them."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from lambdarec.harness.postgres import MetadataStore, metadata_settings
from lambdarec.platform.airflow import _database_identity, airflow_env
from lambdarec.platform.base import PlatformError, settings_env
from lambdarec.platform.postgres import PostgresServer, database_url, postgres_bin_dir
from lambdarec.platform.stores import mlflow

if TYPE_CHECKING:
    from pathlib import Path

    from lambdarec.config import Settings


def _backend_store(settings: Settings) -> str:
    command = mlflow(settings).command or []
    return command[command.index("--backend-store-uri") + 1]


def test_the_defaults_are_sqlite_under_the_state_folder(tmp_path: Path) -> None:
    from lambdarec.harness.platform import private_settings

    settings = private_settings(tmp_path)
    conn = airflow_env(settings)["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
    assert conn == f"sqlite:///{tmp_path / 'airflow' / 'airflow.db'}"
    assert _backend_store(settings) == f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"


def test_the_harness_points_both_at_postgres(tmp_path: Path) -> None:
    airflow_url = database_url("airflow", "p@ss/word", "127.0.0.1", 25432, "airflow")
    mlflow_url = database_url("mlflow", "secret", "127.0.0.1", 25432, "mlflow")
    assert airflow_url == "postgresql+psycopg2://airflow:p%40ss%2Fword@127.0.0.1:25432/airflow"
    store = MetadataStore(PostgresServer(tmp_path / "pg", 25432), airflow_url, mlflow_url, "15")
    settings = metadata_settings(tmp_path / "state", store)

    env = airflow_env(settings)
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] == airflow_url
    assert env["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
    assert _backend_store(settings) == mlflow_url
    # The migration marker names the database without its password.
    assert _database_identity(settings) == (
        "postgresql+psycopg2://airflow:***@127.0.0.1:25432/airflow"
    )
    # Every service of the platform gets them as LAMBDAREC_* (an Airflow task's own settings),
    # and a dump masks them.
    exported = settings_env(settings)
    assert exported["LAMBDAREC_AIRFLOW_SQL_ALCHEMY_CONN"] == airflow_url
    assert exported["LAMBDAREC_MLFLOW_BACKEND_STORE_URI"] == mlflow_url
    assert "secret" not in repr(settings)


def test_missing_binaries_name_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    import lambdarec.platform.postgres as postgres

    monkeypatch.setattr(postgres, "DEBIAN_BIN_GLOB", "/nonexistent/postgresql/*/bin")
    with pytest.raises(PlatformError, match=r"not found .*run `make setup`"):
        postgres_bin_dir()


def test_a_missing_driver_names_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    from lambdarec.platform.airflow import _check_drivers

    url = database_url("airflow", "secret", "127.0.0.1", 25432, "airflow")
    store = MetadataStore(PostgresServer(tmp_path / "pg", 25432), url, url, "15")
    settings = metadata_settings(tmp_path / "state", store)
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name: None if name == "asyncpg" else real(name)
    )
    with pytest.raises(PlatformError, match=r"asyncpg is not installed: run `make setup`"):
        _check_drivers(settings)
