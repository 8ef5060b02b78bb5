"""Data-quality gates as Airflow tasks: a failed gate fails the task at once, without retries.

Retrying cannot fix bad data, so a :class:`~lambdarec.quality.report.DataQualityError` becomes
``AirflowFailException`` (no retry); anything else (a missing file system, a crash) is retried as
usual.
"""

from __future__ import annotations

from typing import Any


def run_gate(table: str, ds: str) -> dict[str, Any]:
    from airflow.sdk.exceptions import AirflowFailException

    from lambdarec.pipelines.daily import validate
    from lambdarec.quality.report import DataQualityError

    try:
        return validate(table, ds)
    except DataQualityError as exc:
        raise AirflowFailException(str(exc)) from exc
