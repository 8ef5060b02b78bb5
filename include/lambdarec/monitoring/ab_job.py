"""The spark-submit command of the A/B readout job (``include/spark/online_metrics.py``).

``spark_job(day, settings)`` describes one run in the terms SparkSubmitOperator takes (the same
:class:`lambdarec.batch.submit.SparkJob` as the daily feature job); ``.command()`` is the same run
as a command line. Nothing here starts Spark.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lambdarec.batch.spec import SPARK_CONF
from lambdarec.batch.submit import (
    SPARK_JOBS_DIR,
    SparkJob,
    cluster_conf,
    driver_env,
    driver_memory_for,
)
from lambdarec.tables import as_day

if TYPE_CHECKING:
    from datetime import date
    from pathlib import Path

    from lambdarec.config import Settings

ONLINE_METRICS = SPARK_JOBS_DIR / "online_metrics.py"
SHUFFLE_PARTITIONS = 8


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
    args = [
        "--lake-dir",
        str((lake_dir if lake_dir is not None else settings.lake_dir).absolute()),
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
        conf={
            **SPARK_CONF,
            "spark.sql.shuffle.partitions": str(SHUFFLE_PARTITIONS),
            **cluster_conf(master, settings),
        },
        # Executors run no Python here either (built-in SQL functions only).
        env_vars=driver_env(master, settings),
    )
