"""Operators of lambdarec's DAGs.

:class:`DailyFeaturesSparkOperator` extends the Spark provider's SparkSubmitOperator: the master
comes from the ``spark_default`` connection (``local[*]`` by default, a cluster URL by
configuration); the application, arguments and Spark conf are built from the core at execute
time, so the DAG file stays a thin config and nothing heavy is imported at parse time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator

if TYPE_CHECKING:
    from collections.abc import Sequence

    from airflow.sdk import Context


class DailyFeaturesSparkOperator(SparkSubmitOperator):
    """spark-submit the daily feature job for ``day`` (templated, e.g. ``{{ ds }}``)."""

    template_fields: Sequence[str] = (*SparkSubmitOperator.template_fields, "day", "tables")

    def __init__(
        self,
        *,
        day: str,
        tables: str = "all",
        conn_id: str = "spark_default",
        **kwargs: Any,
    ) -> None:
        # The application is filled in execute(); the provider requires a value here.
        super().__init__(application="", conn_id=conn_id, **kwargs)
        self.day = day
        self.tables = tables

    def execute(self, context: Context) -> None:
        from lambdarec.batch.submit import default_spark_submit, spark_job
        from lambdarec.config import get_settings

        job = spark_job(self.day, get_settings(), tables=self.tables)
        self.application = job.application
        self.application_args = job.application_args
        self.name = job.name
        self.conf = {**job.conf, **(self.conf or {})}
        self.env_vars = {**job.env_vars, **(self.env_vars or {})}
        self._driver_memory = job.driver_memory
        # pyspark's own launcher in this environment, unless the operator was given one.
        self._spark_binary = self._spark_binary or default_spark_submit()
        self.log.info("spark-submit %s %s", job.application, " ".join(job.application_args))
        super().execute(context)
