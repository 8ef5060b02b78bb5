"""The services of the local platform, composed: what ``up`` starts, in which order.

Each service family builds its :class:`~lambdarec.platform.base.Service` values from the settings
(:mod:`~lambdarec.platform.kafka`, :mod:`~lambdarec.platform.stores`,
:mod:`~lambdarec.platform.airflow`, :mod:`~lambdarec.platform.speed` (the speed layer and the
attribution job), :mod:`~lambdarec.platform.web`, :mod:`~lambdarec.platform.proxy`);
:func:`build_services` lists them in start order for the manager, which knows nothing
service-specific, so a later layer is one more factory here. A service without
a command is a reserved row: ``status`` shows whether something answers there, ``up`` skips it. A
service with ``parts`` is a group: its name stands for those services (``airflow`` for the API
server, scheduler, DAG processor and triggerer).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from lambdarec.platform.airflow import (
    airflow,
    airflow_api,
    airflow_dag_processor,
    airflow_scheduler,
    airflow_triggerer,
)
from lambdarec.platform.base import Service, settings_env
from lambdarec.platform.kafka import kafka
from lambdarec.platform.proxy import proxy
from lambdarec.platform.speed import attribution, feature_pusher, speed_layer
from lambdarec.platform.stores import milvus, mlflow, redis
from lambdarec.platform.web import data_docs, reports, serving

if TYPE_CHECKING:
    from collections.abc import Callable

    from lambdarec.config import Settings

#: Factories in start order; ``down`` stops in reverse.
FACTORIES: tuple[Callable[[Settings], Service], ...] = (
    kafka,
    redis,
    mlflow,
    airflow_api,
    airflow_scheduler,
    airflow_dag_processor,
    airflow_triggerer,
    airflow,
    speed_layer,
    feature_pusher,
    attribution,
    milvus,
    serving,
    proxy,
    reports,
    data_docs,
)


def build_services(settings: Settings) -> dict[str, Service]:
    """All services, keyed by name, in start order.

    Each service's environment carries the settings as ``LAMBDAREC_*`` variables, so whatever it
    runs (an Airflow task, a job) sees the same state folder and ports as the platform.
    """
    exported = settings_env(settings)
    services = [factory(settings) for factory in FACTORIES]
    return {s.name: dataclasses.replace(s, env={**exported, **s.env}) for s in services}
