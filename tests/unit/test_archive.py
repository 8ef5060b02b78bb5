"""The speed layer's archive as Flink writes it (no suffix, naive UTC ts, hidden in-progress files)
and its daily compaction into the lake."""

from __future__ import annotations

from datetime import date
from typing import TYPE_CHECKING

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lambdarec.data import archive, lake
from lambdarec.tables import partition_dir

if TYPE_CHECKING:
    from pathlib import Path

DAY = date(2024, 5, 1)


def _events(ids: list[str], minute0: int = 0) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "event_id": ids,
            "user_id": [f"u{i % 3}" for i in range(len(ids))],
            "session_id": [f"s{i % 3}" for i in range(len(ids))],
            "item_id": [f"i{i}" for i in range(len(ids))],
            "event_type": ["view"] * len(ids),
            "category": ["c1"] * len(ids),
            "price": [9.5] * len(ids),
            "ts": pd.date_range(f"{DAY} 10:{minute0:02d}", periods=len(ids), freq="s", tz="UTC"),
        }
    )


def _flink_file(folder: Path, name: str, frame: pd.DataFrame) -> None:
    """A part file as the Flink filesystem sink writes it: ts as naive UTC millis, no suffix."""
    folder.mkdir(parents=True, exist_ok=True)
    naive = frame.assign(ts=frame["ts"].dt.tz_convert("UTC").dt.tz_localize(None))
    table = pa.Table.from_pandas(naive, preserve_index=False)
    table = table.set_column(
        table.schema.get_field_index("ts"), "ts", table.column("ts").cast(pa.timestamp("ms"))
    )
    pq.write_table(table, folder / name)


def test_compaction_types_dedupes_sorts_and_keeps_backfilled_rows(tmp_path: Path) -> None:
    arch, lake_dir = tmp_path / "archive", tmp_path / "lake"
    folder = partition_dir(arch, DAY)
    _flink_file(folder, "part-a-0-0", _events(["e3", "e4"], minute0=5))
    # e4 again, but another event (another user, item and time): a producer reusing an id
    _flink_file(folder, "part-a-0-1", _events(["e4", "e5"], minute0=5))
    _flink_file(folder, "part-a-0-2", _events(["e3"], minute0=5))  # e3 again, same: a retry
    _flink_file(folder, ".part-a-0-3.inprogress.x", _events(["e9"]))  # not committed yet
    lake.write_events(_events(["e1", "e2"]), lake_dir)  # a backfill of the same day

    assert archive.dates(arch) == [DAY]
    assert archive.count(arch) == 5
    assert archive.distinct_ids(arch) == 3

    result = archive.compact(arch, lake_dir, DAY)
    assert result.as_dict() == {
        "day": "2024-05-01",
        "archived_rows": 5,
        "lake_rows_before": 2,
        "duplicates_dropped": 2,
        "lake_rows_after": 5,
        "conflicts": 1,  # e4's copies differ: counted and logged, the first by time kept
    }
    got = lake.read_events(lake_dir, DAY, DAY)
    assert list(got["event_id"]) == ["e1", "e2", "e3", "e4", "e5"]  # e3, e4 at 10:05:00
    assert got.loc[got["event_id"] == "e4", "item_id"].item() == "i0"  # 10:05:00, not 10:05:01
    assert str(got["ts"].dtype) == "datetime64[ms, UTC]"
    assert got.loc[got["event_id"] == "e3", "ts"].iloc[0] == pd.Timestamp(f"{DAY} 10:05", tz="UTC")

    again = archive.compact(arch, lake_dir, DAY)  # idempotent
    assert again.lake_rows_after == 5 and again.duplicates_dropped == 5
    assert list(lake.read_events(lake_dir, DAY, DAY)["event_id"]) == list(got["event_id"])


def test_a_day_without_archive_leaves_the_lake_alone(tmp_path: Path) -> None:
    lake_dir = tmp_path / "lake"
    lake.write_events(_events(["e1"]), lake_dir)
    result = archive.compact(tmp_path / "archive", lake_dir, DAY)
    assert (result.archived_rows, result.lake_rows_after) == (0, 1)
    assert archive.files(tmp_path / "archive", DAY) == []


def test_a_foreign_file_is_named_with_the_fix(tmp_path: Path) -> None:
    folder = partition_dir(tmp_path / "archive", DAY)
    folder.mkdir(parents=True)
    pq.write_table(pa.table({"x": [1]}), folder / "stray")
    with pytest.raises(ValueError, match="lacks column"):
        archive.compact(tmp_path / "archive", tmp_path / "lake", DAY)
