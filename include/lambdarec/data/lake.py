"""The master dataset: canonical events as Parquet, partitioned by UTC date, plus the catalog.

Layout (:mod:`lambdarec.tables`; hive style, so Spark, DuckDB and pyarrow see a ``date`` column)::

    <lake_dir>/events/date=YYYY-MM-DD/part-00000.parquet
    <lake_dir>/catalog/catalog.parquet

Files hold exactly the canonical columns (``ts`` as TIMESTAMP(MILLIS, UTC)); the date lives only in
the path. Writes are idempotent per date: writing events of a date replaces every file of that date.
New files are written under ``<lake_dir>/_staging`` first and swapped in by renames, so a reader
never sees a half-written file and a failed write leaves the old partition in place. (Spark and
DuckDB skip ``_``-prefixed folders; the swap of one date is two renames, not one atomic step.)

Read back with::

    duckdb.sql(f"SELECT * FROM read_parquet('{lake}/events/*/*.parquet', hive_partitioning=true)")
    spark.read.parquet(f"{lake}/events")
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

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
    Returns the dates written, ascending.
    """
    lake_dir = Path(lake_dir)
    staging = lake_dir / STAGING / uuid.uuid4().hex
    writers: dict[np.datetime64, pq.ParquetWriter] = {}
    rows: dict[np.datetime64, int] = {}
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
        log.info(
            "lake: wrote %d event(s) in %d date(s) under %s",
            sum(rows.values()),
            len(written),
            events_path(lake_dir),
        )
        return written
    finally:
        for writer in writers.values():
            if writer.is_open:
                writer.close()
        shutil.rmtree(staging, ignore_errors=True)
        _remove_if_empty(lake_dir / STAGING)


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
