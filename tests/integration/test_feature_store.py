"""The Feast store end to end on small crafted partitions: apply, materialize, online reads,
point-in-time historical retrieval and pushes, against SQLite and a real Redis server."""

from __future__ import annotations

import shutil
import socket
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from lambdarec.config import Settings
from lambdarec.features import store as fstore
from lambdarec.harness.waiting import eventually
from lambdarec.platform.base import tcp_open
from lambdarec.tables import (
    CATEGORY_POPULARITY,
    FEATURE_TABLES,
    ITEM_COOCCURRENCE,
    ITEM_SESSIONS,
    ITEM_STATS,
    SEQUENTIAL_RULES,
    SESSION_FEATURES,
    SESSION_ITEMS,
    USER_HISTORY,
    USER_RECENT_ITEMS,
    FeatureTable,
)

pytestmark = pytest.mark.integration

DAY1, DAY2 = "2024-05-01", "2024-05-02"
KEYS: dict[str, list[str]] = {
    USER_HISTORY.name: ["u1", "u2"],
    ITEM_STATS.name: ["i1", "i2"],
    ITEM_COOCCURRENCE.name: ["i1", "i2"],
    CATEGORY_POPULARITY.name: ["c1", "c2"],
    SEQUENTIAL_RULES.name: ["i1", "i2"],
    SESSION_ITEMS.name: ["s1", "s2"],
    ITEM_SESSIONS.name: ["i1", "i2"],
    USER_RECENT_ITEMS.name: ["u1", "u2"],
}


def day_end(day: str) -> datetime:
    """A feature row is stamped with the end of the day it describes."""
    return datetime.fromisoformat(day).replace(tzinfo=UTC) + timedelta(days=1, microseconds=-1)


def _value(column: str, kind: str, level: int, key: str) -> Any:
    """A plausible value whose size tells the day (level 1 or 2) it came from."""
    if kind == "string":
        return f"{column}-d{level}"
    if kind == "int64":
        return 1 if "rank" in column else 10 * level
    if kind == "double":
        return 0.1 * level if "conversion" in column else 1.5 * level
    if kind == "array<string>":
        return [f"{key}-n{level}a", f"{key}-n{level}b"]
    if kind == "array<double>":
        return [1.0, 0.5 / level]
    if kind == "array<int64>":
        return [1_700_000_000_000 + level, 1_600_000_000_000 + level]
    if kind == "timestamp":
        return datetime(2024, 4, 20 + level, 12, tzinfo=UTC)
    raise AssertionError(kind)


def feature_frame(table: FeatureTable, day: str, level: int) -> pd.DataFrame:
    (key,) = table.keys
    rows = []
    for k in KEYS[table.name]:
        row = {
            col: _value(col, kind, level, k)
            for col, kind in table.columns.items()
            if col not in (key, "event_timestamp")
        }
        rows.append({key: k, "event_timestamp": day_end(day), **row})
    return pd.DataFrame(rows)[list(table.columns)]


def write_partitions(lake: Path) -> None:
    for table in FEATURE_TABLES:
        for level, day in enumerate((DAY1, DAY2), start=1):
            part = table.partition(lake, day)
            part.mkdir(parents=True, exist_ok=True)
            feature_frame(table, day, level).to_parquet(part / "part-00000.parquet", index=False)


def session_rows(ts: datetime) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "session_id": "s1",
                "event_timestamp": ts,
                "user_id": "u1",
                "last_viewed_items": ["i2", "i1"],
                "last_carted_items": ["i1"],
                "last_purchased_items": [],
                "n_views": 2,
                "n_carts": 1,
                "n_removes": 0,
                "n_purchases": 0,
                "n_events_30min": 3,
                "session_category": "c1",
                "session_avg_price": 12.5,
                "seconds_since_prev_event": 4.0,
            }
        ]
    )[list(SESSION_FEATURES.columns)]


