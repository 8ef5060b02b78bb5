"""Fast end-to-end smoke test of the models on tiny synthetic data (about a minute on 2 cores)."""

from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

from typing import TYPE_CHECKING  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from lambdarec.data.generator import GeneratorConfig, generate_events  # noqa: E402
from lambdarec.models import baselines as B  # noqa: E402
from lambdarec.models import evaluate as E  # noqa: E402
from lambdarec.models.data import Dataset, build_from_events  # noqa: E402

if TYPE_CHECKING:
    from pathlib import Path

# About 25 s of CPU: trains both models; runs in CI, deselect locally with -m 'not slow'.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def dataset() -> Dataset:
    cfg = GeneratorConfig(n_users=300, n_items=400, n_categories=10, days=5, n_events=8_000, seed=1)
    return build_from_events(generate_events(cfg), name="tiny")


def test_split_is_temporal(dataset: Dataset) -> None:
    assert len(dataset.train) and len(dataset.valid) and len(dataset.test)
    assert dataset.train.ts.max() < dataset.valid.ts.min() <= dataset.valid.ts.max()
    assert dataset.valid.ts.max() < dataset.test.ts.min()
    assert (dataset.train_events.ts < dataset.split["valid_start_ms"]).all()  # type: ignore[operator]
    # the context of each example is its session's previous item, or, at a known user's new
    # session, none (serving then takes the user's own recent items)
    test = dataset.test
    with_session = test.session_len >= 1
    assert (test.hist[with_session, 0] >= 0).all()
    assert (test.hist[~with_session] < 0).all() and (test.user[~with_session] > 0).all()
    assert (test.user_events[~with_session] > 0).all() and (~with_session).any()


def test_too_few_days_for_a_split_is_named() -> None:
    cfg = GeneratorConfig(n_users=50, n_items=80, n_categories=4, days=2, n_events=800, seed=1)
    with pytest.raises(ValueError, match=r"span 2 day\(s\); a temporal split needs at least 3"):
        build_from_events(generate_events(cfg), name="two-days")


def test_baselines_and_models_end_to_end(dataset: Dataset, tmp_path: Path) -> None:
    from lambdarec.models.deepfm import DeepFMConfig
    from lambdarec.models.pipeline import train_models
    from lambdarec.models.two_tower import TwoTowerConfig
    from lambdarec.recommend.pipeline import DEFAULT_SOURCES

    for model in (B.MostPopular(), B.CoOccurrence(), B.ALS(factors=8, iterations=2)):
        res = E.evaluate_ranker(model.fit(dataset), dataset, dataset.test)
        assert 0 <= res.overall["hr@20"] <= res.overall["hr@100"] <= 1
    trending = B.Trending(window=3_600_000 * 12).fit(dataset)
    assert trending.scores(dataset.test.subset(np.arange(3))).shape == (3, dataset.n_items)

    trained = train_models(
        dataset,
        TwoTowerConfig(epochs=1, batch_size=256, valid_queries=200),
        DeepFMConfig(epochs=1, max_queries=500),
        work_dir=tmp_path,
    )
    ids, matrix = trained.retriever.item_embeddings()
    assert matrix.shape == (dataset.n_items, 64) and matrix.dtype == np.float32
    assert len(ids) == dataset.n_items
    q = trained.retriever.query_embeddings(dataset.test.subset(np.arange(5)))
    assert q.shape == (5, 64)
    assert (tmp_path / "two_tower" / "query_tower" / "saved_model.pb").exists()
    assert (tmp_path / "deepfm" / "serving" / "ranker.json").exists()
    assert trained.ranker.sources == list(DEFAULT_SOURCES)

    from lambdarec.models.served import evaluate_served

    trained.setup.features.splits["test"] = dataset.test
    res = evaluate_served(trained.setup, dataset, dataset.test, name="served")
    assert 0 < res.overall["hr@20"] <= 1
    payload = E.results_json(dataset, [res], {})
    jpath, hpath = E.write_report(payload, E.figures([res]), tmp_path / "report")
    assert hpath.read_text().count("<img") == 3 and jpath.exists()
