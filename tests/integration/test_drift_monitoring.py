"""Drift monitoring on real engines: a generated stream whose price and category mix shift halfway.

The world, built once per stream (shifted and unshifted, same generator seed):

* 12 days of seeded synthetic events in the lake; in the shifted stream, from day 7 on every
  price is 1.8 times higher and 95% of the sessions in the five busiest categories are replaced by
  sessions of other categories (same users, same start times: the volume stays, the mix moves);
* the batch user features (DuckDB reference of the Spark job) for days 10 and 11, in Feast's
  offline store, materialised into its online store day by day;
* a champion ``two_tower`` model version in MLflow (SQLite backend) whose run carries the
  reference profile, built from the six days before the shift, logged through
  ``ModelRegistry.log_run(reference_profile=...)``;
* impressions for days 11 and 12 produced to Kafka through serving's ``ImpressionSink``, with the
  feature vector read from the online store by serving's ``FeastFeatures`` (what /recommend does);
  the recommended items are a stand-in for the model: the ten most popular reference items of the
  viewed item's category.

The reference profiles the event features (price, category, event type, hour) and the model
outputs (score, popularity). The served 30-day user features are not profiled here: in a lake that
starts with the stream they are still filling their 30-day window (counts grow, fewer users lack
history), which is warm-up drift, not the shift under test; they are what the skew check compares.

The shifted stream runs the real ``drift_monitoring`` DAG (``dag.test()``) for day 11 (alarm,
retraining triggered) and day 12 (alarm, guard: no second trigger). The weekly_model_retraining
DAG is issue #5's; a stand-in with that id sits beside drift_monitoring in a private dags folder,
because a triggered run only needs the target to exist (nothing runs it: no scheduler).
"""

from __future__ import annotations

import shutil
import sqlite3
import tempfile
import uuid
import zlib
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pytest

from lambdarec.config import REPO_ROOT
from lambdarec.events import format_ts

if TYPE_CHECKING:
    from collections.abc import Iterator

    from lambdarec.config import Settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]

START = date(2024, 1, 1)
DAYS = 12
SHIFT = date(2024, 1, 7)  # halfway
REFERENCE = (date(2024, 1, 1), date(2024, 1, 6))  # the champion's training period
DAY1, DAY2 = date(2024, 1, 11), date(2024, 1, 12)
IMPRESSIONS_PER_DAY = 400
EVENT_FEATURES = {"price", "category", "event_type", "hour"}
STAND_IN_RETRAINING = '''"""Stand-in for issue #5's weekly_model_retraining in the drift test's private dags folder."""
import pendulum
from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.sdk import dag


@dag(dag_id="weekly_model_retraining", schedule=None, catchup=False, tags=["test"],
     start_date=pendulum.datetime(2000, 1, 1, tz="UTC"), default_args={"retries": 1})
def weekly_model_retraining():
    EmptyOperator(task_id="retrain")


weekly_model_retraining()
'''


# -- the stream ------------------------------------------------------------------------------------


def generate_stream(shifted: bool) -> pd.DataFrame:
    from lambdarec.data.generator import GeneratorConfig, generate_events

    events = generate_events(
        GeneratorConfig(
            n_users=800, n_items=2000, n_categories=30, days=DAYS, n_events=3300 * DAYS, seed=7
        )
    )
    if not shifted:
        return events
    t_shift = pd.Timestamp(SHIFT, tz="UTC")
    busiest = events.loc[events["ts"] < t_shift, "category"].value_counts().index[:5]
    sessions = events.groupby("session_id").agg(
        category=("category", "first"), start=("ts", "min"), user=("user_id", "first")
    )
    late = sessions[sessions["start"] >= t_shift]
    rng = np.random.default_rng(7)
    replaced = late[late["category"].isin(busiest) & (rng.random(len(late)) < 0.95)]
    donors = late[~late["category"].isin(busiest)].index.to_numpy()
    by_session = dict(tuple(events[events["session_id"].isin(donors)].groupby("session_id")))
    pieces = [events[~events["session_id"].isin(replaced.index)]]
    for sid, row in replaced.iterrows():
        copy = by_session[donors[rng.integers(len(donors))]].copy()
        copy["ts"] = row["start"] + (copy["ts"] - copy["ts"].min())
        copy["user_id"], copy["session_id"] = row["user"], f"{sid}r"
        copy["event_id"] = copy["event_id"] + f"-{sid}"
        pieces.append(copy)
    out = pd.concat(pieces).sort_values("ts", kind="stable").reset_index(drop=True)
    late_rows = out["ts"] >= t_shift
    out.loc[late_rows, "price"] = (out.loc[late_rows, "price"] * 1.8).round(2)
    return out


