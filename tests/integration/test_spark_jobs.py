"""The daily Spark feature job on real Spark, checked against DuckDB and pandas recomputations,
and its session tables against the in-memory builder offline evaluation uses.

Two small lakes: the real Taobao 815-user subset (no prices, 9 days plus a few stray older
events) and a generated clickstream with prices over 35 days (so the 30-day window cuts). One
SparkSession serves the whole module.
"""

from __future__ import annotations

import importlib.util
import math
import os
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lambdarec.batch import duckdb_reference
from lambdarec.batch.neighbours import SESSION_TABLES, tables_from_events
from lambdarec.batch.spec import TABLES, event_timestamp, window_bounds
from lambdarec.batch.submit import DAILY_FEATURES
from lambdarec.config import get_settings
from lambdarec.data.lake import read_events, write_events

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TAOBAO_DAY = date(2017, 12, 3)
GEN_START = date(2024, 3, 1)
GEN_DAY = GEN_START + timedelta(days=34)

_ARROW_TYPES = {
    "string": pa.string(),
    "int64": pa.int64(),
    "double": pa.float64(),
    "timestamp": pa.timestamp("us", tz="UTC"),
    "array<string>": pa.list_(pa.string()),
    "array<double>": pa.list_(pa.float64()),
    "array<int64>": pa.list_(pa.int64()),
}


def _load_job():
    spec = importlib.util.spec_from_file_location("daily_features", DAILY_FEATURES)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _taobao_events() -> pd.DataFrame:
    path = get_settings().shared_data_dir / "taobao_userbehavior" / "UserBehavior_first815users.csv"
    if not path.exists():
        pytest.skip(f"the Taobao subset is not at {path}")
    from lambdarec.data.loaders import load_taobao

    return load_taobao(path)


def _generated_events() -> pd.DataFrame:
    from lambdarec.data.generator import GeneratorConfig, generate_events

    config = GeneratorConfig(
        n_users=400,
        n_items=3_000,
        n_categories=40,
        days=35,
        start=GEN_START,
        n_events=40_000,
        seed=7,
    )
    return generate_events(config)


@pytest.fixture(scope="module")
def job():
    return _load_job()


@pytest.fixture(scope="module")
def spark(job):
    os.environ.setdefault("JAVA_HOME", str(get_settings().java_home))
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    session = job.build_session("local[2]", shuffle_partitions=4, app_name="test-daily-features")
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


@pytest.fixture(scope="module")
def lakes(tmp_path_factory) -> dict[str, tuple[Path, date, pd.DataFrame]]:
    out = {}
    for name, events, day in (
        ("taobao", _taobao_events(), TAOBAO_DAY),
        ("generated", _generated_events(), GEN_DAY),
    ):
        lake = tmp_path_factory.mktemp(name)
        write_events(events, lake)
        out[name] = (lake, day, events)
    return out


@pytest.fixture(scope="module")
def spark_runs(spark, job, lakes) -> dict[str, dict[str, pd.DataFrame]]:
    """Each lake's four tables as the job wrote them (run once per lake for the module)."""
    results = {}
    for name, (lake, day, _) in lakes.items():
        written = job.run(spark, lake, day)
        assert set(written) == set(TABLES)
        results[name] = {t: _read_partition(Path(p)) for t, p in written.items()}
    return results


@pytest.fixture(scope="module")
def reference(lakes) -> dict[str, dict[str, pd.DataFrame]]:
    return {name: duckdb_reference.compute(lake, day) for name, (lake, day, _) in lakes.items()}


def _files(partition: Path) -> list[Path]:
    return sorted(p for p in partition.glob("*.parquet") if not p.name.startswith((".", "_")))


def _read_partition(partition: Path) -> pd.DataFrame:
    files = _files(partition)
    assert files, f"no Parquet file in {partition}"
    return pa.concat_tables(pq.read_table(f) for f in files).to_pandas()


