"""Operators of lambdarec's DAGs.

:class:`CoreSparkOperator` extends the Spark provider's SparkSubmitOperator: the master comes from
the ``spark_default`` connection (``local[*]`` by default, a cluster URL by configuration); the
application, arguments and Spark conf are built from the core at execute time, for that master,
so the DAG file stays a thin config and nothing heavy is imported at parse time.
:class:`DailyFeaturesSparkOperator` submits the daily feature job
(:func:`lambdarec.batch.submit.spark_job`), the A/B readout's operator
(:mod:`lambdarec_airflow.online_metrics`) its job.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator

if TYPE_CHECKING:
    from collections.abc import Sequence

    from airflow.sdk import Context

    from lambdarec.batch.submit import SparkJob
    from lambdarec.config import Settings


class CoreSparkOperator(SparkSubmitOperator):
    """spark-submit a job of the core for ``day`` (templated, e.g. ``{{ ds }}``): subclasses say
    which in :meth:`build`."""

    template_fields: Sequence[str] = (*SparkSubmitOperator.template_fields, "day")

    def __init__(self, *, day: str, conn_id: str = "spark_default", **kwargs: Any) -> None:
        # The application is filled in execute(); the provider requires a value here.
        super().__init__(application="", conn_id=conn_id, **kwargs)
        self.day = day

    def build(self, settings: Settings, master: str) -> SparkJob:
        """The run of ``self.day`` for ``master``."""
        raise NotImplementedError

    def job(self) -> SparkJob:
        """The run for the master the ``conn_id`` connection names, where spark-submit sends it:
        driver heap, executor sizing and bind address follow that master, also when
        LAMBDAREC_SPARK_MASTER (which the local platform writes into ``spark_default``) names
        another one (a warning says so)."""
        from airflow.providers.apache.spark.hooks.spark_submit import SparkSubmitHook

        from lambdarec.config import get_settings

        settings = get_settings()
        master = str(SparkSubmitHook(conn_id=self._conn_id)._connection["master"])
        if master != settings.spark_master:
            self.log.warning(
                "the %s connection names the master %s, LAMBDAREC_SPARK_MASTER %s: the job is "
                "sized for the connection's; set both to the same master",
                self._conn_id,
                master,
                settings.spark_master,
            )
        return self.build(settings, master)

    def execute(self, context: Context) -> None:
        from lambdarec.batch.submit import default_spark_submit

        job = self.job()
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


class DailyFeaturesSparkOperator(CoreSparkOperator):
    """spark-submit the daily feature job for ``day`` (templated, e.g. ``{{ ds }}``)."""

    template_fields: Sequence[str] = (*CoreSparkOperator.template_fields, "tables")

    def __init__(self, *, day: str, tables: str = "all", **kwargs: Any) -> None:
        super().__init__(day=day, **kwargs)
        self.tables = tables

    def build(self, settings: Settings, master: str) -> SparkJob:
        from lambdarec.batch.submit import spark_job

        return spark_job(self.day, settings, tables=self.tables, master=master)