def _day_rows(events: pd.DataFrame, day: date) -> pd.DataFrame:
    start = pd.Timestamp(day, tz="UTC")
    return events[(events["ts"] >= start) & (events["ts"] < start + pd.Timedelta(days=1))]


def stand_in_impressions(
    events: pd.DataFrame, day: date, popular: dict[str, list[str]], n: int = IMPRESSIONS_PER_DAY
) -> list[dict[str, Any]]:
    """Impressions without features: the ten most popular reference items of the viewed item's
    category, scored by rank with a little deterministic jitter."""
    views = _day_rows(events, day)
    views = views[views["event_type"] == "view"].sample(n, random_state=day.toordinal())
    out = []
    for row in views.itertuples():
        rng = np.random.default_rng(zlib.crc32(str(row.event_id).encode()))
        items = popular.get(row.category, [])[:10]
        out.append(
            {
                "request_id": uuid.uuid4().hex,
                "ts": format_ts(row.ts.to_pydatetime()),
                "user_id": row.user_id,
                "session_id": row.session_id,
                "variant": "control",
                "degraded_parts": [],
                "items": [
                    {
                        "item_id": item,
                        "position": k,
                        "source": "retrieval",
                        "score": round(1.0 - k / 20 + 0.05 * rng.random(), 6),
                    }
                    for k, item in enumerate(items)
                ],
                "features": {},
            }
        )
    return out


# -- the world -------------------------------------------------------------------------------------


@dataclass
class World:
    settings: Settings
    events: pd.DataFrame
    impressions: dict[date, list[dict[str, Any]]]


def _dags_home(root: Path) -> Path:
    """A home whose dags folder holds drift_monitoring and the retraining stand-in."""
    home = root / "home"
    (home / "dags").mkdir(parents=True)
    (home / "dags" / "drift_monitoring.py").symlink_to(REPO_ROOT / "dags" / "drift_monitoring.py")
    (home / "dags" / "weekly_model_retraining.py").write_text(STAND_IN_RETRAINING)
    (home / "plugins").symlink_to(REPO_ROOT / "plugins", target_is_directory=True)
    return home


