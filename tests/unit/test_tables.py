"""The lake's layout helpers: the run's day, the ``date=YYYY-MM-DD`` partitions, the catalog."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone
from typing import TYPE_CHECKING

import pytest

from lambdarec.tables import (
    ITEM_STATS,
    PARTITION_GLOB,
    as_day,
    catalog_path,
    events_path,
    newest_partition,
    partition_day,
    partition_dir,
    partitions,
)

if TYPE_CHECKING:
    from pathlib import Path

DAY = date(2024, 5, 1)


@pytest.mark.parametrize(
    "value",
    [
        "2024-05-01",
        DAY,
        datetime(2024, 5, 1, 23, 59, tzinfo=UTC),
        datetime(2024, 5, 1, 12),  # naive: already UTC
        datetime(2024, 5, 2, 1, tzinfo=timezone(timedelta(hours=2))),  # 2024-05-01 23:00 UTC
        "2024-05-01T12:00:00.000Z",
        "2024-05-01T00:00:00+00:00",
    ],
)
def test_as_day_takes_ds_dates_and_datetimes_in_utc(value: str | date | datetime) -> None:
    assert as_day(value) == DAY


@pytest.mark.parametrize("value", ["", "2024-13-01", "01/05/2024", "yesterday"])
def test_as_day_names_the_expected_format(value: str) -> None:
    with pytest.raises(ValueError, match=r"is not a day; use YYYY-MM-DD") as caught:
        as_day(value)
    assert "\n" not in str(caught.value)


def test_partition_dir_and_partition_day_are_inverses(tmp_path: Path) -> None:
    folder = partition_dir(tmp_path / "t", "2024-05-01")
    assert folder == tmp_path / "t" / "date=2024-05-01"
    assert partition_dir(tmp_path / "t", datetime(2024, 5, 1, 8, tzinfo=UTC)) == folder
    assert partition_day(folder) == DAY
    assert ITEM_STATS.partition(tmp_path, DAY) == partition_dir(ITEM_STATS.path(tmp_path), DAY)
    for name in ("date=20240501", "date=2024-5-1", "date=x", "day=2024-05-01", "_staging"):
        assert partition_day(tmp_path / name) is None, name


def test_partitions_are_read_back_in_day_order(tmp_path: Path) -> None:
    root = tmp_path / "t"
    days = [date(2024, 5, 3), date(2024, 4, 30), date(2024, 5, 1)]
    for day in days:
        partition_dir(root, day).mkdir(parents=True)
    (root / "date=junk").mkdir()
    (root / "date=2024-05-09").write_text("a file, not a partition")
    assert [d for d, _ in partitions(root)] == sorted(days)
    assert all(p.match(PARTITION_GLOB) for _, p in partitions(root))
    assert partitions(tmp_path / "absent") == []


def test_newest_partition_skips_empty_folders_and_honours_before(tmp_path: Path) -> None:
    root = tmp_path / "t"
    assert newest_partition(root) is None
    for day, files in ((date(2024, 4, 30), 1), (date(2024, 5, 1), 1), (date(2024, 5, 2), 0)):
        folder = partition_dir(root, day)
        folder.mkdir(parents=True)
        for i in range(files):
            (folder / f"part-{i}.parquet").write_bytes(b"")
    assert newest_partition(root) == partition_dir(root, "2024-05-01")
    assert newest_partition(root, before="2024-05-01") == partition_dir(root, "2024-04-30")
    assert newest_partition(root, before=date(2024, 4, 30)) is None


def test_tables_are_folders_under_the_lake(tmp_path: Path) -> None:
    assert events_path(tmp_path) == tmp_path / "events"
    assert catalog_path(str(tmp_path)) == tmp_path / "catalog"
    assert ITEM_STATS.path(str(tmp_path)) == tmp_path / "features" / "item_stats"
