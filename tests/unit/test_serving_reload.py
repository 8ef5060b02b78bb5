"""Hot reload: when weekly_model_retraining writes the reload marker, the recommender loads the
new champion's query tower in the background and swaps it in while requests keep flowing; the
tower follows the model version behind the index alias and never searches another version's
vectors."""

from __future__ import annotations

import json
import os
import threading
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from lambdarec.harness.platform import private_settings
from lambdarec.harness.waiting import eventually
from lambdarec.recommend.snapshot import Snapshot
from lambdarec.recommend.types import Models, Query
from lambdarec.retrieval.index import IndexVersion
from serving.recommender import Recommender

if TYPE_CHECKING:
    from pathlib import Path


class Tower:
    """A query tower that says which version it is (the vector's value)."""

    def __init__(self, version: int) -> None:
        self.version = version

    def encode(self, features: dict[str, Any]) -> np.ndarray:
        return np.full(4, float(self.version), dtype=np.float32)


def _touch(marker: Path, n: int) -> None:
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(f'{{"reload": true, "n": {n}}}')
    os.utime(marker, (time.time() + n, time.time() + n))  # a distinct mtime per write


def test_a_new_champion_is_swapped_in_without_dropping_requests(tmp_path: Path) -> None:
    settings = private_settings(tmp_path)
    rec = Recommender(
        Snapshot.from_items(
            {f"i{n}": "c1" for n in range(30)}, [(f"i{n}", 1.0 / (n + 1)) for n in range(30)]
        )
    )
    loads: list[int] = []
    attempts: list[int] = []

    def loader(_: object) -> Tower:
        attempts.append(1)
        if len(loads) == 2:
            raise RuntimeError("artifact store unreachable")
        loads.append(len(loads) + 1)
        return Tower(loads[-1])

    served: list[int] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def traffic() -> None:
        query = Query("u1", "s1", 10)
        while not stop.is_set():
            try:
                served.append(len(rec.recommend(query).items))
            except BaseException as exc:  # noqa: BLE001 - any failure is what the test looks for
                errors.append(exc)

    rec.watch_reload(settings, every_s=0.02, loader=loader)
    worker = threading.Thread(target=traffic)
    worker.start()
    try:
        assert rec.encoder is None
        _touch(settings.reload_marker, 1)
        eventually(lambda: rec.reloads == 1, 10, interval_s=0.01, message="the first champion")
        assert isinstance(rec.encoder, Tower) and rec.encoder.version == 1
        _touch(settings.reload_marker, 2)
        eventually(lambda: rec.reloads == 2, 10, interval_s=0.01, message="the second champion")
        assert isinstance(rec.encoder, Tower) and rec.encoder.version == 2
        _touch(settings.reload_marker, 3)  # this load fails: the current tower stays
        eventually(lambda: len(attempts) == 3, 10, interval_s=0.01, message="the failing load")
        assert rec.reloads == 2 and rec.encoder.version == 2
    finally:
        stop.set()
        worker.join(timeout=10)
        rec.close()
    assert not errors, errors[:3]
    assert served and all(n == 10 for n in served), "every request during the swaps got 10 items"


class Index:
    """The index as the recommender reads it: the version behind the alias, searches by name.

    Each search is recorded with the vector's value (the tower's version) and the collection it
    went to: a tower searching another version's collection is what the tests look for."""

    def __init__(self) -> None:
        self.served = IndexVersion(1, "items_v1", "1")
        self.searches: list[tuple[float, str | None]] = []
        self.connected = True
        self.reads = 0

    def switch(self, model_version: int) -> None:
        self.served = IndexVersion(model_version, f"items_v{model_version}", str(model_version))

    def serving_model(self) -> IndexVersion:
        self.reads += 1
        return self.served

    def search(
        self,
        vectors: np.ndarray,
        k: int,
        timeout_s: float | None = None,
        collection: str | None = None,
    ) -> list[list[tuple[str, float]]]:
        # The alias resolves to whatever it points to now.
        name = collection or self.served.collection
        self.searches.append((float(np.ravel(vectors)[0]), name))
        return [[(f"i{n}", 0.5) for n in range(min(k, 30))]]


