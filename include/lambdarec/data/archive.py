"""The speed layer's raw archive and its daily compaction into the lake.

The Flink job writes every valid event it reads to ``<archive_dir>/date=YYYY-MM-DD/`` as Parquet
part files, committed on checkpoints (exactly once; in-progress files start with ``.``). Those
files are many and small, carry no ``.parquet`` suffix (Flink's filesystem connector has no
option for one) and store ``ts`` as UTC milliseconds without a time-zone annotation.

:func:`compact` folds one day of the archive into the lake's ``events/date=...`` partition: the
archived events plus whatever the partition already holds (a backfill), typed as the canonical
table, deduplicated by ``event_id`` (a replay of the same events, an at-least-once producer) and
sorted by time, written with :func:`lambdarec.data.lake.write_events` (the whole date replaced
atomically). The rule for an id seen more than once: its first copy by event time is kept
(ties: the lake's stored copy, then archive order). Copies that differ in anything but their
arrival are *conflicts* (two producers reusing an id, not a retry): they are counted
(``Compaction.conflicts``) and logged with examples, never merged silently. Re-running it is harmless, and the lake's single writer per date stays the batch
side, so the batch layer's master dataset is exactly what the speed layer saw.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from lambdarec.data import lake
from lambdarec.events import canonical_arrow_schema
from lambdarec.tables import partition_dir, partitions

if TYPE_CHECKING:
    from collections.abc import Iterable
    from datetime import date
    from pathlib import Path

log = logging.getLogger(__name__)


def files(archive_dir: str | Path, day: date) -> list[Path]:
    """The committed part files of ``day`` (hidden ``.`` / ``_`` files are in progress or markers)."""
    folder = partition_dir(archive_dir, day)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith((".", "_")))


def dates(archive_dir: str | Path) -> list[date]:
    """Dates with at least one committed file, ascending."""
    return [day for day, _ in partitions(archive_dir) if files(archive_dir, day)]


def _canonical(table: pa.Table, source: Path) -> pa.Table:
    """An archive file's rows as the canonical table (naive ``ts`` read as UTC)."""
    schema = canonical_arrow_schema()
    missing = [name for name in schema.names if name not in table.column_names]
    if missing:
        raise ValueError(
            f"{source}: archive file lacks column(s) {missing}; it was not written by the "
            "speed layer (include/flink/speed_layer.py); move it out of the archive"
        )
    columns = []
    for field in schema:
        column = table.column(field.name)
        if field.name == "ts" and pa.types.is_timestamp(column.type) and column.type.tz is None:
            column = column.cast(pa.timestamp("ms")).cast(pa.int64()).cast(field.type)
        columns.append(column.cast(field.type))
    return pa.Table.from_arrays(columns, schema=schema)


def read_day(archive_dir: str | Path, day: date) -> pa.Table:
    """Every committed archived event of ``day`` (duplicates kept), canonical schema."""
    parts = [_canonical(pq.read_table(f), f) for f in files(archive_dir, day)]
    return pa.concat_tables(parts) if parts else canonical_arrow_schema().empty_table()


def count(archive_dir: str | Path, days: Iterable[date] | None = None) -> int:
    """Committed archived rows (duplicates included), from the Parquet footers."""
    wanted = dates(archive_dir) if days is None else list(days)
    return sum(pq.ParquetFile(f).metadata.num_rows for d in wanted for f in files(archive_dir, d))


def distinct_ids(archive_dir: str | Path, days: Iterable[date] | None = None) -> int:
    """Distinct committed ``event_id`` values (what a replay of the same events adds nothing to)."""
    wanted = dates(archive_dir) if days is None else list(days)
    ids: set[str] = set()
    for day in wanted:
        for f in files(archive_dir, day):
            ids.update(pq.read_table(f, columns=["event_id"]).column("event_id").to_pylist())
    return len(ids)


@dataclass(frozen=True)
class Compaction:
    day: str
    archived_rows: int
    lake_rows_before: int
    duplicates_dropped: int
    lake_rows_after: int
    #: Ids whose dropped copies differed from the kept one (see the module doc).
    conflicts: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _dedupe_sorted(table: pa.Table) -> tuple[pa.Table, int, int]:
    """Rows sorted by (ts, event_id), the first of each ``event_id`` kept (a stable sort: on a
    tie, the earlier row of ``table``); and the number of ids whose other copies differ from the
    kept one (conflicts)."""
    if table.num_rows == 0:
        return table, 0, 0
    table = table.sort_by([("ts", "ascending"), ("event_id", "ascending")])
    ids = table.column("event_id").to_numpy(zero_copy_only=False)
    _, first, inverse = np.unique(ids, return_index=True, return_inverse=True)
    keep = np.sort(first)
    dropped = np.setdiff1d(np.arange(len(ids)), first)
    conflicts = set()
    if len(dropped):
        rows = table.take(pa.array(dropped)).to_pylist()
        kept = table.take(pa.array(first[inverse[dropped]])).to_pylist()
        conflicts = {a["event_id"] for a, b in zip(rows, kept, strict=True) if a != b}
        if conflicts:
            log.warning(
                "%d event id(s) arrived with different contents (kept the first by event time), "
                "e.g. %s: two producers reuse ids",
                len(conflicts),
                sorted(conflicts)[:3],
            )
    return table.take(pa.array(keep)), table.num_rows - len(keep), len(conflicts)


def compact(archive_dir: str | Path, lake_dir: str | Path, day: date) -> Compaction:
    """Fold ``day`` of the archive into the lake partition of ``day`` (see the module doc).

    A day with nothing archived leaves the lake untouched (a backfilled day stays as it is).
    """
    archived = read_day(archive_dir, day)
    before = lake.date_counts(lake_dir).get(day, 0)
    if archived.num_rows == 0:
        log.info(
            "compact %s: nothing archived; lake partition left as it is (%d rows)", day, before
        )
        return Compaction(day.isoformat(), 0, before, 0, before)
    existing = (
        pa.Table.from_pandas(lake.read_events(lake_dir, day, day), preserve_index=False).cast(
            canonical_arrow_schema()
        )
        if before
        else canonical_arrow_schema().empty_table()
    )
    merged, dropped, conflicts = _dedupe_sorted(pa.concat_tables([existing, archived]))
    days = merged.column("ts").cast(pa.int64()).to_numpy().astype("datetime64[ms]")
    outside = int((days.astype("datetime64[D]") != np.datetime64(day.isoformat())).sum())
    if outside:
        raise ValueError(
            f"{partition_dir(archive_dir, day)}: {outside} archived event(s) have a ts outside {day}; "
            "the speed layer partitions by UTC date (table.local-time-zone = UTC): check the job"
        )
    lake.write_events(merged, lake_dir)
    result = Compaction(
        day.isoformat(), archived.num_rows, before, dropped, merged.num_rows, conflicts
    )
    log.info("compact %s: %s", day, result.as_dict())
    return result
