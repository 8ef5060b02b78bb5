"""Exposure as training signal: impressions and their attributed outcomes turned into the
ranker's examples (which items are shown, clicked, at which place; which query they join)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import TYPE_CHECKING, cast

import numpy as np
import pandas as pd
import pytest

from lambdarec.models.data import Examples
from lambdarec.models.deepfm import CandidateLists
from lambdarec.models.exposure import ExposureError, attach_exposure, exposure_table

if TYPE_CHECKING:
    from pathlib import Path

    from lambdarec.models.data import Dataset

ITEMS = ["a", "b", "c", "d", "e", "f"]
WINDOW_MS = 1_800_000


def _impressions() -> pd.DataFrame:
    rows = [  # (request, ts ms, user, item, position)
        ("r0", 13_000, "u2", "a", 0),
        ("r1", 9_000, "u1", "b", 0),
        ("r1", 9_000, "u1", "e", 1),
        ("r1", 9_000, "u1", "c", 2),
        ("r1", 9_000, "u1", "c", 2),  # archived twice
        ("r2", 14_000, "u2", "f", 0),
        ("r2", 14_000, "u2", "b", 1),
        ("r3", 50_000, "u1", "a", 0),
        ("r3", 50_000, "u1", "zz", 1),  # newer than the dataset's catalog
    ]
    df = pd.DataFrame(rows, columns=["request_id", "ts", "user_id", "item_id", "position"])
    df["ts"] = pd.to_datetime(df["ts"], unit="ms", utc=True)
    return df


def _attributed() -> pd.DataFrame:
    rows = [  # (request, item, event ts ms, type)
        ("r1", "c", 10_500, "add_to_cart"),
        ("r1", "c", 10_000, "view"),
        ("r1", "b", 11_000, "remove_from_cart"),  # not a click
        ("r3", "a", 51_000, "purchase"),
    ]
    df = pd.DataFrame(rows, columns=["request_id", "item_id", "event_ts", "event_type"])
    df["event_ts"] = pd.to_datetime(df["event_ts"], unit="ms", utc=True)
    return df


def test_exposure_table_marks_each_item_shown_clicked_or_not() -> None:
    got = exposure_table(_impressions(), _attributed())
    want = pd.DataFrame(
        [
            ("r1", 9_000, "u1", "b", 0, False, -1, 0.0),
            ("r1", 9_000, "u1", "e", 1, False, -1, 0.0),
            ("r1", 9_000, "u1", "c", 2, True, 10_000, 2.0),  # first click, strongest outcome
            ("r0", 13_000, "u2", "a", 0, False, -1, 0.0),
            ("r2", 14_000, "u2", "f", 0, False, -1, 0.0),
            ("r2", 14_000, "u2", "b", 1, False, -1, 0.0),
            ("r3", 50_000, "u1", "a", 0, True, 51_000, 3.0),
            ("r3", 50_000, "u1", "zz", 1, False, -1, 0.0),
        ],
        columns=list(got.columns),
    )
    assert got["ts"].dtype == np.int64 and got["weight"].dtype == np.float32
    pd.testing.assert_frame_equal(got, want, check_dtype=False)


def test_exposure_table_refuses_what_it_cannot_read() -> None:
    with pytest.raises(ExposureError, match=r"impressions lacks column\(s\) \['position'\]"):
        exposure_table(_impressions().drop(columns="position"), _attributed())
    with pytest.raises(ExposureError, match=r"attributed lacks column\(s\) \['event_type'\]"):
        exposure_table(_impressions(), _attributed().drop(columns="event_type"))
    bad = _impressions()
    bad.loc[0, "position"] = -1
    with pytest.raises(ExposureError, match="negative position"):
        exposure_table(bad, _attributed())


def _queries() -> tuple[Dataset, Examples, CandidateLists]:
    """u1 asks at 10 s (next item c) and 20 s (d); u2 at 15 s (a) and a day later (b)."""
    n = 4
    ex = Examples(
        user=np.array([1, 1, 2, 2]),
        hist=np.full((n, 3), -1, dtype=np.int64),
        session_len=np.ones(n, dtype=np.int64),
        user_events=np.ones(n, dtype=np.int64),
        session_category=np.zeros(n, dtype=np.int64),
        target=np.array([2, 3, 0, 1]),
        ts=np.array([10_000, 20_000, 15_000, 86_400_000]),
        weight=np.ones(n, dtype=np.float32),
    )
    cand = np.array([[0, 1, 2, 3], [3, 4, -1, -1], [0, 5, -1, -1], [1, -1, -1, -1]])
    scores = np.where(cand[..., None] >= 0, 0.5, np.nan)
    lists = CandidateLists(["vector"], cand, scores, scores.copy())
    data = SimpleNamespace(
        catalog=SimpleNamespace(item_ids=np.array(ITEMS, dtype=object)),
        user_ids=np.array(["u1", "u2"], dtype=object),
        split={"kind": "temporal"},
        has_users=True,
    )
    return cast("Dataset", data), ex, lists


def test_impressions_join_the_first_query_after_them() -> None:
    data, ex, lists = _queries()
    table = exposure_table(_impressions(), _attributed())
    got = attach_exposure(data, ex, lists, table, window_ms=WINDOW_MS)
    out = got.lists
    assert out.shown is not None
    # q0 (u1 at 10 s) is the first query after r1 (9 s): b, e, c shown at 0, 1, 2; e, which no
    # source proposed, appended (the lists widen); the click on c is its positive, weight 2.
    np.testing.assert_array_equal(
        out.cand, [[0, 1, 2, 3, 4], [3, 4, -1, -1, -1], [0, 5, 1, -1, -1], [1, -1, -1, -1, -1]]
    )
    np.testing.assert_array_equal(
        out.shown,
        [[-1, 0, 2, -1, 1], [-1, -1, -1, -1, -1], [-1, 0, 1, -1, -1], [-1, -1, -1, -1, -1]],
    )
    assert np.isnan(out.scores[0, 4]).all() and np.isnan(out.ranks[0, 4]).all()
    np.testing.assert_array_equal(out.scores[0, :4], lists.scores[0])
    # q2 (u2 at 15 s) takes the later of r0 and r2; r2 had no click: its next item a stays the
    # positive, f and b (appended) are negatives at their places. q1 had an event since r1; q3
    # is beyond the window; r3 comes after every query of u1.
    np.testing.assert_array_equal(got.ex.target, [2, 3, 0, 1])
    np.testing.assert_array_equal(got.ex.weight, [2.0, 1.0, 1.0, 1.0])
    assert got.stats == {
        "impressions": 4,
        "items_shown": 7,
        "items_unknown": 1,
        "queries_matched": 2,
        "lists_clicked": 1,
        "items_appended": 2,
    }
    # the inputs are left as they were
    assert lists.shown is None and lists.cand.shape == (4, 4)
    np.testing.assert_array_equal(ex.weight, np.ones(4))


def test_a_click_that_was_not_the_next_item_becomes_the_positive() -> None:
    data, ex, lists = _queries()
    imp = _impressions()
    att = pd.DataFrame(
        {
            "request_id": ["r2"],
            "item_id": ["b"],
            "event_ts": pd.to_datetime([16_000], unit="ms", utc=True),
            "event_type": ["purchase"],
        }
    )
    got = attach_exposure(data, ex, lists, exposure_table(imp, att), window_ms=WINDOW_MS)
    assert got.ex.target[2] == 1 and got.ex.weight[2] == 3.0  # b, bought from r2
    assert got.stats["lists_clicked"] == 1
    with pytest.raises(ExposureError, match="window_ms 0 must be positive"):
        attach_exposure(data, ex, lists, exposure_table(imp, att), window_ms=0)


def _write_lake(lake: Path) -> None:
    """The scripted tables as the attribution job's lake tables (one day: 1970-01-01)."""
    import pyarrow as pa

    from lambdarec.attribution import PART_FILE, SCHEMAS, table_path
    from lambdarec.data.lake import atomic_write_parquet
    from lambdarec.tables import partition_dir

    imp = _impressions().assign(session_id=None, variant="control", score=None, source=None)
    att = _attributed().assign(
        event_id=[f"e{n}" for n in range(4)],
        user_id="u",
        session_id=None,
        price=None,
        revenue=0.0,
        impression_ts=pd.Timestamp(0, tz="UTC"),
        variant="control",
        position=0,
        match="request",
    )
    for name, frame in (("impressions", imp), ("attributed", att)):
        schema = SCHEMAS[name]
        table = pa.Table.from_pandas(frame[schema.names], schema=schema, preserve_index=False)
        atomic_write_parquet(table, partition_dir(table_path(lake, name), "1970-01-01") / PART_FILE)


def test_training_reads_the_lake_and_the_setting_turns_it_off(tmp_path: Path) -> None:
    from lambdarec.config import Settings
    from lambdarec.models.exposure import training_exposure

    data, ex, lists = _queries()
    assert not Settings(state_dir=tmp_path).exposure_negatives  # off by default (measured)
    on = Settings(state_dir=tmp_path, exposure_negatives=True)
    assert training_exposure(data, ex, lists, on) is None  # an empty lake: trained as before
    _write_lake(on.lake_dir)
    got = training_exposure(data, ex, lists, on)
    assert got is not None and got.lists.shown is not None
    assert got.stats["queries_matched"] == 2 and got.stats["lists_clicked"] == 1
    want = attach_exposure(
        data, ex, lists, exposure_table(_impressions(), _attributed()), window_ms=WINDOW_MS
    )
    np.testing.assert_array_equal(got.lists.shown, want.lists.shown)
    off = Settings(state_dir=tmp_path, exposure_negatives=False)
    assert training_exposure(data, ex, lists, off) is None
