"""The A/B readout's Spark operator.

:class:`OnlineMetricsSparkOperator` extends the Spark provider's SparkSubmitOperator like
:class:`lambdarec_airflow.operators.DailyFeaturesSparkOperator`: the master comes from the
``spark_default`` connection; the application, arguments and conf are built from the core
(:func:`lambdarec.monitoring.ab_job.spark_job`) at execute time, so nothing heavy is imported
when the DAG is parsed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator

if TYPE_CHECKING:
    from collections.abc import Sequence

    from airflow.sdk import Context


class OnlineMetricsSparkOperator(SparkSubmitOperator):
    """spark-submit the A/B readout job for ``day`` (templated, e.g. ``{{ ds }}``)."""

    template_fields: Sequence[str] = (*SparkSubmitOperator.template_fields, "day")

    def __init__(self, *, day: str, conn_id: str = "spark_default", **kwargs: Any) -> None:
        # The application is filled in execute(); the provider requires a value here.
        super().__init__(application="", conn_id=conn_id, **kwargs)
        self.day = day

    def execute(self, context: Context) -> None:
        from lambdarec.batch.submit import default_spark_submit
        from lambdarec.config import get_settings
        from lambdarec.monitoring.ab_job import spark_job

        job = spark_job(self.day, get_settings())
        self.application = job.application
        self.application_args = job.application_args
        self.name = job.name
        self.conf = {**job.conf, **(self.conf or {})}
        self.env_vars = {**job.env_vars, **(self.env_vars or {})}
        self._driver_memory = job.driver_memory
        self._spark_binary = self._spark_binary or default_spark_submit()
        self.log.info("spark-submit %s %s", job.application, " ".join(job.application_args))
        super().execute(context)
