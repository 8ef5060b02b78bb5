"""The query tower and the index agree on the model version (issue #20, "Model/index consistency"),
on Milvus Lite in a temporary folder, with the retraining's own export and notify steps.

The issue: the retraining switched the index alias before serving reloaded the query tower, and a
failed reload left the old tower querying the new embeddings indefinitely, with no version check
and no degraded flag. Checked here:

* the export step switches the alias only after the reload marker names the version it switches
  to (and not at all when the marker cannot be written); the notify step after it leaves that
  marker alone;
* a serving process whose tower is older than the index answers degraded with ``index_version``
  and without vector retrieval, then loads the matching tower and answers from it;
* a serving process watching the marker follows a retraining to the new version, and no request
  meanwhile searches one version's vectors with another version's tower.

The run folders are the files the export step reads (``decision.json``, ``dataset.npz``'s
catalog, ``two_tower/item_embeddings.npz``, registered on a SQLite MLflow): no training, so the models are matrices whose rows
say which item a tower's query vector must find.
"""

from __future__ import annotations

import json
import threading
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest

from lambdarec.harness.platform import private_settings
from lambdarec.harness.waiting import eventually
from lambdarec.models import retrain
from lambdarec.models.data import Catalog, Dataset, Examples, Interactions
from lambdarec.models.dataset_file import DATASET_FILE, write_dataset
from lambdarec.recommend.snapshot import Snapshot
from lambdarec.recommend.types import Models, Query
from lambdarec.registry import DEEPFM, TWO_TOWER
from lambdarec.retrieval.index import VectorIndex
from serving.recommender import INDEX_VERSION, Recommender

if TYPE_CHECKING:
    from pathlib import Path

    from lambdarec.config import Settings
    from lambdarec.recommend.types import Recommendation

pytestmark = pytest.mark.integration

N_ITEMS, DIM = 60, 16
IDS = [f"i{n}" for n in range(N_ITEMS)]


def _vectors(model_version: str) -> np.ndarray:
    """The item vectors of a model version: each version places the items differently."""
    rng = np.random.default_rng(int(model_version))
    matrix = rng.standard_normal((N_ITEMS, DIM)).astype(np.float32)
    return matrix / np.linalg.norm(matrix, axis=1, keepdims=True)


class Tower:
    """The query tower of a model version: its query vector is that version's vector of ``i0``,
    so it finds ``i0`` first in its own version's collection and not in another's."""

    def __init__(self, model_version: str) -> None:
        self.model_version = model_version
        self.vector = _vectors(model_version)[0]

    def encode(self, features: dict[str, Any]) -> np.ndarray:
        return self.vector


def _loader(fail: set[str]) -> Any:
    """Loads the models of a version (a version in ``fail`` fails once, as an unreachable
    artifact store does); the champion is version 1."""

    def load(_: object, version: str | None = None) -> Models:
        if version in fail:
            fail.discard(version)
            raise OSError("artifact store unreachable")
        return Models(Tower(version or "1"), None, version or "1")

    return load


def _catalog_only() -> Dataset:
    """A dataset with the catalog the export step reads and no examples."""
    none = np.zeros(0, dtype=np.int64)
    examples = Examples(
        none,
        np.zeros((0, 1), dtype=np.int64),
        none,
        none,
        none,
        none,
        none,
        np.zeros(0, dtype=np.float32),
    )
    events = Interactions(none, none, none, none, np.zeros(0, dtype=np.float32))
    catalog = Catalog(
        item_ids=np.array(IDS, dtype=object),
        category=np.array([f"c{n % 3}" for n in range(N_ITEMS)]),
        price_bucket=np.zeros(N_ITEMS, dtype=np.int64),
        n_categories=4,
    )
    return Dataset("index-test", catalog, examples, examples, examples, events, events, n_users=1)


