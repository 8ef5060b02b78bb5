"""The sequential_rules and session_knn candidate sources on MemoryFeatures views built by the
batch layer's in-memory builder, with every expected score worked out by hand."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import pytest

from lambdarec.batch.neighbours import build_tables, memory_views
from lambdarec.recommend import sources
from lambdarec.recommend.memory import MemoryFeatures
from lambdarec.recommend.pipeline import Pipeline
from lambdarec.recommend.snapshot import Snapshot
from lambdarec.recommend.sources.base import Request, Stores
from lambdarec.recommend.sources.sequential_rules import SequentialRulesSource, session_history
from lambdarec.recommend.sources.session_knn import SessionKnnSource
from lambdarec.recommend.types import Models, PartUnavailable, Query, direct_call

if TYPE_CHECKING:
    from collections.abc import Callable

SNAPSHOT = Snapshot.from_items({}, [])


def views(*rows: tuple[str, str], **params: int) -> dict[str, Any]:
    """The builder's views of sessions given as (session id, items), one event per letter, in
    row order (times 1, 2, 3...)."""
    session, item = [], []
    for sid, items in rows:
        session += [sid] * len(items)
        item += list(items)
    return memory_views(build_tables(session, item, range(1, len(item) + 1), **params))


def request(recent: list[str], session_id: str | None = "now", call: Any = direct_call) -> Request:
    features = {"session_features__last_viewed_items": recent}
    return Request(Query("u1", session_id, 10), features, Models(), call, [])


# x1 = A B C, x2 = A C, x3 = B C D, window 2:
#   A: C 1/2 (x1) + 1 (x2) = 1.5, B 1          -> [C, B] [1.5, 1.0]
#   B: C 1 (x1) + 1 (x3) = 2, D 1/2 (x3)       -> [C, D] [2.0, 0.5]
#   C: D 1
RULES = views(("x1", "ABC"), ("x2", "AC"), ("x3", "BCD"), window=2)


def test_sequential_rules_sum_the_recent_items_rules_with_decay() -> None:
    assert RULES["sequential_rules"]["A"] == {"next_items": ["C", "B"], "next_weights": [1.5, 1.0]}
    source = SequentialRulesSource(Stores(SNAPSHOT, MemoryFeatures(views=RULES)), decay=0.5)
    # Recent B (newest), A: C = 2 + 0.5 * 1.5 = 2.75, D = 0.5, B = 0.5 * 1 = 0.5.
    pool = source.candidates(request(["B", "A"]), 50)
    assert pool.pairs == [
        ("C", 1.0),
        ("B", pytest.approx(0.5 / 2.75)),  # ties D: the smaller id first
        ("D", pytest.approx(0.5 / 2.75)),
    ]
    assert not pool.more
    # The default decay is the setting's (0.7): C = 2 + 0.7 * 1.5 = 3.05, B = 0.7.
    default = SequentialRulesSource(Stores(SNAPSHOT, MemoryFeatures(views=RULES)))
    assert dict(default.candidates(request(["B", "A"]), 50).pairs)["B"] == pytest.approx(0.7 / 3.05)


def test_sequential_rules_collapse_repeats_cap_the_fetch_and_reach_only_rule_items() -> None:
    source = SequentialRulesSource(Stores(SNAPSHOT, MemoryFeatures(views=RULES)), decay=0.5)
    # B B A is B A once collapsed (A second, decay 0.5), as in the tables' sessions.
    assert session_history({"session_features__last_viewed_items": ["B", "B", "A"]}, 5) == [
        "B",
        "A",
    ]
    first = source.candidates(request(["B", "B", "A"]), 2)
    assert [i for i, _ in first.pairs] == ["C", "B"] and first.more
    # No rule leaves D: no candidate at all (not a popularity fill-in).
    assert source.candidates(request(["D"]), 50).pairs == []
    assert source.candidates(request([]), 50).pairs == []


# Past sessions p1 = A B C (last event 3), p2 = B D (5), p3 = A E (7). The request's recent
# items B (newest, w = 1), A (w = 1/2): |s| = 2. Candidates, newest first: p3, p2, p1.
#   sim(p3) = (1/2) / sqrt(2 * 2) = 0.25      sim(p2) = 1 / sqrt(2 * 2) = 0.5
#   sim(p1) = (1 + 1/2) / sqrt(2 * 3) = 0.6124
KNN = views(("p1", "ABC"), ("p2", "BD"), ("p3", "AE"))
#: The rules of x1..x3 and the session indexes of p1..p3, in one store.
BOTH = {
    "sequential_rules": RULES["sequential_rules"],
    "item_sessions": KNN["item_sessions"],
    "session_items": KNN["session_items"],
}
SIM_P1, SIM_P2, SIM_P3 = 1.5 / math.sqrt(6), 0.5, 0.25


def test_session_knn_scores_items_by_the_similarity_of_their_sessions() -> None:
    assert KNN["item_sessions"]["A"] == {"sessions": ["p3", "p1"], "last_event_ms": [7, 3]}
    features = MemoryFeatures(views=KNN)
    # k = 2 keeps p1 and p2: B in both, A and C in p1, D in p2.
    source = SessionKnnSource(Stores(SNAPSHOT, features), k=2, sample=10)
    best = SIM_P1 + SIM_P2
    assert source.candidates(request(["B", "A"]), 50).pairs == [
        ("B", 1.0),
        ("A", pytest.approx(SIM_P1 / best)),
        ("C", pytest.approx(SIM_P1 / best)),
        ("D", pytest.approx(SIM_P2 / best)),
    ]
    # All three neighbours: E joins through p3, A gains p3's similarity.
    every = SessionKnnSource(Stores(SNAPSHOT, features), k=3, sample=10)
    scores = dict(every.candidates(request(["B", "A"]), 50).pairs)
    assert scores["A"] == pytest.approx((SIM_P1 + SIM_P3) / best)
    assert scores["E"] == pytest.approx(SIM_P3 / best)


def test_session_knn_samples_the_newest_neighbours_and_skips_the_current_session() -> None:
    features = MemoryFeatures(views=KNN)
    # sample = 2: only p3 and p2 are compared (p1 is the oldest), though p1 is the most similar.
    recent = SessionKnnSource(Stores(SNAPSHOT, features), k=2, sample=2)
    assert recent.candidates(request(["B", "A"]), 50).pairs == [
        ("B", 1.0),
        ("D", 1.0),
        ("A", 0.5),
        ("E", 0.5),
    ]
    # The request's own session, already in the batch tables, is not its own neighbour.
    source = SessionKnnSource(Stores(SNAPSHOT, features), k=2, sample=10)
    pairs = source.candidates(request(["B", "A"], session_id="p1"), 50).pairs
    assert [i for i, _ in pairs] == ["B", "D", "A", "E"]
    assert source.candidates(request(["Z"]), 50).pairs == []


def _failing(part: str, fn: Callable[..., Any], /, *args: Any) -> Any:
    raise PartUnavailable(part)


@pytest.mark.parametrize("cls", [SequentialRulesSource, SessionKnnSource])
def test_sources_degrade_without_the_online_store(cls: Any) -> None:
    features = MemoryFeatures(views=BOTH)
    down = request(["B", "A"], call=_failing)
    assert cls(Stores(SNAPSHOT, features)).candidates(down, 50).pairs == []
    assert down.degraded == ["online_store"]
    assert cls(Stores(SNAPSHOT, None)).candidates(request(["B", "A"]), 50).pairs == []


def test_the_pipeline_serves_both_sources_by_their_registry_names() -> None:
    assert sources.REGISTRY["sequential_rules"] is SequentialRulesSource
    assert sources.REGISTRY["session_knn"] is SessionKnnSource
    contexts = {("u1", "now"): {"session_features__last_viewed_items": ["B", "A"]}}
    features = MemoryFeatures(contexts, BOTH)
    for name in ("sequential_rules", "session_knn"):
        pipeline = Pipeline(SNAPSHOT, features=features, sources=[name])
        result = pipeline.recommend(Query("u1", "now", 3), Models())
        assert [c.source for c in result.items] == [name] * 3
        assert result.items[0].sources[name] == 1.0
    rules = Pipeline(SNAPSHOT, features=features, sources=["sequential_rules"])
    assert [c.item_id for c in rules.recommend(Query("u1", "now", 3), Models()).items] == [
        "C",
        "B",
        "D",
    ]
