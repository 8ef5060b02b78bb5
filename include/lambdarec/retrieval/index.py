"""The item-embedding index serving retrieves candidates from: versioned Milvus collections behind
an alias.

Each export of item embeddings goes to a NEW collection ``<prefix>_v<version>`` (fields ``item_id``
VARCHAR primary key, ``category`` VARCHAR, ``embedding`` FLOAT_VECTOR; HNSW or FLAT, inner
product). It is written in batches, flushed, indexed, loaded and warmed up; only then is the
serving alias (``items_serving``) switched to it, in one ``alter_alias`` call, so a searcher never
sees a half-written index. The newest ``keep`` versions stay for :meth:`VectorIndex.rollback`; older
ones are dropped. :meth:`VectorIndex.upsert` adds items to the serving version in place (cold start:
items embedded by the same model's item tower after it was published,
``lambdarec.retrieval.cold_start``).

Each collection records the registry version of the two-tower whose item vectors it holds (the
collection property ``lambdarec.model_version``): a query tower must only search the vectors of
its own model, so serving compares the version behind the alias (:meth:`VectorIndex.
serving_model`) with its tower's and searches the collection of its tower by name
(``search(collection=...)``), never whatever the alias points to at the moment. The retraining
publishes without switching (``publish(switch=False)``), writes the reload marker naming the
version, then switches (:meth:`VectorIndex.switch`).

The same code runs on two backends, chosen by the URI alone:

* Milvus Lite (a local path, e.g. ``.state/milvus/items.db``): zero setup, in-process; fine for
  tests and small catalogs. milvus-lite 3.x supports aliases (create/alter/describe, persisted
  across reopen), so no pointer file is needed. Each query is a Python pass over all rows
  (~14 ms at 20k items, ~120 ms at 200k).
* A Milvus server (``http://127.0.0.1:19530``, e.g. the platform's ``milvus`` service): large
  catalogs, a few ms per query at 1M items.

Searches use Bounded consistency (Strong adds ~200 ms per query on a server); a just-published
version is flushed and loaded before the alias moves, so Bounded sees all of it.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    from pymilvus import MilvusClient

    from lambdarec.config import Settings

log = logging.getLogger(__name__)

#: What a search of a released collection answers: "released"/"not loaded" from the proxy, or,
#: for a moment after the release (a Milvus 2.3 server), "collection not found" from the query
#: node's delegator the proxy still routes to (seen in CI right after release_collection), and
#: "not fully loaded" while a server loads it again.
UNLOADED_ERRORS = ("released", "not loaded", "collection not found", "not fully loaded")
#: Loads and searches again at most this many times (0.5 s, 1 s apart) before giving up.
RELOAD_ATTEMPTS = 3


def _unloaded(error: Exception) -> bool:
    return any(text in str(error) for text in UNLOADED_ERRORS)


__all__ = [
    "IndexConfig",
    "IndexVersion",
    "VectorIndexError",
    "VectorIndex",
    "category_filter",
    "exact_search",
]

#: Longest item id / category stored (VARCHAR max_length).
MAX_ID_LENGTH = 256
Hits = list[list[tuple[str, float]]]
#: gRPC channel options for a Milvus server. gRPC backs off reconnecting up to 120 s after a
#: server went away, and every channel of the process shares that back-off (the global
#: subchannel pool, so pymilvus's reconnect with a new channel waits too): after a one-minute
#: outage serving kept failing for minutes against a server that was back. Capped at 1 s.
SERVER_GRPC_OPTIONS = {"grpc.max_reconnect_backoff_ms": 1000}
#: pymilvus pings every 10 s even while idle; Milvus Lite's in-process gRPC server allows that
#: far less often, so after a few idle minutes (a process that publishes, evaluates for a while,
#: then publishes again) it closed the cached channel with "Too many pings", and so did the
#: reconnect. No pings while idle: Lite runs in this process, it cannot vanish unnoticed.
LITE_GRPC_OPTIONS = {"grpc.keepalive_permit_without_calls": 0, "grpc.keepalive_time_ms": 600_000}
#: Largest catalog Milvus Lite serves well: each Lite query is a Python pass over every row
#: (about 1.1 ms of CPU per 1,000 items measured here), so past this a search nears serving's
#: 50 ms index timeout and vector retrieval degrades. Larger catalogs want a Milvus server.
LITE_MAX_ITEMS = 20_000


#: The collection property naming the model version whose vectors the collection holds.
MODEL_VERSION_PROPERTY = "lambdarec.model_version"


class VectorIndexError(RuntimeError):
    """The index cannot be written, switched or searched; the message says what to do."""


@dataclass(frozen=True)
class IndexVersion:
    """One published collection and the model version whose item vectors it holds."""

    version: int
    collection: str
    #: The two-tower's registry version (None: published before versions were recorded).
    model_version: str | None


@dataclass(frozen=True)
class IndexConfig:
    """Where the index lives and how it is built and searched."""

    #: A local path (Milvus Lite) or a server URI such as ``http://127.0.0.1:19530``.
    uri: str
    #: The alias serving searches; it always names a complete, loaded version.
    alias: str = "items_serving"
    #: Versions are collections named ``<prefix>_v<version>``.
    prefix: str = "items"
    index_type: Literal["HNSW", "FLAT"] = "HNSW"
    #: HNSW graph degree and build-time candidate list.
    m: int = 16
    ef_construction: int = 200
    #: HNSW search-time candidate list (raised to k when k is larger). At 1M items, 64-d, M 16:
    #: recall@50 of the exact top 50 0.983 at 64, 0.994 at 100, 0.9965 at 128, 0.9994 at 256;
    #: the server's CPU per search about 2.7, 3.0, 3.4 and 4.5 ms (2 cores, measured).
    ef: int = 100
    #: How many versions to keep (the serving one always stays).
    keep: int = 3
    #: Rows per insert call.
    batch_size: int = 5_000
    consistency: Literal["Bounded", "Eventually", "Session", "Strong"] = "Bounded"
    #: Longest wait for index building and loading.
    ready_timeout_s: float = 1_800.0
    #: A Milvus server's credentials, ``user:password`` or an API key (empty: none); kept out of
    #: the repr so a logged config shows no secret.
    token: str = field(default="", repr=False)

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> IndexConfig:
        """The index of these settings. ``milvus_uri`` empty (or missing) means Milvus Lite under
        ``<state_dir>/milvus/items.db``; the ``milvus_*`` index fields, when Settings has them,
        override the defaults."""
        uri = str(getattr(settings, "milvus_uri", "") or "") or str(
            settings.state_dir / "milvus" / "items.db"
        )
        values: dict[str, Any] = {"uri": uri}
        token = getattr(settings, "milvus_token", None)
        if token is not None and token.get_secret_value():
            values["token"] = token.get_secret_value()
        for name in ("alias", "index_type", "m", "ef_construction", "ef", "keep"):
            value = getattr(settings, f"milvus_{name}", None)
            if value is not None:
                values[name] = value
        values.update(overrides)
        return cls(**values)

    @property
    def is_lite(self) -> bool:
        return "://" not in self.uri


def category_filter(categories: Iterable[str]) -> str:
    """A filter expression keeping items of these categories."""
    return f"category in {_string_list(categories)}"


def exact_search(matrix: np.ndarray, item_ids: Sequence[str], queries: np.ndarray, k: int) -> Hits:
    """Brute-force inner-product top-``k`` in numpy (the ground truth searches are checked with)."""
    scores = np.asarray(queries, dtype=np.float32) @ np.asarray(matrix, dtype=np.float32).T
    k = min(k, scores.shape[1])
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    results = []
    for row, cols in zip(scores, top, strict=True):
        ordered = cols[np.argsort(-row[cols], kind="stable")]
        results.append([(item_ids[c], float(row[c])) for c in ordered])
    return results


class VectorIndex:
    """Versioned item-embedding collections behind one serving alias (see the module docstring)."""

    def __init__(self, config: IndexConfig) -> None:
        self.config = config
        self._client: MilvusClient | None = None
        self._loading: threading.Thread | None = None
        self._loading_lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> VectorIndex:
        return cls(IndexConfig.from_settings(settings, **overrides))

    # -- connection ------------------------------------------------------------------------

    @property
    def client(self) -> MilvusClient:
        if self._client is None:
            from pymilvus import MilvusClient

            if self.config.is_lite:
                Path(self.config.uri).parent.mkdir(parents=True, exist_ok=True)
                self._client = MilvusClient(self.config.uri, grpc_options=LITE_GRPC_OPTIONS)
            else:
                auth = {"token": self.config.token} if self.config.token else {}
                self._client = MilvusClient(
                    self.config.uri, grpc_options=SERVER_GRPC_OPTIONS, **auth
                )
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def __enter__(self) -> VectorIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- versions --------------------------------------------------------------------------

    def collection_name(self, version: int) -> str:
        return f"{self.config.prefix}_v{version}"

    def versions(self) -> list[int]:
        """The versions present, oldest first."""
        pattern = re.compile(rf"^{re.escape(self.config.prefix)}_v(\d+)$")
        found = (pattern.match(name) for name in self.client.list_collections())
        return sorted(int(m.group(1)) for m in found if m)

    def serving_version(self) -> int | None:
        """The version the alias points to (None before the first publish)."""
        # Asked per collection: describe_alias of a missing alias logs an error in pymilvus.
        # A switch between two of these reads (the alias left a collection already passed for
        # the one just read) finds it nowhere: one more pass sees where it went.
        versions = self.versions()
        for _ in range(2):
            for version in reversed(versions):
                info = self.client.list_aliases(self.collection_name(version))
                if self.config.alias in info.get("aliases", []):
                    return version
        return None

    def model_version(self, version: int) -> str | None:
        """The model version recorded with ``version`` (None when it recorded none)."""
        info = self.client.describe_collection(self.collection_name(version))
        value = (info.get("properties") or {}).get(MODEL_VERSION_PROPERTY)
        return None if value in (None, "") else str(value)

    def serving_model(self) -> IndexVersion | None:
        """The collection behind the alias and its model version (None before the first
        publish)."""
        version = self.serving_version()
        if version is None:
            return None
        return IndexVersion(version, self.collection_name(version), self.model_version(version))

    def find_model(self, model_version: str) -> IndexVersion | None:
        """The newest collection holding ``model_version``'s vectors, or None."""
        for version in reversed(self.versions()):
            if self.model_version(version) == str(model_version):
                return IndexVersion(version, self.collection_name(version), str(model_version))
        return None

    # -- writing ---------------------------------------------------------------------------

    def publish(
        self,
        item_ids: Sequence[str],
        embeddings: np.ndarray,
        categories: Sequence[str] | None = None,
        *,
        version: int | None = None,
        model_version: str | None = None,
        switch: bool = True,
        progress: bool = True,
    ) -> int:
        """Write a new version, make it ready, point the alias at it, drop versions beyond ``keep``.

        ``version`` defaults to the current time in milliseconds (it must be new).
        ``model_version`` is recorded with the collection (the registry version of the model
        whose item tower made the vectors: serving checks it against its query tower's).
        ``switch=False`` leaves the alias where it is (:meth:`switch` moves it later). Returns the
        version. If anything fails before the switch, the partial collection is dropped and the
        alias is untouched.
        """
        matrix = _check_inputs(item_ids, embeddings, categories)
        if self.config.is_lite and len(item_ids) > LITE_MAX_ITEMS:
            log.warning(
                "publishing %d items to Milvus Lite (%s): Lite searches every row in Python, "
                "about %.0f ms per query at this size, and serving's index timeout is 50 ms, so "
                "vector retrieval will degrade. Above %d items use a Milvus server: "
                "`lambdarec platform up milvus` and LAMBDAREC_MILVUS_URI=http://127.0.0.1:19530",
                len(item_ids),
                self.config.uri,
                1.1 * len(item_ids) / 1000,
                LITE_MAX_ITEMS,
            )
        version = int(time.time() * 1000) if version is None else int(version)
        self._drop_unserved_newer()
        existing = self.versions()
        if version in existing:
            raise VectorIndexError(
                f"version {version} exists ({self.collection_name(version)}); publish a new one"
            )
        name = self.collection_name(version)
        began = time.monotonic()
        try:
            self._create(name, matrix.shape[1], model_version)
            self._insert(name, item_ids, matrix, categories, progress=progress)
            self._build_and_load(name, len(item_ids))
        except BaseException as error:
            log.warning("%s: publishing failed, dropping the partial collection", name)
            try:
                self.client.drop_collection(name)
            except Exception as dropping:  # the server is gone: the next publish drops it
                log.warning("%s: could not drop the partial collection (%s)", name, dropping)
            if isinstance(error, Exception) and not isinstance(error, VectorIndexError):
                first = (str(error).strip().splitlines() or [""])[0][:200]
                raise VectorIndexError(
                    f"publishing {name} to {self.config.uri} failed ({type(error).__name__}: "
                    f"{first}); the alias {self.config.alias} still serves its version: run the "
                    "publish again once the server answers"
                ) from error
            raise
        log.info(
            "%s: %d items, dim %d, model version %s, ready after %.1f s",
            name,
            len(item_ids),
            matrix.shape[1],
            model_version,
            time.monotonic() - began,
        )
        if switch:
            self.switch(version)
        return version

    def _drop_unserved_newer(self) -> list[int]:
        """Drop the versions newer than the serving one (all, before the first switch): a publish
        that failed half-way with the server down, or a version rolled back from. Neither is
        served again, and a half-written one must never be what :meth:`rollback` picks."""
        serving = self.serving_version()
        stale = [v for v in self.versions() if serving is None or v > serving]
        for version in stale:
            self.client.drop_collection(self.collection_name(version))
            log.info("dropped %s: newer than the serving version, never switched to", version)
        return stale

    def switch(self, version: int) -> None:
        """Point the alias at a published ``version`` (loading it when it is not), then drop
        versions beyond ``keep``."""
        if version not in self.versions():
            raise VectorIndexError(
                f"{self.collection_name(version)} does not exist: publish it before switching"
            )
        name = self.collection_name(version)
        if not str(self.client.get_load_state(name).get("state")).endswith("Loaded"):
            self.client.load_collection(name, timeout=self.config.ready_timeout_s)
        self._point_alias(name)
        log.info("%s now serves %s", self.config.alias, name)
        self.cleanup()

    def _create(self, name: str, dim: int, model_version: str | None = None) -> None:
        from pymilvus import DataType, MilvusClient

        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("item_id", DataType.VARCHAR, is_primary=True, max_length=MAX_ID_LENGTH)
        schema.add_field("category", DataType.VARCHAR, max_length=MAX_ID_LENGTH)
        schema.add_field("embedding", DataType.FLOAT_VECTOR, dim=dim)
        properties = {} if model_version is None else {MODEL_VERSION_PROPERTY: str(model_version)}
        self.client.create_collection(
            name,
            schema=schema,
            consistency_level=self.config.consistency,
            **({"properties": properties} if properties else {}),
        )

    def _insert(
        self,
        name: str,
        item_ids: Sequence[str],
        matrix: np.ndarray,
        categories: Sequence[str] | None,
        *,
        progress: bool,
        upsert: bool = False,
    ) -> None:
        """Write the rows in batches (``upsert``: replacing rows with the same ids), then flush."""
        from tqdm.auto import tqdm

        write = self.client.upsert if upsert else self.client.insert
        size = self.config.batch_size
        with tqdm(
            total=len(item_ids), desc=f"{name} insert", unit="item", disable=not progress
        ) as bar:
            for start in range(0, len(item_ids), size):
                stop = min(start + size, len(item_ids))
                rows = [
                    {
                        "item_id": str(item_ids[i]),
                        "category": "" if categories is None else str(categories[i]),
                        "embedding": matrix[i],
                    }
                    for i in range(start, stop)
                ]
                write(name, rows)
                bar.update(stop - start)
        # Without a flush, milvus-lite searches scan the write buffer (seconds per query) and a
        # server keeps growing segments unindexed.
        self.client.flush(name)

    def _index_params(self) -> Any:
        params = self.client.prepare_index_params()
        if self.config.index_type == "HNSW":
            params.add_index(
                "embedding",
                index_type="HNSW",
                metric_type="IP",
                params={"M": self.config.m, "efConstruction": self.config.ef_construction},
            )
        else:
            params.add_index("embedding", index_type="FLAT", metric_type="IP", params={})
        return params

    def _build_and_load(self, name: str, rows: int) -> None:
        client = self.client
        client.create_index(name, self._index_params())
        deadline = time.monotonic() + self.config.ready_timeout_s
        while True:  # a server builds the index asynchronously
            info = client.describe_index(name, "embedding") or {}
            state = str(info.get("state", "Finished"))
            if state == "Failed":
                raise VectorIndexError(
                    f"{name}: index build failed: {info.get('index_state_fail_reason')}"
                )
            pending = int(info.get("pending_index_rows", 0) or 0)
            if state == "Finished" and pending == 0:
                break
            if time.monotonic() > deadline:
                raise VectorIndexError(
                    f"{name}: index not built within {self.config.ready_timeout_s} s"
                )
            time.sleep(0.5)
        client.load_collection(name, timeout=self.config.ready_timeout_s)
        loaded = str(client.get_load_state(name).get("state"))
        if not loaded.endswith("Loaded"):
            raise VectorIndexError(f"{name}: load state is {loaded} after load_collection")
        stats = client.get_collection_stats(name)
        if int(stats.get("row_count", rows)) != rows:
            raise VectorIndexError(f"{name}: {stats.get('row_count')} rows stored, {rows} written")
        # Warm-up: a server's first search after a load can take seconds.
        self._search(name, np.ones((1, self._dim(name)), dtype=np.float32), 10, "")

    def _point_alias(self, name: str) -> None:
        """Point the alias at ``name`` in one call (alter when it exists, create the first time)."""
        if self.serving_version() is None:
            self.client.create_alias(name, self.config.alias)
        else:
            self.client.alter_alias(name, self.config.alias)

    def upsert(
        self,
        item_ids: Sequence[str],
        embeddings: np.ndarray,
        categories: Sequence[str] | None = None,
    ) -> int:
        """Add items to the collection behind the serving alias, replacing rows with the same ids
        (cold start: items embedded after the version was published). The vectors must have the
        collection's dimension and come from the model that published it. Returns the version.
        """
        matrix = _check_inputs(item_ids, embeddings, categories)
        version = self.serving_version()
        if version is None:
            raise VectorIndexError(
                f"alias {self.config.alias} is not set: publish a version before adding items"
            )
        name = self.collection_name(version)
        dim = self._dim(name)
        if matrix.shape[1] != dim:
            raise VectorIndexError(
                f"{name} holds {dim}-d vectors, got {matrix.shape[1]}-d: embed the items with "
                "the model that published it"
            )
        self._insert(name, item_ids, matrix, categories, progress=False, upsert=True)
        log.info("%s: upserted %d items (dim %d)", name, len(item_ids), dim)
        return version

    def vectors(self, item_ids: Sequence[str]) -> dict[str, np.ndarray]:
        """The stored vectors of these items in the serving version (absent ids are left out)."""
        if not item_ids:
            return {}
        rows = self.client.get(
            self.config.alias, ids=[str(i) for i in item_ids], output_fields=["embedding"]
        )
        return {str(r["item_id"]): np.asarray(r["embedding"], dtype=np.float32) for r in rows}

    def _dim(self, name: str) -> int:
        fields = self.client.describe_collection(name)["fields"]
        return int(next(f for f in fields if f["name"] == "embedding")["params"]["dim"])

    def cleanup(self) -> list[int]:
        """Drop versions beyond the newest ``keep`` (never the serving one); returns those dropped."""
        versions = self.versions()
        serving = self.serving_version()
        kept = set(versions[-max(self.config.keep, 1) :]) | (
            {serving} if serving is not None else set()
        )
        dropped = [v for v in versions if v not in kept]
        for version in dropped:
            self.client.drop_collection(self.collection_name(version))
            log.info(
                "dropped %s (keeping %d versions)", self.collection_name(version), self.config.keep
            )
        return dropped

    def rollback(self) -> int:
        """Point the alias at the newest version older than the serving one; returns that version."""
        serving = self.serving_version()
        if serving is None:
            raise VectorIndexError(f"alias {self.config.alias} is not set; nothing to roll back")
        older = [v for v in self.versions() if v < serving]
        if not older:
            raise VectorIndexError(f"{self.collection_name(serving)} is the oldest version kept")
        target = older[-1]
        name = self.collection_name(target)
        if not str(self.client.get_load_state(name).get("state")).endswith("Loaded"):
            self.client.load_collection(name, timeout=self.config.ready_timeout_s)
        self.client.alter_alias(name, self.config.alias)
        log.info("%s rolled back from %s to %s", self.config.alias, serving, target)
        return target

    # -- reading ---------------------------------------------------------------------------

    def search(
        self,
        query_vectors: np.ndarray,
        k: int = 100,
        filter: str | None = None,  # noqa: A002 - Milvus's own name for it
        exclude_ids: Iterable[str] | None = None,
        timeout_s: float | None = None,
        collection: str | None = None,
    ) -> Hits:
        """Top-``k`` items by inner product for each query row, through the serving alias.

        ``filter`` is a Milvus boolean expression over ``category`` / ``item_id`` (see
        :func:`category_filter`); ``exclude_ids`` drops items (e.g. those just seen). Filtered
        HNSW may return fewer than ``k`` hits. ``timeout_s`` is each call's gRPC deadline: a
        hung server fails the call instead of holding the caller's thread. ``collection``
        searches that version by name instead of the alias (serving: the version of its query
        tower, whatever the alias points to meanwhile).
        """
        queries = np.atleast_2d(np.asarray(query_vectors, dtype=np.float32))
        clauses = [f"({filter})"] if filter else []
        excluded = list(exclude_ids or ())
        if excluded:
            clauses.append(f"item_id not in {_string_list(excluded)}")
        target = collection or self.config.alias
        return self._search(target, queries, k, " and ".join(clauses), timeout_s)

    @property
    def connected(self) -> bool:
        """Whether the client exists (creating it connects, which can take seconds when the
        server is down)."""
        return self._client is not None

    def _load_in_background(self, collection: str | None = None) -> None:
        """:meth:`ensure_loaded` in a thread of its own, at most one at a time."""
        with self._loading_lock:
            if self._loading is not None and self._loading.is_alive():
                return

            def load() -> None:
                try:
                    self.ensure_loaded(collection)
                except Exception as exc:  # noqa: BLE001 - the next released search retries
                    log.warning(
                        "%s: loading for search failed: %s", collection or self.config.alias, exc
                    )

            self._loading = threading.Thread(target=load, name="vector-index-load", daemon=True)
            self._loading.start()

    def ensure_loaded(self, collection: str | None = None) -> int | None:
        """Load the serving version's collection (or ``collection``) when it is not (Milvus Lite
        does not keep load states across processes, a restarted server neither); returns the
        serving version."""
        version = self.serving_version()
        names = [collection] if collection else []
        if version is not None and not collection:
            names.append(self.collection_name(version))
        for name in names:
            if not str(self.client.get_load_state(name).get("state")).endswith("Loaded"):
                log.info("%s: loading %s for search", self.config.alias, name)
                self.client.load_collection(name, timeout=self.config.ready_timeout_s)
        return version

    def _search(
        self,
        name: str,
        queries: np.ndarray,
        k: int,
        expression: str,
        timeout_s: float | None = None,
    ) -> Hits:
        params: dict[str, Any] = {"metric_type": "IP"}
        if self.config.index_type == "HNSW":
            params["params"] = {"ef": max(self.config.ef, k)}

        def run() -> Any:
            return self.client.search(
                name,
                data=[row for row in queries],
                filter=expression,
                limit=k,
                # No output field: the hits carry the primary key (item_id) anyway; asking for
                # it made the 2.3.5 server fetch it again after the search (server CPU per
                # search 3.49 ms with it, 3.16 without: 200k items, k 150, 5 paired runs).
                output_fields=[],
                search_params=params,
                consistency_level=self.config.consistency,
                timeout=timeout_s,
            )

        try:
            results = run()
        except Exception as error:  # noqa: BLE001 - only a released collection is retried
            if not _unloaded(error):
                raise
            named = None if name == self.config.alias else name
            if timeout_s is not None:
                # A caller with a deadline (a shopper's request) must not wait for a load that
                # takes seconds: it fails now, and the load runs in the background.
                self._load_in_background(named)
                raise
            for attempt in range(RELOAD_ATTEMPTS):
                self.ensure_loaded(named)
                try:
                    results = run()
                    break
                except Exception as again:  # noqa: BLE001 - as above
                    if attempt == RELOAD_ATTEMPTS - 1 or not _unloaded(again):
                        raise
                    time.sleep(0.5 * (attempt + 1))
        # milvus-lite keys a hit by the primary-key field name, a server by "id".
        return [
            [(str(hit.get("item_id", hit.get("id"))), float(hit["distance"])) for hit in hits]
            for hits in results
        ]


