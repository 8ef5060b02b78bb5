"""The master dataset: canonical events as Parquet, partitioned by UTC date, plus the catalog.

Layout (:mod:`lambdarec.tables`; hive style, so Spark, DuckDB and pyarrow see a ``date`` column)::

    <lake_dir>/events/date=YYYY-MM-DD/part-00000.parquet
    <lake_dir>/catalog/catalog.parquet

Files hold exactly the canonical columns (``ts`` as TIMESTAMP(MILLIS, UTC)); the date lives only in
the path. :func:`write_events` is idempotent per date: writing events of a date replaces every file
of that date. :func:`merge_events` upserts by ``event_id`` and never deletes a stored event
(``lambdarec data load --lake``).
New files are written under ``<lake_dir>/_staging`` first and swapped in by renames, so a reader
never sees a half-written file and a failed write leaves the old partition in place. (Spark and
DuckDB skip ``_``-prefixed folders; the swap of one date is two renames, not one atomic step.)

Read back with::

    duckdb.sql(f"SELECT * FROM read_parquet('{lake}/events/*/*.parquet', hive_partitioning=true)")
    spark.read.parquet(f"{lake}/events")
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from lambdarec.data.canonical import as_tables, catalog_arrow_schema
from lambdarec.events import canonical_arrow_schema
from lambdarec.tables import as_day, catalog_path, events_path, partition_dir, partitions

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator
    from datetime import date

log = logging.getLogger(__name__)


class LakeError(RuntimeError):
    """A lake write that could not be made; the message says why and what to do (one line)."""


def _no_space(error: OSError) -> bool:
    return error.errno in (errno.ENOSPC, errno.EDQUOT) or "No space left on device" in str(error)


def _full(lake_dir: Path) -> LakeError:
    return LakeError(
        f"the lake's disk is full ({lake_dir}: no space left on device); nothing in the lake was "
        "changed: free space there or move the state folder (LAMBDAREC_STATE_DIR) to a larger disk"
    )


#: The catalog's one file, in :func:`lambdarec.tables.catalog_path`.
CATALOG_FILE = "catalog.parquet"
STAGING = "_staging"
#: Rows per Parquet row group; large enough for scans, small enough for streaming reads.
ROW_GROUP_ROWS = 250_000
_WRITE_OPTIONS = {
    "compression": "zstd",
    "coerce_timestamps": "ms",
    "allow_truncated_timestamps": False,
}


def _utc_dates(table: pa.Table) -> np.ndarray:
    """The UTC day of each row as ``datetime64[D]``."""
    ms = table.column("ts").cast(pa.int64()).to_numpy()
    return ms.astype("datetime64[ms]").astype("datetime64[D]")


def write_events(
    data: pd.DataFrame
    | pa.Table
    | pa.RecordBatch
    | Iterable[pd.DataFrame | pa.Table | pa.RecordBatch],
    lake_dir: str | Path,
) -> list[date]:
    """Write canonical events into the lake; every date present in ``data`` is replaced whole.

    ``data`` is a canonical frame, an Arrow table/batch, or an iterable of those (for example
    :func:`lambdarec.data.generator.iter_event_batches`), consumed once in bounded memory. Rows keep
    their input order within a date, so feed time-ordered input to get time-ordered files.
    Returns the dates written, ascending. Every date is staged before any is swapped in, so a
    write that fails (a full disk raises :class:`LakeError`) changes no date.
    """
    lake_dir = Path(lake_dir)
    staging = lake_dir / STAGING / uuid.uuid4().hex
    writers: dict[np.datetime64, pq.ParquetWriter] = {}
    rows: dict[np.datetime64, int] = {}
    swapped: list[date] = []
    schema = canonical_arrow_schema()
    try:
        for table in as_tables(data):
            if table.num_rows == 0:
                continue
            days = _utc_dates(table)
            for day in np.unique(days):
                part = (
                    table
                    if (days[0] == day and days[-1] == day)
                    else table.filter(pa.array(days == day))
                )
                writer = writers.get(day)
                if writer is None:
                    folder = partition_dir(staging, str(day))
                    folder.mkdir(parents=True)
                    writer = pq.ParquetWriter(
                        folder / "part-00000.parquet", schema, **_WRITE_OPTIONS
                    )
                    writers[day] = writer
                    rows[day] = 0
                writer.write_table(part, row_group_size=ROW_GROUP_ROWS)
                rows[day] += part.num_rows
        for writer in writers.values():
            writer.close()
        written = [as_day(str(day)) for day in sorted(writers)]
        for day in written:
            _swap_in(
                partition_dir(staging, day), partition_dir(events_path(lake_dir), day), lake_dir
            )
            swapped.append(day)
        log.info(
            "lake: wrote %d event(s) in %d date(s) under %s",
            sum(rows.values()),
            len(written),
            events_path(lake_dir),
        )
        return written
    except OSError as error:
        if not _no_space(error):
            raise
        if swapped:  # renames do not allocate, so this is not expected; say what happened
            raise LakeError(
                f"the lake's disk is full ({lake_dir}: no space left on device) after "
                f"{len(swapped)} date(s) were replaced ({swapped[0]}..{swapped[-1]}); the other "
                "dates are unchanged: free space and write again"
            ) from None
        raise _full(lake_dir) from None
    finally:
        for writer in writers.values():
            if writer.is_open:
                with contextlib.suppress(OSError):  # a full disk fails the close too
                    writer.close()
        shutil.rmtree(staging, ignore_errors=True)
        _remove_if_empty(lake_dir / STAGING)


@dataclass(frozen=True)
class Merge:
    """What :func:`merge_events` did (or, in a dry run, would do) to one date of the lake."""

    day: str
    stored: int
    inserted: int
    updated: int
    unchanged: int
    #: Stored events of this date whose id the loaded data moves to another date.
    moved_out: int
    after: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def merge_events(
    data: pd.DataFrame | pa.Table, lake_dir: str | Path, *, dry_run: bool = False
) -> list[Merge]:
    """Upsert canonical events into the lake by ``event_id``; no stored event is deleted.

    An id the lake lacks is inserted; an id it holds is replaced by the loaded row (the file is
    the correction: the loaded copy wins, wherever the stored copy's date was); within ``data``
    the last row of an id wins. Every date touched is rewritten sorted by (``ts``,
    ``event_id``) through :func:`write_events` (staged, swapped in by renames). Returns one
    :class:`Merge` per date touched, ascending; ``dry_run`` computes them and writes nothing.
    (The archive's compaction, :func:`lambdarec.data.archive.compact`, folds the stream's
    at-least-once copies instead: there every copy of an id is the same event, the first kept.)
    """
    table = pa.concat_tables(list(as_tables(data)))  # conformed to the canonical schema
    ids = table.column("event_id").to_numpy(zero_copy_only=False).astype(str)
    _, last = np.unique(ids[::-1], return_index=True)
    keep = np.sort(len(ids) - 1 - last)  # the last row of each id, input order kept
    if len(keep) < table.num_rows:
        log.info(
            "lake merge: %d repeated id(s) in the input, the last row of each kept",
            table.num_rows - len(keep),
        )
        table, ids = table.take(pa.array(keep)), ids[keep]
    new_days = _utc_dates(table).astype(str)
    incoming = pa.array(np.unique(ids), pa.string())
    # where the lake holds each incoming id (one column read per partition)
    stored_at: dict[str, str] = {}
    for stored_day, path in partitions(events_path(lake_dir)):
        for f in sorted(path.glob("*.parquet")):
            column = pq.read_table(f, columns=["event_id"]).column("event_id")
            hit = pc.is_in(column, value_set=incoming)
            for event_id in column.filter(hit).to_pylist():
                stored_at[event_id] = str(stored_day)
    touched = sorted(set(new_days.tolist()) | set(stored_at.values()))
    schema = canonical_arrow_schema()
    out: list[Merge] = []
    tables: list[pa.Table] = []
    for day in touched:
        stored = pa.Table.from_pandas(
            read_events(lake_dir, as_day(day), as_day(day)), preserve_index=False, schema=schema
        )
        stored_ids = stored.column("event_id").to_numpy(zero_copy_only=False).astype(str)
        replaced = np.isin(stored_ids, ids)
        mine = new_days == day
        loaded = table.filter(pa.array(mine))
        loaded_ids = ids[mine]
        before = dict(  # the stored copies the loaded rows of this date may replace
            zip(stored_ids[replaced], stored.filter(pa.array(replaced)).to_pylist(), strict=True)
        )
        inserted = sum(1 for i in loaded_ids if i not in stored_at)
        again = np.isin(loaded_ids, stored_ids[replaced])  # only these can be unchanged
        unchanged = sum(
            before[i] == row
            for i, row in zip(
                loaded_ids[again], loaded.filter(pa.array(again)).to_pylist(), strict=True
            )
        )
        updated = len(loaded_ids) - inserted - unchanged
        moved_out = int(replaced.sum()) - int(np.isin(stored_ids[replaced], loaded_ids).sum())
        merged = pa.concat_tables([stored.filter(pa.array(~replaced)), loaded.cast(schema)])
        merged = merged.sort_by([("ts", "ascending"), ("event_id", "ascending")])
        out.append(
            Merge(day, stored.num_rows, inserted, updated, unchanged, moved_out, merged.num_rows)
        )
        tables.append(merged)
    if dry_run:
        return out
    # One write for every date: all are staged before any is swapped in, so a failed merge (a full
    # disk) leaves the whole lake as it was, not some dates merged and others not.
    write_events([merged for merged in tables if merged.num_rows], lake_dir)
    emptied = [
        as_day(day) for day, merged in zip(touched, tables, strict=True) if not merged.num_rows
    ]
    delete_dates(lake_dir, emptied)  # every stored event of these dates moved to another date
    return out


def _swap_in(new: Path, final: Path, lake_dir: Path) -> None:
    """Replace the folder ``final`` by ``new`` (both on the lake's file system) with renames."""
    final.parent.mkdir(parents=True, exist_ok=True)
    if final.exists():
        trash = lake_dir / STAGING / f"old-{uuid.uuid4().hex}"
        trash.parent.mkdir(parents=True, exist_ok=True)
        os.replace(final, trash)
        os.replace(new, final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(new, final)


def _remove_if_empty(folder: Path) -> None:
    with contextlib.suppress(OSError):
        folder.rmdir()


def list_dates(lake_dir: str | Path) -> list[date]:
    """The dates present in the lake (a partition with a Parquet file), ascending."""
    return [day for day, path in partitions(events_path(lake_dir)) if any(path.glob("*.parquet"))]


def _selected(lake_dir: str | Path, start_date: date | None, end_date: date | None) -> list[Path]:
    files = []
    for day, path in partitions(events_path(lake_dir)):
        if (start_date is None or day >= start_date) and (end_date is None or day <= end_date):
            files.extend(sorted(path.glob("*.parquet")))
    return files


def date_counts(lake_dir: str | Path) -> dict[date, int]:
    """Rows per date, from the Parquet footers (no data is read)."""
    return {
        day: sum(pq.ParquetFile(f).metadata.num_rows for f in _selected(lake_dir, day, day))
        for day in list_dates(lake_dir)
    }


def iter_events(
    lake_dir: str | Path,
    start_date: date | None = None,
    end_date: date | None = None,
    *,
    batch_rows: int = 100_000,
    columns: list[str] | None = None,
) -> Iterator[pa.RecordBatch]:
    """Canonical event batches of dates ``start_date``..``end_date`` (both inclusive), streamed
    date by date in file order, which is event-time order for lakes written from ordered input."""
    for path in _selected(lake_dir, start_date, end_date):
        yield from pq.ParquetFile(path).iter_batches(batch_size=batch_rows, columns=columns)


def read_events(
    lake_dir: str | Path,
    start_date: date | None = None,
    end_date: date | None = None,
    *,
    columns: list[str] | None = None,
) -> pd.DataFrame:
    """Canonical events of dates ``start_date``..``end_date`` (both inclusive; ``None`` = open),
    sorted by ``ts`` with ties in file order."""
    files = _selected(lake_dir, start_date, end_date)
    schema = canonical_arrow_schema()
    if columns is not None:
        unknown = [c for c in columns if c not in schema.names]
        if unknown:
            raise ValueError(f"unknown column(s) {unknown}; the event table has {schema.names}")
    wanted = None if columns is None else list(dict.fromkeys([*columns, "ts"]))
    if not files:
        table = schema.empty_table()
    else:
        table = pa.concat_tables([pq.read_table(f, schema=schema, columns=wanted) for f in files])
    if table.num_rows > 1:
        order = np.argsort(table.column("ts").cast(pa.int64()).to_numpy(), kind="stable")
        if not np.array_equal(order, np.arange(len(order))):
            table = table.take(pa.array(order))
    if columns is not None:
        table = table.select(columns)
    return table.to_pandas()


def delete_dates(lake_dir: str | Path, dates: Iterable[date]) -> None:
    """Remove whole date partitions (a no-op for dates that are absent)."""
    for day in dates:
        shutil.rmtree(partition_dir(events_path(lake_dir), day), ignore_errors=True)


def atomic_write_parquet(table: pa.Table, target: str | Path) -> Path:
    """Write one Parquet file through a hidden temporary file and a rename (never half-written)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
    try:
        pq.write_table(table, tmp, row_group_size=ROW_GROUP_ROWS, **_WRITE_OPTIONS)
        os.replace(tmp, target)
    except OSError as error:
        if _no_space(error):
            raise LakeError(
                f"the disk of {target.parent} is full (no space left on device); {target.name} "
                "was left as it was: free space there or move the state folder "
                "(LAMBDAREC_STATE_DIR) to a larger disk"
            ) from None
        raise
    finally:
        tmp.unlink(missing_ok=True)
    return target


# -- catalog --------------------------------------------------------------------------------
def write_catalog(catalog: pd.DataFrame | pa.Table, lake_dir: str | Path) -> Path:
    """Replace the catalog (item_id, category, price, created_at) atomically."""
    schema = catalog_arrow_schema()
    if isinstance(catalog, pd.DataFrame):
        missing = [c for c in schema.names if c not in catalog.columns]
        if missing:
            raise ValueError(f"catalog lacks column(s) {missing}; have {list(catalog.columns)}")
        table = pa.Table.from_pandas(catalog[schema.names], schema=schema, preserve_index=False)
    else:
        table = catalog.select(schema.names).cast(schema)
    duplicated = pc.count_distinct(table.column("item_id")).as_py() != table.num_rows
    if duplicated:
        raise ValueError("catalog item_id values must be unique")
    return atomic_write_parquet(table, catalog_path(lake_dir) / CATALOG_FILE)


def read_catalog(lake_dir: str | Path) -> pd.DataFrame:
    path = catalog_path(lake_dir) / CATALOG_FILE
    if not path.exists():
        raise FileNotFoundError(f"no catalog at {path}; write one with write_catalog()")
    return pq.read_table(path, schema=catalog_arrow_schema()).to_pandas()