def build_world(shifted: bool, broker: Settings) -> World:
    from lambdarec.batch import duckdb_reference
    from lambdarec.data import lake
    from lambdarec.features.store import apply, materialize
    from lambdarec.harness.platform import private_settings
    from lambdarec.monitoring.profile import build_profile
    from lambdarec.monitoring.sources import current_frames
    from lambdarec.registry import ModelRegistry
    from lambdarec.streaming.kafka import ensure_topics
    from serving.sinks import ImpressionSink
    from serving.stores import FeastFeatures

    state = Path(tempfile.mkdtemp(prefix="lambdarec-drift-"))
    settings = private_settings(
        state,
        home=_dags_home(state),
        kafka_bootstrap=broker.bootstrap_servers,
        topic_impressions=f"lambdarec.impressions.test-{uuid.uuid4().hex[:8]}",
        mlflow_tracking_uri=f"sqlite:///{state / 'mlflow.db'}",
        drift_skew_sample=200,
    )
    events = generate_stream(shifted)
    lake.write_events(events, settings.lake_dir)

    # The champion: trained on the reference period, profiled on it.
    ref_start, ref_end = (pd.Timestamp(d, tz="UTC") for d in REFERENCE)
    reference = events[
        (events["ts"] >= ref_start) & (events["ts"] < ref_end + pd.Timedelta(days=1))
    ]
    popular = {
        c: g["item_id"].value_counts().index.tolist() for c, g in reference.groupby("category")
    }
    ref_impressions = [
        imp
        for d in pd.date_range(*REFERENCE).date
        for imp in stand_in_impressions(events, d, popular)
    ]
    frames = current_frames(reference, ref_impressions)
    profile = build_profile(
        {"events": frames["events"]},
        scores=frames["model"]["score"],
        popularity=frames["model"]["popularity"],
        meta={"data_range": [str(d) for d in REFERENCE]},
    )
    model_dir = state / "model"
    model_dir.mkdir()
    (model_dir / "weights.bin").write_bytes(b"stand-in weights")
    registry = ModelRegistry(
        settings.mlflow_uri,
        settings.drift_model_name,
        artifact_location=(state / "mlartifacts").as_uri(),
    )
    run_id = registry.log_run(
        params={"stand_in": True},
        metrics={"ndcg@10": 0.1},
        evaluation_id="drift-test",
        data_range=(str(REFERENCE[0]), str(REFERENCE[1])),
        model_dir=model_dir,
        reference_profile=profile,
    )
    registry.promote(registry.register(run_id), {"ndcg@10": 0.1})

    # Batch features and the online store, day by day; impressions served from it.
    con = duckdb_reference.connect()
    apply(settings)
    ensure_topics(settings)
    sink = ImpressionSink(settings)
    features = FeastFeatures(settings)
    served: dict[date, list[dict[str, Any]]] = {}
    for day in (DAY1, DAY2):
        before = day - timedelta(days=1)
        duckdb_reference.write(
            settings.lake_dir,
            before,
            settings.lake_dir / "features",
            tables=["user_history_30d"],
            con=con,
        )
        stamp = datetime.combine(day, datetime.min.time(), tzinfo=UTC)
        materialize(stamp - timedelta(hours=1), stamp, settings, views=["user_history_30d"])
        served[day] = stand_in_impressions(events, day, popular)
        for imp in served[day]:
            imp["features"] = features.context(imp["user_id"], imp["session_id"])
            sink.emit(imp)
    sink.close(timeout_s=30)
    return World(settings, events, served)


@pytest.fixture(scope="module")
def broker() -> Iterator[Settings]:
    from lambdarec.harness.platform import kafka_broker

    with kafka_broker() as settings:
        yield settings


@pytest.fixture(scope="module")
def shifted(broker: Settings) -> Iterator[World]:
    world = build_world(True, broker)
    yield world
    _cleanup(world)


@pytest.fixture(scope="module")
def unshifted(broker: Settings) -> Iterator[World]:
    world = build_world(False, broker)
    yield world
    _cleanup(world)


def _cleanup(world: World) -> None:
    from lambdarec.streaming.kafka import delete_topics

    try:
        delete_topics([world.settings.topic_impressions], world.settings)
    finally:
        shutil.rmtree(world.settings.state_dir, ignore_errors=True)


def _retraining_runs(settings: Settings) -> list[tuple[str, str]]:
    with sqlite3.connect(settings.airflow_home / "airflow.db") as db:
        return db.execute(
            "SELECT run_id, state FROM dag_run WHERE dag_id = ? ORDER BY id",
            (settings.drift_retrain_dag_id,),
        ).fetchall()


# -- the tests -------------------------------------------------------------------------------------


