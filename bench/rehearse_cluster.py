"""Rehearsal of the scale-out path (issue #25), PostgreSQL, Kafka, Flink and Spark parts: real
clusters on loopback.

Steps, each timed: ``postgres`` starts the distribution's PostgreSQL (initdb in a temporary
folder, 127.0.0.1 and a free port; :mod:`lambdarec.platform.postgres`) with the deployment's
``airflow`` and ``mlflow`` roles and databases; ``airflow_on_postgres`` points a private
platform's settings at it (``airflow_sql_alchemy_conn``, LocalExecutor,
``mlflow_backend_store_uri``), runs ``airflow db migrate`` through the platform's own
``prepare_airflow``, starts the platform's Airflow (the scheduler with the LocalExecutor), triggers
a run of ``drift_monitoring`` (an empty lake: its steps skip) and reads its ``success`` from
PostgreSQL's ``dag_run`` table; ``mlflow_on_postgres`` starts the
platform's MLflow server on it, logs a run and registers a model version through ``ModelRegistry``,
and reads both back (and the ``model_versions`` row). PostgreSQL stops before Kafka starts.
``kafka_cluster`` starts three combined KRaft broker+controller nodes from the
project's Kafka jars (:mod:`lambdarec.platform.kafka_cluster`: replication 3,
``min.insync.replicas=2``) and creates the project's topics on them; ``drill_broker_lost`` replays
``--kafka-events`` generated events at ``--kafka-rate`` through the project's producer and SIGKILLs
one node half-way: the producer goes on, and the events topic read back from the start must hold
every event exactly once (``events_lost``, ``duplicates``). ``flink_cluster`` starts a Flink
session cluster from PyFlink's own distribution (:mod:`lambdarec.platform.flink_cluster`: a
JobManager and two one-slot TaskManagers, the compose services' settings, checkpoints in the state
folder); ``speed_layer`` runs the ``speed_layer`` DAG's operator (a subprocess with Airflow's task
environment), which submits the job through ``flink_default`` (made of
``LAMBDAREC_FLINK_JOBMANAGER``) at parallelism 2 (``LAMBDAREC_FLINK_PARALLELISM``) on the Kafka
cluster; ``drill_taskmanager_lost`` replays
``--flink-events`` at ``--flink-rate``, SIGKILLs a TaskManager once a checkpoint is complete and
starts a replacement (as compose's restart policy would): the job must restart, restore that
checkpoint and run again, and every event on the topic must be counted in the session features
topic (``events_lost``). The Kafka cluster is stopped after the Flink steps. ``spark_cluster``
starts a master and ``--workers`` one-core workers from pyspark's own Spark
(:mod:`lambdarec.platform.spark_cluster`) in a temporary state folder with free ports;
``daily_job`` submits the daily feature job for the last day of ``--events`` generated events
through the DAG's operator and the ``spark_default`` connection (``spark://127.0.0.1:<port>``) and
checks its tables' rows against the DuckDB reference; ``drill_worker_lost`` reruns it and SIGKILLs
one worker with its executor once both workers run executors and a first table is written: the job
must still finish with the same rows. Prints one JSON line: each step's status and seconds, and the
peak RSS of PostgreSQL with the Airflow and MLflow processes of its steps (``metadata_mb``), of
the Kafka nodes, of the Flink daemons, of the Spark cluster's process trees (master, workers,
executors) and of the submitting side (the operator's process, spark-submit, the driver), sampled
every 0.5 s, and ``total_mb``, the peak of their sum (the whole rehearsal's footprint: the parts
run one after another); ``events_lost`` sums the drills' lost events.

``demo_on_clusters`` then starts every cluster again, all at once (PostgreSQL, three Kafka nodes,
the Flink session cluster, the Spark master and workers), submits the speed layer to Flink through
the ``speed_layer`` DAG's operator, and runs ``lambdarec demo``'s path with settings alone pointing
at them (``LAMBDAREC_KAFKA_BOOTSTRAP``, ``_FLINK_JOBMANAGER``, ``_SPARK_MASTER``,
``_AIRFLOW_SQL_ALCHEMY_CONN``, ``_MLFLOW_BACKEND_STORE_URI``, ``_ONLINE_STORE=redis``,
``_MILVUS_URI`` of the Milvus server): the platform starts only Redis, MLflow, Airflow, the feature
pusher, the Milvus server and serving (Kafka and the speed layer are the clusters' rows in its
status). ``--demo-users`` shoppers' ``--demo-days`` days (300 and 3) are replayed into Kafka,
archived by the speed layer (``events_in``, ``events_archived``, ``events_lost``), the session
features pushed into Redis (``features_online``), the earlier days backfilled and the daily DAG run
for the last on the Spark master, the retraining DAG trained, evaluated and published to the Milvus
server, and ``/recommend`` changed by posted clicks (``list_changed_after_s``); its processes' RSS
is ``platform_mb``. ``--demo-only`` runs this step alone. A failed step stops the rehearsal; the
remaining steps are reported as "skipped".
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import sys
import tempfile
import threading
import time
from datetime import date, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil
import pyarrow.parquet as pq

from lambdarec.batch import duckdb_reference
from lambdarec.batch.spec import TABLES
from lambdarec.config import get_settings
from lambdarec.data.generator import GeneratorConfig, generate_events
from lambdarec.data.lake import write_events
from lambdarec.harness.flink_cluster import (
    job_parallelism,
    loopback_flink,
    submit_speed_layer,
    taskmanager_loss_drill,
)
from lambdarec.harness.kafka_cluster import broker_loss_drill, loopback_kafka
from lambdarec.harness.postgres import (
    airflow_round_trip,
    loopback_postgres,
    metadata_settings,
    mlflow_round_trip,
)
from lambdarec.harness.spark_cluster import loopback_cluster, submit_daily_job, worker_loss_drill
from lambdarec.platform import manager, processes

if TYPE_CHECKING:
    from collections.abc import Callable

    import pandas as pd

    from lambdarec.config import Settings
    from lambdarec.harness.postgres import MetadataStore
    from lambdarec.platform.flink_cluster import FlinkCluster
    from lambdarec.platform.kafka_cluster import KafkaCluster
    from lambdarec.platform.postgres import PostgresServer
    from lambdarec.platform.spark_cluster import SparkCluster

START = date(2024, 3, 1)
DAYS = 35
DAY = START + timedelta(days=DAYS - 1)
STEPS = (
    "postgres",
    "airflow_on_postgres",
    "mlflow_on_postgres",
    "kafka_cluster",
    "drill_broker_lost",
    "flink_cluster",
    "speed_layer",
    "drill_taskmanager_lost",
    "spark_cluster",
    "daily_job",
    "drill_worker_lost",
    "demo_on_clusters",
)


def _log(message: str) -> None:
    print(f"[rehearse_cluster] {message}", file=sys.stderr, flush=True)


def _tree_rss(root: psutil.Process) -> int:
    total = 0
    try:
        members = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0
    for process in members:
        try:
            total += process.memory_info().rss
        except psutil.Error:
            continue
    return total


class PeakRss:
    """Samples, every ``interval_s``, the RSS of the cluster's services' process trees and of
    this process's children (the submitting side); keeps the peak of each sum, in MiB."""

    def __init__(self, interval_s: float = 0.5) -> None:
        self.interval_s = interval_s
        self.cluster: SparkCluster | None = None
        self.kafka: KafkaCluster | None = None
        self.flink: FlinkCluster | None = None
        #: While set, this process's other children (Airflow, MLflow) count as metadata too.
        self.postgres: PostgresServer | None = None
        #: While set (the demo on the clusters), they are the platform's own services instead.
        self.platform = False
        self.peak = {
            "metadata_mb": 0.0,
            "platform_mb": 0.0,
            "kafka_mb": 0.0,
            "flink_mb": 0.0,
            "cluster_mb": 0.0,
            "submit_mb": 0.0,
            # The sum of the above at one sample: the whole rehearsal's footprint at its peak.
            "total_mb": 0.0,
        }
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.wait(self.interval_s):
            cluster, services = 0, set()
            kafka = metadata = 0
            postgres = self.postgres
            if postgres is not None and postgres.process is not None and postgres.alive:
                services.add(postgres.process.pid)
                with contextlib.suppress(psutil.Error):
                    metadata += _tree_rss(psutil.Process(postgres.process.pid))
            for node in self.kafka.nodes if self.kafka is not None else []:
                if node.process is not None and node.alive:
                    services.add(node.process.pid)
                    with contextlib.suppress(psutil.Error):
                        kafka += _tree_rss(psutil.Process(node.process.pid))
            flink = 0
            for pid in self.flink.pids() if self.flink is not None else []:
                services.add(pid)
                with contextlib.suppress(psutil.Error):
                    flink += _tree_rss(psutil.Process(pid))
            if self.cluster is not None:
                for service in self.cluster.services():
                    process = processes.running(self.cluster.settings, service.name)
                    if process is not None:
                        services.add(process.pid)
                        cluster += _tree_rss(process)
            # The cluster's services are this process's children too: counted once, above.
            submit = sum(_tree_rss(c) for c in me.children() if c.pid not in services)
            platform = 0
            if self.platform:
                platform, submit = submit, 0
            elif postgres is not None:
                metadata, submit = metadata + submit, 0
            self.peak["metadata_mb"] = max(self.peak["metadata_mb"], metadata / 2**20)
            self.peak["platform_mb"] = max(self.peak["platform_mb"], platform / 2**20)
            self.peak["kafka_mb"] = max(self.peak["kafka_mb"], kafka / 2**20)
            self.peak["flink_mb"] = max(self.peak["flink_mb"], flink / 2**20)
            self.peak["cluster_mb"] = max(self.peak["cluster_mb"], cluster / 2**20)
            self.peak["submit_mb"] = max(self.peak["submit_mb"], submit / 2**20)
            total = metadata + platform + kafka + flink + cluster + submit
            self.peak["total_mb"] = max(self.peak["total_mb"], total / 2**20)


