"""The model registry against a real MLflow backend: champion / challenger / rollback.

Runs on a SQLite tracking URI (fast) and, marked slow, on a private MLflow server started by the
platform manager (the way the platform runs it: --serve-artifacts, SQLite backend).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from collections.abc import Iterator

    from lambdarec.config import Settings

pytestmark = pytest.mark.integration

EVAL = "synthetic:temporal-split-1"


@pytest.fixture(
    params=["sqlite", pytest.param("server", marks=pytest.mark.slow)],
)
def registry_uri(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[str, str | None]]:
    """(tracking URI, artifact location for new experiments)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'mlflow.db'}", (tmp_path / "artifacts").as_uri()
        return
    from lambdarec.harness.platform import private_platform

    with private_platform(["mlflow"]) as settings:
        yield settings.mlflow_uri, None


def _model_dir(tmp_path: Path, name: str) -> Path:
    folder = tmp_path / name
    folder.mkdir()
    (folder / "weights.bin").write_bytes(name.encode() * 10)
    (folder / "MLmodel.json").write_text(json.dumps({"name": name}))
    return folder


def test_champion_challenger_rollback(registry_uri: tuple[str, str | None], tmp_path: Path) -> None:
    from mlflow import MlflowClient

    from lambdarec.registry import CHALLENGER, CHAMPION, ModelRegistry, metric_key

    uri, artifacts = registry_uri
    registry = ModelRegistry(uri, "two_tower_test", artifact_location=artifacts)
    plot = tmp_path / "recall_at_k.png"
    plot.write_bytes(b"\x89PNG fake plot bytes")

    def train(name: str, ndcg: float, evaluation: str = EVAL) -> str:
        run_id = registry.log_run(
            params={"epochs": 3, "dim": 32},
            metrics={"ndcg@10": ndcg, "recall@20": ndcg * 2},
            evaluation_id=evaluation,
            feature_services={"retrieval_v1": "2"},
            data_range=("2017-11-25", "2017-12-01"),
            plots=[plot],
            model_dir=_model_dir(tmp_path, name),
            run_name=name,
        )
        return registry.register(run_id)

    assert registry.get_champion() is None

    v1 = train("first", 0.20)
    first = registry.promote(v1, {"ndcg@10": 0.20})
    assert first.promoted and first.alias == CHAMPION and "no champion" in first.reason
    champion = registry.get_champion()
    assert champion is not None and champion.version == v1

    # What the run recorded: params, metrics (MLflow-safe names), tags, plots and the model folder.
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    run = client.get_run(champion.run_id)
    assert run.data.params["feature_service.retrieval_v1"] == "2"
    assert run.data.params["data_start"] == "2017-11-25"
    assert run.data.metrics[metric_key("ndcg@10")] == pytest.approx(0.20)
    assert run.data.tags["lambdarec.evaluation_id"] == EVAL
    assert run.data.tags["lambdarec.promotion"] == "promoted"
    listed = {f.path for f in client.list_artifacts(champion.run_id)}
    assert {"plots", "model"} <= listed
    model_files = {f.path for f in client.list_artifacts(champion.run_id, "model")}
    assert model_files == {"model/weights.bin", "model/MLmodel.json"}
    assert champion.artifact_uri.endswith("/model")

    # A worse model stays challenger, and says why on its run.
    v2 = train("worse", 0.15)
    worse = registry.promote(v2, {"ndcg@10": 0.15})
    assert not worse.promoted and worse.alias == CHALLENGER
    assert "does not beat" in worse.reason and worse.champion_value == pytest.approx(0.20)
    assert registry.get_champion().version == v1  # type: ignore[union-attr]
    assert registry.get_challenger().version == v2  # type: ignore[union-attr]
    worse_run = client.get_run(client.get_model_version("two_tower_test", v2).run_id)
    assert worse_run.data.tags["lambdarec.promotion"] == "not promoted"
    assert worse_run.data.tags["lambdarec.promotion_reason"] == worse.reason
    assert worse.reason in worse_run.data.tags["mlflow.note.content"]

    # A better score on a different evaluation is not comparable: not promoted.
    v3 = train("other-split", 0.90, evaluation="other:split")
    other = registry.promote(v3, {"ndcg@10": 0.90})
    assert not other.promoted and "not comparable" in other.reason

    # A better model on the same evaluation is promoted.
    v4 = train("better", 0.25)
    better = registry.promote(v4, {"ndcg@10": 0.25})
    assert better.promoted and better.champion_version == v1
    assert registry.get_champion().version == v4  # type: ignore[union-attr]

    # Rollback gives the champion back to the one it replaced.
    restored = registry.rollback("bad online CTR")
    assert restored.version == v1
    assert registry.get_champion() == restored
    assert "rolled_back_from" in str(client.get_model_version("two_tower_test", v4).tags)

    # Lower-is-better metrics compare the other way.
    v5 = train("lower-loss", 0.10)
    loss = registry.promote(v5, {"ndcg@10": 0.10}, higher_is_better=False)
    assert loss.promoted


