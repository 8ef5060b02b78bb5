"""Data-quality gates: a good day passes, a corrupt day fails with every problem named, Data
Docs are built for each run, and the versioned GX project matches the suites in code.

Great Expectations takes ~10 s to import; the tests share one import and one lake."""

from __future__ import annotations

import re
import shutil
from typing import TYPE_CHECKING

import pandas as pd
import pytest

from lambdarec.config import Settings
from lambdarec.events import CANONICAL_COLUMNS
from lambdarec.quality.offline import external_loads
from lambdarec.quality.paths import GX_DIR
from lambdarec.quality.report import Failure, ValidationReport
from lambdarec.tables import ITEM_COOCCURRENCE, ITEM_STATS

if TYPE_CHECKING:
    from pathlib import Path

DAYS = ("2024-05-01", "2024-05-02", "2024-05-03", "2024-05-04")


def events(day: str, n: int) -> pd.DataFrame:
    step = pd.Timedelta(days=1) / n
    ts = (pd.Timestamp(day, tz="UTC") + step * pd.RangeIndex(n)).astype("datetime64[ms, UTC]")
    kinds = ["view", "view", "add_to_cart", "purchase", "remove_from_cart"]
    return pd.DataFrame(
        {
            "event_id": [f"{day}-e{i}" for i in range(n)],
            "user_id": [f"u{i % 7}" for i in range(n)],
            "session_id": [f"s{i % 11}" for i in range(n)],
            "item_id": [f"i{i % 13}" for i in range(n)],
            "event_type": [kinds[i % len(kinds)] for i in range(n)],
            "category": [None if i % 9 == 0 else f"c{i % 3}" for i in range(n)],
            "price": [None if i % 10 == 0 else 5.0 + i for i in range(n)],
            "ts": ts,
        }
    )[list(CANONICAL_COLUMNS)]


def item_stats(day: str, n: int = 6) -> pd.DataFrame:
    end = pd.Timestamp(day, tz="UTC") + pd.Timedelta(days=1) - pd.Timedelta(microseconds=1)
    rows = []
    for i in range(n):
        rows.append(
            {
                "item_id": f"i{i}",
                "event_timestamp": end,
                "category": f"c{i % 2}",
                "price": 10.0 + i,
                "views_1d": 3,
                "carts_1d": 1,
                "purchases_1d": 1,
                "views_7d": 10,
                "carts_7d": 2,
                "purchases_7d": 2,
                "views_30d": 30,
                "carts_30d": 5,
                "purchases_30d": 3,
                "conversion_7d": 0.2,
                "conversion_30d": 0.1,
                "unique_users_7d": 4,
                "unique_users_30d": 9,
                "popularity_rank_in_category_7d": i // 2 + 1,
            }
        )
    return pd.DataFrame(rows)[list(ITEM_STATS.columns)]


def cooccurrence(day: str) -> pd.DataFrame:
    end = pd.Timestamp(day, tz="UTC") + pd.Timedelta(days=1)
    return pd.DataFrame(
        {
            "item_id": ["i1", "i2"],
            "event_timestamp": [end, end],
            "co_bought_items": [["i2", "i3"], []],
            "co_bought_scores": [[1.0, 0.4], []],
            "co_viewed_items": [["i2"], ["i1"]],
            "co_viewed_scores": [[1.0], [0.0]],  # 0 is outside (0, 1]
        }
    )[list(ITEM_COOCCURRENCE.columns)]


def put(lake: Path, table: str, day: str, df: pd.DataFrame) -> None:
    base = lake / "events" if table == "raw_events" else lake / "features" / table
    part = base / f"date={day}"
    part.mkdir(parents=True, exist_ok=True)
    df.to_parquet(part / "part-00000.parquet", index=False)


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    settings = Settings(state_dir=tmp_path_factory.mktemp("state"))
    lake = settings.lake_dir
    put(lake, "raw_events", DAYS[0], events(DAYS[0], 200))
    put(lake, "raw_events", DAYS[1], events(DAYS[1], 220))
    bad = events(DAYS[2], 210)
    bad.loc[3, "user_id"] = None
    bad.loc[4, "session_id"] = None
    bad.loc[5, "price"] = -12.5
    bad.loc[6, "event_type"] = "click"
    bad.loc[8, "event_id"] = bad.loc[7, "event_id"]
    bad.loc[9, "ts"] = pd.Timestamp("2024-05-04T00:00:00Z")  # the next day
    put(lake, "raw_events", DAYS[2], bad)
    put(lake, "raw_events", DAYS[3], events(DAYS[3], 2000))  # 10x the day before
    put(lake, "item_stats", DAYS[0], item_stats(DAYS[0]))
    put(lake, "item_stats", DAYS[1], item_stats(DAYS[1]))
    broken = item_stats(DAYS[2])
    broken.loc[1, "item_id"] = "i0"  # duplicate key
    broken.loc[2, "views_1d"] = -1
    broken.loc[3, "conversion_7d"] = 1.5
    broken.loc[4, "popularity_rank_in_category_7d"] = 0
    broken.loc[5, "views_30d"] = 1  # fewer than in 7 days
    put(lake, "item_stats", DAYS[2], broken)
    put(lake, "item_cooccurrence", DAYS[1], cooccurrence(DAYS[1]))
    return settings