def replay_events(n_events: int, *, seed: int) -> pd.DataFrame:
    """A drill's replay: ``n_events`` generated events of 1,000 users over two days."""
    config = GeneratorConfig(
        n_users=1_000, n_items=5_000, n_categories=40, days=2, n_events=n_events, seed=seed
    )
    return generate_events(config)


def _rows(partition: Path) -> int:
    files = [p for p in partition.glob("*.parquet") if not p.name.startswith((".", "_"))]
    return sum(pq.ParquetFile(f).metadata.num_rows for f in files)


def _check_rows(settings: Settings, expected: dict[str, int]) -> dict[str, int]:
    """The written tables' rows; raises if any differs from the reference's."""
    rows = {n: _rows(t.partition(settings.lake_dir, DAY.isoformat())) for n, t in TABLES.items()}
    if rows != expected:
        raise AssertionError(f"rows {rows} differ from the DuckDB reference's {expected}")
    return rows


def _start_postgres(
    stack: contextlib.ExitStack, peak: PeakRss, stores: list[MetadataStore]
) -> dict[str, Any]:
    store = stack.enter_context(loopback_postgres())
    stores.append(store)
    peak.postgres = store.server
    return {"version": store.version, "port": store.server.port}


def _airflow_on_postgres(settings: Settings, store: MetadataStore) -> dict[str, Any]:
    run = airflow_round_trip(settings, store, day=DAY.isoformat())
    if run.state != "success":
        raise AssertionError(f"{run.dag_id}'s run is {run.state} in dag_run: {run.tasks}")
    return {
        "migrate_seconds": run.migrate_seconds,
        "tables": run.tables,
        "airflow_up_seconds": run.up_seconds,
        "dag": run.dag_id,
        "dag_run_state": run.state,
        "executor": run.executor,
        "parsed_seconds": run.parsed_seconds,
        "run_seconds": run.run_seconds,
        "stop_seconds": run.stop_seconds,
    }


