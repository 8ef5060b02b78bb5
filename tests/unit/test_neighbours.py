"""The session tables in numpy (lambdarec.batch.neighbours) on tiny hand-made sessions, each
expected number worked out by hand from the definitions in the module's docstring."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest

from lambdarec.batch.neighbours import (
    build_tables,
    memory_views,
    tables_from_events,
    tables_from_interactions,
)
from lambdarec.batch.spec import (
    DEFAULT_MAX_ITEMS,
    DEFAULT_SKNN_SAMPLE,
    DEFAULT_SR_WINDOW,
    rule_units,
)
from lambdarec.config import Settings
from lambdarec.tables import ITEM_SESSIONS, SEQUENTIAL_RULES, SESSION_ITEMS, USER_RECENT_ITEMS


def sessions(*rows: tuple[str, str]) -> dict[str, list]:
    """Events from (session, items) rows: one event per letter, times 1, 2, 3... in row order."""
    out: dict[str, list] = {"session": [], "item": [], "ts": []}
    for session, items in rows:
        for item in items:
            out["session"].append(session)
            out["item"].append(item)
            out["ts"].append(len(out["ts"]) + 1)
    return out


def tables(*rows: tuple[str, str], **params: int) -> dict[str, pd.DataFrame]:
    ev = sessions(*rows)
    return build_tables(ev["session"], ev["item"], ev["ts"], **params)


def by_key(frame: pd.DataFrame) -> dict[str, dict]:
    key = frame.columns[0]
    return {row[key]: row for row in frame.to_dict("records")}


def test_rules_weigh_each_follower_by_one_over_its_distance() -> None:
    # s1 = A B B A C: the repeat of B collapses, so s1 is A B A C.
    rules = by_key(tables(("s1", "ABBAC"), ("s2", "BC"), window=2)[SEQUENTIAL_RULES.name])
    # A: A->B at distance 1 (1), A->A skipped (a == b), A->C from the second A (1).
    assert rules["A"]["next_items"] == ["B", "C"]
    assert rules["A"]["next_weights"] == [1.0, 1.0]
    # B: B->A (1), B->C at distance 2 in s1 (1/2) and 1 in s2 (1): 1.5.
    assert rules["B"]["next_items"] == ["C", "A"]
    assert rules["B"]["next_weights"] == [1.5, 1.0]
    assert set(rules) == {"A", "B"}  # C is never followed by anything


def test_the_window_bounds_the_rules_and_ties_go_to_the_smaller_id() -> None:
    one = by_key(tables(("s1", "ABCD"), window=1)[SEQUENTIAL_RULES.name])
    assert {a: r["next_items"] for a, r in one.items()} == {"A": ["B"], "B": ["C"], "C": ["D"]}
    # Z -> Y three times at distance 3 (3 * 1/3) ties Z -> B, D, X once at distance 1: exactly
    # 1.0 each (integer sums over lcm(1, 2, 3) = 6), so ids order them.
    rows = [("p1", "ZXAY"), ("p2", "ZBCY"), ("p3", "ZDEY")]
    rules = by_key(tables(*rows, window=3)[SEQUENTIAL_RULES.name])
    weights = dict(zip(rules["Z"]["next_items"], rules["Z"]["next_weights"], strict=True))
    assert weights == {
        "A": 0.5,
        "B": 1.0,
        "C": 0.5,
        "D": 1.0,
        "E": 0.5,
        "X": 1.0,
        "Y": 1.0,
    }
    assert rules["Z"]["next_items"] == ["B", "D", "X", "Y", "A", "C", "E"]
    top = by_key(tables(*rows, window=3, top_n=2)[SEQUENTIAL_RULES.name])
    assert top["Z"]["next_items"] == ["B", "D"]
    assert rule_units(3) == 6 and rule_units(5) == 60
    with pytest.raises(ValueError, match="window"):
        rule_units(0)


def test_session_items_are_distinct_most_recent_first_with_the_last_event_time() -> None:
    out = tables(("s1", "ABCAD"), ("s2", "EFF"), max_items=3)
    items = by_key(out[SESSION_ITEMS.name])
    # s1 by last occurrence: D (5), A (4), C (3), B (2) -> capped at 3.
    assert items["s1"]["items"] == ["D", "A", "C"]
    assert items["s1"]["last_event_ts"] == pd.Timestamp(5, unit="ms", tz="UTC")
    # s2 ends with a repeat of F that collapsing drops: its time still counts (event 8).
    assert items["s2"]["items"] == ["F", "E"]
    assert items["s2"]["last_event_ts"] == pd.Timestamp(8, unit="ms", tz="UTC")
    assert list(out[SESSION_ITEMS.name].columns) == list(SESSION_ITEMS.columns)


def test_item_sessions_keep_the_newest_sessions_ties_by_id() -> None:
    ev = {
        "session": ["old", "mid", "b-tie", "a-tie", "held-out"],
        "item": ["X", "X", "X", "X", "Y"],
        "ts": [1, 2, 5, 5, 3],
    }
    out = build_tables(ev["session"], ev["item"], ev["ts"], sample=3)
    rows = by_key(out[ITEM_SESSIONS.name])
    assert rows["X"]["sessions"] == ["a-tie", "b-tie", "mid"]  # "old" is the 4th: cut
    assert rows["X"]["last_event_ms"] == [5, 5, 2]
    assert rows["Y"]["sessions"] == ["held-out"]
    # Only the items session_items holds: a session's 4th-newest item is not in its lists.
    capped = by_key(tables(("s1", "ABCD"), max_items=3)[ITEM_SESSIONS.name])
    assert set(capped) == {"B", "C", "D"}


def test_user_recent_items_span_the_users_sessions() -> None:
    out = build_tables(
        ["s1", "s1", "s2", "s2", "s3"],
        ["A", "B", "A", "C", "D"],
        [1, 2, 3, 4, 5],
        user_ids=["u1", "u1", "u1", "u1", "u2"],
        max_items=2,
    )
    users = by_key(out[USER_RECENT_ITEMS.name])
    assert users["u1"]["items"] == ["C", "A"]  # C (4), A (3), B (2) -> capped at 2
    assert users["u2"]["items"] == ["D"]
    assert USER_RECENT_ITEMS.name not in tables(("s1", "AB"))  # no users given


def test_events_order_by_time_then_event_id_and_the_day_window_cuts() -> None:
    day = datetime(2024, 3, 31, tzinfo=UTC)
    events = pd.DataFrame(
        {
            # Same instant: the event id orders them (e2 before e3), whatever the row order.
            "event_id": ["e3", "e2", "e1", "e4"],
            "user_id": ["u"] * 4,
            "session_id": ["s"] * 4,
            "item_id": ["C", "B", "A", "Z"],
            "ts": pd.to_datetime(
                [
                    "2024-03-31T10:00:01Z",
                    "2024-03-31T10:00:01Z",
                    "2024-03-31T09:00:00Z",
                    "2024-04-01T00:00:00Z",
                ]  # the next day: outside the window
            ),
        }
    )
    out = tables_from_events(events, day.date())
    rules = by_key(out[SEQUENTIAL_RULES.name])
    assert rules["A"]["next_items"] == ["B", "C"]  # A B C, window 3: B at 1, C at 2
    assert rules["A"]["next_weights"] == [1.0, 0.5]
    assert by_key(out[SESSION_ITEMS.name])["s"]["items"] == ["C", "B", "A"]
    for table in (SEQUENTIAL_RULES, SESSION_ITEMS, ITEM_SESSIONS, USER_RECENT_ITEMS):
        frame = out[table.name]
        assert list(frame.columns) == list(table.columns)
        assert (frame["event_timestamp"] == pd.Timestamp("2024-04-01T00:00:00Z")).all()
    assert "Z" not in by_key(out[ITEM_SESSIONS.name])


def test_training_interactions_map_to_catalog_ids_and_session_numbers() -> None:
    from lambdarec.models.data import Interactions

    group = np.array([0, 0, 0, 1, 1])
    inter = Interactions(
        group=group,
        user=group,
        item=np.array([2, 0, 1, 0, 2]),
        ts=group.astype(np.int64),  # SR-GNN: one time per session, the row order inside
        weight=np.ones(5, dtype=np.float32),
    )
    out = tables_from_interactions(inter, np.array(["10", "11", "12"], dtype=object))
    assert by_key(out[SESSION_ITEMS.name])["0"]["items"] == ["11", "10", "12"]
    assert by_key(out[ITEM_SESSIONS.name])["10"]["sessions"] == ["1", "0"]
    assert by_key(out[SEQUENTIAL_RULES.name])["12"]["next_items"] == ["10", "11"]
    views = memory_views(out)
    assert set(views) == {t.name for t in (SEQUENTIAL_RULES, SESSION_ITEMS, ITEM_SESSIONS)} | {
        USER_RECENT_ITEMS.name
    }
    assert views[SEQUENTIAL_RULES.name]["12"] == {
        "next_items": ["10", "11"],
        "next_weights": [1.0, 0.5],
    }
    assert views[ITEM_SESSIONS.name]["10"] == {"sessions": ["1", "0"], "last_event_ms": [1, 0]}
    assert views[SESSION_ITEMS.name]["1"]["items"] == ["12", "10"]


def test_the_settings_default_to_the_batch_defaults() -> None:
    fields = Settings.model_fields
    assert fields["sr_window"].default == DEFAULT_SR_WINDOW
    assert fields["sknn_sample"].default == DEFAULT_SKNN_SAMPLE
    assert DEFAULT_MAX_ITEMS == 50  # user_recent_items: "the user's last 50 distinct items"