def exercise_store(settings: Settings) -> None:
    write_partitions(settings.lake_dir)
    fstore.apply(settings)
    assert fstore.apply(settings)  # idempotent: a second apply still works
    start = datetime.fromisoformat(DAY1).replace(tzinfo=UTC)
    views = fstore.materialize(start, start + timedelta(days=2), settings)
    assert set(views) == {t.name for t in FEATURE_TABLES}

    # Online: the latest (day-2) values.
    got = fstore.get_online_features(
        [
            "user_history_30d:n_events_30d",
            "user_history_30d:conversion_rate_30d",
            "item_stats:views_7d",
            "item_cooccurrence:co_bought_items",
            "category_popularity:views_7d",
        ],
        [{"user_id": "u1", "item_id": "i2", "category": "c1"}],
        settings,
    )
    assert got["user_history_30d__n_events_30d"] == [20]
    assert got["user_history_30d__conversion_rate_30d"] == [pytest.approx(0.2)]
    assert got["item_stats__views_7d"] == [20]
    assert got["item_cooccurrence__co_bought_items"] == [["i2-n2a", "i2-n2b"]]
    assert got["category_popularity__views_7d"] == [20]

    # The session sources' views: what sequential_rules and session_knn read, by item and by
    # past session, through serving's reader.
    refs = [
        "sequential_rules:next_items",
        "sequential_rules:next_weights",
        "item_sessions:sessions",
        "item_sessions:last_event_ms",
    ]
    rows = [{"item_id": i} for i in ("i2", "unknown")]
    got = fstore.read_online(refs, rows, settings)
    assert got == fstore.get_online_features(refs, rows, settings)
    assert got["sequential_rules__next_items"] == [["i2-n2a", "i2-n2b"], None]
    assert got["sequential_rules__next_weights"] == [[1.0, 0.25], None]
    assert got["item_sessions__last_event_ms"] == [[1_700_000_000_002, 1_600_000_000_002], None]
    got = fstore.read_online(
        ["session_items:items", "session_items:last_event_ts"], [{"session_id": "s1"}], settings
    )
    assert got["session_items__items"] == [["s1-n2a", "s1-n2b"]]
    assert got["session_items__last_event_ts"][0] == datetime(2024, 4, 22, 12, tzinfo=UTC)
    got = fstore.read_online(["user_recent_items:items"], [{"user_id": "u2"}], settings)
    assert got["user_recent_items__items"] == [["u2-n2a", "u2-n2b"]]

    # Push session features (speed layer) and read them back through the retrieval service.
    now = datetime.now(UTC)
    assert fstore.push_session_features(session_rows(now), settings) == 1
    got = fstore.get_online_features(
        "retrieval_v1", [{"user_id": "u1", "session_id": "s1"}], settings
    )
    assert got["session_features__last_viewed_items"] == [["i2", "i1"]]
    assert got["session_features__n_events_30min"] == [3]
    assert got["session_features__user_id"] == ["u1"]
    assert got["user_history_30d__n_events_30d"] == [20]

    # The ranking service reads all six views at once.
    got = fstore.get_online_features(
        "ranking_v1",
        [{"user_id": "u1", "session_id": "s1", "item_id": "i1", "category": "c2"}],
        settings,
    )
    assert got["item_stats__purchases_30d"] == [20]
    assert got["session_features__n_carts"] == [1]
    assert "trending_items__trend_score" in got

    # Serving's reader (the store's online_read without the SDK) answers what the SDK answers:
    # the same columns and values, unknown entities as None, for services and references.
    cases: list[tuple[str | list[str], list[dict[str, str]]]] = [
        (
            "retrieval_v1",
            [{"user_id": "u1", "session_id": "s1"}, {"user_id": "nobody", "session_id": ""}],
        ),
        (
            "ranking_v1",
            [
                {"user_id": "u1", "session_id": "s1", "item_id": "i1", "category": "c2"},
                {"user_id": "u2", "session_id": "s9", "item_id": "i9", "category": "c9"},
            ],
        ),
        (
            [
                "item_cooccurrence:co_bought_items",
                "item_cooccurrence:co_bought_scores",
                "item_stats:views_7d",
            ],
            [{"item_id": i} for i in ("i2", "i1", "unknown", "i2")],
        ),
    ]
    for features, rows in cases:
        expected = fstore.get_online_features(features, rows, settings)
        assert fstore.read_online(features, rows, settings) == expected, features
    assert fstore.read_online("retrieval_v1", [{"user_id": "u1", "session_id": "s1"}], settings)[
        "session_features__last_viewed_items"
    ] == [["i2", "i1"]]

    check_newest_event_time_wins(settings, now)