def _window(events: pd.DataFrame, day: date, span: str) -> pd.DataFrame:
    b = window_bounds(day)
    return events[(events["ts"] >= b[f"start_{span}"]) & (events["ts"] < b["end"])]


def _by_key(df: pd.DataFrame, key: str) -> pd.DataFrame:
    return df.sort_values(key).set_index(key)


def _assert_same(spark_df: pd.DataFrame, ref: pd.DataFrame, table: str) -> None:
    spec = TABLES[table]
    key = spec.keys[0]
    assert len(spark_df) == len(ref), f"{table}: {len(spark_df)} rows, reference {len(ref)}"
    s, r = _by_key(spark_df, key), _by_key(ref, key)
    assert list(s.index) == list(r.index), f"{table}: the key sets differ"
    for col, kind in spec.columns.items():
        if col == key:
            continue
        a, b = s[col], r[col]
        if kind == "double":
            np.testing.assert_allclose(
                a.to_numpy(float),
                b.to_numpy(float),
                rtol=1e-9,
                atol=1e-12,
                equal_nan=True,
                err_msg=f"{table}.{col}",
            )
        elif kind == "array<double>":
            for i, (x, y) in enumerate(zip(a, b, strict=True)):
                np.testing.assert_allclose(
                    np.asarray(x, float),
                    np.asarray(y, float),
                    rtol=1e-12,
                    err_msg=f"{table}.{col} at {s.index[i]}",
                )
        elif kind in ("array<string>", "array<int64>"):
            bad = [k for k, x, y in zip(s.index, a, b, strict=True) if list(x) != list(y)]
            assert not bad, f"{table}.{col} differs for {len(bad)} key(s), e.g. {bad[:3]}"
        else:
            same = (a == b) | (a.isna() & b.isna())
            assert same.all(), f"{table}.{col} differs: {s.index[~same.to_numpy()][:5].tolist()}"


# -- tests ---------------------------------------------------------------------------------
@pytest.mark.parametrize("lake", ["taobao", "generated"])
@pytest.mark.parametrize("table", list(TABLES))
def test_matches_the_duckdb_reference(spark_runs, reference, lake: str, table: str) -> None:
    _assert_same(spark_runs[lake][table], reference[lake][table], table)


@pytest.fixture(scope="module")
def in_memory(lakes) -> dict[str, dict[str, pd.DataFrame]]:
    """The session tables of each lake's events (read back from the lake) by the numpy builder."""
    return {
        name: tables_from_events(read_events(lake), day) for name, (lake, day, _) in lakes.items()
    }


@pytest.mark.parametrize("lake", ["taobao", "generated"])
@pytest.mark.parametrize("table", [t.name for t in SESSION_TABLES])
def test_session_tables_match_the_in_memory_builder(
    spark_runs, in_memory, lake: str, table: str
) -> None:
    """One definition: what offline evaluation builds in numpy is what serving reads."""
    _assert_same(spark_runs[lake][table], in_memory[lake][table], table)


