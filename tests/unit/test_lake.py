"""The event lake: round trips, idempotent per-date rewrites, ranges, and DuckDB compatibility."""

from __future__ import annotations

from datetime import date
from typing import TYPE_CHECKING

import duckdb
import pandas as pd
import pyarrow.parquet as pq
import pytest

from lambdarec.data import lake
from lambdarec.data.generator import (
    GeneratorConfig,
    generate_catalog,
    generate_events,
    iter_event_batches,
)
from lambdarec.events import canonical_arrow_schema
from lambdarec.tables import events_path, partition_dir

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    import pyarrow as pa

CONFIG = GeneratorConfig(
    n_users=500, n_items=2_000, n_categories=20, days=3, n_events=20_000, seed=5
)
DAYS = [date(2024, 1, 1), date(2024, 1, 2), date(2024, 1, 3)]


@pytest.fixture(scope="module")
def events() -> pd.DataFrame:
    return generate_events(CONFIG)


def _files(lake_dir: Path) -> list[str]:
    return sorted(str(p.relative_to(lake_dir)) for p in lake_dir.rglob("*") if p.is_file())


def test_round_trip_from_a_stream_of_batches(events: pd.DataFrame, tmp_path: Path) -> None:
    written = lake.write_events(iter_event_batches(CONFIG, batch_rows=3_000), tmp_path)
    assert written == DAYS
    assert lake.list_dates(tmp_path) == DAYS
    assert _files(tmp_path) == [f"events/date={d.isoformat()}/part-00000.parquet" for d in DAYS]
    pd.testing.assert_frame_equal(lake.read_events(tmp_path), events)
    counts = lake.date_counts(tmp_path)
    assert sum(counts.values()) == len(events)
    assert counts[DAYS[1]] == (events["ts"].dt.date == DAYS[1]).sum()


def test_files_hold_the_canonical_schema_with_utc_millis(
    events: pd.DataFrame, tmp_path: Path
) -> None:
    lake.write_events(events, tmp_path)
    path = partition_dir(events_path(tmp_path), DAYS[0]) / "part-00000.parquet"
    assert pq.read_schema(path).equals(canonical_arrow_schema())
    ts = pq.ParquetFile(path).schema.column(7)
    assert ts.name == "ts"
    assert "isAdjustedToUTC=true" in str(ts.logical_type) and "milliseconds" in str(ts.logical_type)


def test_rewriting_a_date_is_idempotent_and_replaces_only_that_date(
    events: pd.DataFrame, tmp_path: Path
) -> None:
    lake.write_events(events, tmp_path)
    before = _files(tmp_path)
    lake.write_events(events, tmp_path)
    assert _files(tmp_path) == before
    pd.testing.assert_frame_equal(lake.read_events(tmp_path), events)

    day2 = events[events["ts"].dt.date == DAYS[1]]
    assert lake.write_events(day2.head(10), tmp_path) == [DAYS[1]]
    counts = lake.date_counts(tmp_path)
    assert counts[DAYS[1]] == 10
    assert counts[DAYS[0]] == (events["ts"].dt.date == DAYS[0]).sum()
    assert counts[DAYS[2]] == (events["ts"].dt.date == DAYS[2]).sum()
    assert not (tmp_path / lake.STAGING).exists()


def test_a_failed_write_leaves_the_old_partition(events: pd.DataFrame, tmp_path: Path) -> None:
    lake.write_events(events, tmp_path)

    def broken() -> Iterator[pd.DataFrame]:
        yield events.head(5)
        raise RuntimeError("producer died")

    with pytest.raises(RuntimeError, match="producer died"):
        lake.write_events(broken(), tmp_path)
    pd.testing.assert_frame_equal(lake.read_events(tmp_path), events)
    assert not (tmp_path / lake.STAGING).exists()