def check_newest_event_time_wins(settings: Settings, now: datetime) -> None:
    """The one online-store rule of every backend: per key, the newest event time wins (a tie
    is an update of the same instant: the later write wins)."""

    def n_views() -> int:
        got = fstore.read_online(["session_features:n_views"], [{"session_id": "s1"}], settings)
        return int(got["session_features__n_views"][0])

    def push(ts: datetime, views: int) -> None:
        fstore.push_session_features(session_rows(ts).assign(n_views=views), settings)

    assert n_views() == 2
    push(now, 3)  # a second event in the same millisecond (Redis used to drop it)
    assert n_views() == 3
    push(now - timedelta(seconds=1), 1)  # an older row never overwrites a newer one
    assert n_views() == 3
    push(now + timedelta(seconds=1), 4)
    assert n_views() == 4

    # Re-running an older day's materialisation leaves the newer day's values (SQLite used to
    # roll the online store back to day 1).
    start = datetime.fromisoformat(DAY1).replace(tzinfo=UTC)
    fstore.materialize(start, start + timedelta(days=1), settings)
    got = fstore.read_online(["user_history_30d:n_events_30d"], [{"user_id": "u1"}], settings)
    assert got["user_history_30d__n_events_30d"] == [20]
    with pytest.raises(KeyError, match="session_id"):
        fstore.read_online("retrieval_v1", [{"user_id": "u1"}], settings)


def test_historical_features_are_point_in_time_correct(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path / "state", online_store="sqlite")
    write_partitions(settings.lake_dir)
    fstore.apply(settings)
    entity_df = pd.DataFrame(
        {
            "user_id": ["u1", "u2", "u1", "u1"],
            "event_timestamp": [
                pd.Timestamp("2024-05-02T12:00:00Z"),  # between the days: day 1, never day 2
                pd.Timestamp("2024-05-03T08:00:00Z"),  # after day 2
                pd.Timestamp("2024-04-30T08:00:00Z"),  # before any feature row
                pd.Timestamp("2024-05-02T00:00:00Z"),  # exactly at day 1's end (+1 us)
            ],
            "label": [1, 0, 1, 0],
        }
    )
    out = fstore.get_historical_features(
        entity_df,
        ["user_history_30d:n_events_30d", "user_history_30d:top_category_30d"],
        settings,
    )
    assert list(out["label"]) == [1, 0, 1, 0]  # input rows kept, in order
    assert list(out["user_id"]) == ["u1", "u2", "u1", "u1"]
    assert out.loc[0, "user_history_30d__n_events_30d"] == 10
    assert out.loc[0, "user_history_30d__top_category_30d"] == "top_category_30d-d1"
    assert out.loc[1, "user_history_30d__n_events_30d"] == 20
    assert pd.isna(out.loc[2, "user_history_30d__n_events_30d"])
    assert out.loc[3, "user_history_30d__n_events_30d"] == 10

    # Whole service, several entities: no value may come from after its row's timestamp.
    rows = pd.DataFrame(
        {
            "user_id": ["u1"],
            "session_id": ["s-none"],
            "item_id": ["i1"],
            "category": ["c1"],
            "event_timestamp": [pd.Timestamp("2024-05-02T06:00:00Z")],
        }
    )
    (settings.lake_dir / "features" / "session_features" / f"date={DAY1}").mkdir(parents=True)
    session_rows(day_end(DAY1) - timedelta(minutes=5)).to_parquet(
        settings.lake_dir / "features" / "session_features" / f"date={DAY1}" / "part-0.parquet"
    )
    trending = settings.lake_dir / "features" / "trending_items" / f"date={DAY1}"
    trending.mkdir(parents=True)
    pd.DataFrame(
        {
            "item_id": ["i1"],
            "event_timestamp": [day_end(DAY1) - timedelta(minutes=1)],
            "views_5min": [1],
            "purchases_5min": [0],
            "views_1h": [5],
            "purchases_1h": [1],
            "trend_score": [0.7],
        }
    ).to_parquet(trending / "part-0.parquet")
    out = fstore.get_historical_features(rows, "ranking_v1", settings)
    assert out.loc[0, "item_stats__views_7d"] == 10
    assert out.loc[0, "category_popularity__rank_7d"] == 1
    assert out.loc[0, "user_history_30d__n_events_30d"] == 10
    assert list(out.loc[0, "item_cooccurrence__co_bought_items"]) == ["i1-n1a", "i1-n1b"]
    # Speed-layer rows older than their view's TTL (30 min, 1 h) do not leak into the row.
    assert pd.isna(out.loc[0, "session_features__n_views"])
    assert pd.isna(out.loc[0, "trending_items__trend_score"])