def _run(root: Path, model_version: str) -> Path:
    """A run folder as the evaluate step leaves it, with this version's item vectors promoted."""
    run = root / f"run{model_version}"
    (run / "two_tower").mkdir(parents=True)
    np.savez(
        run / "two_tower" / "item_embeddings.npz",
        ids=np.array(IDS),
        embeddings=_vectors(model_version),
    )
    write_dataset(_catalog_only(), run / DATASET_FILE)
    promoted = {"promoted": True, "version": model_version, "reason": "test"}
    decision = {
        "serve": {"mode": "models", "reason": f"v{model_version} and its ranker were promoted"},
        "decisions": {TWO_TOWER: promoted, DEEPFM: promoted},
    }
    (run / "decision.json").write_text(json.dumps(decision))
    # Registered as the evaluate step does: the export publishes only registered files.
    registry = retrain.registry_for(TWO_TOWER, _settings(root))
    run_id = registry.log_run(
        params={"run_dir": str(run)}, metrics={}, evaluation_id="e", model_dir=run / "two_tower"
    )
    assert registry.register(run_id) == model_version
    return run


def _settings(tmp_path: Path) -> Settings:
    return private_settings(
        tmp_path / "state",
        milvus_index_type="FLAT",
        mlflow_tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
    )


def _served(settings: Settings) -> str | None:
    with VectorIndex.from_settings(settings) as index:
        served = index.serving_model()
    return None if served is None else served.model_version


def _vector_top(result: Recommendation) -> str | None:
    """The candidate the vector source scored highest (None: it gave none)."""
    found = [c for c in result.pool if "vector" in c.sources]
    return max(found, key=lambda c: c.sources["vector"]).item_id if found else None


def _recommender(settings: Settings, index: VectorIndex) -> Recommender:
    return Recommender(
        Snapshot.from_items(
            {i: f"c{n % 3}" for n, i in enumerate(IDS)}, [(i, 1.0) for i in reversed(IDS)]
        ),
        index=index,
        sources=("vector", "popular"),
        category_cap=1.0,
    )


def test_the_export_switches_the_alias_only_after_the_marker_names_the_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = _settings(tmp_path)
    first = retrain.export_embeddings(_run(tmp_path, "1"), settings=settings)
    assert first["switched"] and _served(settings) == "1"

    switches: list[tuple[Any, ...]] = []
    switch = VectorIndex.switch

    def spy(index: VectorIndex, version: int) -> None:
        marker = json.loads(settings.reload_marker.read_text())
        served = index.serving_model()
        assert served is not None
        switches.append((marker["index"]["model_version"], marker["index"]["version"], version))
        switches.append(("alias before the switch", served.model_version))
        switch(index, version)

    monkeypatch.setattr(VectorIndex, "switch", spy)
    run2 = _run(tmp_path, "2")
    second = retrain.export_embeddings(run2, settings=settings)
    assert switches == [
        ("2", second["version"], second["version"]),
        ("alias before the switch", "1"),
    ]
    assert second["switched"] and second["model_version"] == "2" and _served(settings) == "2"
    marker = json.loads(settings.reload_marker.read_text())
    assert marker["reload"] and marker["two_tower_version"] == "2"

    # The notify step after the export leaves the marker as it is: another write would make
    # every serving process reload once more.
    written = settings.reload_marker.stat().st_mtime_ns
    note = retrain.notify_serving(run2, settings=settings)
    assert note["index"]["model_version"] == "2"
    assert settings.reload_marker.stat().st_mtime_ns == written

    # No marker, no switch: the new version stays unswitched, the alias keeps serving v2.
    def unwritable(*_: object, **__: object) -> None:
        raise OSError("read-only file system")

    monkeypatch.setattr(retrain, "notify_serving", unwritable)
    with pytest.raises(OSError, match="read-only"):
        retrain.export_embeddings(_run(tmp_path, "3"), settings=settings)
    assert _served(settings) == "2"
    with VectorIndex.from_settings(settings) as index:
        assert index.find_model("3") is not None  # published, never switched


