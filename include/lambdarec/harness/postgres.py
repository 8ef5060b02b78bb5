"""Airflow's and MLflow's metadata on PostgreSQL, for the cluster rehearsal and its test.

:func:`loopback_postgres` starts a private server (:mod:`lambdarec.platform.postgres`) with the
deployment's two roles and databases (``airflow``, ``mlflow``, random passwords);
:func:`metadata_settings` gives a private platform whose settings point Airflow
(``airflow_sql_alchemy_conn``, LocalExecutor) and MLflow (``mlflow_backend_store_uri``) at it,
the configuration alone; :func:`airflow_round_trip` migrates Airflow's schema there and runs a DAG
of the project through the platform's scheduler (LocalExecutor); :func:`mlflow_round_trip` logs
and registers a model through the project's MLflow server and
:class:`~lambdarec.registry.ModelRegistry`.
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
from lambdarec.harness.waiting import eventually
from lambdarec.platform import manager
from lambdarec.platform.airflow import (
    airflow_env,
    airflow_password,
    prepare_airflow,
    schedule_dags,
)
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


#: The id of the run :func:`airflow_round_trip` triggers.
RUN_ID = "rehearsal"


@dataclass(frozen=True)
class AirflowRoundTrip:
    migrate_seconds: float
    #: Tables ``airflow db migrate`` created in the ``airflow`` database.
    tables: int
    #: Until the four components (API server, scheduler, DAG processor, triggerer) were healthy.
    up_seconds: float
    dag_id: str
    #: The triggered run's state in PostgreSQL's ``dag_run`` table, its tasks' in ``task_instance``.
    state: str
    tasks: dict[str, str]
    #: The executor the platform configured (``AIRFLOW__CORE__EXECUTOR``).
    executor: str
    #: Until the DAG processor had parsed ``dag_id`` and it was unpaused.
    parsed_seconds: float
    #: From the trigger to the run's end; then until the four components had stopped.
    run_seconds: float
    stop_seconds: float


def airflow_round_trip(
    settings: Settings,
    store: MetadataStore,
    *,
    dag_id: str = "drift_monitoring",
    day: str,
    timeout_s: float = 300.0,
) -> AirflowRoundTrip:
    """``airflow db migrate`` into ``store`` through the platform's :func:`prepare_airflow`; then
    the platform's Airflow (``up airflow``: the scheduler with the LocalExecutor, its health read
    from the ``job`` table there), ``dag_id`` unpaused and a run for ``day`` triggered through
    the REST API; waits for the run's end in PostgreSQL's ``dag_run`` table. Airflow is stopped
    on return. ``drift_monitoring`` on an empty lake skips its steps (no events that day) and
    succeeds: the metadata path without the heavy tasks."""
    from lambdarec.monitoring.operations import airflow_login

    started = time.monotonic()
    prepare_airflow(settings)
    migrated = time.monotonic() - started
    (tables,) = store.server.query(
        "airflow", "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
    )[0]
    started = time.monotonic()
    manager.up(["airflow"], settings=settings)
    try:
        up_seconds = time.monotonic() - started
        # A loaded machine (the rehearsal's 2 cores) can hold an answer past the API's 10 s.
        eventually(
            lambda: _unpaused(settings, dag_id),
            timeout_s,
            interval_s=5.0,
            message=f"{dag_id} unpaused through Airflow's REST API at {settings.airflow_api_url}",
        )
        parsed_seconds = time.monotonic() - started - up_seconds
        base = settings.airflow_api_url
        http = airflow_login(base, "admin", airflow_password(settings) or "")
        try:
            answer = http.post(
                f"{base}/api/v2/dags/{dag_id}/dagRuns",
                json={"dag_run_id": RUN_ID, "logical_date": f"{day}T00:00:00Z"},
                timeout=120,
            )
            answer.raise_for_status()
        finally:
            http.close()
        started = time.monotonic()

        def ended() -> str | None:
            rows = store.server.query(
                "airflow",
                "SELECT state FROM dag_run WHERE dag_id = %s AND run_id = %s",
                (dag_id, RUN_ID),
            )
            return str(rows[0][0]) if rows and rows[0][0] in ("success", "failed") else None

        state = str(
            eventually(
                ended,
                timeout_s,
                interval_s=1.0,
                message=f"{dag_id}'s run {RUN_ID} ending in PostgreSQL's dag_run table (see "
                f"{settings.log_dir / 'airflow-scheduler.log'})",
            )
        )
        run_seconds = time.monotonic() - started
        rows = store.server.query(
            "airflow",
            "SELECT task_id, state FROM task_instance WHERE dag_id = %s AND run_id = %s",
            (dag_id, RUN_ID),
        )
    finally:
        stopping = time.monotonic()
        manager.down(["airflow"], settings=settings)
    stop_seconds = time.monotonic() - stopping
    return AirflowRoundTrip(
        round(migrated, 1),
        int(tables),
        round(up_seconds, 1),
        dag_id,
        state,
        {str(task): str(task_state) for task, task_state in rows},
        airflow_env(settings)["AIRFLOW__CORE__EXECUTOR"],
        round(parsed_seconds, 1),
        round(run_seconds, 1),
        round(stop_seconds, 1),
    )


def _unpaused(settings: Settings, dag_id: str) -> bool:
    from lambdarec.platform.base import PlatformError

    try:
        return not schedule_dags(settings, paused=False, dag_ids=[dag_id])[dag_id]
    except PlatformError:
        return False


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