def _online_rows(settings: Settings) -> dict[str, list[tuple[Any, ...]]]:
    import sqlite3

    with sqlite3.connect(settings.state_dir / "feast" / "online_store.db") as db:
        names = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        return {
            name: db.execute(
                f"SELECT entity_key, feature_name, value, event_ts FROM {name} "  # noqa: S608
                "ORDER BY entity_key, feature_name"
            ).fetchall()
            for name in names
        }


def test_materialize_writes_what_feasts_own_materialize_writes(tmp_path: Path) -> None:
    """The pyarrow read of the Parquet sources (``store._materialize_parquet``) writes the same
    online rows as Feast's file offline store: the interval's ends included, the newest row per
    key by event time, a row outside the interval left out."""
    lakes = []
    for name in ("ours", "feast"):
        settings = Settings(state_dir=tmp_path / name, online_store="sqlite")
        write_partitions(settings.lake_dir)
        # A second row for u1 stamped a minute before day 2's end (older: day 2's row wins),
        # and a day-3 row outside the interval.
        part = USER_HISTORY.partition(settings.lake_dir, DAY2)
        extra = feature_frame(USER_HISTORY, DAY2, 3).iloc[:1]
        extra.assign(event_timestamp=day_end(DAY2) - timedelta(minutes=1)).to_parquet(
            part / "part-00001.parquet", index=False
        )
        later = USER_HISTORY.partition(settings.lake_dir, "2024-05-03")
        later.mkdir(parents=True)
        feature_frame(USER_HISTORY, "2024-05-03", 4).to_parquet(later / "p.parquet", index=False)
        fstore.apply(settings)
        lakes.append(settings)
    start = datetime.fromisoformat(DAY1).replace(tzinfo=UTC)
    end = start + timedelta(days=1, hours=23, minutes=59, seconds=59, microseconds=999999)
    fstore.materialize(start, end, lakes[0])
    fs = fstore.get_store(lakes[1])
    fs.materialize(start_date=start, end_date=end, feature_views=list(fstore.BATCH_VIEWS))
    ours, feasts = _online_rows(lakes[0]), _online_rows(lakes[1])
    assert ours["lambdarec_user_history_30d"], "nothing was materialised"
    assert ours == feasts
    got = fstore.read_online(["user_history_30d:n_events_30d"], [{"user_id": "u1"}], lakes[0])
    assert got["user_history_30d__n_events_30d"] == [20]


def test_sqlite_online_store(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path / "state", online_store="sqlite")
    assert f"type: {fstore.ONLINE_SQLITE}" in fstore.render_feature_store_yaml(settings)
    exercise_store(settings)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def redis_port(tmp_path: Path):
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not Path(binary).exists():
        pytest.skip("redis-server is not installed (make system-deps installs it)")
    port = _free_port()
    workdir = tmp_path / "redis"
    workdir.mkdir()
    proc = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(workdir),
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "yes",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )

    def listening() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"redis-server exited ({proc.returncode}) on port {port}")
        return tcp_open("127.0.0.1", port, timeout=0.2)

    try:
        eventually(listening, 10, interval_s=0.05, message=f"redis-server on port {port}")
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_redis_online_store(tmp_path: Path, redis_port: int) -> None:
    settings = Settings(
        state_dir=tmp_path / "state", redis_port=redis_port, redis_db=1, online_store="redis"
    )
    assert f"127.0.0.1:{redis_port},db=1" in fstore.render_feature_store_yaml(settings)
    exercise_store(settings)