def _mixed(index: Index) -> list[tuple[float, str | None]]:
    """Searches where a tower queried another version's vectors."""
    return [(v, name) for v, name in index.searches if name != f"items_v{int(v)}"]


def _versioned_loader(fail: set[str]) -> Any:
    def loader(_: object, version: str | None = None) -> Models:
        if version in fail:
            fail.discard(version)
            raise RuntimeError("artifact store unreachable")
        number = int(version or 1)
        return Models(Tower(number), None, str(number))

    return loader


def _recommender(index: Index) -> Recommender:
    return Recommender(
        Snapshot.from_items(
            {f"i{n}": "c1" for n in range(30)}, [(f"i{n}", 1.0 / (n + 1)) for n in range(30)]
        ),
        index=index,  # type: ignore[arg-type]
        category_cap=1.0,
    )


def test_an_old_tower_never_queries_a_new_index(tmp_path: Path) -> None:
    """The issue: the alias switched to v2's vectors and the reload of the v2 tower failed. The
    v1 tower used to query v2's vectors indefinitely, not degraded; now the request answers
    without vector retrieval and with ``index_version`` in its degraded parts, and the periodic
    check loads the matching tower, which clears it."""
    settings = private_settings(tmp_path, index_check_s=1)
    index = Index()
    rec = _recommender(index)
    rec.models = Models(Tower(1), None, "1")
    loader = _versioned_loader(fail={"2"})
    assert rec.check_index(settings, loader)
    query = Query("u1", "s1", 10)
    assert "index_version" not in rec.recommend(query).degraded_parts
    assert index.searches == [(1.0, "items_v1")]  # its own version, by name

    index.switch(2)  # the retraining switched the alias; the tower stays v1 until a check
    assert rec.recommend(query).degraded_parts.count("index_version") == 0
    assert index.searches[-1] == (1.0, "items_v1")  # still its own vectors, not the alias's

    rec.watch_reload(settings, every_s=0.02, loader=loader)
    try:
        assert not rec.check_index(settings, loader)  # the v2 tower does not load
        assert rec.encoder.version == 1  # type: ignore[union-attr]
        searched = len(index.searches)
        result = rec.recommend(query)
        assert "index_version" in result.degraded_parts and result.degraded
        assert len(result.items) == 10  # the other sources still answer
        assert "vector" not in result.candidates
        assert len(index.searches) == searched  # no search with the v1 tower meanwhile
        # The periodic check (index_check_s) loads the v2 tower: no longer degraded.
        eventually(lambda: rec.models.version == "2", 10, interval_s=0.02, message="v2 tower")
        result = rec.recommend(query)
        assert "index_version" not in result.degraded_parts
        assert index.searches[-1] == (2.0, "items_v2")
    finally:
        rec.close()
    assert not _mixed(index), _mixed(index)


def test_an_alias_read_mid_switch_keeps_the_tower_on_its_own_collection(tmp_path: Path) -> None:
    """The rehearsal's mixed answers: a version check that ran while the retraining moved the
    alias read it on neither collection (no version), and the pipeline then searched the alias
    itself, now v2's vectors, with the v1 tower until the next check. A read of no alias after
    one was read keeps the version read last."""
    settings = private_settings(tmp_path, index_check_s=1)
    index = Index()
    rec = _recommender(index)
    rec.models = Models(Tower(1), None, "1")
    assert rec.check_index(settings, _versioned_loader(fail=set()))
    index.served = None  # type: ignore[assignment]  # the alias between two collections
    rec.check_index(settings, _versioned_loader(fail=set()))
    index.switch(2)  # the alias now serves v2; the tower is still v1 until the next check
    query = Query("u1", "s1", 10)
    rec.recommend(query)
    assert index.searches[-1] == (1.0, "items_v1")
    assert not _mixed(index), _mixed(index)


