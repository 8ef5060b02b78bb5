"""The recommendation pipeline on its own: sources from the registry, in-memory stand-ins for the
live stores, over-fetch, and a new source added as one class plus its registration."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pytest

from lambdarec.harness.platform import private_settings
from lambdarec.recommend import sources
from lambdarec.recommend.memory import ExactIndex, MemoryFeatures
from lambdarec.recommend.pipeline import DEFAULT_SOURCES, Pipeline
from lambdarec.recommend.snapshot import Snapshot
from lambdarec.recommend.sources.base import Pool
from lambdarec.recommend.sources.cooccurrence import cooccurring
from lambdarec.recommend.types import Models, Query

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from lambdarec.recommend.sources.base import Request, Stores

N_ITEMS = 60
CATEGORIES = {f"i{n}": f"c{n % 6}" for n in range(N_ITEMS)}
SNAPSHOT = Snapshot.from_items(CATEGORIES, [(f"i{n}", float(N_ITEMS - n)) for n in range(N_ITEMS)])


class ToySource:
    """What a new source module holds: a name, a blend weight, and candidates per request."""

    name = "toy"
    weight = 5.0  # outweighs popularity in the blend, so its items lead the list

    def __init__(self, stores: Stores) -> None:
        self.catalog = sorted(stores.snapshot.categories)

    def candidates(self, request: Request, fetch: int) -> Pool:
        picks = [i for i in self.catalog if i.endswith("7")][:fetch]
        return Pool([(item, 1.0) for item in picks])


@pytest.fixture
def toy() -> Iterator[None]:
    sources.register("toy", ToySource)
    try:
        yield
    finally:
        sources.REGISTRY.pop("toy", None)


def test_a_registered_source_is_served_by_recommend_with_its_name(
    toy: None, tmp_path: Path
) -> None:
    from serving import create_app
    from serving.recommender import Recommender

    settings = private_settings(tmp_path, candidate_sources="popular,toy")
    recommender = Recommender(SNAPSHOT, sources=settings.candidate_sources_list)
    app = create_app(settings, recommender, load_model=False)
    body = app.test_client().get("/recommend?user_id=u1&k=10").get_json()
    toy_items = [i for i in body["items"] if i["source"] == "toy"]
    assert {i["item_id"] for i in toy_items} == {"i7", "i17", "i27", "i37", "i47", "i57"}
    assert all("toy" in i["sources"] for i in toy_items)
    assert body["items"][0]["source"] == "toy"
    assert any(r["feature"] == "toy_score" for r in toy_items[0]["reasons"])
    assert body["candidates"]["toy"] == 6  # what each source gave, before the filters


def test_an_unknown_source_names_the_setting_and_the_choices() -> None:
    with pytest.raises(ValueError, match=r"LAMBDAREC_CANDIDATE_SOURCES names \['nope'\]; choose"):
        Pipeline(SNAPSHOT, sources=["popular", "nope"])


def _stand_ins() -> tuple[ExactIndex, MemoryFeatures]:
    rng = np.random.default_rng(0)
    ids = sorted(CATEGORIES)
    matrix = rng.normal(size=(len(ids), 8)).astype(np.float32)
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    features = MemoryFeatures(
        contexts={
            ("u1", "s1"): {
                "session_features__last_viewed_items": ["i3", "i4"],
                "session_features__last_purchased_items": ["i5"],
            }
        },
        views={
            "item_cooccurrence": {
                "i3": {"co_bought_items": ["i10", "i11"], "co_bought_scores": [0.9, 0.5]},
                "i4": {"co_viewed_items": ["i11", "i12"], "co_viewed_scores": [1.0, 0.2]},
            }
        },
    )
    return ExactIndex(ids, matrix), features


class Encoder:
    def __init__(self, vector: np.ndarray) -> None:
        self.vector = vector

    def encode(self, features: dict[str, Any]) -> np.ndarray:
        return self.vector[None, :]


def test_the_pipeline_runs_on_in_memory_stand_ins() -> None:
    index, features = _stand_ins()
    pipeline = Pipeline(SNAPSHOT, features=features, index=index)
    vector = index.matrix[index.item_ids.index("i20")]
    result = pipeline.recommend(Query("u1", "s1", 10, ("i0",)), Models(Encoder(vector), None))
    assert result.degraded_parts == ["ranker"]  # no ranker: the blend ranks
    items = {c.item_id: c for c in result.items}
    assert "i20" in items and items["i20"].sources["vector"] == pytest.approx(1.0, abs=1e-6)
    assert "i5" not in items and "i0" not in items  # purchased in the session, excluded
    assert items["i10"].sources["cooccurrence"] == pytest.approx(0.9)
    # Each neighbour keeps its best path: i11 via i3 (the newest, bought together: 0.5) beats
    # i11 via i4 (second newest 0.7, viewed together 0.7, score 1.0: 0.49).
    assert cooccurring(features, ["i3", "i4"]) == [
        ("i10", pytest.approx(0.9)),
        ("i11", pytest.approx(0.5)),
        ("i12", pytest.approx(0.7 * 0.7 * 0.2)),
    ]
    assert set(result.timings_ms) == {"features", "candidates", "filter", "rank", "rules"}
    assert result.candidates["cooccurrence"] == 3  # i10, i11, i12
    assert set(result.candidates) == set(DEFAULT_SOURCES)


def test_too_few_survivors_make_the_index_give_more() -> None:
    """When the index's first answer is mostly items the catalog does not hold, the pipeline
    asks it again for more (four times as many, at most 1,000)."""
    rng = np.random.default_rng(1)
    ids = [f"x{n}" for n in range(240)]  # the catalog holds every fourth one
    matrix = rng.normal(size=(len(ids), 8)).astype(np.float32)
    index = ExactIndex(ids, matrix)
    searched: list[int] = []

    class Counting:
        def search(self, vectors: np.ndarray, k: int, timeout_s: float | None = None) -> Any:
            searched.append(k)
            return index.search(vectors, k)

    catalog = Snapshot.from_items({i: "c" for i in ids[::4]}, [])
    pipeline = Pipeline(catalog, index=Counting(), sources=["vector"], category_cap=1.0)
    result = pipeline.recommend(Query("u9", None, 10), Models(Encoder(matrix[0]), None))
    assert searched == [50, 200]
    assert len(result.items) == 10 and all(c.item_id in catalog.categories for c in result.items)


def test_the_category_cap_keeps_a_list_diverse_and_gives_way_to_reach_k() -> None:
    from lambdarec.recommend.rules import diversify
    from lambdarec.recommend.types import Candidate

    ranked = [Candidate(f"a{n}", category="shoes", score=10 - n) for n in range(8)]
    ranked += [Candidate(f"b{n}", category=f"c{n}", score=1 - n / 10) for n in range(3)]
    top = diversify(ranked, 6, category_cap=0.5)
    assert [c.item_id for c in top] == ["a0", "a1", "a2", "b0", "b1", "b2"]
    # too few other categories: the cap gives way, best first
    top = diversify(ranked, 9, category_cap=0.5)
    assert sum(c.category == "shoes" for c in top) == 6 and len(top) == 9
    assert [c.item_id for c in diversify(ranked, 4, category_cap=1.0)] == ["a0", "a1", "a2", "a3"]


def test_a_returning_user_without_a_session_gets_candidates_from_their_history() -> None:
    """No session items: the user's recent items (the batch layer's user_recent_items) are the
    request's context, so co-occurrence (and every other source) answers for them."""
    _, features = _stand_ins()
    features.views["user_recent_items"] = {"u7": {"items": ["i3", "i4"]}}
    pipeline = Pipeline(SNAPSHOT, features=features, sources=["cooccurrence"])
    request, candidates = pipeline.candidates(Query("u7", "new-session", 10), Models())
    assert request.features["context"] == "user_history"
    assert request.features["session_features__last_viewed_items"] == ["i3", "i4"]
    assert {"i10", "i11", "i12"} <= {c.item_id for c in candidates}
    stranger, none = pipeline.candidates(Query("u8", "new-session", 10), Models())
    assert none == [] and "context" not in stranger.features
