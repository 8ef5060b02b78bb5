"""Online attribution's Python side: the job's command line, and its archive folded into the lake.

The job is ``include/flink/attribution.py`` (its docstring says how events meet impressions) on
the PyFlink venv's python, a local mini-cluster of its own beside the speed layer's (REST API and
web UI on ``settings.attribution_rest_port``, loopback). The local platform runs it as its
``attribution`` service, supervised like the speed layer (:mod:`lambdarec.platform.speed`);
``lambdarec attribution run`` runs it in the foreground instead, with options of one's own
(Ctrl-C stops it). Either way a start resumes from its newest checkpoint.

It writes two lake tables through an archive, like the speed layer's events: Flink's filesystem
sink commits Parquet part files (no ``.parquet`` suffix, naive UTC milliseconds) under
``<archive>/<table>/date=YYYY-MM-DD/`` on checkpoints, and :func:`compact` folds one day of a
table into ``<lake_dir>/<table>/date=YYYY-MM-DD/part-00000.parquet`` with the contract's types
(:data:`SCHEMAS`), one row per key (:data:`KEYS`; a replay or a restart may archive a row twice),
sorted by time. Re-running it gives the same file.
"""

from __future__ import annotations

import logging
import os
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from lambdarec.data import archive
from lambdarec.data.lake import atomic_write_parquet
from lambdarec.speed.jars import flink_lib_dir, flink_python
from lambdarec.speed.job import alive_jobs, all_running, prepare_job, speed_layer_env
from lambdarec.tables import as_day, partition_dir, partitions

if TYPE_CHECKING:
    from collections.abc import Sequence
    from datetime import date

    from lambdarec.config import Settings

log = logging.getLogger(__name__)

#: The job's ``pipeline.name`` (include/flink/attribution.py), how the REST API lists it.
JOB_NAME = "lambdarec-attribution"
#: The file :func:`compact` writes in each partition of a lake table.
PART_FILE = "part-00000.parquet"

_TS = pa.timestamp("ms", tz="UTC")

#: The shared contract's lake tables (issue #22), column for column.
SCHEMAS: dict[str, pa.Schema] = {
    "impressions": pa.schema(
        [
            pa.field("request_id", pa.string(), nullable=False),
            pa.field("ts", _TS, nullable=False),
            pa.field("user_id", pa.string(), nullable=False),
            pa.field("session_id", pa.string()),
            pa.field("variant", pa.string(), nullable=False),
            pa.field("item_id", pa.string(), nullable=False),
            pa.field("position", pa.int32(), nullable=False),
            pa.field("score", pa.float64()),
            pa.field("source", pa.string()),
        ]
    ),
    "attributed": pa.schema(
        [
            pa.field("event_id", pa.string(), nullable=False),
            pa.field("event_ts", _TS, nullable=False),
            pa.field("event_type", pa.string(), nullable=False),
            pa.field("user_id", pa.string(), nullable=False),
            pa.field("session_id", pa.string()),
            pa.field("item_id", pa.string(), nullable=False),
            pa.field("price", pa.float64()),
            pa.field("revenue", pa.float64(), nullable=False),
            pa.field("request_id", pa.string(), nullable=False),
            pa.field("impression_ts", _TS, nullable=False),
            pa.field("variant", pa.string(), nullable=False),
            pa.field("position", pa.int32(), nullable=False),
            pa.field("match", pa.string(), nullable=False),
        ]
    ),
}
#: One row per key in a compacted partition; the time column orders it and names its day.
KEYS: dict[str, tuple[str, ...]] = {
    "impressions": ("request_id", "item_id"),
    "attributed": ("event_id",),
}
TIME_COLUMN = {"impressions": "ts", "attributed": "event_ts"}


class AttributionError(RuntimeError):
    """An expected problem (unknown table, foreign file); the message says what to do."""


def _table(name: str) -> pa.Schema:
    if name not in SCHEMAS:
        raise AttributionError(f"unknown table {name!r}; use one of {', '.join(SCHEMAS)}")
    return SCHEMAS[name]


# -- where things live -------------------------------------------------------------------------