def test_read_a_range_inclusive(events: pd.DataFrame, tmp_path: Path) -> None:
    lake.write_events(events, tmp_path)
    got = lake.read_events(tmp_path, DAYS[1], DAYS[2])
    expected = events[events["ts"].dt.date >= DAYS[1]].reset_index(drop=True)
    pd.testing.assert_frame_equal(got, expected)
    assert len(lake.read_events(tmp_path, date(2030, 1, 1))) == 0
    only = lake.read_events(tmp_path, DAYS[0], DAYS[0], columns=["item_id", "ts"])
    assert list(only.columns) == ["item_id", "ts"]
    with pytest.raises(ValueError, match="unknown column"):
        lake.read_events(tmp_path, columns=["nope"])


def test_iter_events_streams_in_time_order(events: pd.DataFrame, tmp_path: Path) -> None:
    lake.write_events(iter_event_batches(CONFIG), tmp_path)
    batches: list[pa.RecordBatch] = list(lake.iter_events(tmp_path, batch_rows=1_000))
    assert max(b.num_rows for b in batches) <= 1_000
    ts = pd.concat([b.to_pandas()["ts"] for b in batches], ignore_index=True)
    assert ts.is_monotonic_increasing and len(ts) == len(events)


def test_empty_lake(tmp_path: Path) -> None:
    assert lake.list_dates(tmp_path) == []
    empty = lake.read_events(tmp_path)
    assert len(empty) == 0 and list(empty.columns) == canonical_arrow_schema().names
    assert lake.write_events(events_frame_empty(), tmp_path) == []


def events_frame_empty() -> pd.DataFrame:
    return canonical_arrow_schema().empty_table().to_pandas()


def test_duckdb_reads_the_lake_with_hive_partitioning(events: pd.DataFrame, tmp_path: Path) -> None:
    lake.write_events(events, tmp_path)
    rows = duckdb.sql(
        f"""
        SELECT date, count(*) AS n, min(ts) AS first, count(DISTINCT event_id) AS ids
        FROM read_parquet('{tmp_path}/events/*/*.parquet', hive_partitioning = true)
        GROUP BY date ORDER BY date
        """
    ).fetchall()
    assert [r[0] for r in rows] == DAYS
    assert sum(r[1] for r in rows) == len(events) == sum(r[3] for r in rows)
    first = rows[0][2]
    assert first.utcoffset() is not None  # TIMESTAMP WITH TIME ZONE
    assert pd.Timestamp(first) == events["ts"].min()
    typed = duckdb.sql(
        f"DESCRIBE SELECT * FROM read_parquet('{tmp_path}/events/*/*.parquet', hive_partitioning = true)"
    ).fetchall()
    assert dict((r[0], r[1]) for r in typed)["ts"] == "TIMESTAMP WITH TIME ZONE"


def test_catalog_round_trip(tmp_path: Path) -> None:
    catalog = generate_catalog(CONFIG)
    path = lake.write_catalog(catalog, tmp_path)
    assert path == tmp_path / "catalog" / "catalog.parquet"
    pd.testing.assert_frame_equal(lake.read_catalog(tmp_path), catalog)
    lake.write_catalog(catalog.head(3), tmp_path)  # replaced, not appended
    assert len(lake.read_catalog(tmp_path)) == 3
    with pytest.raises(ValueError, match="unique"):
        lake.write_catalog(pd.concat([catalog.head(2), catalog.head(1)]), tmp_path)