def _by_kind(report: ValidationReport) -> dict[tuple[str, str | None], Failure]:
    return {(f.expectation, f.column): f for f in report.failures}


def test_good_day_passes_and_builds_data_docs(settings: Settings) -> None:
    from lambdarec.quality.runner import validate

    first = validate("raw_events", DAYS[0], settings)
    assert first.success, first.summary()
    assert first.previous_day is None
    report = validate("raw_events", DAYS[1], settings)
    assert report.success, report.summary()
    assert (report.previous_day, report.previous_row_count, report.row_count) == (DAYS[0], 200, 220)
    assert report.data_docs_page is not None and report.data_docs_page.is_file()
    assert report.data_docs_page.is_relative_to(settings.data_docs_dir)
    assert (settings.data_docs_dir / "index.html").is_file()
    # Rewritten after the build: every stylesheet and script comes from the reports site.
    for page in (report.data_docs_page, settings.data_docs_dir / "index.html"):
        text = page.read_text()
        assert external_loads(text) == [], page
        assert "vendor/bootstrap-table/dist/bootstrap-table.min.js" in text


def test_corrupt_day_names_every_problem(settings: Settings) -> None:
    from lambdarec.quality.report import DataQualityError
    from lambdarec.quality.runner import validate

    report = validate("raw_events", DAYS[2], settings)
    assert not report.success
    failed = _by_kind(report)
    assert failed["expect_column_values_to_not_be_null", "user_id"].unexpected_count == 1
    assert failed["expect_column_values_to_not_be_null", "session_id"].unexpected_count == 1
    assert failed["expect_column_values_to_be_between", "price"].unexpected_sample == [-12.5]
    assert failed["expect_column_values_to_be_in_set", "event_type"].unexpected_sample == ["click"]
    dupes = failed["expect_column_values_to_be_unique", "event_id"]
    assert dupes.unexpected_sample == [f"{DAYS[2]}-e7", f"{DAYS[2]}-e7"]
    assert failed["expect_column_values_to_be_between", "ts"].unexpected_count == 1
    assert len(report.failures) == 6  # nothing else: the row count is within the band

    text = report.summary()
    for needle in ("user_id", "session_id", "-12.5", "'click'", f"{DAYS[2]}-e7", "ts"):
        assert needle in text
    with pytest.raises(DataQualityError, match="expect_column_values_to_be_in_set"):
        report.raise_for_failure()

    page = report.data_docs_page
    assert page is not None and page.is_file()
    html = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", page.read_text()))
    assert "Failed" in html
    assert "values must never be null" in html
    assert "click" in html and f"{DAYS[2]}-e7" in html


def test_row_count_band(settings: Settings) -> None:
    from lambdarec.quality.runner import validate

    report = validate("raw_events", DAYS[3], settings)
    (failure,) = report.failures
    assert failure.expectation == "expect_table_row_count_to_be_between"
    assert failure.observed == 2000
    assert failure.bounds == {"min_value": 105, "max_value": 420}  # 0.5x .. 2x of 210
    wide = Settings(state_dir=settings.state_dir, dq_row_count_max_ratio=20)
    assert validate("raw_events", DAYS[3], wide).success


def test_feature_tables(settings: Settings) -> None:
    from lambdarec.quality.runner import validate

    assert validate("item_stats", DAYS[1], settings).success
    report = validate("item_stats", DAYS[2], settings)
    failed = _by_kind(report)
    assert failed["expect_column_values_to_be_unique", "item_id"].unexpected_sample == ["i0", "i0"]
    assert failed["expect_column_values_to_be_between", "views_1d"].unexpected_sample == [-1]
    assert failed["expect_column_values_to_be_between", "conversion_7d"].unexpected_sample == [1.5]
    rank = failed["expect_column_values_to_be_between", "popularity_rank_in_category_7d"]
    assert rank.unexpected_sample == [0] and rank.bounds == {"min_value": 1}
    assert ("expect_column_pair_values_a_to_be_greater_than_b", "views_30d, views_7d") in failed

    scores = validate("item_cooccurrence", DAYS[1], settings)
    (failure,) = scores.failures
    assert (failure.column, failure.unexpected_sample) == ("co_viewed_scores__min", [0.0])


def test_missing_partition_is_an_error(settings: Settings) -> None:
    from lambdarec.quality.runner import validate

    with pytest.raises(FileNotFoundError, match="no category_popularity partition"):
        validate("category_popularity", DAYS[0], settings)


def test_versioned_project_matches_the_code(tmp_path: Path) -> None:
    from lambdarec.quality.project import sync_project

    copy = tmp_path / "gx"
    shutil.copytree(GX_DIR, copy)
    assert sync_project(copy) == [], "run `lambdarec quality sync` and commit great_expectations/"


def test_failure_text_is_readable() -> None:
    failure = Failure(
        expectation="expect_column_values_to_be_between",
        column="price",
        bounds={"min_value": 0},
        unexpected_count=2,
        element_count=10,
        unexpected_sample=[-1.0, -2.0],
    )
    assert str(failure) == (
        "expect_column_values_to_be_between(price) [min_value=0]: "
        "2 of 10 values unexpected; e.g. [-1.0, -2.0]"
    )
