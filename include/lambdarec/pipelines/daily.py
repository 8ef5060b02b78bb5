"""The daily feature pipeline's steps (the DAG ``daily_feature_pipeline`` calls these).

For the run's data interval ``[D 00:00, D+1 00:00)`` UTC: fold day D of the speed layer's raw
archive into the lake -> validate the raw events of day D ->
Spark computes the four feature tables for D -> validate each -> materialize into the online
store -> Data Docs. A failed gate raises, so the run stops before materialisation and the online
store keeps the last good features; the error text names each failed expectation and its values.
"""

from __future__ import annotations

import logging
from datetime import UTC, date, datetime, time, timedelta
from typing import TYPE_CHECKING, Any

from lambdarec.config import get_settings
from lambdarec.tables import as_day

if TYPE_CHECKING:
    from lambdarec.config import Settings

log = logging.getLogger(__name__)


def compact_archive(day: str | date, settings: Settings | None = None) -> dict[str, Any]:
    """Fold day D of the speed layer's raw archive into the lake (a no-op without archive)."""
    from lambdarec.data.archive import compact

    s = settings or get_settings()
    return compact(s.archive_dir, s.lake_dir, as_day(day)).as_dict()


def no_events(day: str | date, settings: Settings | None = None) -> str | None:
    """Why day D has nothing to process (no event partition in the lake), or None.

    A scheduled run of a day nobody shopped on (the platform idle overnight) is skipped with
    this reason instead of failing its first gate."""
    from lambdarec.tables import events_path, partition_dir

    s = settings or get_settings()
    part = partition_dir(events_path(s.lake_dir), day)
    if any(part.glob("*.parquet")):
        return None
    return (
        f"no events for {as_day(day)}: neither the speed layer's archive nor a backfill wrote "
        f"{part}"
    )


def validate(table: str, day: str | date, settings: Settings | None = None) -> dict[str, Any]:
    """Run the Great Expectations gate of ``table`` for ``day``; raise if it fails.

    Returns a small summary (for XCom): success, number of expectations, the Data Docs page.
    """
    from lambdarec.quality.runner import validate as gx_validate

    report = gx_validate(table, as_day(day), settings=settings or get_settings())
    log.info(
        "%s %s: %s; Data Docs: %s",
        table,
        as_day(day),
        "passed" if report.success else "FAILED",
        report.data_docs_page,
    )
    report.raise_for_failure()
    return {
        "table": table,
        "day": as_day(day).isoformat(),
        "success": report.success,
        "data_docs_page": str(report.data_docs_page),
    }


def materialize_day(day: str | date, settings: Settings | None = None) -> list[str]:
    """Load the batch feature rows of ``day`` (stamped at D+1 00:00 UTC) into the online store."""
    from lambdarec.features.store import materialize

    d = as_day(day)
    start = datetime.combine(d, time(0), tzinfo=UTC)
    views = materialize(start, start + timedelta(days=1), settings=settings or get_settings())
    log.info("materialized %s for %s", ", ".join(views), d)
    return views


def apply_feature_repo(settings: Settings | None = None) -> str:
    """Register the Feast definitions (idempotent; cheap when nothing changed)."""
    from lambdarec.features.store import apply

    return apply(settings or get_settings())


def data_docs_index(settings: Settings | None = None) -> str:
    """The Data Docs site's index page (built by every validation)."""
    s = settings or get_settings()
    index = s.state_dir / "data_docs" / "index.html"
    log.info("Data Docs: file://%s", index)
    return str(index)
