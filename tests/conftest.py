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


#: Modules that run in the second lane of ``make test`` (``pytest -n 2``, by the scheduler below): the
#: two longest, each on a private platform in its own temporary state folder (its own free ports,
#: no Milvus server: that one's health port is fixed; the perimeter test runs on the demo's), the
#: self-contained tests of the deployment's logins, the simulator, the attribution job and the A/B
#: readout (their own broker, Airflow home, lake or private platform; the Flink jars only read),
#: the Spark job's differential test (its own lakes and SparkSession) and its cluster test (its
#: own standalone master and workers on free ports, in a temporary state folder), and the unit
#: and DAG tiers (temporary folders, or the DAG files only read).
#: Everything else stays in the first lane, in collection order, as before: tests that share the
#: repository's state folder or a Milvus server never run at the same time. The A/B benchmark's
#: quick run (self-contained, ~4 min) is in the first lane. A clean rehearsal with the unit and
#: DAG tiers and the Spark test still in the first lane measured it at 42 min and the second at
#: 33; materialisation without dask's read (tests/integration/test_feature_store.py) then took
#: the most from the second lane's daily runs.
SECOND_LANE = (
    "tests/e2e/test_demo.py",
    "tests/integration/test_daily_pipeline.py",
    "tests/e2e/test_perimeter.py",
    "tests/integration/test_kafka_tls.py",
    "tests/integration/test_airflow_auth.py",
    "tests/integration/test_simulate.py",
    "tests/integration/test_attribution.py",
    "tests/integration/test_online_metrics.py",
    "tests/integration/test_spark_jobs.py",
    "tests/integration/test_spark_cluster.py",
)
#: Folders whose modules all run in the second lane: the browser tests of the demo's pages share
#: its private platform (tests/e2e/conftest.py); the unit and DAG tiers.
SECOND_LANE_PREFIXES = ("tests/e2e/test_pages_", "tests/unit/", "tests/dags/")


def _lane(nodeid: str) -> str:
    path = nodeid.split("::", 1)[0]
    return "second" if path in SECOND_LANE or path.startswith(SECOND_LANE_PREFIXES) else "first"


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """Schedule by lane: every test of a lane on one worker, in collection order.

    pytest-xdist's ``--dist loadgroup`` groups by the ``xdist_group`` mark through a rename of the
    node id, which recent pytest no longer honours (each test was then scheduled alone: a module's
    fixtures set up on both workers, and two tests sharing the state folder ran at once). The lane
    is the scope of xdist's own scope scheduler instead: one unit of work per lane."""
    from xdist.scheduler import LoadScopeScheduling

    class Lanes(LoadScopeScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            return _lane(nodeid)

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
