"""The DeepFM ranker as served: its numpy forward pass against the TensorFlow model, its feature
rows against training's (one function builds both), /recommend ranked by it, and how serving finds
and reloads it.

Two tiny DeepFMs are trained on synthetic data (one epoch each, seconds). Their candidates come
from a stand-in retriever that scores items by the cosine of random unit vectors, which is what
the two-tower's scores are, without training one.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import json  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from typing import TYPE_CHECKING, Any  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from lambdarec.champion import champion_dirs  # noqa: E402
from lambdarec.data.generator import GeneratorConfig, generate_events  # noqa: E402
from lambdarec.harness.platform import private_settings  # noqa: E402
from lambdarec.harness.waiting import eventually  # noqa: E402
from lambdarec.inference.ranker import DeepFMRanker  # noqa: E402
from lambdarec.inference.ranker_rows import ABSENT_RANK  # noqa: E402
from lambdarec.models import baselines as B  # noqa: E402
from lambdarec.models import evaluate as E  # noqa: E402
from lambdarec.models.data import Dataset, Examples, build_from_events  # noqa: E402
from lambdarec.recommend.ranking import source_matrix  # noqa: E402
from lambdarec.recommend.snapshot import Snapshot  # noqa: E402
from lambdarec.recommend.types import Candidate, Models, Query  # noqa: E402
from serving.recommender import Recommender  # noqa: E402

if TYPE_CHECKING:
    from pathlib import Path

    from lambdarec.models.deepfm import CandidateLists, TrainedDeepFM


@dataclass
class Trained:
    data: Dataset
    queries: Examples
    lists: CandidateLists
    idx_map: np.ndarray
    fm: TrainedDeepFM
    ranker: DeepFMRanker


CONFIG = GeneratorConfig(n_users=300, n_items=400, n_categories=10, days=5, n_events=8_000, seed=1)


@pytest.fixture(scope="module")
def dataset() -> Dataset:
    return build_from_events(generate_events(CONFIG), name="tiny")


def _lists(data: Dataset, queries: Examples) -> CandidateLists:
    """Two stand-in sources: "vector" scores items by the cosine of random unit vectors (what the
    two-tower's scores are, without training one), top 100; "popular" is the training popularity,
    top 30. Each query's candidates are their union, padded with -1."""
    from lambdarec.models.deepfm import CandidateLists

    rng = np.random.default_rng(7)
    items = rng.normal(size=(data.n_items, 16))
    items /= np.linalg.norm(items, axis=1, keepdims=True)

    def cosine(ex: Examples) -> np.ndarray:
        q = np.random.default_rng(int(ex.ts[0]) % 2**32).normal(size=(len(ex), 16))
        return (q / np.linalg.norm(q, axis=1, keepdims=True)) @ items.T

    cand_v, scores_v = E.ranker_topk(cosine, queries, 100)
    pop = data.popularity()
    top_pop = np.argsort(-pop, kind="stable")[:30]
    width = 130
    cand = np.full((len(queries), width), -1, dtype=np.int64)
    scores = np.full((len(queries), width, 2), np.nan)
    ranks = np.full((len(queries), width, 2), np.nan)
    for q in range(len(queries)):
        column = {}
        for place, (item, score) in enumerate(zip(cand_v[q], scores_v[q], strict=True)):
            column[int(item)] = len(column)
            scores[q, column[int(item)], 0] = (float(score) + 1.0) / 2.0
            ranks[q, column[int(item)], 0] = place
        for place, item in enumerate(top_pop):
            at = column.setdefault(int(item), len(column))
            scores[q, at, 1] = pop[item] / pop[top_pop[0]]
            ranks[q, at, 1] = place
        cand[q, : len(column)] = list(column)
    return CandidateLists(["vector", "popular"], cand, scores, ranks)


def _train(data: Dataset, out: Path, *, item_ids: bool, shown: bool = False) -> Trained:
    """``shown``: every other query's first ten candidates were shown at places 0..9 (the
    ranker gets the ``position`` field)."""
    from dataclasses import replace

    from lambdarec.models import deepfm

    queries = data.valid.sample(600, 0)
    lists = _lists(data, queries)
    if shown:
        places = np.full(lists.cand.shape, -1, dtype=np.int64)
        places[::2, :10] = np.arange(10)
        lists = replace(lists, shown=places)
    idx_map = np.where(data.seen_in_train(), np.arange(data.n_items) + 2, 1).astype(np.int64)
    config = deepfm.DeepFMConfig(epochs=1, max_queries=600, item_ids=item_ids)
    fm = deepfm.train_deepfm(data, queries, lists, idx_map, B.CoOccurrence().fit(data), config)
    deepfm.export_for_serving(fm, data, out / deepfm.SERVING_EXPORT)
    ranker = DeepFMRanker.from_model_dir(out)
    assert ranker is not None
    return Trained(data, queries, lists, idx_map, fm, ranker)


@pytest.fixture(scope="module")
def trained(dataset: Dataset, tmp_path_factory: pytest.TempPathFactory) -> Trained:
    return _train(dataset, tmp_path_factory.mktemp("run") / "deepfm", item_ids=False)


@pytest.fixture(scope="module")
def trained_ids(dataset: Dataset, tmp_path_factory: pytest.TempPathFactory) -> Trained:
    return _train(dataset, tmp_path_factory.mktemp("run_ids") / "deepfm", item_ids=True)


@pytest.fixture(scope="module")
def trained_position(dataset: Dataset, tmp_path_factory: pytest.TempPathFactory) -> Trained:
    return _train(
        dataset, tmp_path_factory.mktemp("run_pos") / "deepfm", item_ids=False, shown=True
    )


def _tf_logits(t: Trained, rows: dict[str, np.ndarray]) -> np.ndarray:
    import tensorflow as tf

    return t.fm.model({k: tf.constant(v) for k, v in rows.items()}, training=False).numpy()[:, 0]


def _training_rows(t: Trained, sel: np.ndarray) -> dict[str, np.ndarray]:
    from lambdarec.models.deepfm import candidate_features

    return candidate_features(t.fm.item_table(t.data), t.queries.subset(sel), t.lists.subset(sel))


def _scored(
    ranker: DeepFMRanker, features: dict[str, Any], candidates: list[Candidate]
) -> list[tuple[float, dict[str, float]]]:
    """The ranker's scores as the pipeline asks for them (each source's score and place)."""
    scores, ranks = source_matrix(candidates, ranker.sources)
    ids, categories = [c.item_id for c in candidates], [c.category for c in candidates]
    return ranker.score(features, ids, categories, scores, ranks)


def _rows(
    ranker: DeepFMRanker, features: dict[str, Any], candidates: list[Candidate]
) -> dict[str, np.ndarray]:
    scores, ranks = source_matrix(candidates, ranker.sources)
    ids, categories = [c.item_id for c in candidates], [c.category for c in candidates]
    return ranker.rows(features, ids, categories, scores, ranks)


def _check_forward(t: Trained, ranker: DeepFMRanker) -> None:
    rows = _training_rows(t, np.arange(30))  # 3,900 rows (padding included: any row scores)
    logits, contributions = ranker.forward(rows)
    np.testing.assert_allclose(logits, _tf_logits(t, rows), atol=1e-4, rtol=0)
    # the contributions are a decomposition of the logit (up to the constant bias)
    np.testing.assert_allclose(
        contributions.sum(axis=1) + ranker.w["dense_w_bias"][0], logits, atol=1e-4, rtol=0
    )
    assert contributions.shape == (len(logits), len(ranker.fields) + 1)


@pytest.mark.parametrize("which", ["trained", "trained_ids", "trained_position"])
def test_numpy_forward_pass_equals_the_tf_model(
    which: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    from lambdarec.models.deepfm import SERVING_EXPORT, export_for_serving

    t: Trained = request.getfixturevalue(which)
    assert t.ranker.use_ids == (which == "trained_ids")
    assert t.ranker.use_position == (which == "trained_position")
    assert ("position" in t.ranker.fields) == (which == "trained_position")
    _check_forward(t, t.ranker)

    # One epoch leaves the batch norm near identity and first-order weights near zero; the same
    # model with every variable drawn at a real scale checks each term of the forward pass.
    saved = t.fm.model.get_weights()
    rng = np.random.default_rng(3)
    try:
        for var in t.fm.model.variables:
            shape = var.shape.as_list()
            value = (
                rng.uniform(0.5, 2.0, shape)
                if "moving_variance" in var.name
                else rng.normal(0.0, 0.3, shape)
            )
            var.assign(value.astype(np.float32))
        export_for_serving(t.fm, t.data, tmp_path / SERVING_EXPORT)
        randomised = DeepFMRanker.from_model_dir(tmp_path)
        assert randomised is not None
        _check_forward(t, randomised)
    finally:
        t.fm.model.set_weights(saved)


def test_serving_ranks_at_the_neutral_position(trained_position: Trained, tmp_path: Path) -> None:
    """A ranker trained with shown positions scores serving's candidates with every row at the
    neutral position: the scores are the model's on the training rows with nothing shown, and
    differ from the ones the same rows get at their shown places (the field is live)."""
    from dataclasses import replace

    from lambdarec.inference.ranker_rows import NEUTRAL_POSITION
    from lambdarec.models.deepfm import SERVING_EXPORT, export_for_serving

    t = trained_position
    meta = json.loads((t.ranker.folder / "ranker.json").read_text(encoding="utf-8"))
    assert meta["format"] == 4 and "position" in meta["fields"]
    saved = t.fm.model.get_weights()
    rng = np.random.default_rng(5)
    try:  # weights at a real scale, so a position's embedding moves the logit visibly
        for var in t.fm.model.variables:
            value = rng.uniform(0.5, 2.0, var.shape) if "moving_variance" in var.name else None
            value = rng.normal(0.0, 0.3, var.shape) if value is None else value
            var.assign(value.astype(np.float32))
        export_for_serving(t.fm, t.data, tmp_path / SERVING_EXPORT)
        ranker = DeepFMRanker.from_model_dir(tmp_path)
        assert ranker is not None and ranker.use_position
        ex = t.queries  # a shown query whose counts map onto online features (see below)
        q = next(q for q in range(0, len(ex), 2) if ex.user_events[q] >= ex.session_len[q] >= 1)
        features, candidates = _serving_inputs(t, q)
        rows = _rows(ranker, features, candidates)
        assert (rows["position"] == NEUTRAL_POSITION).all()
        served = np.array([s for s, _ in _scored(ranker, features, candidates)])
        width = len(candidates)
        one = np.array([q])
        unshown = replace(t.lists, shown=np.full(t.lists.cand.shape, -1, dtype=np.int64))
        neutral = t.fm.predict(t.data, t.queries.subset(one), unshown.subset(one))[0][:width]
        np.testing.assert_allclose(served, neutral, atol=1e-4, rtol=0)
        at_places = t.fm.predict(t.data, t.queries.subset(one), t.lists.subset(one))[0][:width]
        assert np.abs(at_places[:10] - neutral[:10]).max() > 1e-3
        np.testing.assert_allclose(at_places[10:], neutral[10:], atol=1e-4, rtol=0)
    finally:
        t.fm.model.set_weights(saved)


def _serving_inputs(t: Trained, q: int) -> tuple[dict[str, Any], list[Candidate]]:
    """What serving would hold for query ``q``: its Feast features and candidates."""
    ex, ids = t.queries, t.data.catalog.item_ids
    session_len, user_events = int(ex.session_len[q]), int(ex.user_events[q])
    viewed = [str(ids[h]) for h in ex.hist[q] if h >= 0]
    features = {
        # the speed layer keeps repeated views; training collapsed them
        "session_features__last_viewed_items": viewed[:1] + viewed,
        "session_features__session_category": "whatever Feast says",  # not what training used
        "session_features__n_views": session_len - 1,
        "session_features__n_carts": 0,
        "session_features__n_removes": 1,
        "session_features__n_purchases": None,
        "user_history_30d__n_events_30d": user_events - session_len,
    }
    lists, candidates = t.lists, []
    for column in np.flatnonzero(lists.cand[q] >= 0):
        got = {
            name: j
            for j, name in enumerate(lists.sources)
            if not np.isnan(lists.scores[q, column, j])
        }
        candidates.append(
            Candidate(
                str(ids[lists.cand[q, column]]),
                {name: float(lists.scores[q, column, j]) for name, j in got.items()},
                {name: int(lists.ranks[q, column, j]) for name, j in got.items()},
            )
        )
    return features, candidates


def test_rows_built_from_serving_inputs_are_the_training_rows(trained: Trained) -> None:
    """The same (query, candidates) built the training way (a dataset's examples and the
    retriever's list) and the serving way (online features and the pipeline's candidates, in any
    order) give equal rows: both go through ``inference.ranker_rows.ranker_rows``."""
    t = trained
    ex = t.queries
    # queries whose user counts leave a non-negative 30-day count for the mapping above
    qs = [q for q in range(len(ex)) if ex.user_events[q] >= ex.session_len[q] >= 1][:20]
    assert len(qs) >= 5
    shuffle = np.random.default_rng(0)
    for q in qs:
        features, candidates = _serving_inputs(t, q)
        order = shuffle.permutation(len(candidates))  # candidates arrive in any order
        got = _rows(t.ranker, features, [candidates[i] for i in order])
        width = len(candidates)  # the training lists are padded beyond the query's candidates
        want = {k: v[:width][order] for k, v in _training_rows(t, np.array([q])).items()}
        assert set(got) == set(want)
        for name in want:
            np.testing.assert_array_equal(got[name], want[name], err_msg=name)
        # the same query scored the training way (TF) and the serving way (numpy)
        scores = [s for s, _ in _scored(t.ranker, features, [candidates[i] for i in order])]
        predicted = t.fm.predict(t.data, ex.subset(np.array([q])), t.lists.subset(np.array([q])))
        np.testing.assert_allclose(scores, predicted[0][:width][order], atol=1e-4, rtol=0)


def test_unknown_items_and_non_vector_candidates(trained: Trained) -> None:
    r = trained.ranker
    known = [str(i) for i in trained.data.catalog.item_ids[:3]]
    candidates = [
        Candidate(known[0], {"vector": 0.9}, {"vector": 0}),
        Candidate(known[1], {"vector": 0.7}, {"vector": 1}),
        Candidate("never-seen", {"popular": 1.0}, {"popular": 0}),
        Candidate(known[2], {"trending": 0.5}, {"trending": 0}),  # a source the ranker lacks
    ]
    features = {"session_features__last_viewed_items": ["never-seen-either", known[0]]}
    rows = _rows(r, features, candidates)
    assert r.sources == ["vector", "popular"]
    assert rows["cand_item"][2] == 1 and rows["cand_category"][2] == 0  # OOV, unknown category
    pop_at = r.fields.index("log_pop") - (len(r.fields) - rows["dense"].shape[1])
    assert rows["cand_price"][2] == 0 and rows["dense"][2, pop_at] == 0  # no price, popularity
    assert rows["last_item"][0] == 1 and rows["session_category"][0] == 0  # unknown last item
    absent = np.log1p(ABSENT_RANK)
    np.testing.assert_allclose(  # per source: score, log place, score / best, gap to the best
        rows["dense"][:, :8],
        [
            [0.9, 0.0, 1.0, 0.0, 0.0, absent, 0.0, 0.0],
            [0.7, np.log1p(1), 0.7 / 0.9, 0.2 / 0.9, 0.0, absent, 0.0, 0.0],
            [0.0, absent, 0.0, 0.0, 1.0, 0.0, 1.0, 0.0],
            [0.0, absent, 0.0, 0.0, 0.0, absent, 0.0, 0.0],
        ],
        atol=1e-6,
    )
    at = {
        name: r.fields.index(name) - (len(r.fields) - rows["dense"].shape[1]) for name in r.fields
    }
    # the session's second-newest item is candidate 0; 3 comes from a source the ranker lacks
    np.testing.assert_allclose(rows["dense"][:, at["in_history"]], [0.7, 0.0, 0.0, 0.0])
    np.testing.assert_allclose(rows["dense"][:, at["n_sources"]], [1, 1, 1, 0])
    scored = _scored(r, features, candidates)
    assert len(scored) == 4 and all(np.isfinite(s) for s, _ in scored)
    for _, contributions in scored:
        assert 0 < len(contributions) <= 5
        assert set(contributions) <= {*r.fields, "deep"}
    assert _scored(r, {}, []) == []


def test_new_items_are_ranked_with_their_catalog_category(trained: Trained, tmp_path: Path) -> None:
    """An item the ranker's export lacks (new since training) takes its catalog category through
    the run's item-tower vocabulary, so it gets the session-category match the model learned;
    an export without the vocabulary leaves it unknown, as before."""
    from lambdarec.inference.item_tower import EXPORT_DIR
    from serving.champion import load_ranker

    events = generate_events(CONFIG)
    vocabulary = trained.data.catalog.vocabulary()
    folder = tmp_path / "two_tower" / EXPORT_DIR
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    np.savez(
        folder / "weights.npz",
        item=rng.normal(size=(2, 8)),
        category=rng.normal(size=(vocabulary.n_categories, 16)),
        price=rng.normal(size=(vocabulary.n_price_buckets, 4)),
        kernel_0=rng.normal(size=(28, 8)),
        bias_0=np.zeros(8),
        kernel_1=rng.normal(size=(8, 8)),
        bias_1=np.zeros(8),
    )
    (folder / "item_tower.json").write_text(
        json.dumps(
            {
                "format": 1,
                "dim": 8,
                "oov_item": 1,
                "activations": ["relu", "linear"],
                "vocabulary": vocabulary.to_json(),
            }
        )
    )
    deepfm_dir = trained.ranker.folder.parent
    ranker = load_ranker(deepfm_dir, tmp_path / "two_tower")
    assert isinstance(ranker, DeepFMRanker)

    # The vocabulary and the export code categories alike (both from the training catalog).
    ids = list(ranker._position)  # noqa: SLF001 - the export's items, by position
    raw_category = dict(
        zip(events["item_id"].astype(str), events["category"].astype(str), strict=True)
    )
    for pos in range(0, len(ids), 37):
        assert vocabulary.categories[raw_category[ids[pos]]] == ranker.table.category[pos]

    session_item = ids[0]
    raw, index = raw_category[session_item], int(ranker.table.category[0])
    features = {"session_features__last_viewed_items": [session_item]}
    candidates = [
        Candidate("new-a", {"popular": 1.0}, category=raw),
        Candidate("new-b", {"popular": 0.9}, category="a category training never saw"),
        Candidate("new-c", {"popular": 0.8}),
        Candidate(session_item, {"vector": 0.9}, category="not what the export says"),
    ]
    rows = _rows(ranker, features, candidates)
    assert rows["cand_item"].tolist()[:3] == [1, 1, 1]  # still out of vocabulary
    assert rows["cand_category"].tolist() == [index, 0, 0, index]  # known: the export's own
    same_at = ranker.fields.index("same_category") - len(ranker.fields)
    assert rows["dense"][:, same_at].tolist() == [1.0, 0.0, 0.0, 1.0]  # session-category match
    assert rows["session_category"][0] == index

    before = load_ranker(deepfm_dir, tmp_path / "an export from before the vocabulary")
    assert isinstance(before, DeepFMRanker)
    assert _rows(before, features, candidates)["cand_category"].tolist() == [0, 0, 0, index]


def test_a_run_without_the_export_has_no_ranker(tmp_path: Path) -> None:
    (tmp_path / "deepfm" / "checkpoint").mkdir(parents=True)
    (tmp_path / "deepfm" / "deepfm_config.json").write_text("{}")
    assert DeepFMRanker.from_model_dir(tmp_path / "deepfm") is None


# -- serving --------------------------------------------------------------------------------


def _recommender(t: Trained, ranker: DeepFMRanker | None) -> Recommender:
    ids = [str(i) for i in t.data.catalog.item_ids[:50]]
    categories = {i: f"c{t.data.catalog.category[n]}" for n, i in enumerate(ids)}
    popular = [(i, 1.0 / (n + 1)) for n, i in enumerate(ids)]
    # category_cap=1: no diversity reordering, so the response order is the ranker's order
    return Recommender(Snapshot.from_items(categories, popular), ranker=ranker, category_cap=1.0)


def test_recommend_is_ranked_by_the_deepfm(trained: Trained, tmp_path: Path) -> None:
    from serving import create_app

    rec = _recommender(trained, trained.ranker)
    app = create_app(private_settings(tmp_path), rec, load_model=False)
    body = app.test_client().get("/recommend?user_id=u1&k=10").get_json()
    assert "ranker" not in body["degraded_parts"]
    assert set(body["degraded_parts"]) == {"online_store", "index", "model"}

    # The pool is the 50 popular items; the ranker's own scores of it give the expected order.
    pool = [
        Candidate(i, {"popular": s}, {"popular": n})
        for n, (i, s) in enumerate(rec.snapshot.popular)
    ]
    expected = sorted(
        zip(_scored(trained.ranker, {}, pool), pool, strict=True),
        key=lambda sc: (-sc[0][0], sc[1].item_id),
    )[:10]
    assert [i["item_id"] for i in body["items"]] == [c.item_id for _, c in expected]
    np.testing.assert_allclose(
        [i["score"] for i in body["items"]], [s for (s, _), _ in expected], atol=1e-5
    )
    names = {*trained.ranker.fields, "deep"}
    for item in body["items"]:
        assert item["reasons"] and {r["feature"] for r in item["reasons"]} <= names

    blend = create_app(private_settings(tmp_path), _recommender(trained, None), load_model=False)
    body = blend.test_client().get("/recommend?user_id=u1&k=10").get_json()
    assert "ranker" in body["degraded_parts"]  # no ranker: the blend, as before
    assert body["items"][0]["reasons"][0]["feature"] == "popular_score"


class Tower:
    def encode(self, features: dict[str, Any]) -> np.ndarray:
        return np.zeros(4, dtype=np.float32)


def test_reload_swaps_the_tower_and_the_ranker_together(trained: Trained, tmp_path: Path) -> None:
    settings = private_settings(tmp_path)
    rec = _recommender(trained, None)
    pairs = [Models(Tower(), trained.ranker), Models(Tower(), None)]

    def loader(_: object) -> Models:
        return pairs[rec.reloads]

    errors: list[BaseException] = []
    degraded: list[bool] = []
    stop = threading.Event()

    def traffic() -> None:
        while not stop.is_set():
            try:
                result = rec.recommend(Query("u1", "s1", 10))
                degraded.append("ranker" in result.degraded_parts)
            except BaseException as exc:  # noqa: BLE001 - any failure is what the test looks for
                errors.append(exc)

    worker = threading.Thread(target=traffic)
    rec.watch_reload(settings, every_s=0.02, loader=loader)
    worker.start()
    try:
        for n, want in enumerate(pairs, start=1):
            settings.reload_marker.parent.mkdir(parents=True, exist_ok=True)
            settings.reload_marker.write_text(json.dumps({"n": n}))
            os.utime(settings.reload_marker, (time.time() + n, time.time() + n))
            eventually(lambda n=n: rec.reloads >= n, 10, interval_s=0.01, message="the reload")
            assert rec.models is want  # one object: tower and ranker from the same load
            seen = len(degraded)
            eventually(lambda seen=seen: len(degraded) >= seen + 3, 10, interval_s=0.01)
            assert degraded[-1] is (want.ranker is None)
    finally:
        stop.set()
        worker.join(timeout=10)
        rec.close()
    assert not errors, errors[:3]


# -- finding the ranker beside the champion -----------------------------------------------------


def _run_folder(root: Path, trained: Trained) -> Path:
    """A run folder as retrain writes it: two_tower/ (a stand-in query tower) and deepfm/."""
    import shutil

    (root / "two_tower" / "query_tower_numpy").mkdir(parents=True)
    (root / "two_tower" / "two_tower_config.json").write_text("{}")
    shutil.copytree(trained.ranker.folder, root / "deepfm" / "serving")
    return root


def test_a_pinned_export_serves_the_ranker_of_its_run(trained: Trained, tmp_path: Path) -> None:
    run = _run_folder(tmp_path / "run", trained)
    dirs = champion_dirs(private_settings(tmp_path, serving_model_dir=str(run / "two_tower")))
    assert dirs is not None and dirs.deepfm == run / "deepfm"
    assert DeepFMRanker.from_model_dir(dirs.deepfm) is not None
    (tmp_path / "bench" / "query_tower_numpy").mkdir(parents=True)  # an export outside a run
    alone = champion_dirs(private_settings(tmp_path, serving_model_dir=str(tmp_path / "bench")))
    assert alone is not None and alone.deepfm is None


@pytest.mark.integration
def test_the_registry_champion_serves_the_deepfm_of_its_run(
    trained: Trained, tmp_path: Path
) -> None:
    """A real MLflow (SQLite): the champion two-tower's run folder names the DeepFM to serve,
    not the newest DeepFM nor the DeepFM champion of another run."""
    from lambdarec.models.retrain import registry_for
    from lambdarec.registry import DEEPFM, TWO_TOWER

    settings = private_settings(tmp_path, mlflow_tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert champion_dirs(settings) is None  # no champion yet
    runs = [_run_folder(tmp_path / name, trained) for name in ("run-a", "run-b")]
    (runs[1] / "deepfm" / "serving" / "ranker.json").unlink()  # run-b: from before the export
    for name in (TWO_TOWER, DEEPFM):
        registry = registry_for(name, settings)
        for run, ndcg in zip(runs, (0.2, 0.1) if name == TWO_TOWER else (0.1, 0.2), strict=True):
            run_id = registry.log_run(
                params={"run_dir": str(run)},
                metrics={"ndcg@10": ndcg},
                evaluation_id="e",
                model_dir=run / ("two_tower" if name == TWO_TOWER else "deepfm"),
            )
            registry.promote(registry.register(run_id), {"ndcg@10": ndcg})
    # two_tower champion: run-a; deepfm champion: run-b (newer and better, but another run)
    dirs = champion_dirs(settings)
    assert dirs is not None and dirs.deepfm is not None
    assert (dirs.two_tower / "two_tower_config.json").exists()
    ranker = DeepFMRanker.from_model_dir(dirs.deepfm)
    assert ranker is not None and ranker.fields == trained.ranker.fields
