"""The model lifecycle end to end on real data (a Taobao slice), through the real engines:

events -> lake -> daily batch features (the DuckDB reference of the Spark job) -> Feast (apply,
point-in-time ``get_historical_features`` for the training rows) -> two-tower + DeepFM trained by
the retraining steps -> MLflow (SQLite): register, promote, keep a challenger, roll back ->
Milvus Lite: a new versioned collection behind the serving alias, rolled back too -> the
exported embeddings give the same top-10 in Milvus as numpy brute force. Then the
weekly_model_retraining DAG itself (``dag.test()``) on the same lake, which skips a run with no
new event; the demo's test runs it forced (tests/e2e/test_demo.py).

About 1 minute for the lifecycle and 20 s for the DAG on a quiet 2-core machine.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import json  # noqa: E402
from typing import TYPE_CHECKING  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from lambdarec.registry import DEEPFM, TWO_TOWER  # noqa: E402

if TYPE_CHECKING:
    from pathlib import Path

    import pandas as pd

    from lambdarec.config import Settings
    from lambdarec.models.data import Dataset

pytestmark = [pytest.mark.integration, pytest.mark.slow]

N_USERS = 300
#: Test queries of each evaluation (of ~4,300): the registry's and the index's steps are what
#: this test checks, and the served pipeline's evaluation was three quarters of its time.
TEST_MAX = 1000


@pytest.fixture(scope="module")
def events() -> pd.DataFrame:
    from lambdarec.data.loaders import load_taobao

    try:
        ev = load_taobao(official_window=True)
    except FileNotFoundError:
        pytest.skip("the shared Taobao file is not on this machine")
    users = ev["user_id"].drop_duplicates().iloc[:N_USERS]
    return ev[ev["user_id"].isin(users)].reset_index(drop=True)


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory, events: pd.DataFrame) -> Settings:
    """A private state dir with the events in its lake, a day of batch features per day, and the
    Feast repo applied."""
    from lambdarec.batch import duckdb_reference
    from lambdarec.config import Settings
    from lambdarec.data.lake import write_events
    from lambdarec.features import store as fstore

    root = tmp_path_factory.mktemp("lifecycle")
    s = Settings(
        state_dir=root / "state",
        online_store="sqlite",
        mlflow_tracking_uri=f"sqlite:///{root / 'mlflow.db'}",
        milvus_uri=str(root / "milvus" / "items.db"),
        # FLAT: the exact index, so Milvus must return numpy's top-10 exactly. (With HNSW on
        # Milvus Lite the top-10 differed on this slice: items unseen in training share one
        # vector per category and price bucket, and such duplicates hurt HNSW's recall.)
        milvus_index_type="FLAT",
    )
    days = write_events(events, s.lake_dir)
    con = duckdb_reference.connect(threads=2)
    for day in days:
        duckdb_reference.write(s.lake_dir, day, s.lake_dir / "features", con=con)
    fstore.apply(s)
    return s


def _check_point_in_time(settings: Settings, data: Dataset) -> None:
    """Feast's values equal an as-of join of the batch table written by the daily job."""
    import pandas as pd

    from lambdarec.tables import USER_HISTORY

    table = pd.read_parquet(
        USER_HISTORY.path(settings.lake_dir), columns=["user_id", "event_timestamp", "n_events_30d"]
    )
    table["event_timestamp"] = pd.to_datetime(table["event_timestamp"], utc=True).astype(
        "datetime64[ns, UTC]"
    )
    ex = data.train.sample(2000, seed=1)
    ex = ex.subset(np.flatnonzero(ex.user > 0))
    rows = pd.DataFrame(
        {
            "user_id": data.user_ids[ex.user - 1].astype(str),
            "event_timestamp": pd.to_datetime(ex.ts, unit="ms", utc=True).astype(
                "datetime64[ns, UTC]"
            ),
            "feast": ex.user_events - ex.session_len,  # the session's own events are added
            "order": np.arange(len(ex)),
        }
    ).sort_values("event_timestamp")
    joined = pd.merge_asof(
        rows,
        table.sort_values("event_timestamp"),
        on="event_timestamp",
        by="user_id",
        direction="backward",
    ).sort_values("order")
    expected = joined["n_events_30d"].fillna(0).astype(np.int64).to_numpy()
    assert (expected > 0).any()
    np.testing.assert_array_equal(joined["feast"].to_numpy(), expected)


