"""Airflow's and MLflow's metadata on PostgreSQL, for the cluster rehearsal and its test.

:func:`loopback_postgres` starts a private server (:mod:`lambdarec.platform.postgres`) with the
deployment's two roles and databases (``airflow``, ``mlflow``, random passwords);
:func:`metadata_settings` gives a private platform whose settings point Airflow
(``airflow_sql_alchemy_conn``, LocalExecutor) and MLflow (``mlflow_backend_store_uri``) at it,
the configuration alone; :func:`airflow_round_trip` migrates Airflow's schema there and runs a DAG
of the project, :func:`mlflow_round_trip` logs and registers a model through the project's
MLflow server and :class:`~lambdarec.registry.ModelRegistry`.
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from lambdarec.harness.platform import free_ports, private_settings
from lambdarec.platform import manager
from lambdarec.platform.airflow import airflow_env, prepare_airflow
from lambdarec.platform.postgres import PostgresServer

if TYPE_CHECKING:
    from collections.abc import Iterator

    from lambdarec.config import Settings


@dataclass(frozen=True)
class MetadataStore:
    """A started server and the URLs of its two metadata databases (passwords included)."""

    server: PostgresServer
    airflow_url: str
    mlflow_url: str
    version: str


@contextlib.contextmanager
def loopback_postgres(folder: Path | None = None) -> Iterator[MetadataStore]:
    """PostgreSQL on 127.0.0.1 and a free port with the ``airflow`` and ``mlflow`` databases;
    stopped on exit. Without ``folder``, a temporary one (removed on exit) that the ``postgres``
    user can reach when we are root."""
    own = folder is None
    if folder is None:
        folder = Path(tempfile.mkdtemp(prefix="lambdarec-pg-"))
        folder.chmod(0o711)  # traversable, not listable: the server runs as `postgres` under root
    (port,) = free_ports(1)
    server = PostgresServer(folder, port)
    try:
        server.init()
        server.start()
        yield MetadataStore(
            server,
            airflow_url=server.create_database("airflow", secrets.token_urlsafe(18)),
            mlflow_url=server.create_database("mlflow", secrets.token_urlsafe(18)),
            version=server.version(),
        )
    finally:
        server.stop()
        if own:
            shutil.rmtree(folder, ignore_errors=True)


def metadata_settings(state_dir: Path, store: MetadataStore, **overrides: object) -> Settings:
    """A private platform in ``state_dir`` whose Airflow and MLflow metadata live in ``store``."""
    return private_settings(
        state_dir,
        airflow_sql_alchemy_conn=store.airflow_url,
        mlflow_backend_store_uri=store.mlflow_url,
        **overrides,
    )


@dataclass(frozen=True)
class AirflowRoundTrip:
    migrate_seconds: float
    dag_id: str
    #: The run's state in PostgreSQL's ``dag_run`` table.
    state: str
    tasks: dict[str, str]
    dag_seconds: float
    executor: str
    tables: int


def airflow_round_trip(
    settings: Settings, store: MetadataStore, *, dag_id: str = "drift_monitoring", day: str
) -> AirflowRoundTrip:
    """``airflow db migrate`` into ``store`` through the platform's :func:`prepare_airflow`, then
    ``dag.test()`` of ``dag_id`` for ``day`` as ``make demo`` runs DAGs; the run's state is read
    back from the ``dag_run`` table. ``drift_monitoring`` on an empty lake skips its steps (no
    events that day) and succeeds: the metadata path without the heavy tasks."""
    from lambdarec.platform.dag_run import run_dag_test

    started = time.monotonic()
    prepare_airflow(settings)
    migrated = time.monotonic() - started
    (tables,) = store.server.query(
        "airflow", "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
    )[0]
    started = time.monotonic()
    run = run_dag_test(dag_id, day, settings, timeout_s=600)
    dag_seconds = time.monotonic() - started
    rows = store.server.query(
        "airflow",
        "SELECT state FROM dag_run WHERE dag_id = %s AND logical_date = %s::timestamptz",
        (dag_id, f"{day}T00:00:00+00:00"),
    )
    if not rows:
        raise AssertionError(
            f"no {dag_id} run for {day} in PostgreSQL's dag_run table: Airflow wrote elsewhere "
            f"(dag.test said {run.state}; log tail: {run.log[-800:]})"
        )
    return AirflowRoundTrip(
        round(migrated, 1),
        dag_id,
        str(rows[0][0]),
        run.tasks,
        round(dag_seconds, 1),
        airflow_env(settings)["AIRFLOW__CORE__EXECUTOR"],
        int(tables),
    )


@dataclass(frozen=True)
class MlflowRoundTrip:
    start_seconds: float
    run_id: str
    version: str
    #: The version's run id and the run's metric as read back from the server.
    read_back_run_id: str
    read_back_metric: float
    #: Rows of PostgreSQL's ``model_versions`` table for the model.
    versions_in_postgres: int


def mlflow_round_trip(
    settings: Settings, store: MetadataStore, *, model_name: str = "rehearsal_model"
) -> MlflowRoundTrip:
    """Start the platform's MLflow server (its backend store ``store``), log a run with a model
    folder and register it through :class:`~lambdarec.registry.ModelRegistry`, read both back
    (and from PostgreSQL's ``model_versions`` table); the server is stopped on return."""
    from lambdarec.registry import ModelRegistry

    started = time.monotonic()
    manager.up(["mlflow"], settings=settings)
    try:
        start_seconds = time.monotonic() - started
        registry = ModelRegistry.from_settings(settings, model_name)
        model_dir = settings.state_dir / "rehearsal-model"
        model_dir.mkdir(parents=True, exist_ok=True)
        (model_dir / "weights.txt").write_text("rehearsal\n")
        run_id = registry.log_run(
            params={"rehearsal": "postgres"},
            metrics={"ndcg_at_10": 0.25},
            evaluation_id="rehearsal",
            model_dir=model_dir,
        )
        version = registry.register(run_id)
        found = registry.get_version(version)
        metric = registry.client.get_run(found.run_id).data.metrics
        (count,) = store.server.query(
            "mlflow", "SELECT count(*) FROM model_versions WHERE name = %s", (model_name,)
        )[0]
    finally:
        manager.down(["mlflow"], settings=settings)
    return MlflowRoundTrip(
        round(start_seconds, 1),
        run_id,
        version,
        found.run_id,
        float(next(iter(metric.values()))),
        int(count),
    )
