"""The versioned vector index against real Milvus engines: Milvus Lite in a temporary folder, and
(marked slow) a Milvus 2.3 standalone server started by the platform manager.

Checked: top-10 equals numpy brute force with FLAT and recall@10 >= 0.95 with HNSW (ef 256), the
alias switches to each new version, rollback re-points it, old versions are dropped after ``keep``,
filters and exclusions hold; each collection keeps the model version it was published with, a
version published unswitched waits for ``switch``, and a collection is searched by name whatever
the alias points to.
"""

from __future__ import annotations

import dataclasses
import shutil
from typing import TYPE_CHECKING

import numpy as np
import pytest

from lambdarec.harness.waiting import eventually
from lambdarec.retrieval.index import UNLOADED_ERRORS, _unloaded

if TYPE_CHECKING:
    from pathlib import Path

    from lambdarec.retrieval.index import Hits, VectorIndex

pytestmark = pytest.mark.integration

DIM = 32
QUERIES = 50


def _catalog(n: int, seed: int) -> tuple[list[str], np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    matrix = rng.standard_normal((n, DIM)).astype(np.float32)
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    return [f"item-{i}" for i in range(n)], matrix, [f"cat-{i % 20}" for i in range(n)]


def _queries(seed: int) -> np.ndarray:
    queries = np.random.default_rng(seed).standard_normal((QUERIES, DIM)).astype(np.float32)
    return queries / np.linalg.norm(queries, axis=1, keepdims=True)


def _recall(found: list[list[tuple[str, float]]], truth: list[list[tuple[str, float]]]) -> float:
    hits = [
        len({i for i, _ in f} & {i for i, _ in t}) / len(t)
        for f, t in zip(found, truth, strict=True)
    ]
    return float(np.mean(hits))


def _exercise(index: VectorIndex, n: int) -> None:
    """The full cycle on an empty index configured with keep=2."""
    from lambdarec.retrieval.index import (
        IndexVersion,
        VectorIndex,
        VectorIndexError,
        category_filter,
        exact_search,
    )

    ids, matrix, categories = _catalog(n, seed=1)
    queries = _queries(seed=2)
    truth = exact_search(matrix, ids, queries, 10)

    # v1: FLAT is exact: the same ids in the same order as numpy.
    flat = VectorIndex(dataclasses.replace(index.config, index_type="FLAT"))
    assert flat.publish(ids, matrix, categories, version=1, progress=False) == 1
    assert flat.serving_version() == 1
    found = flat.search(queries, 10)
    flat.close()
    assert [[i for i, _ in hits] for hits in found] == [[i for i, _ in t] for t in truth]
    np.testing.assert_allclose(
        [[s for _, s in hits] for hits in found], [[s for _, s in t] for t in truth], atol=1e-4
    )

    # v2: HNSW with ef 256 becomes the serving version.
    assert index.publish(ids, matrix, categories, version=2, progress=False) == 2
    assert index.serving_version() == 2
    recall = _recall(index.search(queries, 10), truth)
    assert recall >= 0.95, recall

    # Filters and exclusions.
    wanted = ["cat-3", "cat-7"]
    excluded = [i for i, _ in truth[0][:3]]
    filtered = index.search(queries[:5], 10, filter=category_filter(wanted), exclude_ids=excluded)
    position = {item: k for k, item in enumerate(ids)}
    for hits in filtered:
        assert hits, "a filtered search returned nothing"
        assert all(categories[position[i]] in wanted for i, _ in hits)
        assert not {i for i, _ in hits} & set(excluded)

    # Rollback re-points the alias to v1 (exact results again).
    assert index.rollback() == 1
    assert index.serving_version() == 1
    assert [i for i, _ in index.search(queries[:1], 10)[0]] == [i for i, _ in truth[0]]
    with pytest.raises(VectorIndexError, match="oldest"):
        index.rollback()

    # Two more (small) versions: only the newest two are kept.
    small_ids, small, small_categories = _catalog(500, seed=3)
    index.publish(small_ids, small, small_categories, version=3, progress=False)
    index.publish(small_ids, small, small_categories, version=4, progress=False)
    assert index.versions() == [3, 4]
    assert index.serving_version() == 4
    assert index.search(small[:1], 1)[0][0][0] == small_ids[0]

    # A failed publish (duplicate version) leaves the alias where it was.
    with pytest.raises(VectorIndexError, match="exists"):
        index.publish(small_ids, small, small_categories, version=4, progress=False)
    assert index.serving_version() == 4

    # A released collection (a new Milvus Lite process, a restarted server) is loaded again on
    # the first search instead of failing every query.
    index.client.release_collection(index.collection_name(4))
    assert index.search(small[:1], 1)[0][0][0] == small_ids[0]

    # A search with a deadline (a shopper's request) does not wait for that load: it fails at
    # once, and the collection is loaded in the background for the next search.
    index.client.release_collection(index.collection_name(4))
    with pytest.raises(Exception, match="|".join(UNLOADED_ERRORS)):
        index.search(small[:1], 1, timeout_s=5.0)

    def loaded_hits() -> Hits:
        try:
            return index.search(small[:1], 1, timeout_s=5.0)
        except Exception as error:  # noqa: BLE001 - released until the background load is done
            if not _unloaded(error):
                raise
            return []

    hits = eventually(loaded_hits, 60, interval_s=0.2, message="the background load to finish")
    assert hits[0][0][0] == small_ids[0]

    # Model versions: recorded with each collection (none before they were recorded); a version
    # published unswitched leaves the alias where it was until switch().
    assert index.serving_model() == IndexVersion(4, index.collection_name(4), None)
    other = small[::-1].copy()  # another model's vectors for the same items
    assert (
        index.publish(
            small_ids, other, small_categories, version=5, model_version="7", switch=False
        )
        == 5
    )
    assert index.serving_version() == 4 and index.model_version(5) == "7"
    assert index.find_model("7") == IndexVersion(5, index.collection_name(5), "7")
    assert index.find_model("8") is None
    # By name: version 5 while the alias still serves 4, and 4 once the alias serves 5. The
    # query is small's last row: v4 holds it as its last item, v5 as its first.
    query = small[-1:]
    assert index.search(query, 1)[0][0][0] == small_ids[-1]
    assert index.search(query, 1, collection=index.collection_name(5))[0][0][0] == small_ids[0]
    index.switch(5)
    assert index.serving_model() == IndexVersion(5, index.collection_name(5), "7")
    assert index.versions() == [4, 5]
    assert index.search(query, 1)[0][0][0] == small_ids[0]
    index.client.release_collection(index.collection_name(4))  # loaded again when searched
    assert index.search(query, 1, collection=index.collection_name(4))[0][0][0] == small_ids[-1]
    with pytest.raises(VectorIndexError, match="does not exist: publish it before switching"):
        index.switch(99)


def test_milvus_lite_versions_alias_rollback(tmp_path: Path) -> None:
    from lambdarec.retrieval.index import IndexConfig, VectorIndex

    config = IndexConfig(uri=str(tmp_path / "milvus" / "items.db"), keep=2, ef=256)
    with VectorIndex(config) as index:
        _exercise(index, 20_000)
    with VectorIndex(config) as index:  # the model version is stored with the collection
        served = index.serving_model()
        assert served is not None and served.model_version == "7"


def test_milvus_lite_warns_a_catalog_too_large_for_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Lite searches every row in Python: publishing more than it serves in time says so, with
    the fix; a catalog within the limit publishes quietly."""
    from lambdarec.retrieval import index as index_module
    from lambdarec.retrieval.index import IndexConfig, VectorIndex

    monkeypatch.setattr(index_module, "LITE_MAX_ITEMS", 300)
    ids, matrix, categories = _catalog(500, seed=5)
    with VectorIndex(IndexConfig(uri=str(tmp_path / "items.db"))) as index:
        with caplog.at_level("WARNING", logger="lambdarec.retrieval.index"):
            index.publish(ids[:300], matrix[:300], categories[:300], version=1, progress=False)
        assert "Milvus Lite" not in caplog.text
        with caplog.at_level("WARNING", logger="lambdarec.retrieval.index"):
            index.publish(ids, matrix, categories, version=2, progress=False)
        assert "publishing 500 items to Milvus Lite" in caplog.text
        assert "LAMBDAREC_MILVUS_URI" in caplog.text
        assert index.search(matrix[:1], 1)[0][0][0] == ids[0]


@pytest.mark.slow
def test_milvus_standalone_server() -> None:
    import psutil

    from lambdarec.config import get_settings
    from lambdarec.harness.platform import private_platform
    from lambdarec.platform import processes
    from lambdarec.platform.stores import MILVUS_METRICS_PORT, milvus_ports, milvus_server_bin
    from lambdarec.retrieval.index import IndexConfig, VectorIndex

    # Never a skip: `make setup` builds the server's virtualenv, and CI has no other Milvus.
    if not milvus_server_bin(get_settings()).is_file():
        pytest.fail("no .venv-milvus: run `make setup` (it builds the Milvus server virtualenv)")
    if processes.port_owner("127.0.0.1", MILVUS_METRICS_PORT):
        pytest.fail(f"port {MILVUS_METRICS_PORT} is taken: stop the other Milvus server")

    with private_platform(["milvus"]) as settings:
        state = str(settings.state_dir)
        ports = milvus_ports(settings)
        config = IndexConfig(uri=settings.milvus_uri, keep=2, ef=256, prefix="test_items")
        with VectorIndex(config) as index:
            for version in index.versions():  # a leftover of an earlier run of this test
                index.client.drop_collection(index.collection_name(version))
            _exercise(index, 50_000)
    leftovers = []
    for process in psutil.process_iter(["pid", "cmdline"]):
        try:
            if any(state in part for part in process.info["cmdline"] or []):
                leftovers.append(process.info)
        except psutil.Error:
            continue
    assert not leftovers
    assert not [p for p in ports[:3] if processes.port_owner("127.0.0.1", p)]
    shutil.rmtree(state, ignore_errors=True)