def test_session_tables_are_capped_sorted_and_aligned(spark_runs) -> None:
    for lake in ("taobao", "generated"):
        runs = spark_runs[lake]
        rules = runs["sequential_rules"]
        assert len(rules) > 0
        for item, nexts, weights in zip(
            rules["item_id"], rules["next_items"], rules["next_weights"], strict=True
        ):
            assert 0 < len(nexts) == len(weights) <= 20 and item not in set(nexts)
            pairs = list(zip((-w for w in weights), nexts, strict=True))
            assert pairs == sorted(pairs) and all(w > 0 for w in weights)
        sessions = runs["session_items"]
        assert sessions["items"].map(len).between(1, 50).all()
        assert (sessions["items"].map(lambda x: len(set(x))) == sessions["items"].map(len)).all()
        last = dict(zip(sessions["session_id"], sessions["last_event_ts"], strict=True))
        held = {s: set(x) for s, x in zip(sessions["session_id"], sessions["items"], strict=True)}
        index = runs["item_sessions"]
        for item, ids, ms in list(
            zip(index["item_id"], index["sessions"], index["last_event_ms"], strict=True)
        )[::50]:
            assert 0 < len(ids) == len(ms) <= 200
            assert all(item in held[s] for s in ids)
            assert [pd.Timestamp(last[s]).value // 1_000_000 for s in ids] == list(ms)
            pairs = list(zip((-t for t in ms), ids, strict=True))
            assert pairs == sorted(pairs)
        users = runs["user_recent_items"]
        assert users["items"].map(len).between(1, 50).all()
        assert len(users) == len(runs["user_history_30d"])


@pytest.mark.parametrize("lake", ["taobao", "generated"])
def test_schema_keys_and_event_timestamp_follow_tables_py(spark_runs, lakes, lake: str) -> None:
    _, day, _ = lakes[lake]
    for name, spec in TABLES.items():
        df = spark_runs[lake][name]
        assert len(df) > 0, f"{name} is empty"
        assert not df.duplicated(list(spec.keys)).any(), f"{name}: more than one row per key"
        assert (df["event_timestamp"] == pd.Timestamp(event_timestamp(day))).all()
    for name, spec in TABLES.items():
        partition = spec.partition(lakes[lake][0], day.isoformat())
        schema = pq.read_schema(_files(partition)[0])
        assert schema.names == list(spec.columns), name
        for column, kind in spec.columns.items():
            assert schema.field(column).type == _ARROW_TYPES[kind], f"{name}.{column}"


def test_counts_against_pandas_on_real_taobao(spark_runs, lakes) -> None:
    """An independent recomputation of a sample of counts with pandas (not SQL)."""
    _, day, events = lakes["taobao"]
    month, week, last = (_window(events, day, s) for s in ("30d", "7d", "1d"))
    # The file holds stray events from September: outside the window, they must not count.
    assert len(month) < len(events)
    users = _by_key(spark_runs["taobao"]["user_history_30d"], "user_id")
    assert len(users) == month["user_id"].nunique()
    for user, grp in list(month.groupby("user_id"))[::40]:
        row = users.loc[user]
        kinds = grp["event_type"].value_counts()
        assert row["n_events_30d"] == len(grp)
        assert row["n_views_30d"] == kinds.get("view", 0)
        assert row["n_purchases_30d"] == kinds.get("purchase", 0)
        assert row["n_distinct_items_30d"] == grp["item_id"].nunique()
        counts = grp["category"].value_counts()
        top = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:3]
        assert row["top_categories_30d"] == "|".join(c for c, _ in top)
        views = kinds.get("view", 0)
        expected = kinds.get("purchase", 0) / views if views else 0.0
        assert math.isclose(row["conversion_rate_30d"], expected)
        age = (pd.Timestamp(event_timestamp(day)) - grp["ts"].max()) / pd.Timedelta(days=1)
        assert math.isclose(row["days_since_last_event"], age, rel_tol=1e-12)
        assert math.isnan(row["avg_price_viewed_30d"])  # Taobao has no prices

    items = _by_key(spark_runs["taobao"]["item_stats"], "item_id")
    for item in month["item_id"].drop_duplicates().iloc[::500]:
        row = items.loc[item]
        for span, frame in (("1d", last), ("7d", week), ("30d", month)):
            mine = frame[frame["item_id"] == item]
            assert row[f"views_{span}"] == (mine["event_type"] == "view").sum(), (item, span)
            assert row[f"purchases_{span}"] == (mine["event_type"] == "purchase").sum(), (
                item,
                span,
            )
        assert row["unique_users_7d"] == week.loc[week["item_id"] == item, "user_id"].nunique()

    cats = _by_key(spark_runs["taobao"]["category_popularity"], "category")
    expected = (
        week.assign(view=week["event_type"] == "view")
        .groupby("category")
        .agg(views=("view", "sum"), users=("user_id", "nunique"))
    )
    assert len(cats) == len(expected)
    assert (cats["views_7d"] == expected["views"].reindex(cats.index)).all()
    assert (cats["unique_users_7d"] == expected["users"].reindex(cats.index)).all()
    top = cats.sort_values("rank_7d")
    assert list(top["rank_7d"]) == list(range(1, len(top) + 1))
    assert top["views_7d"].is_monotonic_decreasing