def test_cli_generate_into_the_lake_then_lake_info(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from lambdarec.data.cli import app

    runner = CliRunner()
    args = [
        "generate",
        "--users",
        "300",
        "--items",
        "1000",
        "--categories",
        "10",
        "--days",
        "2",
        "--events",
        "5000",
        "--seed",
        "3",
        "--start",
        "2024-03-01",
        "--out-dir",
        str(tmp_path / "out"),
        "--lake",
        "--lake-dir",
        str(tmp_path / "lake"),
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "generated " in result.output and "2 dates" in result.output
    files = pd.read_parquet(tmp_path / "out" / "events.parquet")
    pd.testing.assert_frame_equal(files, lake.read_events(tmp_path / "lake"))
    assert len(pd.read_parquet(tmp_path / "out" / "catalog.parquet")) == 1000

    info = runner.invoke(app, ["lake-info", "--lake-dir", str(tmp_path / "lake")])
    assert info.exit_code == 0, info.output
    assert "2024-03-01" in info.output and f"{len(files):,} events" in info.output
    assert "catalog: 1,000 items" in info.output

    bad = runner.invoke(app, ["generate", "--items", "5", "--categories", "10"])
    assert bad.exit_code == 2 and "n_categories (10) must not exceed n_items (5)" in bad.output


def test_merge_upserts_by_event_id_and_never_deletes(events: pd.DataFrame, tmp_path: Path) -> None:
    """Loading one event into a date that holds many keeps them all (the write used to replace
    the date whole); a loaded copy of a stored id replaces it, also across dates; a dry run
    reports the same and writes nothing."""
    day1 = events[events["ts"].dt.date == DAYS[0]].reset_index(drop=True)
    lake.write_events(day1, tmp_path)
    before = _files(tmp_path)

    new = day1.head(1).assign(event_id="new-1", item_id="item-new")
    fixed = day1.iloc[[1]].assign(price=123.0)  # a correction of a stored event
    same = day1.iloc[[2]]
    moved = day1.iloc[[3]].assign(ts=day1["ts"].iloc[3] + pd.Timedelta(days=1))
    loaded = pd.concat([new, fixed, same, moved], ignore_index=True)

    dry = lake.merge_events(loaded, tmp_path, dry_run=True)
    assert _files(tmp_path) == before
    assert [m.as_dict() for m in dry] == [
        {
            "day": str(DAYS[0]),
            "stored": len(day1),
            "inserted": 1,
            "updated": 1,
            "unchanged": 1,
            "moved_out": 1,
            "after": len(day1),
        },
        {
            "day": str(DAYS[1]),
            "stored": 0,
            "inserted": 0,
            "updated": 1,
            "unchanged": 0,
            "moved_out": 0,
            "after": 1,
        },
    ]
    assert lake.merge_events(loaded, tmp_path) == dry
    after = lake.read_events(tmp_path)
    assert len(after) == len(day1) + 1 and after["event_id"].is_unique
    by_id = after.set_index("event_id")
    assert by_id.loc["new-1", "item_id"] == "item-new"
    assert by_id.loc[fixed["event_id"].item(), "price"] == 123.0
    assert by_id.loc[moved["event_id"].item(), "ts"] == moved["ts"].item()
    assert lake.date_counts(tmp_path) == {DAYS[0]: len(day1), DAYS[1]: 1}
    # merging the same rows again changes nothing
    again = lake.merge_events(loaded, tmp_path)
    assert sum(m.unchanged for m in again) == 4 and sum(m.inserted + m.updated for m in again) == 0
    pd.testing.assert_frame_equal(lake.read_events(tmp_path), after)


def test_cli_load_merges_into_the_lake_and_dry_run_writes_nothing(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from lambdarec.data.cli import app

    first, second = tmp_path / "first.csv", tmp_path / "second.csv"
    first.write_text(
        "user,item,time\n" + "".join(f"u{n},i{n},{1700000000 + n}\n" for n in range(100))
    )
    second.write_text("user,item,time\nz,i1,1700000500\n")  # one more event, the same date
    runner = CliRunner()

    def load(path: Path, *extra: str) -> str:
        result = runner.invoke(
            app,
            [
                "load",
                "--source",
                "generic",
                "--path",
                str(path),
                "--out",
                str(tmp_path / f"{path.stem}.parquet"),
                "--lake",
                "--lake-dir",
                str(tmp_path / "lake"),
                *extra,
            ],
        )
        assert result.exit_code == 0, result.output
        return result.output

    assert "inserted" in load(first)
    dry = load(second, "--dry-run")
    assert "dry run" in dry and "2023-11-14" in dry
    assert not (tmp_path / "second.parquet").exists()
    assert sum(lake.date_counts(tmp_path / "lake").values()) == 100
    load(second)
    assert sum(lake.date_counts(tmp_path / "lake").values()) == 101
    load(first)  # a reload: same ids, nothing added
    assert sum(lake.date_counts(tmp_path / "lake").values()) == 101
