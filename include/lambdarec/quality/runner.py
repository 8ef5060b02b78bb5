"""Validate one day of a lake table against its suite, build Data Docs, report readably.

Every Data Docs build is followed by :func:`lambdarec.quality.offline.offline_docs`, so the pages
load their CSS/JS from the reports site instead of public CDNs.

The previous partition's row count and the day's bounds are computed here and handed to the
suite as parameters, so the suites stay static files in great_expectations/.
"""

from __future__ import annotations

import logging
import math
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlparse

from lambdarec.config import get_settings
from lambdarec.quality.offline import offline_docs
from lambdarec.quality.project import DATA_DOCS_SITE, get_context, quiet_gx
from lambdarec.quality.report import Failure, ValidationReport
from lambdarec.quality.suites import (
    PARAM_DAY_END,
    PARAM_DAY_START,
    PARAM_MAX_PRICE,
    PARAM_MAX_ROWS,
    PARAM_MIN_ROWS,
    RAW_EVENTS,
    SUITE_NAMES,
    TABLES,
    prepare_frame,
)
from lambdarec.tables import as_day, events_path, newest_partition, partition_day, partition_dir

if TYPE_CHECKING:
    import pandas as pd

    from lambdarec.config import Settings

log = logging.getLogger(__name__)

_TIME_COLUMNS = ("ts", "event_timestamp")
#: Keyword arguments worth showing next to a failed expectation (the bounds it checked).
_BOUND_KWARGS = (
    "min_value",
    "max_value",
    "strict_min",
    "strict_max",
    "value_set",
    "column_set",
    "or_equal",
)


def table_dir(table_name: str, settings: Settings) -> Path:
    """The folder holding the day partitions of a table."""
    if table_name == RAW_EVENTS:
        return events_path(settings.lake_dir)
    if table_name in TABLES:
        return TABLES[table_name].path(settings.lake_dir)
    raise KeyError(f"no suite for {table_name!r}; known: {', '.join(SUITE_NAMES)}")


def previous_partition(table_name: str, day: str, settings: Settings) -> tuple[str, int] | None:
    """The latest partition before ``day`` and its row count (from Parquet footers only)."""
    import pyarrow.parquet as pq

    part = newest_partition(table_dir(table_name, settings), before=day)
    if part is None:
        return None
    rows = sum(pq.read_metadata(f).num_rows for f in sorted(part.glob("*.parquet")))
    return str(partition_day(part)), rows


def expectation_parameters(
    table_name: str,
    day: str,
    previous_rows: int | None,
    settings: Settings,
) -> dict[str, Any]:
    import pandas as pd

    start = pd.Timestamp(day, tz="UTC")
    if previous_rows:
        low = math.ceil(previous_rows * settings.dq_row_count_min_ratio)
        high: int | None = math.floor(previous_rows * settings.dq_row_count_max_ratio)
    else:
        low, high = 1, None  # first partition: it only has to be non-empty
    return {
        PARAM_MIN_ROWS: max(low, 1),
        PARAM_MAX_ROWS: high,
        PARAM_DAY_START: start,
        PARAM_DAY_END: start + pd.Timedelta(days=1),
        PARAM_MAX_PRICE: settings.dq_max_price,
    }


def read_partition(table_name: str, day: str, settings: Settings) -> pd.DataFrame:
    import pandas as pd

    part = partition_dir(table_dir(table_name, settings), day)
    if not any(part.glob("*.parquet")):
        raise FileNotFoundError(f"no {table_name} partition for {day}: {part} has no Parquet file")
    df = pd.read_parquet(part)
    for column in _TIME_COLUMNS:
        # Spark may write naive timestamps that mean UTC; compare them as UTC.
        if column in df.columns and getattr(df[column].dtype, "tz", "") is None:
            df[column] = df[column].dt.tz_localize("UTC")
    return df


def validate(
    table_name: str,
    day: str | date,
    settings: Settings | None = None,
) -> ValidationReport:
    """Validate ``table_name`` (``raw_events`` or a feature table) for ``day`` (YYYY-MM-DD).

    The row-count band and the price bound come from the settings (``LAMBDAREC_DQ_*``). Builds
    the Data Docs page of this run; a failed gate is reported, not raised (call
    ``.raise_for_failure()`` to fail a task).
    """
    quiet_gx()
    from great_expectations.core.run_identifier import RunIdentifier

    settings = settings or get_settings()
    day = as_day(day).isoformat()
    frame = prepare_frame(table_name, read_partition(table_name, day, settings))
    previous = previous_partition(table_name, day, settings)
    params = expectation_parameters(table_name, day, previous[1] if previous else None, settings)

    context = get_context(settings)
    checkpoint = context.checkpoints.get(table_name)
    run_id = RunIdentifier(run_name=f"{table_name}-{day}", run_time=datetime.now(UTC))
    result = checkpoint.run(
        batch_parameters={"dataframe": frame}, expectation_parameters=params, run_id=run_id
    )
    # GX rebuilt the index and this run's page with CDN links: point them at the vendored copies.
    offline_docs(settings)
    ((key, suite_result),) = result.run_results.items()
    failures = [_failure(r) for r in suite_result.results if not r.success]
    page = None
    for site in context.get_docs_sites_urls(resource_identifier=key, site_name=DATA_DOCS_SITE):
        url = site.get("site_url")
        if url:
            page = Path(unquote(urlparse(url).path))
    report = ValidationReport(
        table=table_name,
        day=day,
        success=bool(suite_result.success),
        row_count=len(frame),
        previous_day=previous[0] if previous else None,
        previous_row_count=previous[1] if previous else None,
        failures=failures,
        evaluated=len(suite_result.results),
        data_docs_page=page,
    )
    (log.info if report.success else log.error)("%s", report.summary())
    return report


def _failure(result: Any) -> Failure:
    config = result.expectation_config
    kwargs = dict(config.kwargs)
    column = kwargs.get("column")
    if column is None and "column_A" in kwargs:
        column = f"{kwargs['column_A']}, {kwargs['column_B']}"
    if column is None and "column_list" in kwargs:
        column = ", ".join(kwargs["column_list"])
    bounds = {
        k: _plain(kwargs[k])
        for k in _BOUND_KWARGS
        if kwargs.get(k) is not None and kwargs.get(k) is not False
    }
    info = result.exception_info or {}
    error = None
    if info.get("raised_exception"):
        error = str(info.get("exception_message"))
    else:
        for value in info.values():  # several metrics: {metric_id: {...}}
            if isinstance(value, dict) and value.get("raised_exception"):
                error = str(value.get("exception_message"))
                break
    res = result.result or {}
    observed = res.get("observed_value")
    if isinstance(observed, dict | list) and not observed:
        observed = None
    return Failure(
        expectation=config.type,
        column=column,
        bounds=bounds,
        observed=_plain(observed),
        unexpected_count=res.get("unexpected_count"),
        element_count=res.get("element_count"),
        unexpected_sample=[_plain(v) for v in res.get("partial_unexpected_list") or []],
        error=error,
    )


def _plain(value: Any) -> Any:
    """Timestamps as ISO text, numpy scalars as Python ones: readable in reports and logs."""
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, timedelta):
        return str(value)
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    item = getattr(value, "item", None)
    if callable(item) and not isinstance(value, str | bytes):
        try:
            return item()
        except (TypeError, ValueError):
            return value
    return value
