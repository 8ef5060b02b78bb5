"""The evaluation's served row runs what /recommend runs: the same top-10 for the same inputs.

A tiny two-tower and DeepFM are trained on synthetic data; the evaluation's served pipeline
(exact index, in-memory features, the numpy exports) answers sampled test queries, and the Flask
app, given the same stand-ins, answers the same queries over HTTP.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

from typing import TYPE_CHECKING  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from lambdarec.data.generator import GeneratorConfig, generate_events  # noqa: E402
from lambdarec.harness.platform import private_settings  # noqa: E402
from lambdarec.models.data import Dataset, build_from_events  # noqa: E402

if TYPE_CHECKING:
    from pathlib import Path

    from lambdarec.models.pipeline import Trained
    from lambdarec.models.served import ServedSetup

CONFIG = GeneratorConfig(n_users=300, n_items=400, n_categories=10, days=5, n_events=8_000, seed=3)


@pytest.fixture(scope="module")
def dataset() -> Dataset:
    return build_from_events(generate_events(CONFIG), name="tiny")


@pytest.fixture(scope="module")
def trained(dataset: Dataset, tmp_path_factory: pytest.TempPathFactory) -> Trained:
    from lambdarec.models.deepfm import DeepFMConfig
    from lambdarec.models.pipeline import train_models
    from lambdarec.models.two_tower import TwoTowerConfig

    return train_models(
        dataset,
        TwoTowerConfig(epochs=1, valid_queries=300),
        DeepFMConfig(epochs=1, max_queries=400),
        work_dir=tmp_path_factory.mktemp("served"),
    )


@pytest.fixture(scope="module")
def setup(trained: Trained) -> ServedSetup:
    return trained.setup


def test_the_served_row_and_recommend_give_the_same_top_10(
    dataset: Dataset, setup: ServedSetup, tmp_path: Path
) -> None:
    from lambdarec.models.served import served_queries, served_topk
    from serving import create_app
    from serving.recommender import Recommender

    assert setup.models.encoder is not None and setup.models.ranker is not None
    sample = np.sort(np.random.default_rng(0).choice(len(dataset.test), 40, replace=False))
    ex = dataset.test.subset(sample)
    # The evaluation answers query n of `ex` under session "test:n": hand it the subset.
    setup.features.splits["test"] = ex
    evaluated, degraded = served_topk(setup, ex, "test", k=10)
    assert degraded == {}

    recommender = Recommender(
        setup.pipeline.snapshot,
        features=setup.features,
        index=setup.pipeline.index,  # type: ignore[arg-type]
        encoder=setup.models.encoder,
        ranker=setup.models.ranker,
        # generous budgets: a loaded test machine must not turn a slow call into a degradation
        timeouts_s=dict.fromkeys(("online_store", "index", "model", "ranker"), 30.0),
    )
    client = create_app(private_settings(tmp_path), recommender, load_model=False).test_client()
    sources: set[str] = set()
    for n, query in enumerate(served_queries(ex, "test", setup.item_ids, 10)):
        body = client.get(
            "/recommend",
            query_string={"user_id": query.user_id, "session_id": query.session_id, "k": 10},
        ).get_json()
        assert body["degraded_parts"] == [], body
        served = [setup.position[i["item_id"]] for i in body["items"]]
        assert served == evaluated[n].tolist(), n
        sources |= {s for i in body["items"] for s in i["sources"]}
    assert {"vector", "cooccurrence", "popular"} <= sources  # the union was served, not one list


def test_the_served_row_is_scored_like_every_other_row(
    dataset: Dataset, setup: ServedSetup
) -> None:
    from lambdarec.models.served import CandidateStats, evaluate_served

    ex = dataset.test.sample(200, 1)
    setup.features.splits["test"] = ex
    stats = CandidateStats()
    result = evaluate_served(setup, dataset, ex, name="served", stats=stats)
    assert result.overall["n_queries"] == 200
    assert 0.0 < result.overall["hr@20"] <= 1.0
    assert result.overall["mrr@20"] <= result.overall["hr@20"]
    assert result.topk.shape == (200, 20)
    # the served top 20 is drawn from the candidates: their recall bounds its HR@20
    report = stats.to_json()
    assert report["queries"] == 200
    assert result.overall["hr@20"] <= report["union_recall"] <= 1.0
    sources = report["per_source"]
    assert {"vector", "cooccurrence", "popular"} <= set(sources)
    assert max(row["recall"] for row in sources.values()) <= report["union_recall"]
    assert sum(row["mean_only_from_it"] for row in sources.values()) <= report["mean_candidates"]
    assert report["mean_candidates"] <= sum(row["mean_candidates"] for row in sources.values())


def test_every_source_proposes_candidates_for_the_ranker(
    dataset: Dataset, trained: Trained
) -> None:
    """The lists the ranker is trained on hold every source's candidates (its stand-in store has
    each source's view), not only the sources that need no batch table."""
    from lambdarec.models.served import candidate_lists

    ex = dataset.valid.sample(100, 2)
    trained.setup.features.splits["valid"] = ex
    lists = candidate_lists(trained.setup, ex, "valid")
    proposed = {
        name: int((~np.isnan(lists.scores[..., j])).sum()) for j, name in enumerate(lists.sources)
    }
    assert all(proposed[name] > 0 for name in lists.sources), proposed