def test_item_stats_prices_and_ranks_on_generated_events(spark_runs, lakes) -> None:
    _, day, events = lakes["generated"]
    month = _window(events, day, "30d")
    items = _by_key(spark_runs["generated"]["item_stats"], "item_id")
    assert items["price"].notna().all()
    for item, grp in list(month.sort_values("ts", kind="stable").groupby("item_id"))[::97]:
        assert items.loc[item, "price"] == grp["price"].iloc[-1]
        assert items.loc[item, "category"] == grp["category"].iloc[-1]
    for _, grp in items.groupby("category"):
        ordered = grp.sort_values("popularity_rank_in_category_7d")
        assert list(ordered["popularity_rank_in_category_7d"]) == list(range(1, len(grp) + 1))
        assert ordered["views_7d"].is_monotonic_decreasing
    users = spark_runs["generated"]["user_history_30d"]
    buyers = users[users["n_purchases_30d"] > 0]
    assert buyers["avg_price_bought_30d"].notna().all()
    assert (buyers["max_price_bought_30d"] >= buyers["avg_price_bought_30d"] - 1e-9).all()


def test_cooccurrence_neighbours_are_capped_sorted_and_normalised(spark_runs) -> None:
    for lake in ("taobao", "generated"):
        co = spark_runs[lake]["item_cooccurrence"]
        assert len(co) > 0
        for kind in ("bought", "viewed"):
            items, scores = co[f"co_{kind}_items"], co[f"co_{kind}_scores"]
            assert (items.map(len) == scores.map(len)).all()
            assert items.map(len).max() <= 20
            assert any(len(x) for x in items), f"{lake}: no co-{kind} pair at all"
            for item, neighbours, s in zip(co["item_id"], items, scores, strict=True):
                assert item not in set(neighbours)
                assert len(set(neighbours)) == len(neighbours)
                assert all(0 < v <= 1 + 1e-12 for v in s)
                pairs = list(zip((-v for v in s), neighbours, strict=True))
                assert pairs == sorted(pairs), f"{item}: neighbours not best-first"
        has_any = (co["co_bought_items"].map(len) > 0) | (co["co_viewed_items"].map(len) > 0)
        assert has_any.all(), "items without any neighbour should be absent"


def test_rerunning_a_day_replaces_the_partition(spark, job, lakes, spark_runs) -> None:
    lake, day, _ = lakes["generated"]
    # A stale file left by an earlier run must disappear with the overwrite.
    stale = TABLES["item_stats"].partition(lake, day.isoformat()) / "part-99999-stale.parquet"
    pq.write_table(pa.table({"item_id": ["stale"]}), stale)
    written = job.run(spark, lake, day)
    for name, path in written.items():
        files = _files(Path(path))
        assert len(files) == 1, f"{name}: {files}"
        again = _read_partition(Path(path))
        first = spark_runs["generated"][name]
        assert len(again) == len(first) and not again.duplicated(list(TABLES[name].keys)).any()
        pd.testing.assert_frame_equal(again, first)
    assert not stale.exists()


def test_table_selection_writes_only_those_tables(spark, job, lakes, tmp_path) -> None:
    lake, day, _ = lakes["taobao"]
    written = job.run(spark, lake, day, tables="category_popularity", out_dir=tmp_path)
    assert list(written) == ["category_popularity"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["category_popularity"]
