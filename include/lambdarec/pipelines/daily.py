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
from lambdarec.tables import FEATURE_TABLES, as_day

if TYPE_CHECKING:
    from collections.abc import Callable

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


def backfill(
    first: str | date,
    last: str | date,
    settings: Settings | None = None,
    *,
    materialize: bool = True,
    report: Callable[[str], None] = log.info,
) -> dict[str, Any]:
    """The daily pipeline's steps for every day ``first``..``last`` (history loaded at once: a
    new lake, the demo's earlier days), with one spark-submit for all of them: the JVM and the
    session start once instead of once a day, and the job writes each day's tables as that day's
    run would. Per day the archive is compacted and the raw events pass their gate before Spark
    starts; every day's tables pass theirs before anything is materialized, so a failed gate
    raises (:class:`~lambdarec.quality.report.DataQualityError`) with the online store
    untouched. With ``materialize``, the last day is materialized (the online store keeps the
    newest features; the daily DAG's next run continues from there).

    Returns the days and each step's seconds; ``report`` receives one line per step."""
    import os
    import subprocess
    import time as clock

    from lambdarec.batch.submit import spark_job

    s = settings or get_settings()
    start, end = as_day(first), as_day(last)
    if end < start:
        raise ValueError(f"backfill from {start} through {end}: the last day is before the first")
    days = [start + timedelta(days=n) for n in range((end - start).days + 1)]
    seconds: dict[str, float] = {}

    def timed(step: str, fn: Callable[[], object]) -> None:
        t0 = clock.monotonic()
        fn()
        seconds[step] = round(clock.monotonic() - t0, 1)

    def compact_and_gate() -> None:
        for day in days:
            compact_archive(day, s)
            empty = no_events(day, s)
            if empty:
                raise ValueError(f"cannot backfill {start}..{end}: {empty}")
            validate("raw_events", day, s)

    report(f"compaction and raw-event gates for {len(days)} days ...")
    timed("compact_and_validate_raw", compact_and_gate)

    job = spark_job(start, s, through=end)
    logfile = s.log_dir / f"backfill-{start}..{end}.log"
    logfile.parent.mkdir(parents=True, exist_ok=True)

    def submit() -> None:
        with logfile.open("w") as out:
            done = subprocess.run(
                job.command(),
                env={**os.environ, **job.env_vars},
                stdout=out,
                stderr=subprocess.STDOUT,
                check=False,
            )
        if done.returncode != 0:
            tail = "\n".join(logfile.read_text(errors="replace").splitlines()[-20:])
            raise RuntimeError(
                f"spark-submit of the backfill {start}..{end} exited {done.returncode} "
                f"(log: {logfile}):\n{tail}"
            )

    report(f"one spark-submit for {start}..{end} (log: {logfile}) ...")
    timed("spark", submit)

    def gates() -> None:
        for day in days:
            for table in FEATURE_TABLES:
                validate(table.name, day, s)

    report(f"feature-table gates for {len(days)} days ...")
    timed("validate_tables", gates)
    if materialize:
        report(f"materialize {end} ...")
        timed("materialize", lambda: (apply_feature_repo(s), materialize_day(end, s)))
    return {"days": [d.isoformat() for d in days], "seconds": seconds, "log": str(logfile)}