def test_shifted_stream_alarms_on_exactly_the_shifted_features_and_retrains_once(
    shifted: World,
) -> None:
    import json

    from lambdarec.platform.dag_run import run_dag_test

    s = shifted.settings
    first = run_dag_test("drift_monitoring", DAY1, s, timeout_s=600)
    assert first.success, first.log[-4000:]
    assert first.tasks == {
        "measure_drift": "success",
        "retraining_needed": "success",
        "trigger_retraining": "success",
        "record_trigger": "success",
    }
    result = json.loads((s.drift_reports_dir / DAY1.isoformat() / "result.json").read_text())
    psi = {f["feature"]: round(f["psi"], 3) for f in result["features"]}
    alarmed_features = {
        f["feature"] for f in result["features"] if f["status"] == "act" and f["group"] != "model"
    }
    assert alarmed_features == {"price", "category"}, psi
    # the unshifted features stay below watch; the model's score distribution did not move
    for name in (*(EVENT_FEATURES - {"price", "category"}), "score"):
        assert psi[name] < s.drift_psi_watch, psi
    assert result["n_impressions"] == IMPRESSIONS_PER_DAY and result["n_events"] > 2000
    assert result["retraining"]["decision"] == "trigger"
    assert result["retraining"]["triggered_run_id"] == f"drift__{DAY1}"
    # skew: the served vectors are what the offline store rebuilds point in time
    assert result["skew"]["n_sampled"] == 200
    assert result["skew"]["mismatched_features"] == [], result["skew"]
    assert "user_history_30d__n_events_30d" in result["skew"]["features"]
    assert _retraining_runs(s) == [(f"drift__{DAY1}", "queued")]

    # The report: table sorted by severity, a histogram per feature, linked from the index.
    page = (s.drift_reports_dir / DAY1.isoformat() / "report.html").read_text()
    rows = [page.index(f"<td>{f}</td>") for f in ("price", "category", "hour", "event_type")]
    assert max(rows[:2]) < min(rows[2:])
    assert page.count("data:image/png;base64") >= len(result["features"])
    index = (s.site_dir / "index.html").read_text()
    assert f"reports/drift/{DAY1}/report.html" in index and "Data Docs" in index

    # MLflow has the day's metrics.
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=s.mlflow_uri)
    run = client.get_run(_mlflow_run(client, DAY1))
    assert run.data.metrics["psi.price"] == pytest.approx(psi["price"], abs=1e-3)
    assert run.data.metrics["n_alarms"] == len(result["alarms"])

    # The next day still drifts, but the guard holds: no second retraining.
    second = run_dag_test("drift_monitoring", DAY2, s, timeout_s=600)
    assert second.success, second.log[-4000:]
    assert second.tasks["retraining_needed"] == "success"
    assert second.tasks["trigger_retraining"] == "skipped"
    assert second.tasks["record_trigger"] == "skipped"
    again = json.loads((s.drift_reports_dir / DAY2.isoformat() / "result.json").read_text())
    assert {"price", "category"} <= set(again["alarms"])
    assert again["retraining"]["decision"] == "skip" and "cooldown" in again["retraining"]["reason"]
    assert _retraining_runs(s) == [(f"drift__{DAY1}", "queued")]
    # the trend over previous runs is drawn from day 1's result
    assert (
        "No earlier runs yet"
        not in (s.drift_reports_dir / DAY2.isoformat() / "report.html").read_text()
    )


def _mlflow_run(client: Any, day: date) -> str:
    from lambdarec.monitoring.run import EXPERIMENT, TAG_DAY

    exp = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.`{TAG_DAY}` = '{day}'")
    assert len(runs) == 1
    return str(runs[0].info.run_id)


def test_unshifted_stream_raises_no_alarm(unshifted: World) -> None:
    from lambdarec.monitoring.run import run_drift

    s = unshifted.settings
    summary = run_drift(DAY1, s)
    assert summary["alarms"] == [] and summary["watch"] == [], summary
    assert summary["retraining"]["decision"] == "none"
    assert summary["skew_mismatched"] == []