def test_lifecycle_feast_mlflow_milvus(settings: Settings, tmp_path: Path) -> None:
    from lambdarec.models import retrain
    from lambdarec.models.deepfm import DeepFMConfig
    from lambdarec.models.two_tower import TwoTowerConfig
    from lambdarec.retrieval.index import VectorIndex, exact_search

    run = tmp_path / "run1"
    # -- build: the training rows' user feature comes from Feast, point in time
    info = retrain.build("lake", run, feast=True, settings=settings)
    assert set(info["feature_services"]) == {"retrieval_v1", "ranking_v1"}
    assert info["split"]["user_events"] == "feast user_history_30d:n_events_30d"
    data = retrain.load_built(run)
    known = data.train.user > 0
    assert known.mean() > 0.9
    # a user's first day has no earlier daily row: 0; later days see the previous days' counts;
    # the session's events so far come on top, as serving adds them
    from_feast = data.train.user_events - data.train.session_len
    assert 0.3 < (from_feast[known] > 0).mean() < 1.0
    # point in time: each value is the user's latest daily row stamped at or before the example
    _check_point_in_time(settings, data)

    # -- train both models through the steps the DAG launches
    tt = retrain.train_retriever(run, TwoTowerConfig(epochs=2, batch_size=256, valid_queries=500))
    assert tt["history"]
    fm = retrain.train_ranker(run, DeepFMConfig(epochs=2, max_queries=3000))
    assert fm["history"]
    assert (run / "two_tower" / "query_tower" / "saved_model.pb").exists()

    # -- evaluate + register + the gate: no champion yet; the pair must also beat the best
    #    pipeline without neural models (the floor, recorded with its sources): on this tiny lake
    #    a negative margin lets the first pair through
    first = retrain.evaluate(run, settings=settings, test_max=TEST_MAX, min_delta=-1.0)
    assert {"most_popular", "cooccurrence", "als", "two_tower", "served"} <= set(first["models"])
    assert first["floor"]["row"] in first["models"] and first["floor"]["sources"]
    assert "vector" not in first["floor"]["sources"]
    for name in (TWO_TOWER, DEEPFM):
        assert first["decisions"][name]["promoted"], first["decisions"][name]["reason"]
    assert first["serve"]["mode"] == "models"
    v1 = first["decisions"][TWO_TOWER]["version"]

    # -- export: a new collection behind the alias; Milvus top-10 == numpy brute force
    exported = retrain.export_embeddings(run, settings=settings)
    assert exported["published"] and exported["items"] == data.n_items
    model = retrain.load_retriever(run, data)
    raw_ids, matrix = model.item_embeddings()
    saved = np.load(run / "two_tower" / "item_embeddings.npz")
    np.testing.assert_allclose(saved["embeddings"], matrix, atol=1e-5)  # the checkpoint round trip
    queries = model.query_embeddings(data.test.sample(25, seed=3))
    ids = [str(i) for i in raw_ids]
    with VectorIndex.from_settings(settings) as index:
        assert index.serving_version() == exported["version"]
        got = index.search(queries, k=10)
        want = exact_search(matrix, ids, queries, 10)
        for g, w in zip(got, want, strict=True):
            assert [i for i, _ in g] == [i for i, _ in w] or np.allclose(
                [s for _, s in g], [s for _, s in w], atol=1e-5
            )  # equal lists, or the same scores in a different order of exact ties

    # -- a second candidate that does not beat the champion stays challenger, says why, and is
    #    not exported
    second = retrain.evaluate(
        run, settings=settings, baselines=False, test_max=TEST_MAX, min_delta=1.0
    )
    d2 = second["decisions"][TWO_TOWER]
    assert not d2["promoted"] and d2["alias"] == "challenger"
    assert "does not beat champion" in d2["reason"]
    skipped = retrain.export_embeddings(run, settings=settings)
    assert not skipped["published"] and "not promoted" in skipped["reason"]
    note = retrain.notify_serving(run, settings=settings)
    if second["serve"]["mode"] == "champion":  # v1 still beats the floor on this evaluation
        assert note["reload"] is False
    else:  # v1 does not: serving is told to run the floor's sources without models
        assert second["serve"]["mode"] == "baselines" and note["reload"]
        marker = json.loads(retrain.reload_marker(settings).read_text())
        assert marker["serve"]["sources"] == second["floor"]["sources"]

    # -- a third that does (forced with a negative margin) is promoted and exported; then both
    #    the registry and the index roll back to the first
    third = retrain.evaluate(
        run, settings=settings, baselines=False, test_max=TEST_MAX, min_delta=-1.0
    )
    d3 = third["decisions"][TWO_TOWER]
    assert d3["promoted"] and d3["champion_version"] == v1
    exported3 = retrain.export_embeddings(run, settings=settings)
    assert exported3["published"] and exported3["version"] > exported["version"]
    note = retrain.notify_serving(run, settings=settings)
    marker = json.loads(retrain.reload_marker(settings).read_text())
    assert note["reload"] and marker["two_tower_version"] == d3["version"]
    # The index names the version it serves (the marker named it before the switch), and that
    # version's tower can be fetched from the registry by number, as serving does.
    assert marker["index"]["model_version"] == d3["version"]
    from lambdarec.champion import champion_dirs

    for version in (v1, d3["version"]):
        dirs = champion_dirs(settings, version=version)
        assert dirs is not None and dirs.version == version and dirs.deepfm is not None

    registry = retrain.registry_for(TWO_TOWER, settings)
    champion = registry.get_champion()
    assert champion is not None and champion.version == d3["version"]
    # The drift monitor's reference was saved with the model (events of its training range and
    # the retriever's scores), not rebuilt later.
    from lambdarec.monitoring.profile import load_profile

    profile = load_profile(champion.run_id, registry.client)
    assert {"price", "category", "score"} <= set(profile.features), sorted(profile.features)
    assert registry.rollback("lifecycle test").version == v1
    with VectorIndex.from_settings(settings) as index:
        served = index.serving_model()
        assert served is not None and served.model_version == d3["version"]
        assert index.rollback() == exported["version"]
        assert index.serving_version() == exported["version"]
        served = index.serving_model()
        assert served is not None and served.model_version == v1  # serving follows it to v1


def test_weekly_dag_skips_a_run_with_no_new_event(settings: Settings) -> None:
    """``dag.test()`` of weekly_model_retraining on the same lake and feature store: each step
    is a program launched by ModelStepOperator. The first test left champions behind, trained on
    this same lake: by default (``only_new_data``) the run is skipped from its first step,
    nothing trained. (A forced run, every step trained and the DAG's epochs reaching the models:
    the demo's retraining, tests/e2e/test_demo.py.)"""
    from lambdarec.platform.dag_run import run_dag_test

    conf = {"dataset": "lake", "feast": True, "max_train": 0, "epochs": 2, "ranker_epochs": 2}
    idle = run_dag_test("weekly_model_retraining", "2026-01-05", settings, conf=conf)
    assert idle.success, (idle.tasks, idle.log[-3000:])
    assert set(idle.tasks.values()) == {"skipped"}, idle.tasks
    assert "no event since, nothing to retrain" in idle.log
    (skipped_dir,) = (settings.state_dir / "models" / "runs").iterdir()
    assert [p.name for p in skipped_dir.iterdir()] == ["dataset.json"]
