"""Shared fixtures: real engines found or started by the tests themselves, and small datasets."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import pytest

# TFRS needs the legacy Keras; every process that may import TensorFlow sets this first.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
# Before any import of grpc (pymilvus, Feast): see include/lambdarec/__init__.py.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

if TYPE_CHECKING:
    from collections.abc import Iterator

    import pandas as pd

    from lambdarec.config import Settings


#: ``make test`` runs ``pytest -n 2`` with the scheduler below: a serial lane and a pool.
#: The serial lane ("first") is every module not named here, in collection order, on one worker:
#: they share the repository's state folder or the Milvus server (its health port is fixed), so
#: two of them never run at once. The pool's units are self-contained (a private platform or
#: broker in a temporary state folder on free ports, their own lake, SparkSession, Airflow home or
#: Spark cluster; the Flink jars only read) and go to whichever worker is free, longest first, so
#: the two workers end together: the worker that finished the serial lane takes the pool's rest.
#: The demo's modules are one unit: the browser tests and the perimeter test run on the demo's
#: private platform (tests/e2e/conftest.py), the perimeter test after the pages' tests.
#: Then the pool's modules named below (longest first, by a rehearsal's durations), then every
#: module of the unit and DAG tiers (temporary folders, or the DAG files only read).
DEMO_UNIT = ("tests/e2e/test_demo.py", "tests/e2e/test_pages_", "tests/e2e/test_perimeter.py")
POOL = (
    "tests/integration/test_daily_pipeline.py",
    "tests/integration/test_bench_ab.py",
    "tests/integration/test_spark_jobs.py",
    "tests/integration/test_spark_cluster.py",
    "tests/integration/test_attribution.py",
    "tests/integration/test_online_metrics.py",
    "tests/integration/test_airflow_auth.py",
    "tests/integration/test_kafka_tls.py",
    "tests/integration/test_simulate.py",
)
POOL_PREFIXES = ("tests/unit/", "tests/dags/")


def _unit(nodeid: str) -> str:
    """The unit of work a test belongs to: "first" (the serial lane), "demo", or its module."""
    path = nodeid.split("::", 1)[0]
    if path.startswith(DEMO_UNIT):
        return "demo"
    if path in POOL or path.startswith(POOL_PREFIXES):
        return path
    return "first"


def _order(unit: str) -> int:
    """The serial lane first (the first worker takes it), then the demo, then the pool's order;
    the unit and DAG modules last, in collection order (a sort keeps the order of equal keys)."""
    if unit == "first":
        return 0
    if unit == "demo":
        return 1
    return 2 + POOL.index(unit) if unit in POOL else 2 + len(POOL)


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """xdist's scope scheduler with the units above, queued in :func:`_order`.

    pytest-xdist's ``--dist loadgroup`` groups by the ``xdist_group`` mark through a rename of the
    node id, which recent pytest no longer honours (each test was then scheduled alone: a module's
    fixtures set up on both workers, and two tests sharing the state folder ran at once). The
    scope scheduler keeps a unit on one worker and hands the next queued unit to a worker with at
    most two tests left; its own queue is ordered by the number of tests, so ``schedule`` is its
    first distribution with the queue in :func:`_order` instead."""
    from xdist.scheduler import LoadScopeScheduling

    class Lanes(LoadScopeScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            return _unit(nodeid)

        def schedule(self) -> None:
            assert self.collection_is_completed
            if self.collection is not None:  # a node joined later: top it up
                for node in self.nodes:
                    self._reschedule(node)
                return
            if not self._check_nodes_have_same_collection():
                self.log("**Different tests collected, aborting run**")
                return
            self.collection = list(next(iter(self.registered_collections.values())))
            if not self.collection:
                return
            units: dict[str, dict[str, bool]] = {}
            for nodeid in self.collection:
                units.setdefault(_unit(nodeid), {})[nodeid] = False
            for unit in sorted(units, key=_order):
                self.workqueue[unit] = units[unit]
            for _ in range(len(self.nodes) - len(self.workqueue)):  # more workers than units
                unused, _assigned = self.assigned_work.popitem()
                unused.shutdown()
            for node in self.nodes:
                self._assign_work_unit(node)
            for node in self.nodes:
                self._reschedule(node)
            if not self.workqueue:
                for node in self.nodes:
                    node.shutdown()

    return Lanes(config, log)


def pytest_unconfigure(config: pytest.Config) -> None:
    """Drop logging handlers that write to pytest's captured streams.

    A library that configures logging while a test runs (Airflow's and PySpark's do) binds a
    handler to ``sys.stderr`` as it is then: pytest's capture, which pytest closes on exit. What
    logs from exit hooks afterwards (milvus-lite stopping its servers, py4j closing its gateway)
    then printed ``--- Logging error ---`` tracebacks under the test summary."""
    import logging

    loggers = [logging.getLogger()] + [
        lg for lg in logging.Logger.manager.loggerDict.values() if isinstance(lg, logging.Logger)
    ]
    for lg in loggers:
        for handler in list(lg.handlers):
            stream = getattr(handler, "stream", None)
            if stream is not None and type(stream).__module__.startswith("_pytest"):
                lg.removeHandler(handler)


@pytest.fixture(scope="session")
def kafka_settings() -> Iterator[Settings]:
    """A real Kafka broker: the configured one if it answers, else a private throwaway broker."""
    from lambdarec.harness.platform import kafka_broker
    from lambdarec.streaming.kafka import ensure_topics

    with kafka_broker() as settings:
        ensure_topics(settings)
        yield settings


@pytest.fixture(scope="session")
def small_events() -> pd.DataFrame:
    """About 20k seeded synthetic events in the canonical table, in event-time order."""
    from lambdarec.data.generator import GeneratorConfig, generate_events

    return generate_events(
        GeneratorConfig(
            n_users=500, n_items=2000, n_categories=40, days=3, n_events=20_000, seed=11
        )
    )
