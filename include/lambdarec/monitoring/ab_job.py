"""The spark-submit command of the A/B readout job (``include/spark/online_metrics.py``).

``spark_job(day, settings)`` describes one run in the terms SparkSubmitOperator takes (the same
:class:`lambdarec.batch.submit.SparkJob` as the daily feature job); ``.command()`` is the same run
as a command line. Nothing here starts Spark.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from lambdarec.batch.spec import SPARK_CONF
from lambdarec.batch.submit import DEFAULT_DRIVER_MEMORY, SPARK_JOBS_DIR, SparkJob
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
    driver_memory: str = DEFAULT_DRIVER_MEMORY,
) -> SparkJob:
    """The readout of ``day`` (the run's data interval, UTC) over the settings' lake, written
    to ``settings.ab_reports_dir/<day>/``; variants, window and minimum sample from settings."""
    day = as_day(day)
    args = [
        "--lake-dir",
        str(lake_dir if lake_dir is not None else settings.lake_dir),
        "--date",
        day.isoformat(),
        "--reports-dir",
        str(reports_dir if reports_dir is not None else settings.ab_reports_dir),
        "--variants",
        settings.ab_variants,
        "--window-days",
        str(settings.ab_window_days),
        "--min-lists",
        str(settings.ab_min_lists),
        "--shuffle-partitions",
        str(SHUFFLE_PARTITIONS),
    ]
    python = sys.executable
    return SparkJob(
        application=str(ONLINE_METRICS),
        application_args=args,
        name=f"lambdarec-online-metrics-{day.isoformat()}",
        master=master or settings.spark_master,
        driver_memory=driver_memory,
        conf={**SPARK_CONF, "spark.sql.shuffle.partitions": str(SHUFFLE_PARTITIONS)},
        env_vars={
            "JAVA_HOME": str(settings.java_home),
            "SPARK_LOCAL_IP": settings.bind_host,
            # The driver imports lambdarec (installed in this environment); executors run no
            # Python (built-in SQL functions only).
            "PYSPARK_PYTHON": python,
            "PYSPARK_DRIVER_PYTHON": python,
        },
    )