def test_a_candidate_must_also_beat_the_floor(tmp_path: Path) -> None:
    """The gate's floor (the best pipeline without the candidate's models): with no champion, a
    candidate under it stays challenger and the reason names both numbers; above it, champion."""
    from lambdarec.registry import CHALLENGER, CHAMPION, ModelRegistry

    registry = ModelRegistry(
        f"sqlite:///{tmp_path / 'mlflow.db'}",
        "floor_test",
        artifact_location=(tmp_path / "a").as_uri(),
    )

    def candidate(name: str, ndcg: float) -> str:
        run_id = registry.log_run(
            params={},
            metrics={"ndcg@10": ndcg},
            evaluation_id=EVAL,
            model_dir=_model_dir(tmp_path, name),
        )
        return registry.register(run_id)

    floor = ("the best pipeline without neural models (source:session_knn)", 0.30)
    low = registry.promote(candidate("low", 0.25), {"ndcg@10": 0.25}, floor=floor)
    assert not low.promoted and low.alias == CHALLENGER
    assert "does not beat the best pipeline without neural models" in low.reason
    assert "0.3" in low.reason and "no champion yet" in low.reason
    assert registry.get_champion() is None
    high = registry.promote(candidate("high", 0.35), {"ndcg@10": 0.35}, floor=floor)
    assert high.promoted and high.alias == CHAMPION


def _registered_pair(tmp_path: Path) -> tuple[Settings, Path, Path]:
    """A champion two-tower and the DeepFM of its run, registered as the retraining does, on a
    SQLite registry; returns (settings, the two-tower's stored model/ folder, the DeepFM's)."""
    from lambdarec.harness.platform import private_settings
    from lambdarec.models.retrain import registry_for
    from lambdarec.registry import DEEPFM, TWO_TOWER

    settings = private_settings(
        tmp_path / "state", mlflow_tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}"
    )
    run = tmp_path / "run"
    (run / "two_tower" / "query_tower_numpy").mkdir(parents=True)
    (run / "two_tower" / "query_tower_numpy" / "weights.npz").write_bytes(b"tower" * 50)
    (run / "two_tower" / "item_index.npy").write_bytes(b"index")
    (run / "deepfm" / "serving").mkdir(parents=True)
    (run / "deepfm" / "serving" / "ranker.npz").write_bytes(b"ranker" * 50)
    stored = []
    for name in (TWO_TOWER, DEEPFM):
        registry = registry_for(name, settings)
        run_id = registry.log_run(
            params={"run_dir": str(run)},
            metrics={"ndcg@10": 0.2},
            evaluation_id=EVAL,
            model_dir=run / name,
        )
        version = registry.register(run_id)
        registry.promote(version, {"ndcg@10": 0.2})
        stored.append(Path(registry.get_version(version).artifact_uri.removeprefix("file://")))
    return settings, stored[0], stored[1]


