"""The daily Spark job on a Spark standalone cluster, submitted the way the DAG submits it.

A master and one-core workers on loopback (:mod:`lambdarec.platform.spark_cluster`); the DAG's own
operator in a subprocess with the environment the platform gives Airflow's tasks, so the master
comes from the ``spark_default`` connection (``spark://127.0.0.1:<port>``) and the driver runs in
client mode here while the executors run on the workers. The tables must equal the DuckDB
reference, as the local run's do (tests/integration/test_spark_jobs.py), and the application must
have run on the cluster. The worker-loss drill (two workers, one killed with its executor mid-job,
the same tables) runs in ``make rehearse-cluster`` (bench/rehearse_cluster.py): it takes minutes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from lambdarec.batch import duckdb_reference
from lambdarec.batch.spec import TABLES
from lambdarec.data.lake import write_events
from lambdarec.harness.spark_cluster import (
    applications,
    loopback_cluster,
    submit_daily_job,
)
from tests.integration.test_spark_jobs import (
    GEN_DAY,
    _assert_same,
    _generated_events,
    _read_partition,
)

if TYPE_CHECKING:
    import pandas as pd

    from lambdarec.config import Settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def events() -> pd.DataFrame:
    return _generated_events()


@pytest.fixture(scope="module")
def reference(events, tmp_path_factory) -> dict[str, pd.DataFrame]:
    lake = tmp_path_factory.mktemp("reference-lake")
    write_events(events, lake)
    return duckdb_reference.compute(lake, GEN_DAY)


def _assert_tables_match(settings: Settings, reference: dict[str, pd.DataFrame]) -> None:
    for name, table in TABLES.items():
        written = _read_partition(table.partition(settings.lake_dir, GEN_DAY.isoformat()))
        _assert_same(written, reference[name], name)


def test_the_daily_job_runs_on_a_one_worker_cluster(events, reference, tmp_path) -> None:
    with loopback_cluster(tmp_path / "state", workers=1) as cluster:
        settings = cluster.settings
        write_events(events, settings.lake_dir)
        submitted = submit_daily_job(settings, GEN_DAY)
        assert submitted.ok, submitted.output[-5000:]
        # It ran on the cluster: the master lists it completed, the worker kept its executor's
        # folder, and the driver did not fall back to a local master.
        names = [app["name"] for app in applications(cluster, active=False)]
        assert len(names) == 1 and str(names[0]).startswith("lambdarec-daily-features"), names
        assert [p.name[:4] for p in cluster.work_dir.iterdir()] == ["app-"]
        assert cluster.master_url in submitted.output
    _assert_tables_match(settings, reference)