def table_path(lake_dir: str | Path, table: str) -> Path:
    """``<lake_dir>/<table>``: the folder of the ``impressions`` or ``attributed`` lake table."""
    _table(table)
    return Path(lake_dir) / table


def archive_root(settings: Settings) -> Path:
    """The job's archive (``<archive>/<table>/date=.../``), beside the speed layer's."""
    return settings.lake_dir / "attribution-archive"


def checkpoint_dir(settings: Settings) -> str:
    """The job's checkpoints: a sibling of the speed layer's (never inside it, whose restore
    looks for ``<dir>/<job>/chk-N``)."""
    if settings.flink_checkpoint_dir:
        return settings.flink_checkpoint_dir.rstrip("/") + "-attribution"
    return str(settings.state_dir / "flink" / "attribution-checkpoints")


# -- the job -----------------------------------------------------------------------------------


def attribution_command(settings: Settings, *extra: str) -> list[str]:
    """The job's command line for these settings (tests add options; later ones win)."""
    return [
        str(flink_python(settings)),
        str(settings.home / "include" / "flink" / "attribution.py"),
        "--bootstrap-servers",
        settings.bootstrap_servers,
        "--events-topic",
        settings.topic_events,
        "--impressions-topic",
        settings.topic_impressions,
        "--attributed-topic",
        settings.topic_attributed,
        "--window-s",
        str(settings.attribution_window_s),
        "--archive-dir",
        str(archive_root(settings)),
        "--checkpoint-dir",
        checkpoint_dir(settings),
        "--state-backend",
        settings.flink_state_backend,
        "--jars",
        str(flink_lib_dir(settings)),
        "--rest-port",
        str(settings.attribution_rest_port),
        *extra,
    ]


def attribution_env(settings: Settings) -> dict[str, str]:
    """The speed layer's environment (Java 17, heap, Flink logs, the Kafka login)."""
    return speed_layer_env(settings)


def prepare(settings: Settings) -> None:
    """What the job needs before it starts: the connector jars, its folders and the topics."""
    prepare_job(
        settings, checkpoint_dir=checkpoint_dir(settings), archive_dir=archive_root(settings)
    )


def run_job(settings: Settings, extra: Sequence[str] = ()) -> int:
    """Run the job in the foreground (until it ends or is interrupted); returns its exit code.

    The program checks its options first (``--print-sql``: argparse, no JVM), so a bad one is its
    one-line error before anything is created; then the broker must answer.
    """
    from lambdarec.streaming.kafka import wait_for_broker

    env = {**os.environ, **attribution_env(settings)}
    command = attribution_command(settings, *extra)
    if {"--print-sql", "--help", "-h"} & set(extra):
        return subprocess.run(command, env=env, check=False).returncode  # noqa: S603 - ours
    checked = subprocess.run(  # noqa: S603 - our own program
        [*command, "--print-sql"], env=env, stdout=subprocess.DEVNULL, check=False
    )
    if checked.returncode:
        return checked.returncode
    if attribution_running(settings):
        raise AttributionError(
            f"the attribution job already runs on {settings.bind_host}:"
            f"{settings.attribution_rest_port} (the platform's `attribution` service); stop it "
            "with `lambdarec platform down attribution` to run it here"
        )
    if not wait_for_broker(settings, timeout_s=10):
        raise AttributionError(
            f"Kafka at {settings.bootstrap_servers} does not answer; start it with "
            "`lambdarec platform up kafka` or point LAMBDAREC_KAFKA_BOOTSTRAP at a broker"
        )
    prepare(settings)
    log.info("attribution job: %s (Ctrl-C stops it)", " ".join(command[1:3]))
    return subprocess.run(command, env=env, check=False).returncode  # noqa: S603 - our own program


def attribution_running(
    settings: Settings, port: int | None = None, timeout_s: float = 2.0
) -> bool:
    """Whether the mini-cluster's REST API on ``port`` (default the platform's) reports the job
    with every task running: the ``attribution`` service's health check."""
    rest_url = f"http://{settings.bind_host}:{port or settings.attribution_rest_port}"
    return any(all_running(j) for j in alive_jobs(rest_url, JOB_NAME, timeout_s=timeout_s))