def test_a_marker_announcing_a_version_is_followed_once_the_alias_serves_it(
    tmp_path: Path,
) -> None:
    """The retraining writes the marker naming the version, then switches the alias: serving keeps
    its tower on its own collection until the alias serves the announced version, then loads that
    tower; requests in flight throughout never search one version's vectors with another's
    tower."""
    settings = private_settings(tmp_path)
    index = Index()
    rec = _recommender(index)
    rec.models = Models(Tower(1), None, "1")
    loader = _versioned_loader(fail=set())
    rec.check_index(settings, loader)
    errors: list[BaseException] = []
    stop = threading.Event()

    def traffic() -> None:
        query = Query("u1", "s1", 10)
        while not stop.is_set():
            try:
                assert len(rec.recommend(query).items) == 10
            except BaseException as exc:  # noqa: BLE001 - any failure is what the test looks for
                errors.append(exc)

    rec.watch_reload(settings, every_s=0.02, loader=loader)
    worker = threading.Thread(target=traffic)
    worker.start()
    try:
        marker = settings.reload_marker
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(
            json.dumps(
                {"serve": {"mode": "models"}, "index": {"published": True, "model_version": "2"}}
            )
        )
        eventually(lambda: rec._awaiting is not None, 10, interval_s=0.01, message="the marker")
        reads = index.reads
        eventually(lambda: index.reads >= reads + 3, 10, interval_s=0.01, message="more checks")
        # the alias still serves v1: the v1 tower stays
        assert rec.models.version == "1" and rec.reloads == 0
        index.switch(2)
        eventually(lambda: rec.models.version == "2", 10, interval_s=0.01, message="v2 tower")
        eventually(
            lambda: index.searches[-1] == (2.0, "items_v2"), 10, interval_s=0.01, message="v2"
        )
    finally:
        stop.set()
        worker.join(timeout=10)
        rec.close()
    assert not errors, errors[:3]
    assert not _mixed(index), _mixed(index)[:3]


def test_models_come_back_after_serving_without_them_when_a_marker_announces_a_version(
    tmp_path: Path,
) -> None:
    """The gate chose the sources without models; the next retraining promotes v2: its marker
    (written before the switch) brings the v2 tower back, degraded until the alias serves v2."""
    settings = private_settings(tmp_path)
    index = Index()
    rec = _recommender(index)
    rec.serve_without_models(["popular"])
    rec.watch_reload(settings, every_s=0.02, loader=_versioned_loader(fail=set()))
    try:
        marker = settings.reload_marker
        marker.parent.mkdir(parents=True, exist_ok=True)
        announce = {"serve": {"mode": "models"}, "index": {"published": True, "model_version": "2"}}
        marker.write_text(json.dumps(announce))
        eventually(lambda: rec.models.version == "2", 10, interval_s=0.01, message="v2 tower")
        query = Query("u1", "s1", 10)
        assert "index_version" in rec.recommend(query).degraded_parts  # the alias serves v1
        index.switch(2)
        eventually(
            lambda: "index_version" not in rec.recommend(query).degraded_parts,
            10,
            interval_s=0.01,
            message="the switch noticed",
        )
        assert index.searches[-1] == (2.0, "items_v2")
    finally:
        rec.close()
    assert not _mixed(index), _mixed(index)[:3]


def test_recommend_answers_degraded_with_index_version_while_they_differ(tmp_path: Path) -> None:
    """What a client sees: ``"degraded": true`` and ``index_version`` in ``degraded_parts`` while
    the tower is v1 and the index v2, and neither once the v2 tower is in."""
    from lambdarec.harness.platform import free_ports
    from serving import create_app
    from serving.sinks import EventSink

    (closed_port,) = free_ports(1)
    settings = private_settings(tmp_path, kafka_bootstrap=f"127.0.0.1:{closed_port}")
    index = Index()
    rec = _recommender(index)
    rec.models = Models(Tower(1), None, "1")
    app = create_app(settings, rec, events=EventSink(settings, flush_timeout_s=0.3, backoff_s=30.0))
    client = app.test_client()
    index.switch(2)
    assert not rec.check_index()  # no loader: nothing loads
    body = client.get("/recommend?user_id=u1&k=5").get_json()
    assert body["degraded"] is True and "index_version" in body["degraded_parts"]
    assert len(body["items"]) == 5 and "vector" not in body["candidates"]
    assert rec.check_index(settings, _versioned_loader(fail=set()))
    body = client.get("/recommend?user_id=u1&k=5").get_json()
    assert "index_version" not in body["degraded_parts"] and body["candidates"]["vector"] > 0
    assert not _mixed(index), _mixed(index)[:3]
