"""``bench/bench_ab.py --exposure``'s pure parts: the live lists placed on the ranker's training
queries (each user's lists, in the order served, a millisecond before that user's queries in time
order), and the verdict from a lift's interval."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "bench_ab.py"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_ab_under_test", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_each_users_lists_go_before_their_queries_in_order(bench: Any) -> None:
    data = SimpleNamespace(user_ids=np.array(["u1", "u2"]))
    # Queries: u2 at 500, u1 at 300 and 100, an unknown user at 50 (never placed on).
    queries = SimpleNamespace(user=np.array([2, 1, 1, 0]), ts=np.array([500, 300, 100, 50]))
    watch = SimpleNamespace(
        shown=[
            ("r1", "u1", [("a", 0), ("b", 1)]),
            ("r2", "u1", [("c", 0)]),
            ("r3", "u1", [("d", 0)]),  # u1 has two queries: a third list is left out
            ("r4", "u3", [("e", 0)]),  # not a user of the queries
            ("r5", "u2", [("f", 0), ("g", 1)]),
        ],
        acted=[("r1", "b", "view"), ("r1", "b", "add_to_cart"), ("r3", "d", "view")],
    )
    table, placed = bench.live_exposure(watch, data, queries)

    stamps = table.drop_duplicates("request_id").set_index("request_id")["ts"].to_dict()
    assert stamps == {"r1": 99, "r2": 299, "r5": 499}
    clicked = table[table["clicked"]]
    assert clicked[["request_id", "item_id"]].values.tolist() == [["r1", "b"]]
    assert table.loc[table["item_id"] == "a", "clicked"].tolist() == [False]
    assert placed == {
        "lists_logged": 5,
        "events_logged": 3,
        "lists_placed": 3,
        "users_placed": 2,
        "events_placed": 2,
    }


def test_the_verdict_is_the_intervals(bench: Any) -> None:
    assert bench.verdict({"lift_ci": [0.01, 0.2]}) == "wins"
    assert bench.verdict({"lift_ci": [-0.2, -0.01]}) == "loses"
    assert bench.verdict({"lift_ci": [-0.1, 0.1]}) == "ties"
    assert bench.verdict({"lift_ci": None}) == "ties"