def test_registration_records_a_manifest_and_its_sha256(tmp_path: Path) -> None:
    import hashlib

    from lambdarec.registry import TAG_MANIFEST, TWO_TOWER, ModelRegistry

    settings, tower, _ = _registered_pair(tmp_path)
    registry = ModelRegistry.from_settings(settings, TWO_TOWER)
    champion = registry.get_champion()
    assert champion is not None
    raw = (tower.parent / "manifest.json").read_bytes()
    manifest = json.loads(raw)
    weights = manifest["query_tower_numpy/weights.npz"]
    assert weights == {"sha256": hashlib.sha256(b"tower" * 50).hexdigest(), "size": 250}
    assert sorted(manifest) == ["item_index.npy", "query_tower_numpy/weights.npz"]
    tags = registry.client.get_model_version(TWO_TOWER, champion.version).tags
    assert tags[TAG_MANIFEST] == hashlib.sha256(raw).hexdigest()
    assert registry.client.get_run(champion.run_id).data.tags[TAG_MANIFEST] == tags[TAG_MANIFEST]


def test_a_model_that_differs_from_its_manifest_is_refused(tmp_path: Path) -> None:
    """Every way the stored files can differ refuses the champion's load (one line, naming the
    file and the fix); the intact folder loads, with the ranker of its run."""
    from lambdarec.champion import champion_dirs
    from lambdarec.integrity import IntegrityError, build_manifest, manifest_bytes

    settings, tower, _ = _registered_pair(tmp_path)
    dirs = champion_dirs(settings)
    assert dirs is not None and dirs.deepfm is not None and dirs.version == "1"

    weights = tower / "query_tower_numpy" / "weights.npz"
    original = weights.read_bytes()
    manifest_file = tower.parent / "manifest.json"
    registered_manifest = manifest_file.read_bytes()

    def refused(match: str) -> None:
        with pytest.raises(IntegrityError, match=match) as error:
            champion_dirs(settings)
        assert "\n" not in str(error.value) and "re-export" in str(error.value)

    weights.write_bytes(original[:7] + b"X" + original[8:])  # one byte changed
    refused(r"two_tower v1: query_tower_numpy/weights\.npz changed")
    # The manifest rewritten to match the changed file: its sha256 is no longer the tag's.
    manifest_file.write_bytes(manifest_bytes(build_manifest(tower)))
    refused(r"manifest\.json does not match")
    manifest_file.write_bytes(registered_manifest)
    weights.write_bytes(original)

    weights.unlink()
    refused(r"query_tower_numpy/weights\.npz is missing")
    weights.write_bytes(original)

    (tower / "planted.npy").write_bytes(b"extra")
    refused(r"planted\.npy is not in manifest\.json")
    (tower / "planted.npy").unlink()

    manifest_file.unlink()
    refused(r"no manifest\.json")
    manifest_file.write_bytes(registered_manifest)
    assert champion_dirs(settings) is not None  # intact again


def test_a_tampered_ranker_leaves_the_tower_without_it(tmp_path: Path) -> None:
    """A refused DeepFM degrades the ranking (as a missing one does); the tower still loads."""
    from lambdarec.champion import champion_dirs

    settings, _, ranker = _registered_pair(tmp_path)
    (ranker / "serving" / "ranker.npz").write_bytes(b"ranker" * 49 + b"rankex")
    dirs = champion_dirs(settings)
    assert dirs is not None and dirs.deepfm is None


def test_serving_keeps_its_model_when_the_new_one_is_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from lambdarec.recommend.snapshot import Snapshot
    from lambdarec.recommend.types import Models
    from serving.champion import load_champion
    from serving.recommender import Recommender

    settings, tower, _ = _registered_pair(tmp_path)
    (tower / "item_index.npy").write_bytes(b"indeX")
    rec = Recommender(Snapshot.from_items({}, []))
    serving = Models(object(), None, "0")  # type: ignore[arg-type]
    rec._swap_in(serving)
    with caplog.at_level(logging.ERROR, logger="serving.recommender"):
        assert rec._load(settings, load_champion, None) is False
    assert rec.models is serving
    refusal = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(refusal) == 1 and "two_tower v1: item_index.npy changed" in refusal[0]