def _string_list(values: Iterable[str]) -> str:
    return json.dumps([str(v) for v in values])


def _check_inputs(
    item_ids: Sequence[str], embeddings: np.ndarray, categories: Sequence[str] | None
) -> np.ndarray:
    matrix = np.ascontiguousarray(embeddings, dtype=np.float32)
    if matrix.ndim != 2 or matrix.shape[0] == 0:
        raise VectorIndexError(
            f"embeddings must be a non-empty 2-d matrix, got shape {matrix.shape}"
        )
    if len(item_ids) != matrix.shape[0]:
        raise VectorIndexError(f"{len(item_ids)} item ids for {matrix.shape[0]} embedding rows")
    if categories is not None and len(categories) != len(item_ids):
        raise VectorIndexError(f"{len(categories)} categories for {len(item_ids)} items")
    if len(set(map(str, item_ids))) != len(item_ids):
        raise VectorIndexError("item ids are not unique")
    bad = [str(i) for i in item_ids if not str(i) or len(str(i)) > MAX_ID_LENGTH][:5]
    if bad:
        raise VectorIndexError(f"item ids must be 1..{MAX_ID_LENGTH} characters: {bad}")
    if not np.isfinite(matrix).all():
        raise VectorIndexError("embeddings hold NaN or infinite values")
    return matrix