def test_an_old_tower_on_a_new_index_is_degraded_until_the_matching_tower_loads(
    tmp_path: Path,
) -> None:
    settings = _settings(tmp_path)
    for version in ("1", "2"):  # the index moved on to v2 ...
        retrain.export_embeddings(_run(tmp_path, version), settings=settings)
    with VectorIndex.from_settings(settings) as index:
        rec = _recommender(settings, index)
        try:
            rec.models = Models(Tower("1"), None, "1")  # ... and serving still holds v1's tower
            query = Query("u1", None, 5)
            load = _loader(fail={"2"})

            assert not rec.check_index(settings, load)  # the v2 tower fails to load
            result = rec.recommend(query)
            assert INDEX_VERSION in result.degraded_parts
            assert "vector" not in result.candidates  # the v1 tower searched nothing
            assert len(result.items) == 5  # the other sources answer

            assert rec.check_index(settings, load, force=True)  # loads v2's tower
            result = rec.recommend(query)
            assert rec.models.version == "2" and INDEX_VERSION not in result.degraded_parts
            assert result.candidates["vector"] > 0
            assert _vector_top(result) == "i0"  # the v2 tower found v2's vector of i0
        finally:
            rec.close()


def test_serving_follows_a_retraining_without_mixing_versions(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    retrain.export_embeddings(_run(tmp_path, "1"), settings=settings)
    with VectorIndex.from_settings(settings) as index:
        rec = _recommender(settings, index)
        rec.models = Models(Tower("1"), None, "1")
        assert rec.check_index(settings, _loader(fail=set()))
        mixed: list[tuple[str | None, str | None]] = []
        errors: list[BaseException] = []
        stop = threading.Event()

        def traffic() -> None:
            query = Query("u1", None, 5)
            while not stop.is_set():
                try:
                    version = rec.models.version
                    result = rec.recommend(query)
                    top = _vector_top(result)
                    # a tower searching its own version's vectors finds i0 first
                    if top not in (None, "i0") and rec.models.version == version:
                        mixed.append((version, top))
                except BaseException as exc:  # noqa: BLE001 - any failure is what it looks for
                    errors.append(exc)

        run2 = _run(tmp_path, "2")  # trained and registered before the traffic starts
        rec.watch_reload(settings, every_s=0.05, loader=_loader(fail=set()))
        worker = threading.Thread(target=traffic)
        worker.start()
        try:
            retrain.export_embeddings(run2, settings=settings)
            eventually(lambda: rec.models.version == "2", 30, interval_s=0.05, message="v2 tower")
            # The v2 tower finds its own first item: eventually, since one search can overrun
            # the vector source's timeout on a busy machine (the answer is then served without
            # it); a mixed answer at any moment is what the traffic above records.
            found: list[str | None] = []

            def finds_i0() -> bool:
                result = rec.recommend(Query("u1", None, 5))
                assert INDEX_VERSION not in result.degraded_parts
                found.append(_vector_top(result))
                return found[-1] == "i0"

            eventually(finds_i0, 30, interval_s=0.2, message="the v2 tower's own top item")
        finally:
            stop.set()
            worker.join(timeout=10)
            rec.close()
    assert not errors, errors[:3]
    assert not mixed, mixed[:3]


def test_vectors_changed_after_registration_are_not_published(tmp_path: Path) -> None:
    """The run folder is on a shared volume: the export checks it against the manifest the
    version was registered with, and publishes nothing (no marker, no switch) when it differs."""
    from lambdarec.integrity import IntegrityError

    settings = _settings(tmp_path)
    retrain.export_embeddings(_run(tmp_path, "1"), settings=settings)
    run2 = _run(tmp_path, "2")
    np.savez(
        run2 / "two_tower" / "item_embeddings.npz", ids=np.array(IDS), embeddings=_vectors("1")
    )
    marker = settings.reload_marker.read_bytes()
    with pytest.raises(IntegrityError, match=r"two_tower v2: item_embeddings\.npz changed"):
        retrain.export_embeddings(run2, settings=settings)
    assert _served(settings) == "1" and settings.reload_marker.read_bytes() == marker
    with VectorIndex.from_settings(settings) as index:
        assert index.find_model("2") is None
