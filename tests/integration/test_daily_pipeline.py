"""The daily feature pipeline DAG on real data, real Spark, real Feast and real GX gates.

One module-scoped run of the real DAG file (``dag.test()``) over the Taobao subset (a fifth of its
users), for two consecutive days, then a corrupt third day. Feature values are checked against an independent
pandas recomputation over the same events, then read back online and point in time.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lambdarec.data import lake
from lambdarec.data.loaders import load_taobao
from lambdarec.features.store import get_historical_features, get_online_features
from lambdarec.harness.platform import private_settings
from lambdarec.platform.dag_run import run_dag_test
from lambdarec.quality.runner import validate
from lambdarec.tables import ITEM_STATS, USER_HISTORY, events_path, partition_dir

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DAY1, DAY2, BAD_DAY = date(2017, 12, 1), date(2017, 12, 2), date(2017, 12, 3)
DAG = "daily_feature_pipeline"


@pytest.fixture(scope="module")
def pipeline():
    state = Path(tempfile.mkdtemp(prefix="lambdarec-daily-"))
    settings = private_settings(state)
    events = load_taobao(official_window=True)
    # A fifth of the users (the same fifth every run): the features are per user and item, and
    # the online store's materialisation, half of each day's run, grows with the rows.
    events = events[events["user_id"].astype(str).str[-1].isin(("0", "5"))]
    lake.write_events(events[events["ts"] < pd.Timestamp(BAD_DAY, tz="UTC")], settings.lake_dir)
    runs = {day: run_dag_test(DAG, day, settings) for day in (DAY1, DAY2)}
    yield settings, events, runs
    shutil.rmtree(state, ignore_errors=True)


def _window(events: pd.DataFrame, day: date, days: int) -> pd.DataFrame:
    end = pd.Timestamp(day + timedelta(days=1), tz="UTC")
    return events[(events["ts"] >= end - pd.Timedelta(days=days)) & (events["ts"] < end)]


def test_the_dag_succeeds_for_each_day(pipeline) -> None:
    _, _, runs = pipeline
    for run in runs.values():
        assert run.success, run.log[-3000:]
        assert set(run.tasks.values()) == {"success"}, run.tasks
        assert "spark_daily_features" in run.tasks and "materialize" in run.tasks


def test_feature_values_match_an_independent_pandas_recomputation(pipeline) -> None:
    settings, events, _ = pipeline
    users = pd.read_parquet(USER_HISTORY.partition(settings.lake_dir, DAY2.isoformat()))
    items = pd.read_parquet(ITEM_STATS.partition(settings.lake_dir, DAY2.isoformat()))
    assert users["user_id"].is_unique and items["item_id"].is_unique

    w30 = _window(events, DAY2, 30)
    expected_users = w30.groupby("user_id").agg(
        n_events=("event_id", "size"),
        n_views=("event_type", lambda s: int((s == "view").sum())),
        n_purchases=("event_type", lambda s: int((s == "purchase").sum())),
        n_items=("item_id", "nunique"),
    )
    assert set(users["user_id"]) == set(expected_users.index)
    sample = users.set_index("user_id").loc[expected_users.index[::40]]
    exp = expected_users.loc[sample.index]
    assert (sample["n_events_30d"] == exp["n_events"]).all()
    assert (sample["n_views_30d"] == exp["n_views"]).all()
    assert (sample["n_purchases_30d"] == exp["n_purchases"]).all()
    assert (sample["n_distinct_items_30d"] == exp["n_items"]).all()

    w7 = _window(events, DAY2, 7)
    views7 = w7[w7["event_type"] == "view"].groupby("item_id").size()
    top = views7.sort_values(ascending=False).index[:25]
    got = items.set_index("item_id").loc[top, "views_7d"]
    assert (got == views7.loc[top]).all()
    buys30 = w30[w30["event_type"] == "purchase"].groupby("item_id").size()
    some = buys30.index[:25]
    assert (items.set_index("item_id").loc[some, "purchases_30d"] == buys30.loc[some]).all()


def test_online_store_serves_the_latest_day(pipeline) -> None:
    settings, _, _ = pipeline
    users = pd.read_parquet(USER_HISTORY.partition(settings.lake_dir, DAY2.isoformat()))
    sample = users.sort_values("n_events_30d", ascending=False).head(5)
    online = get_online_features(
        ["user_history_30d:n_events_30d", "user_history_30d:top_category_30d"],
        [{"user_id": u} for u in sample["user_id"]],
        settings,
    )
    assert online["user_history_30d__n_events_30d"] == sample["n_events_30d"].tolist()
    assert online["user_history_30d__top_category_30d"] == sample["top_category_30d"].tolist()


def test_historical_features_are_point_in_time_correct(pipeline) -> None:
    settings, _, _ = pipeline
    day1 = pd.read_parquet(USER_HISTORY.partition(settings.lake_dir, DAY1.isoformat()))
    day2 = pd.read_parquet(USER_HISTORY.partition(settings.lake_dir, DAY2.isoformat()))
    both = day1.merge(day2, on="user_id", suffixes=("_1", "_2"))
    changed = both[both["n_events_30d_1"] != both["n_events_30d_2"]].head(10)
    assert len(changed) >= 5, "the sample needs users whose features changed between the days"
    # Day-1 rows are stamped DAY2 00:00, day-2 rows DAY2+1 00:00. An entity row in between must
    # see day 1, never day 2 (that would leak the future into training).
    between = datetime.combine(DAY2, datetime.min.time(), tzinfo=UTC) + timedelta(hours=12)
    after = between + timedelta(days=1)
    entity = pd.DataFrame(
        {
            "user_id": [*changed["user_id"], *changed["user_id"]],
            "event_timestamp": [between] * len(changed) + [after] * len(changed),
        }
    )
    hist = get_historical_features(entity, ["user_history_30d:n_events_30d"], settings)
    values = hist["user_history_30d__n_events_30d"].tolist()
    assert values[: len(changed)] == changed["n_events_30d_1"].tolist()
    assert values[len(changed) :] == changed["n_events_30d_2"].tolist()


def test_a_corrupt_day_fails_its_gate_and_leaves_the_online_store_unchanged(pipeline) -> None:
    settings, events, _ = pipeline
    users = pd.read_parquet(USER_HISTORY.partition(settings.lake_dir, DAY2.isoformat()))
    keys = [{"user_id": u} for u in users["user_id"].head(20)]
    before = get_online_features(["user_history_30d:n_events_30d"], keys, settings)

    # Write the bad day straight to the lake (the contract-checking writer would refuse it).
    day = events[(events["ts"] >= pd.Timestamp(BAD_DAY, tz="UTC"))].head(2000).copy()
    day["user_id"] = day["user_id"].astype(object)
    day.iloc[0, day.columns.get_loc("user_id")] = None
    day.iloc[1, day.columns.get_loc("price")] = -5.0
    day.iloc[2, day.columns.get_loc("event_type")] = "click"
    day.iloc[3, day.columns.get_loc("event_id")] = day.iloc[4]["event_id"]
    target = partition_dir(events_path(settings.lake_dir), BAD_DAY)
    target.mkdir(parents=True)
    schema = pa.schema(
        [f.with_nullable(True) for f in pa.Schema.from_pandas(day, preserve_index=False)]
    )
    pq.write_table(
        pa.Table.from_pandas(day, schema=schema, preserve_index=False),
        target / "part-00000.parquet",
    )

    run = run_dag_test(DAG, BAD_DAY, settings)
    assert run.state == "failed"
    assert run.tasks["validate_raw_events"] == "failed"
    assert run.tasks["materialize"] == "upstream_failed"
    assert run.tasks["spark_daily_features"] == "upstream_failed"
    assert run.tasks["data_docs"] == "success"
    for words in ("user_id", "price", "event_type", "event_id", "click"):
        assert words in run.log, f"the failure report does not mention {words!r}"

    # The gate's own report: the Data Docs page of that validation names what failed and how.
    report = validate("raw_events", BAD_DAY, settings)
    assert not report.success
    page = Path(report.data_docs_page)
    assert page.is_file() and page.is_relative_to(settings.data_docs_dir)
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", page.read_text()))
    for rendered in (
        "Failed",
        "values must never be null",
        "values must belong to this set",
        "values must be unique",
        "click",
    ):
        assert rendered in text, rendered

    after = get_online_features(["user_history_30d:n_events_30d"], keys, settings)
    assert after == before


def test_running_a_day_again_changes_no_feature_table_and_no_online_row(pipeline) -> None:
    """The fault drill "the daily DAG run twice for the same day" (a retry, a manual re-trigger)."""
    from lambdarec.harness.drills import daily_rerun_drill

    settings, _, _ = pipeline
    result = daily_rerun_drill(settings, DAY2.isoformat())
    print(result.as_dict())
    assert result.succeeded
    assert result.tables >= 5 and result.rows > 1000 and result.online_rows > 1000, result
    assert result.tables_changed == [] and result.online_changed == {}, result
