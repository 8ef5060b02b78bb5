"""The spark-submit command of the A/B readout job (``include/spark/online_metrics.py``).

``spark_job(day, settings)`` describes one run in the terms SparkSubmitOperator takes (the same
:class:`lambdarec.batch.submit.SparkJob` as the daily feature job); ``.command()`` is the same run
as a command line. Nothing here starts Spark.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING

from lambdarec.batch.spec import SPARK_CONF
from lambdarec.batch.submit import (
    SPARK_JOBS_DIR,
    SparkJob,
    cluster_conf,
    driver_env,
    driver_memory_for,
    is_local,
    short_job_conf,
    window_bytes,
)
from lambdarec.tables import as_day

if TYPE_CHECKING:
    from datetime import date
    from pathlib import Path

    from lambdarec.config import Settings

ONLINE_METRICS = SPARK_JOBS_DIR / "online_metrics.py"
SHUFFLE_PARTITIONS = 8
#: The lake tables the job reads (include/spark/online_metrics.py's IMPRESSIONS, ATTRIBUTED).
INPUT_TABLES = ("impressions", "attributed")


def spark_job(
    day: date | str,
    settings: Settings,
    *,
    lake_dir: Path | None = None,
    reports_dir: Path | None = None,
    master: str | None = None,
    driver_memory: str | None = None,
) -> SparkJob:
    """The readout of ``day`` (the run's data interval, UTC) over the settings' lake, written
    to ``settings.ab_reports_dir/<day>/``; variants, window and minimum sample from settings.
    Master, driver memory, executor sizing and environment as for the daily job
    (:mod:`lambdarec.batch.submit`)."""
    day = as_day(day)
    master = master or settings.spark_master
    lake = (lake_dir if lake_dir is not None else settings.lake_dir).absolute()
    conf = {
        **SPARK_CONF,
        "spark.sql.shuffle.partitions": str(SHUFFLE_PARTITIONS),
        **cluster_conf(master, settings),
    }
    if is_local(master):
        first = day - timedelta(days=settings.ab_window_days - 1)
        size = sum(window_bytes(lake / table, first, day) for table in INPUT_TABLES)
        conf = short_job_conf(conf, size)
    args = [
        "--lake-dir",
        str(lake),
        "--date",
        day.isoformat(),
        "--reports-dir",
        str((reports_dir if reports_dir is not None else settings.ab_reports_dir).absolute()),
        "--variants",
        settings.ab_variants,
        "--window-days",
        str(settings.ab_window_days),
        "--min-lists",
        str(settings.ab_min_lists),
        "--shuffle-partitions",
        str(SHUFFLE_PARTITIONS),
    ]
    return SparkJob(
        application=str(ONLINE_METRICS),
        application_args=args,
        name=f"lambdarec-online-metrics-{day.isoformat()}",
        master=master,
        driver_memory=driver_memory or driver_memory_for(master),
        conf=conf,
        # Executors run no Python here either (built-in SQL functions only).
        env_vars=driver_env(master, settings),
    )
