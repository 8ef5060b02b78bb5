"""The A/B readout's Spark operator.

:class:`OnlineMetricsSparkOperator` is a :class:`lambdarec_airflow.operators.CoreSparkOperator`
like the daily feature job's: the master comes from the ``spark_default`` connection; the
application, arguments and conf are built from the core
(:func:`lambdarec.monitoring.ab_job.spark_job`) at execute time, for that master, so nothing
heavy is imported when the DAG is parsed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lambdarec_airflow.operators import CoreSparkOperator

if TYPE_CHECKING:
    from lambdarec.batch.submit import SparkJob
    from lambdarec.config import Settings


class OnlineMetricsSparkOperator(CoreSparkOperator):
    """spark-submit the A/B readout job for ``day`` (templated, e.g. ``{{ ds }}``)."""

    def build(self, settings: Settings, master: str) -> SparkJob:
        from lambdarec.monitoring.ab_job import spark_job

        return spark_job(self.day, settings, master=master)