def _mlflow_on_postgres(settings: Settings, store: MetadataStore) -> dict[str, Any]:
    with contextlib.redirect_stdout(sys.stderr):  # MLflow prints run links: stdout is the JSON
        trip = mlflow_round_trip(settings, store)
    if trip.read_back_run_id != trip.run_id or trip.versions_in_postgres != 1:
        raise AssertionError(f"the registered version did not read back: {trip}")
    return {
        "server_start_seconds": trip.start_seconds,
        "version": trip.version,
        "metric_read_back": trip.read_back_metric,
        "versions_in_postgres": trip.versions_in_postgres,
    }


class _Done(Exception):
    """The steps asked for ran (``--demo-only``)."""


def _demo_on_clusters(state: Path, peak: PeakRss, args: argparse.Namespace) -> dict[str, Any]:
    """The demo's path with every part on its cluster at once: PostgreSQL (Airflow's and MLflow's
    metadata), three Kafka nodes, the Flink session cluster running the speed layer (submitted
    by the ``speed_layer`` DAG's operator), the Spark master with its workers (the daily job, the
    backfill), Redis as the online store and the Milvus server; the platform starts only what
    the settings do not place on a cluster (Redis, MLflow, Airflow, the pusher, Milvus, serving).
    """
    from lambdarec.demo import run_demo

    with contextlib.ExitStack() as stack:
        store = stack.enter_context(loopback_postgres())
        peak.postgres = store.server
        kafka = stack.enter_context(loopback_kafka(get_settings(), state / "demo-kafka", nodes=3))
        peak.kafka = kafka
        home = state / "demo"
        flink = stack.enter_context(loopback_flink(home, kafka.bootstrap, taskmanagers=2))
        peak.flink = flink
        spark = stack.enter_context(
            loopback_cluster(
                state / "demo-spark", workers=args.workers, worker_memory=args.worker_memory
            )
        )
        peak.cluster = spark
        # Configuration alone: the same state folder as the Flink cluster's settings (its
        # checkpoints and archive), every engine's address, the rest of the platform local.
        settings = metadata_settings(
            home,
            store,
            kafka_bootstrap=kafka.bootstrap,
            topic_replication=len(kafka.nodes),
            flink_jobmanager=flink.jobmanager,
            flink_parallelism=2,
            spark_master=spark.settings.spark_master,
            spark_executor_memory=args.worker_memory,
            online_store="redis",
        )
        milvus_uri = f"http://{settings.bind_host}:{settings.milvus_port}"
        settings = settings.model_copy(update={"milvus_uri": milvus_uri})
        stack.callback(manager.down, settings=settings)
        peak.platform = True
        stack.callback(setattr, peak, "platform", False)
        began = time.monotonic()
        job = submit_speed_layer(settings)
        submitted_s = time.monotonic() - began
        rows = {
            row.name: row.state
            for row in manager.status(["kafka", "speed-layer"], settings=settings)
        }
        if rows != {"kafka": "up", "speed-layer": "up"}:
            raise AssertionError(f"the platform does not see the clusters' Kafka and job: {rows}")
        with contextlib.redirect_stdout(sys.stderr):  # the demo's tables: stdout is the JSON
            figures = run_demo(
                users=args.demo_users,
                items=args.demo_items,
                days=args.demo_days,
                seed=5,
                services=["redis", "mlflow", "airflow", "feature-pusher", "milvus"],
                settings=settings,
                model_epochs=2,
                ab_minutes=0,
            )
        served = figures["serving"]
        assert isinstance(served, dict)
        if served["after"] == served["before"]:
            raise AssertionError(f"the clicks did not change the list: {served}")
        events, archived = figures["events"], figures["archived"]
        assert isinstance(events, int) and isinstance(archived, int)
        retraining = figures["weekly_model_retraining"]
        assert isinstance(retraining, dict)
        # The backfill's and the daily DAG's spark-submits ran on the master, not in local mode.
        apps = [app["name"] for app in spark.state().get("completedapps", [])]
        if len(apps) < 2:
            raise AssertionError(f"the Spark master ran {apps}, not the backfill and the DAG's job")
        return {
            "speed_layer_job": job.job_id,
            "speed_layer_parallelism": job_parallelism(flink.rest_url, job.job_id),
            "speed_layer_submit_seconds": round(submitted_s, 1),
            "demo_step_seconds": figures["step_seconds"],
            "events_in": events,
            "events_archived": archived,
            "events_lost": events - archived,
            "features_online": figures["session_sample"],
            "daily_feature_pipeline": figures["daily_feature_pipeline"],
            "spark_applications": apps,
            "retraining_tasks_ok": sum(st == "success" for st in retraining.values()),
            "retraining_tasks": len(retraining),
            "list_changed_after_s": served["changed_after_s"],
            "degraded_parts": sorted(
                set(served["degraded_before"]) | set(served["degraded_after"])
            ),
        }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=40_000, help="generated events, 35 days")
    parser.add_argument("--workers", type=int, default=2, help="one-core workers (>= 2 to drill)")
    parser.add_argument("--worker-memory", default="1g", help="each worker's --memory")
    parser.add_argument("--kafka-events", type=int, default=60_000, help="events replayed")
    parser.add_argument("--kafka-rate", type=float, default=2_000.0, help="replay rate, events/s")
    parser.add_argument("--flink-events", type=int, default=20_000, help="events in the TM drill")
    parser.add_argument("--flink-rate", type=float, default=500.0, help="its rate, events/s")
    parser.add_argument("--keep", action="store_true", help="keep the state folder (logs)")
    parser.add_argument(
        "--demo-only", action="store_true", help="only the demo on the clusters (the last step)"
    )
    parser.add_argument("--demo-users", type=int, default=300, help="the demo's shoppers")
    parser.add_argument("--demo-items", type=int, default=800, help="the demo's catalog")
    parser.add_argument("--demo-days", type=int, default=3, help="the demo's days (>= 3)")
    args = parser.parse_args()
    if args.workers < 2:
        parser.error("the worker-loss drill needs --workers 2 or more")
    if args.demo_days < 3 or args.demo_users < 1 or args.demo_items < 10:
        parser.error("the demo needs --demo-days >= 3, --demo-users >= 1, --demo-items >= 10")
    if args.kafka_events < 1000 or args.kafka_rate <= 0:
        parser.error("--kafka-events must be >= 1000 and --kafka-rate > 0")

    state = Path(tempfile.mkdtemp(prefix="lambdarec-rehearse-"))
    steps: dict[str, dict[str, Any]] = {name: {"status": "skipped"} for name in STEPS}
    result: dict[str, Any] = {
        "events": args.events,
        "workers": args.workers,
        "kafka_events": args.kafka_events,
        "flink_events": args.flink_events,
        "steps": steps,
    }

    def step(name: str, body: Callable[[], dict[str, Any]]) -> None:
        _log(f"{name} ...")
        started = time.monotonic()
        try:
            figures = body()
        except Exception as error:
            steps[name] = {"status": "failed", "error": str(error)[-2000:]}
            raise
        finally:
            steps[name]["seconds"] = round(time.monotonic() - started, 1)
        steps[name] = {"status": "ok", "seconds": steps[name]["seconds"], **figures}
        _log(f"{name} ok in {steps[name]['seconds']} s")

    config = GeneratorConfig(
        n_users=max(400, args.events // 100),
        n_items=max(3_000, args.events // 15),
        n_categories=40,
        days=DAYS,
        start=START,
        n_events=args.events,
        seed=7,
    )
    events = generate_events(config)
    reference_lake = state / "reference-lake"
    write_events(events, reference_lake)
    reference = duckdb_reference.compute(reference_lake, DAY)
    expected = {name: len(reference[name]) for name in TABLES}

    def demo() -> dict[str, Any]:
        figures = _demo_on_clusters(state, peak, args)
        result["events_lost"] = result.get("events_lost", 0) + figures["events_lost"]
        if figures["events_lost"]:
            raise AssertionError(f"the demo on the clusters lost events: {figures}")
        return figures

    code = 1
    with PeakRss() as peak, contextlib.ExitStack() as stack:
        try:
            if args.demo_only:
                step("demo_on_clusters", demo)
                raise _Done
            metadata = stack.enter_context(contextlib.ExitStack())
            stores: list[MetadataStore] = []
            step("postgres", lambda: _start_postgres(metadata, peak, stores))
            meta = metadata_settings(state / "metadata", stores[0])
            metadata.callback(manager.down, settings=meta)
            step("airflow_on_postgres", lambda: _airflow_on_postgres(meta, stores[0]))
            step("mlflow_on_postgres", lambda: _mlflow_on_postgres(meta, stores[0]))
            metadata.close()  # PostgreSQL stops: Kafka gets the memory
            peak.postgres = None
            kafka: list[KafkaCluster] = []

            def kafka_cluster() -> dict[str, Any]:
                started_kafka = stack.enter_context(
                    loopback_kafka(get_settings(), state / "kafka", nodes=3)
                )
                kafka.append(started_kafka)
                peak.kafka = started_kafka
                return {
                    "bootstrap": started_kafka.bootstrap,
                    "brokers": len(started_kafka.brokers()),
                }

            def broker_drill() -> dict[str, Any]:
                replayed = replay_events(args.kafka_events, seed=11)
                outcome = broker_loss_drill(kafka[0], replayed, rate=args.kafka_rate, victim=2)
                result["events_lost"] = result.get("events_lost", 0) + outcome.events_lost
                figures = {
                    "produced": outcome.produced,
                    "read_back": outcome.read_back,
                    "events_lost": outcome.events_lost,
                    "duplicates": outcome.duplicates,
                    "killed_node": outcome.killed_node,
                    "killed_after_s": round(outcome.killed_after_s, 1),
                    "replay_seconds": round(outcome.replay_seconds, 1),
                    "brokers_after": outcome.brokers_after_kill,
                }
                if outcome.events_lost or outcome.duplicates:
                    raise AssertionError(f"the broker drill lost or duplicated events: {figures}")
                return figures

            step("kafka_cluster", kafka_cluster)
            step("drill_broker_lost", broker_drill)
            flink_stack = stack.enter_context(contextlib.ExitStack())
            flink: list[FlinkCluster] = []
            job: list[str] = []

            def flink_cluster() -> dict[str, Any]:
                started_flink = flink_stack.enter_context(
                    loopback_flink(state / "flink", kafka[0].bootstrap, taskmanagers=2)
                )
                flink.append(started_flink)
                peak.flink = started_flink
                overview = started_flink.overview()
                return {
                    "jobmanager": started_flink.jobmanager,
                    "taskmanagers": overview["taskmanagers"],
                    "slots": overview["slots-total"],
                }

            def speed_layer() -> dict[str, Any]:
                began = time.monotonic()
                info = submit_speed_layer(flink[0].settings)
                job.append(info.job_id)
                return {
                    "job_id": info.job_id,
                    "parallelism": job_parallelism(info.rest_url, info.job_id),
                    "seconds_to_running": round(time.monotonic() - began, 1),
                    "submitted": info.submitted,
                }

            def taskmanager_drill() -> dict[str, Any]:
                replayed = replay_events(args.flink_events, seed=13)
                outcome = taskmanager_loss_drill(
                    flink[0], job[0], replayed, rate=args.flink_rate, victim=1
                )
                result["events_lost"] = result.get("events_lost", 0) + outcome.events_lost
                figures = {
                    "produced": outcome.produced,
                    "sessions": outcome.sessions,
                    "events_lost": outcome.events_lost,
                    "double_counted": outcome.double_counted,
                    "killed_taskmanager": outcome.killed_taskmanager + 1,
                    "killed_after_s": round(outcome.killed_after_s, 1),
                    "checkpoints_before": outcome.checkpoints_before,
                    "states_seen": outcome.states_seen,
                    "restart_seconds": round(outcome.restart_seconds, 1),
                    "restored_checkpoint": outcome.restored_checkpoint,
                    "replay_seconds": round(outcome.replay_seconds, 1),
                }
                if outcome.events_lost or outcome.restored_checkpoint is None:
                    raise AssertionError(f"the TaskManager drill lost events: {figures}")
                return figures

            step("flink_cluster", flink_cluster)
            step("speed_layer", speed_layer)
            step("drill_taskmanager_lost", taskmanager_drill)
            # The Spark part needs neither Flink nor a broker: free the memory before it starts.
            flink_stack.close()
            peak.flink = None
            kafka[0].stop()
            peak.kafka = None
            started: list[SparkCluster] = []
            spark_stack = stack.enter_context(contextlib.ExitStack())

            def spark_cluster() -> dict[str, Any]:
                cluster = spark_stack.enter_context(
                    loopback_cluster(
                        state / "state", workers=args.workers, worker_memory=args.worker_memory
                    )
                )
                started.append(cluster)
                peak.cluster = cluster
                return {"master": cluster.master_url, "alive_workers": cluster.alive_workers()}

            step("spark_cluster", spark_cluster)
            cluster = started[0]
            settings = cluster.settings
            write_events(events, settings.lake_dir)

            def daily_job() -> dict[str, Any]:
                submitted = submit_daily_job(settings, DAY)
                if not submitted.ok:
                    raise RuntimeError(submitted.output[-2000:])
                return {"rows": sum(_check_rows(settings, expected).values())}

            def drill() -> dict[str, Any]:
                # The drill waits for a first table of this run: the last run's must go.
                shutil.rmtree(settings.lake_dir / "features")
                outcome = worker_loss_drill(cluster, DAY, victim=args.workers - 1)
                if not outcome.submitted.ok:
                    raise RuntimeError(outcome.submitted.output[-2000:])
                _check_rows(settings, expected)
                return {
                    "killed_after_s": round(outcome.killed_after_s, 1),
                    "worker_state": outcome.worker_state,
                    "job_seconds": round(outcome.submitted.seconds, 1),
                }

            step("daily_job", daily_job)
            step("drill_worker_lost", drill)
            spark_stack.close()  # the demo starts every cluster again, all at once
            peak.cluster = None

            step("demo_on_clusters", demo)
            code = 0
        except _Done:
            code = 0
        except Exception as error:  # reported in the JSON line, with the step that failed
            _log(f"stopped: {error!s:.500}")
    result["peak_rss_mb"] = {k: round(v) for k, v in peak.peak.items()}
    result["ok"] = code == 0
    if args.keep:
        result["state_dir"] = str(state)
    else:
        shutil.rmtree(state, ignore_errors=True)
    print(json.dumps(result), flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