# -- compaction --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Compaction:
    table: str
    day: str
    archived_rows: int
    lake_rows_before: int
    duplicates_dropped: int
    lake_rows_after: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _typed(table: pa.Table, schema: pa.Schema, source: Path) -> pa.Table:
    """A file's rows with the contract's types (the archive's naive timestamps read as UTC)."""
    missing = [name for name in schema.names if name not in table.column_names]
    if missing:
        raise AttributionError(
            f"{source}: lacks column(s) {missing}; it was not written by the attribution job "
            "(include/flink/attribution.py): move it out of the folder"
        )
    columns = []
    for field in schema:
        column = table.column(field.name)
        if pa.types.is_timestamp(column.type) and column.type.tz is None:
            column = column.cast(pa.timestamp("ms")).cast(pa.int64()).cast(field.type)
        columns.append(column.cast(field.type))
    return pa.Table.from_arrays(columns, schema=schema)


def lake_files(lake_dir: str | Path, table: str, day: date) -> list[Path]:
    folder = partition_dir(table_path(lake_dir, table), day)
    return sorted(folder.glob("*.parquet")) if folder.is_dir() else []


def read(
    lake_dir: str | Path, table: str, start: date | None = None, end: date | None = None
) -> pa.Table:
    """Rows of a lake table (``impressions`` or ``attributed``) of days ``start``..``end``."""
    schema = _table(table)
    parts = [
        _typed(pq.read_table(f), schema, f)
        for day, _ in partitions(table_path(lake_dir, table))
        if (start is None or day >= start) and (end is None or day <= end)
        for f in lake_files(lake_dir, table, day)
    ]
    return pa.concat_tables(parts) if parts else schema.empty_table()


def _first_per_key(table: pa.Table, keys: tuple[str, ...], time: str) -> pa.Table:
    """Rows sorted by (time, keys), the first of each key kept."""
    if table.num_rows == 0:
        return table
    table = table.sort_by([(time, "ascending"), *((k, "ascending") for k in keys)])
    indexed = table.select(list(keys)).append_column("_row", pa.array(range(table.num_rows)))
    first = indexed.group_by(list(keys), use_threads=False).aggregate([("_row", "min")])
    keep = pc.sort_indices(first.column("_row_min"))
    return table.take(pc.take(first.column("_row_min"), keep))


def compact(
    archive_dir: str | Path, lake_dir: str | Path, table: str, day: str | date
) -> Compaction:
    """Fold ``day`` of ``<archive_dir>/<table>`` into the lake table's partition of that day
    (whatever the partition already holds is kept); a day with nothing archived is left as is."""
    schema = _table(table)
    day = as_day(day)
    source = Path(archive_dir) / table
    archived = [_typed(pq.read_table(f), schema, f) for f in archive.files(source, day)]
    existing_files = lake_files(lake_dir, table, day)
    existing = [_typed(pq.read_table(f), schema, f) for f in existing_files]
    before = sum(t.num_rows for t in existing)
    n_archived = sum(t.num_rows for t in archived)
    if not n_archived:
        log.info("compact %s %s: nothing archived; lake partition left as it is", table, day)
        return Compaction(table, day.isoformat(), 0, before, 0, before)
    merged = pa.concat_tables([*existing, *archived])
    kept = _first_per_key(merged, KEYS[table], TIME_COLUMN[table])
    target = partition_dir(table_path(lake_dir, table), day) / PART_FILE
    atomic_write_parquet(kept, target)
    for old in existing_files:
        if old != target:
            old.unlink(missing_ok=True)
    result = Compaction(
        table,
        day.isoformat(),
        n_archived,
        before,
        merged.num_rows - kept.num_rows,
        kept.num_rows,
    )
    log.info("compact %s %s: %s", table, day, result.as_dict())
    return result


def archived_dates(archive_dir: str | Path, table: str) -> list[date]:
    """Days of ``<archive_dir>/<table>`` with at least one committed file."""
    _table(table)
    return archive.dates(Path(archive_dir) / table)