def test_skew_check_finds_a_feature_served_from_the_wrong_window(shifted: World) -> None:
    """Serving bug: n_events_30d read from the window that ended a day earlier."""
    from lambdarec.batch import duckdb_reference
    from lambdarec.monitoring.skew import check_skew

    s = shifted.settings
    good = shifted.impressions[DAY1]
    clean = check_skew(good, s, sample=len(good))
    assert clean["n_sampled"] == len(good) and clean["mismatched_features"] == []
    assert all(v["mismatches"] == 0 for v in clean["features"].values())

    stale = duckdb_reference.compute(
        s.lake_dir, DAY1 - timedelta(days=2), tables=["user_history_30d"]
    )["user_history_30d"]
    stale_counts = dict(zip(stale["user_id"], stale["n_events_30d"], strict=True))
    buggy = []
    for imp in good:
        feats = dict(imp["features"])
        feats["user_history_30d__n_events_30d"] = stale_counts.get(imp["user_id"])
        buggy.append({**imp, "features": feats})
    found = check_skew(buggy, s, sample=len(buggy))
    assert found["mismatched_features"] == ["user_history_30d__n_events_30d"], found
    rate = found["features"]["user_history_30d__n_events_30d"]["rate"]
    assert rate > 0.5, rate  # most shoppers of the day had events the day before too
    example = found["features"]["user_history_30d__n_events_30d"]["examples"][0]
    assert example["served"] != example["rebuilt"]


def test_a_champion_without_a_profile_gets_one_rebuilt_from_its_training_range(
    tmp_path: Path,
) -> None:
    from lambdarec.data import lake
    from lambdarec.harness.platform import private_settings
    from lambdarec.monitoring.profile import PROFILE_ARTIFACT, load_champion_profile
    from lambdarec.registry import ModelRegistry

    s = private_settings(tmp_path, mlflow_tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    lake.write_events(generate_stream(False), s.lake_dir)
    registry = ModelRegistry(
        s.mlflow_uri, s.drift_model_name, artifact_location=(tmp_path / "artifacts").as_uri()
    )
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "weights.bin").write_bytes(b"w")
    run_id = registry.log_run(
        params={},
        metrics={"ndcg@10": 0.1},
        evaluation_id="e",
        data_range=("2024-01-01", "2024-01-06"),
        model_dir=model_dir,
    )
    registry.promote(registry.register(run_id), {"ndcg@10": 0.1})
    assert PROFILE_ARTIFACT not in {
        a.path for a in registry.client.list_artifacts(run_id, "monitoring")
    }

    profile, champion = load_champion_profile(s)
    assert champion.run_id == run_id
    assert set(profile.features) == EVENT_FEATURES
    assert profile.meta["source"].startswith("rebuilt from the lake")
    assert profile.meta["data_range"] == ["2024-01-01", "2024-01-06"]
    assert sum(profile.features["price"].counts) > 15_000  # six days of ~3,300 events


def test_before_any_champion_the_drift_run_is_skipped_with_the_reason(tmp_path: Path) -> None:
    """A new deployment (or one whose retrainings all served the baselines) has no model to
    measure drift against: the scheduled run is skipped, saying why, instead of failing."""
    from lambdarec.data import lake
    from lambdarec.harness.platform import private_settings
    from lambdarec.monitoring.profile import NoChampionError, load_champion_profile
    from lambdarec.platform.dag_run import run_dag_test

    s = private_settings(tmp_path, mlflow_tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    lake.write_events(generate_stream(False), s.lake_dir)
    with pytest.raises(NoChampionError, match="has no champion"):
        load_champion_profile(s)
    run = run_dag_test("drift_monitoring", DAY1, s, timeout_s=600)
    assert run.success, (run.tasks, run.log[-3000:])
    assert run.tasks["measure_drift"] == "skipped", run.tasks
    assert "has no champion" in run.log