def test_the_test_pipeline_is_refit_on_the_interactions_before_the_test(
    dataset: Dataset, trained: Trained, tmp_path: Path
) -> None:
    """Before the test every part that learns from interactions sees the validation period
    too: the two-tower is trained again (the epochs validation chose, nothing held out), the
    ranker's item statistics and the sources' stores are recounted; the DeepFM keeps its
    weights."""
    from lambdarec.models.pipeline import refit_for_test

    refit = dataset.for_test()
    assert len(refit.train) > len(dataset.train)
    tt, setup = refit_for_test(trained, refit, tmp_path)
    assert [h["epoch"] for h in tt.history] == [1]  # validation chose 1 epoch (of 1)
    assert tt.history[0]["valid_recall@20"] is None
    assert (tt.idx_map > 1).sum() >= (trained.retriever.idx_map > 1).sum()
    _, matrix = tt.item_embeddings()
    np.testing.assert_array_equal(setup.pipeline.index.matrix, matrix)  # type: ignore[attr-defined]
    ranker = setup.models.ranker
    assert ranker is not None
    np.testing.assert_array_equal(ranker.table.popularity, refit.popularity())  # type: ignore[attr-defined]
    assert refit.popularity().sum() > dataset.popularity().sum()
    np.testing.assert_array_equal(
        ranker.w["deep_kernel_0"],  # type: ignore[attr-defined]
        trained.setup.models.ranker.w["deep_kernel_0"],  # type: ignore[union-attr]
    )


def test_as_served_is_what_the_served_query_tower_reads(dataset: Dataset) -> None:
    """The unknown user everywhere; a query without session context takes the user's recent
    items exactly as the pipeline reads them from the batch layer's user_recent_items view (cut
    to the history length), the newest one's category as the session category; a query with a
    session keeps it."""
    from lambdarec.models.data import as_served
    from lambdarec.models.served import item_views

    valid = dataset.valid
    got = as_served(dataset, valid)
    assert (got.user == 0).all()
    no_session = (valid.session_len == 0) & (valid.user > 0)
    assert no_session.sum() > 10
    np.testing.assert_array_equal(got.hist[~no_session], valid.hist[~no_session])
    recent = item_views(dataset)["user_recent_items"]
    ids = [str(i) for i in dataset.catalog.item_ids]
    width = valid.hist.shape[1]
    for r in np.flatnonzero(no_session):
        want = recent[str(int(valid.user[r]))]["items"][:width]
        assert [ids[i] for i in got.hist[r] if i >= 0] == want
        assert got.session_category[r] == dataset.catalog.category[got.hist[r, 0]]


def test_session_starts_are_returning_users_first_clicks_with_their_recent_items(
    dataset: Dataset,
) -> None:
    """Each training example: a known user's first interaction of a session after earlier ones,
    the history their distinct items before it, newest first (recomputed naively here), as a
    validation query without session context gets them (with_user_history)."""
    from lambdarec.models.data import session_starts

    starts = session_starts(dataset)
    ev = dataset.train_events
    assert len(starts) > 50 and (starts.session_len == 0).all() and (starts.user > 0).all()
    order = np.lexsort((np.arange(len(ev.ts)), ev.ts, ev.user))
    rows = [(int(ev.user[i]), int(ev.group[i]), int(ev.item[i]), int(ev.ts[i])) for i in order]
    firsts: dict[int, int] = {}
    for n, (_, group, _, _) in enumerate(rows):
        firsts.setdefault(group, n)
    width = dataset.train.hist.shape[1]
    want = []
    for n in sorted(firsts.values()):
        user = rows[n][0]
        before = [item for u, _, item, _ in rows[:n] if u == user]
        if user > 0 and before:
            recent = list(dict.fromkeys(reversed(before)))[:width]
            want.append((user, rows[n][2], rows[n][3], recent))
    got = [
        (int(u), int(t), int(ts), [int(i) for i in h if i >= 0])
        for u, t, ts, h in zip(starts.user, starts.target, starts.ts, starts.hist, strict=True)
    ]
    assert got == want
    assert (starts.user_events > 0).all()


def test_without_session_features_no_history_comes_back_through_the_user(
    dataset: Dataset,
) -> None:
    """The session ablation blanks every history: neither the served inputs nor the session
    starts put the user's recent items back."""
    from lambdarec.models.data import as_served, session_starts

    blank = dataset.without_session_features()
    assert (as_served(blank, blank.valid).hist == -1).all()
    assert len(session_starts(blank)) == 0
