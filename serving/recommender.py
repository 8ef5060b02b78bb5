"""The two-stage recommendation pipeline behind ``GET /recommend``, and its graceful degradation.

Stages (each timed into ``lambdarec_serving_stage_seconds``):

1. **features**: the user's batch features and the session's speed-layer features from the Feast
   online store (feature service ``retrieval_v1``).
2. **candidates**: the vector index queried with the champion two-tower's query embedding, items
   co-occurring with the session's recent items (online ``item_cooccurrence``), trending and
   popular items (lake snapshots); each candidate keeps the sources it came from.
3. **filter**: drop items already purchased, excluded by the caller or not in the catalog; when
   too few survive, fetch more from the index (adaptive over-fetch) before giving up.
4. **rank**: the ranker when one is loaded, else a transparent blend of the retrieval scores;
   either way each item carries the features that contributed most to its score.
5. **rules**: dedupe and a per-category cap for diversity (relaxed only to reach ``k``).

Every dependency call goes through a :class:`Guard`: a timeout, and after three failures in a row
a short back-off during which the dependency is skipped, so a dead store costs a few timeouts, not
one per request, a single slow call degrades only its own request, and the store comes back by
itself. The in-process parts (query tower, ranker) run in the request's thread with a time budget
instead: an overrun keeps its answer but counts toward the back-off. So do the calls that carry
their own deadline (:data:`OWN_DEADLINE`): a connected vector index (the gRPC deadline) and a
SQLite online store (a local file; in WAL mode a read never waits for the writer). Handing each
call to a pool thread cost ~0.2 ms of CPU (1M items, 200 req/s: 0.6 ms of the serving's ~5 ms per
request); a Redis store, or an index not yet connected (connecting can take seconds), still goes
through the pool. A missing or failing part is
listed in ``degraded_parts``; popular items from the lake (or the catalog order) are the floor
that always answers.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Sequence
    from pathlib import Path

    import numpy as np

    from lambdarec.config import Settings
    from lambdarec.registry import ModelRegistry
    from lambdarec.retrieval.index import VectorIndex
    from serving.metrics import Metrics
    from serving.validation import RecommendQuery

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Weight of each candidate source in the score blend used when no ranker is loaded.
SOURCE_WEIGHTS = {"vector": 1.0, "cooccurrence": 0.8, "trending": 0.6, "popular": 0.4}
SESSION_CATEGORY_BONUS = 0.05
OVERFETCH_MAX = 1000
#: Failures in a row before a dependency is skipped for the back-off. One slow call (a busy
#: host, a GC pause) degrades its own request only; at 1, each one blanked the part for every
#: request of the next 2 s (about 50 answers in the fault test, 400 at 200 requests/s).
TRIP_AFTER = 3
#: Parts that compute in this process (no I/O): their guard runs them in the request's thread.
IN_PROCESS = frozenset({"model", "ranker"})
#: Dependencies whose calls end by their own deadline, run in the request's thread too when
#: :meth:`Recommender.from_settings` finds them so (a connected index, a SQLite online store).
OWN_DEADLINE = frozenset({"index", "online_store"})


# -- dependency guard -----------------------------------------------------------------------------


class DependencyDown(RuntimeError):
    """A dependency is absent, failed, timed out or is backing off after a recent failure."""


class Guard:
    """Calls one dependency with a timeout; after ``trip_after`` failures in a row skips it for
    ``backoff_s`` (then one call probes it: a failure skips it again, a success resets the count).
    """

    def __init__(
        self,
        name: str,
        executor: ThreadPoolExecutor,
        timeout_s: float,
        backoff_s: float = 2.0,
        trip_after: int = 1,
        *,
        inline: bool = False,
    ) -> None:
        self.name = name
        #: Run in the caller's thread (in-process work: the query tower, the ranker). A thread
        #: cannot stop a running computation, so handing it to another thread only let the
        #: request go on while it kept burning CPU, and each hand-off cost CPU of its own. An
        #: inline call that overruns ``timeout_s`` keeps its answer but counts as a failure,
        #: so a part that is slow ``trip_after`` times in a row is skipped for the back-off.
        self.inline = inline
        self.timeout_s = timeout_s
        self.backoff_s = backoff_s
        self.trip_after = trip_after
        self._failures = 0  # in a row
        self._executor = executor
        self._down_until = 0.0
        self.last_error = ""
        #: Calls still running (timed-out calls keep running): capped so a hung dependency
        #: cannot take every worker thread.
        self._inflight = 0
        self._inflight_lock = threading.Lock()
        self.max_inflight = 4

    @property
    def down(self) -> bool:
        return time.monotonic() < self._down_until

    def call(
        self,
        fn: Callable[..., T],
        *args: Any,
        timeout_s: float | None = None,
        inline: bool | None = None,
    ) -> T:
        """``fn(*args)`` within the timeout; ``inline`` overrides :attr:`inline` for this call."""
        if self.down:
            raise DependencyDown(f"{self.name} backing off after: {self.last_error}")
        if self.inline if inline is None else inline:
            return self._call_inline(fn, *args, timeout_s=timeout_s or self.timeout_s)
        with self._inflight_lock:
            if self._inflight >= self.max_inflight:
                raise DependencyDown(f"{self.name}: {self._inflight} earlier calls still running")
            self._inflight += 1
        future = self._executor.submit(fn, *args)
        future.add_done_callback(self._done)
        try:
            result = future.result(timeout=timeout_s or self.timeout_s)
        except FutureTimeout:
            future.cancel()
            self._fail(f"timed out after {timeout_s or self.timeout_s:.3f} s")
        except Exception as exc:  # noqa: BLE001 - any failure of a dependency degrades
            self._fail(f"{type(exc).__name__}: {exc}"[:300])
        else:
            self._failures = 0
            return result
        raise DependencyDown(f"{self.name}: {self.last_error}")

    def _call_inline(self, fn: Callable[..., T], *args: Any, timeout_s: float) -> T:
        t0 = time.perf_counter()
        try:
            result = fn(*args)
        except Exception as exc:  # noqa: BLE001 - any failure of a part degrades
            self._fail(f"{type(exc).__name__}: {exc}"[:300])
            raise DependencyDown(f"{self.name}: {self.last_error}") from None
        elapsed = time.perf_counter() - t0
        if elapsed > timeout_s:
            self._fail(f"took {elapsed:.3f} s, over its {timeout_s:.3f} s budget")
        else:
            self._failures = 0
        return result

    def _done(self, _future: object) -> None:
        with self._inflight_lock:
            self._inflight -= 1

    def _fail(self, reason: str) -> None:
        self.last_error = reason
        with self._inflight_lock:
            self._failures += 1
            failures = self._failures
        if failures < self.trip_after:
            log.info("%s failed (%s), %d in a row", self.name, reason, failures)
            return
        if not self.down:
            log.warning("%s failed (%s); skipping it for %.1f s", self.name, reason, self.backoff_s)
        self._down_until = time.monotonic() + self.backoff_s


def freeze_heap(reason: str) -> None:
    """Collect, then move every object alive now out of the garbage collector's sight.

    A serving process holds a few hundred thousand long-lived objects (Feast, pymilvus, the
    models, the catalog snapshot); each full collection walked them all: 119 ms with every
    thread stopped, 16 times in 1,300 requests (measured), so one request in a hundred waited
    for it. Frozen objects are still freed by reference counting when released (an old model
    after a reload); only reference cycles among them are left, which a model swap does not
    make. After the freeze a full collection took 0.1 ms.
    """
    import gc

    t0 = time.perf_counter()
    gc.collect()
    gc.freeze()
    log.info(
        "%s: %d objects frozen out of garbage collection (%.0f ms)",
        reason,
        gc.get_freeze_count(),
        (time.perf_counter() - t0) * 1000,
    )


# -- dependencies ---------------------------------------------------------------------------------


class FeatureSource(Protocol):
    def context(self, user_id: str, session_id: str | None) -> dict[str, Any]: ...

    def cooccurring(self, item_ids: Sequence[str]) -> list[tuple[str, float]]: ...


class QueryEncoder(Protocol):
    def encode(self, features: dict[str, Any]) -> np.ndarray: ...


class Ranker(Protocol):
    """Scores candidates; returns per item (score, {feature: contribution})."""

    def score(
        self, features: dict[str, Any], candidates: Sequence[Candidate]
    ) -> list[tuple[float, dict[str, float]]]: ...


class FeastFeatures:
    """The Feast online store of the settings (SQLite or Redis), read through
    :func:`lambdarec.features.store.read_online` (the store's own reader without the SDK's
    per-call work: 0.46 -> 0.20 ms of CPU for a request's session and user features)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._store: Any = None

    @property
    def store(self) -> Any:
        """The settings' Feast store, found once (a process's settings do not change)."""
        if self._store is None:
            from lambdarec.features.store import get_store

            self._store = get_store(self.settings)
        return self._store

    def context(self, user_id: str, session_id: str | None) -> dict[str, Any]:
        from lambdarec.features.store import read_online

        row = {"user_id": user_id, "session_id": session_id or ""}
        columns = read_online("retrieval_v1", [row], self.settings, store=self.store)
        return {name: values[0] for name, values in columns.items()}

    def cooccurring(self, item_ids: Sequence[str]) -> list[tuple[str, float]]:
        from lambdarec.features.store import read_online

        if not item_ids:
            return []
        refs = [
            f"item_cooccurrence:{c}"
            for c in ("co_bought_items", "co_bought_scores", "co_viewed_items", "co_viewed_scores")
        ]
        cols = read_online(
            refs, [{"item_id": i} for i in item_ids], self.settings, store=self.store
        )
        scores: dict[str, float] = {}
        for pos in range(len(item_ids)):
            recency = 0.7**pos  # the newest session item counts most
            for kind, weight in (("bought", 1.0), ("viewed", 0.7)):
                items = cols.get(f"item_cooccurrence__co_{kind}_items", [None])[pos] or []
                values = cols.get(f"item_cooccurrence__co_{kind}_scores", [None])[pos] or []
                for item, value in zip(items, values, strict=False):
                    s = recency * weight * float(value or 0.0)
                    scores[item] = max(scores.get(item, 0.0), s)
        return sorted(scores.items(), key=lambda kv: -kv[1])

    def ping(self) -> bool:
        self.context("__ready_probe__", None)
        return True


class TwoTowerEncoder:
    """The exported two-tower query tower (``two_tower.export``) with its item index.

    The numpy port (``query_tower_numpy/``, :class:`lambdarec.models.query_tower.QueryTower`,
    ~30 us per request) when the export has one; else the SavedModel (``query_tower/``, ~0.5 ms
    of CPU per request in TensorFlow's call overhead), for exports made before the port. Without
    TensorFlow loaded, a serving worker also starts faster and holds ~0.5 GB less.

    The export holds no user or category vocabulary yet, so the user is the unknown user (0) and
    the session category 0; the session's recent items (through ``item_index.npy``) and the
    counts carry the signal.
    """

    def __init__(self, model_dir: Path) -> None:
        import numpy as np

        from lambdarec.models.query_tower import QueryTower

        data = np.load(model_dir / "item_embeddings.npz")
        ids = [str(i) for i in data["ids"]]
        idx_map = np.load(model_dir / "item_index.npy")
        #: Item id -> the query tower's embedding index of that item.
        self._index = {item: int(idx_map[pos]) for pos, item in enumerate(ids)}
        self._np = np
        self._numpy: QueryTower | None = None
        try:
            self._numpy = QueryTower.load(model_dir)
        except FileNotFoundError:
            log.info(
                "%s has no numpy query tower (an older export): using the SavedModel", model_dir
            )
            self._serve = self._saved_model(model_dir)
        self.backend = "numpy" if self._numpy is not None else "saved_model"
        # The first SavedModel call initialises TF's runtime (hundreds of ms, more than the
        # model's time budget): pay it here, at load or reload, not on a shopper's request.
        self.encode({})

    @staticmethod
    def _saved_model(model_dir: Path) -> Any:
        import os

        os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
        import tensorflow as tf

        return tf.saved_model.load(str(model_dir / "query_tower")).signatures["serving_default"]

    def encode(self, features: dict[str, Any]) -> np.ndarray:
        index = self._index
        recent = list(features.get("session_features__last_viewed_items") or [])[:20]
        hist = [index[i] for i in recent if i in index]
        n_session = sum(
            int(features.get(f"session_features__n_{c}") or 0)
            for c in ("views", "carts", "purchases")
        )
        n_user = int(features.get("user_history_30d__n_events_30d") or 0)
        counts = (math.log1p(n_session), math.log1p(n_user))
        if self._numpy is not None:
            return self._numpy.encode_one(hist, 0, counts)
        import tensorflow as tf

        out = self._serve(
            user=tf.constant([0], tf.int64),
            hist=tf.constant([hist or [0]], tf.int64),
            session_category=tf.constant([0], tf.int64),
            counts=tf.constant([counts], tf.float32),
        )
        return self._np.asarray(out["embedding"].numpy(), dtype=self._np.float32)


@dataclass(frozen=True)
class ServingModels:
    """The query tower and the ranker of one champion: swapped together, by one assignment."""

    encoder: QueryEncoder | None = None
    ranker: Ranker | None = None


@dataclass(frozen=True)
class ChampionDirs:
    """The champion's model folders on local disk."""

    #: The two-tower export (``two_tower.export``: query tower, item index, embeddings).
    two_tower: Path
    #: The ``deepfm/`` folder of the same training run; None when that run logged none.
    deepfm: Path | None


def champion_dirs(settings: Settings) -> ChampionDirs | None:
    """The champion two-tower's export from the MLflow registry (None when there is none), or the
    export folder pinned by ``LAMBDAREC_SERVING_MODEL_DIR``; with the DeepFM of the same training
    run, the only one it pairs with (``retrain.train_ranker`` trains it on that retriever's
    candidates and scores): the pinned folder's sibling ``deepfm/`` (the run folder layout), or
    the ``deepfm`` model logged from the same run folder as the champion two-tower."""
    from pathlib import Path

    if settings.serving_model_dir:
        pinned = Path(settings.serving_model_dir)
        if not (pinned / "query_tower").is_dir():
            raise FileNotFoundError(
                f"LAMBDAREC_SERVING_MODEL_DIR={pinned} holds no query_tower/: point it at a "
                "two_tower.export folder or leave it empty to serve the registry's champion"
            )
        sibling = pinned.parent / "deepfm"
        return ChampionDirs(pinned, sibling if sibling.is_dir() else None)
    import mlflow

    from lambdarec.models.retrain import DEEPFM, TWO_TOWER
    from lambdarec.registry import ModelRegistry

    champion = ModelRegistry.from_settings(settings, TWO_TOWER).get_champion()
    if champion is None:
        return None
    local = mlflow.artifacts.download_artifacts(
        artifact_uri=champion.artifact_uri, tracking_uri=settings.mlflow_uri
    )
    try:
        deepfm = _same_run_deepfm(ModelRegistry.from_settings(settings, DEEPFM), champion.run_id)
    except Exception:  # noqa: BLE001 - no ranker is a degraded part, not a failed load
        log.exception("cannot fetch the DeepFM of the champion's run; ranking by the blend")
        deepfm = None
    return ChampionDirs(Path(local), deepfm)


def _same_run_deepfm(registry: ModelRegistry, two_tower_run_id: str) -> Path | None:
    """The model folder of the newest ``deepfm`` run logged with the same ``run_dir`` as the
    two-tower's run (``retrain.evaluate`` logs both from one run folder), downloaded."""
    from pathlib import Path

    import mlflow

    from lambdarec.registry import MODEL_ARTIFACT_PATH

    client = registry.client
    run_dir = client.get_run(two_tower_run_id).data.params.get("run_dir")
    experiment = client.get_experiment_by_name(registry.experiment)
    if not run_dir or experiment is None:
        return None
    quote = '"' if "'" in run_dir else "'"
    runs = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"params.run_dir = {quote}{run_dir}{quote}",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if not runs:
        return None
    return Path(
        mlflow.artifacts.download_artifacts(
            run_id=runs[0].info.run_id,
            artifact_path=MODEL_ARTIFACT_PATH,
            tracking_uri=registry.tracking_uri,
        )
    )


def load_ranker(deepfm_dir: Path | None, two_tower_dir: Path | None = None) -> Ranker | None:
    """The DeepFM exported in a run's ``deepfm/`` folder (``serving/ranker.py``); None, logged,
    when there is none or it cannot be read: serving then blends the retrieval scores. The
    category vocabulary of the same run's two-tower export (its item tower's) places items the
    ranker never saw by their catalog category; an export without one leaves them unknown."""
    from serving.ranker import DeepFMRanker

    if deepfm_dir is None:
        log.warning("the champion's run logged no DeepFM; ranking by the score blend")
        return None
    vocabulary = None
    if two_tower_dir is not None:
        from lambdarec.models.item_tower import ItemTower

        try:
            vocabulary = ItemTower.load(two_tower_dir).vocabulary
        except (OSError, ValueError) as exc:
            log.warning(
                "no category vocabulary in %s (%s): the ranker sees new items' category as unknown",
                two_tower_dir,
                exc,
            )
    try:
        ranker = DeepFMRanker.from_model_dir(deepfm_dir, vocabulary)
    except Exception:  # noqa: BLE001 - a broken ranker must not take the query tower with it
        log.exception("the DeepFM export in %s cannot be loaded; ranking by the blend", deepfm_dir)
        return None
    if ranker is None:
        log.warning(
            "%s holds no serving export (a run from before it); ranking by the blend", deepfm_dir
        )
    return ranker


def load_champion(settings: Settings) -> ServingModels | None:
    """The champion's query tower and, beside it, the DeepFM of the same run (None when there is
    no champion). A missing or unreadable ranker leaves ``ranker`` None, never fails the load."""
    dirs = champion_dirs(settings)
    if dirs is None:
        return None
    return ServingModels(TwoTowerEncoder(dirs.two_tower), load_ranker(dirs.deepfm, dirs.two_tower))


@dataclass
class Snapshot:
    """What the lake says about items: catalog categories, popular and trending lists."""

    categories: dict[str, str] = field(default_factory=dict)
    #: (item_id, score), best first; score normalised to (0, 1].
    popular: list[tuple[str, float]] = field(default_factory=list)
    trending: list[tuple[str, float]] = field(default_factory=list)
    source: str = "empty"

    @classmethod
    def from_items(
        cls,
        categories: dict[str, str],
        popular: Iterable[tuple[str, float]],
        trending: Iterable[tuple[str, float]] = (),
        source: str = "memory",
    ) -> Snapshot:
        return cls(categories, _normalised(popular), _normalised(trending), source)

    @classmethod
    def from_lake(cls, settings: Settings, top: int = 5000) -> Snapshot:
        """Categories from the catalog; popularity from the newest ``item_stats`` partition
        (purchases, carts and views over 7 days), else the catalog order; trending from the
        newest ``trending_items`` partition when the speed layer has logged one."""
        import pyarrow.parquet as pq

        from lambdarec.tables import ITEM_STATS, TRENDING_ITEMS, catalog_path

        lake = settings.lake_dir
        categories: dict[str, str] = {}
        catalog_files = sorted(catalog_path(lake).glob("*.parquet"))
        if catalog_files:
            table = pq.read_table(catalog_files, columns=["item_id", "category"]).to_pydict()
            categories = {
                i: c or "" for i, c in zip(table["item_id"], table["category"], strict=True)
            }
        popular: list[tuple[str, float]] = []
        source = "catalog"
        newest = _newest_partition(ITEM_STATS.path(lake))
        if newest is not None:
            t = pq.read_table(newest, columns=["item_id", "views_7d", "carts_7d", "purchases_7d"])
            d = t.to_pydict()
            scored = [
                (i, (v or 0) + 3.0 * (c or 0) + 10.0 * (p or 0))
                for i, v, c, p in zip(
                    d["item_id"], d["views_7d"], d["carts_7d"], d["purchases_7d"], strict=True
                )
            ]
            popular = sorted(scored, key=lambda kv: -kv[1])[:top]
            source = f"item_stats {newest.name}"
        elif categories:
            popular = [(i, 1.0 / (1 + n)) for n, i in enumerate(list(categories)[:top])]
        trending: list[tuple[str, float]] = []
        newest_trend = _newest_partition(TRENDING_ITEMS.path(lake))
        if newest_trend is not None:
            d = pq.read_table(newest_trend, columns=["item_id", "trend_score"]).to_pydict()
            best: dict[str, float] = {}
            for i, s in zip(d["item_id"], d["trend_score"], strict=True):
                best[i] = max(best.get(i, 0.0), float(s or 0.0))
            trending = sorted(best.items(), key=lambda kv: -kv[1])[:500]
        return cls(categories, _normalised(popular), _normalised(trending), source)


def _newest_partition(table_dir: Path) -> Path | None:
    parts = sorted(p for p in table_dir.glob("date=*") if any(p.glob("*.parquet")))
    return parts[-1] if parts else None


def _normalised(pairs: Iterable[tuple[str, float]]) -> list[tuple[str, float]]:
    pairs = [(str(i), float(s)) for i, s in pairs if math.isfinite(float(s))]
    top = max((s for _, s in pairs), default=0.0)
    if top <= 0:
        return [(i, 1.0 / (1 + n)) for n, (i, _) in enumerate(pairs)]
    return [(i, max(s, 0.0) / top) for i, s in pairs]


# -- results --------------------------------------------------------------------------------------


@dataclass
class Candidate:
    item_id: str
    #: source -> normalised retrieval score in [0, 1]
    sources: dict[str, float] = field(default_factory=dict)
    category: str | None = None
    score: float = 0.0
    contributions: dict[str, float] = field(default_factory=dict)

    @property
    def source(self) -> str:
        return max(self.sources, key=lambda s: SOURCE_WEIGHTS.get(s, 0) * self.sources[s])


@dataclass
class Recommendation:
    items: list[Candidate]
    degraded_parts: list[str]
    features: dict[str, Any]
    timings_ms: dict[str, float]

    @property
    def degraded(self) -> bool:
        return bool(self.degraded_parts)


class PurchaseMemory:
    """Items a user bought recently, as seen by this process's ``POST /events`` (bounded LRU).

    A stop-gap so purchases never reappear within a worker: the online features carry no
    purchased-item list yet (see the report of the serving issue).
    """

    def __init__(self, max_users: int = 100_000, per_user: int = 200) -> None:
        self._items: OrderedDict[str, list[str]] = OrderedDict()
        self._lock = threading.Lock()
        self.max_users, self.per_user = max_users, per_user

    def add(self, user_id: str, item_id: str) -> None:
        with self._lock:
            items = self._items.pop(user_id, [])
            if item_id not in items:
                items = [item_id, *items][: self.per_user]
            self._items[user_id] = items
            while len(self._items) > self.max_users:
                self._items.popitem(last=False)

    def get(self, user_id: str) -> set[str]:
        with self._lock:
            return set(self._items.get(user_id, ()))


# -- the pipeline ---------------------------------------------------------------------------------


class Recommender:
    """The pipeline object the app calls; any dependency may be ``None`` (absent -> degraded)."""

    def __init__(
        self,
        snapshot: Snapshot,
        *,
        features: FeatureSource | None = None,
        index: VectorIndex | None = None,
        encoder: QueryEncoder | None = None,
        ranker: Ranker | None = None,
        metrics: Metrics | None = None,
        timeouts_s: dict[str, float] | None = None,
        category_cap: float = 0.3,
        backoff_s: float = 2.0,
        inline: Iterable[str] = IN_PROCESS,
    ) -> None:
        """``inline``: the parts whose calls run in the request's thread (see the module doc);
        the others are handed to a pool thread that the request stops waiting for on timeout."""
        self.snapshot = snapshot
        self.features = features
        self.index = index
        #: One reference for the query tower and the ranker: a reload assigns a new pair.
        self.models = ServingModels(encoder, ranker)
        self.metrics = metrics
        self.category_cap = category_cap
        self.purchases = PurchaseMemory()
        t = {
            "online_store": 0.05,
            "index": 0.05,
            "model": 0.05,
            "ranker": 0.05,
            **(timeouts_s or {}),
        }
        self._executor = ThreadPoolExecutor(max_workers=16, thread_name_prefix="recommender-dep")
        inline = frozenset(inline)
        self.guards = {
            name: Guard(name, self._executor, t[name], backoff_s, TRIP_AFTER, inline=name in inline)
            for name in t
        }
        #: Cleared while :meth:`warm_up` imports Feast and loads the index and the query tower:
        #: those imports hold the GIL for seconds, so the first requests time out and degrade.
        self.warm = threading.Event()
        self.warm.set()
        self._closing = threading.Event()
        self.reloads = 0

    @property
    def encoder(self) -> QueryEncoder | None:
        return self.models.encoder

    @encoder.setter
    def encoder(self, encoder: QueryEncoder | None) -> None:
        self.models = ServingModels(encoder, self.models.ranker)

    @property
    def ranker(self) -> Ranker | None:
        return self.models.ranker

    @ranker.setter
    def ranker(self, ranker: Ranker | None) -> None:
        self.models = ServingModels(self.models.encoder, ranker)

    @classmethod
    def from_settings(
        cls, settings: Settings, metrics: Metrics | None = None, *, load_model: bool = True
    ) -> Recommender:
        """The recommender of the settings: lake snapshot now, Feast and the index lazily; the
        champion's query tower and ranker load in the background (responses say ``model`` and
        ``ranker`` until then)."""
        from lambdarec.retrieval.index import VectorIndex

        try:
            snapshot = Snapshot.from_lake(settings)
        except Exception:  # noqa: BLE001 - an unreadable lake leaves the empty floor
            log.exception("cannot read the lake snapshot; popular items are unavailable")
            snapshot = Snapshot()
        # A Redis client has no deadline of its own: that store keeps the pool.
        own_deadline = OWN_DEADLINE - (
            {"online_store"} if settings.online_store != "sqlite" else set()
        )
        rec = cls(
            snapshot,
            features=FeastFeatures(settings),
            index=VectorIndex.from_settings(settings),
            metrics=metrics,
            inline=IN_PROCESS | own_deadline,
        )
        rec.warm_up(settings, load_model=load_model)
        if load_model:
            rec.watch_reload(settings)
        return rec

    def watch_reload(
        self,
        settings: Settings,
        *,
        every_s: float = 5.0,
        loader: Callable[[Settings], ServingModels | QueryEncoder | None] | None = None,
    ) -> threading.Thread:
        """Reload the champion's query tower and ranker whenever the reload marker changes.

        ``weekly_model_retraining`` writes ``settings.reload_marker`` after it promoted a model
        and switched the index alias. The new pair is loaded in this thread, then swapped in by
        one reference assignment (:attr:`models`): a request in flight finishes with the tower
        and ranker it started with, none is dropped. A failed load keeps the current pair (and
        is logged). A new tower without a ranker drops the old ranker, which ranked another
        retriever's candidates (``loader`` may return a bare query tower: tests).
        """
        marker = settings.reload_marker
        load = loader or load_champion

        def mtime() -> float | None:
            try:
                return marker.stat().st_mtime
            except OSError:
                return None

        def loop() -> None:
            seen = mtime()
            while not self._closing.wait(every_s):
                current = mtime()
                if current is None or current == seen:
                    continue
                seen = current
                try:
                    loaded = load(settings)
                except Exception:  # noqa: BLE001 - keep serving with the current tower
                    log.exception("reload: the new champion could not be loaded; keeping the old")
                    continue
                if loaded is not None:
                    self.models = (
                        loaded if isinstance(loaded, ServingModels) else ServingModels(loaded, None)
                    )
                    self.reloads += 1
                    freeze_heap(f"reload #{self.reloads}")
                    log.info(
                        "reload: query tower swapped in, ranker %s (reload #%d)",
                        "too" if self.models.ranker is not None else "absent",
                        self.reloads,
                    )

        thread = threading.Thread(target=loop, name="recommender-reload", daemon=True)
        thread.start()
        return thread

    def close(self) -> None:
        """Stop the reload watcher (tests; the process exit does it otherwise)."""
        self._closing.set()

    def warm_up(self, settings: Settings, *, load_model: bool) -> None:
        """Import Feast, connect the index and load the champion off the request path."""
        self.warm.clear()

        def run() -> None:
            try:
                load()
            finally:
                freeze_heap("warm-up")
                self.warm.set()
                log.info("warm-up done")

        def load() -> None:
            if self.features is not None:
                try:
                    self.features.context("__warm_up__", None)
                except Exception as exc:  # noqa: BLE001
                    log.warning("online store not ready at start: %s", exc)
            if self.index is not None:
                try:
                    self.index.ensure_loaded()
                except Exception as exc:  # noqa: BLE001
                    log.warning("vector index not ready at start: %s", exc)
            if load_model and self.encoder is None:
                try:
                    models = load_champion(settings)
                    if models is not None:
                        self.models = models
                    log.info(
                        "query tower loaded: %s, ranker loaded: %s",
                        self.encoder is not None,
                        self.ranker is not None,
                    )
                except Exception as exc:  # noqa: BLE001
                    log.warning("no champion query tower (%s); vector retrieval is off", exc)

        threading.Thread(target=run, name="recommender-warm-up", daemon=True).start()

    # -- stages ---------------------------------------------------------------------------------

    @contextmanager
    def _stage(self, name: str, timings: dict[str, float]) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:  # a stage may run more than once (over-fetch): its times add up
            timings[name] = timings.get(name, 0.0) + (time.perf_counter() - t0) * 1000

    def _try(
        self,
        part: str,
        degraded: list[str],
        fn: Callable[..., T],
        *args: Any,
        inline: bool | None = None,
    ) -> T | None:
        try:
            return self.guards[part].call(fn, *args, inline=inline)
        except DependencyDown:
            if part not in degraded:
                degraded.append(part)
            return None

    def _search(
        self, index: VectorIndex, query_vector: np.ndarray, k: int, degraded: list[str]
    ) -> Any:
        """The index's top ``k``: in the request's thread with the guard's timeout as the gRPC
        deadline once the index is connected and its guard is inline, else on the pool."""
        guard = self.guards["index"]
        return self._try(
            "index",
            degraded,
            partial(index.search, timeout_s=guard.timeout_s),
            query_vector,
            k,
            inline=guard.inline and getattr(index, "connected", False),
        )

    def recommend(self, query: RecommendQuery) -> Recommendation:
        degraded: list[str] = []
        timings: dict[str, float] = {}
        k = query.k
        # One read of the reference: a reload swaps the pair, never mutates it, so the request
        # uses the tower and the ranker of one champion throughout.
        models = self.models

        with self._stage("features", timings):
            features: dict[str, Any] = {}
            if self.features is None:
                degraded.append("online_store")
            else:
                got = self._try(
                    "online_store", degraded, self.features.context, query.user_id, query.session_id
                )
                features = dict(got or {})
        recent = [
            str(i)
            for i in (features.get("session_features__last_viewed_items") or [])
            if i is not None
        ][:5]
        session_category = features.get("session_features__session_category")

        with self._stage("candidates", timings):
            query_vector = None
            if models.encoder is None:
                degraded.append("model")
            else:
                query_vector = self._try("model", degraded, models.encoder.encode, features)
            if self.index is None:
                degraded.append("index")
            cooc: list[tuple[str, float]] = []
            if self.features is not None and recent and "online_store" not in degraded:
                cooc = self._try("online_store", degraded, self.features.cooccurring, recent) or []

        blocked = set(query.exclude) | self.purchases.get(query.user_id)
        blocked |= {str(i) for i in features.get("session_features__last_purchased_items") or ()}
        catalog = self.snapshot.categories
        fetch = max(50, 3 * k + len(blocked))
        survivors: list[Candidate] = []
        while True:
            with self._stage("candidates", timings):
                vector: list[tuple[str, float]] = []
                vector_full = False
                if query_vector is not None and self.index is not None:
                    hits = self._search(self.index, query_vector, fetch, degraded)
                    if hits:
                        vector = [(i, (s + 1.0) / 2.0) for i, s in hits[0]]
                        vector_full = len(hits[0]) >= fetch
                pools = {
                    "vector": vector,
                    "cooccurrence": cooc,
                    "trending": self.snapshot.trending[:fetch],
                    "popular": self.snapshot.popular[: fetch + len(blocked)],
                }
                merged: dict[str, Candidate] = {}
                for source, pairs in pools.items():
                    for item, s in pairs:
                        cand = merged.setdefault(item, Candidate(item))
                        cand.sources[source] = max(cand.sources.get(source, 0.0), float(s))
            with self._stage("filter", timings):
                survivors = [
                    c
                    for c in merged.values()
                    if c.item_id not in blocked and (not catalog or c.item_id in catalog)
                ]
                for c in survivors:
                    c.category = catalog.get(c.item_id)
            # Over-fetch again only while the index can still give more than it gave.
            if len(survivors) >= 2 * k or not vector_full or fetch >= OVERFETCH_MAX:
                break
            fetch = min(fetch * 4, OVERFETCH_MAX)

        with self._stage("rank", timings):
            scored = None
            if models.ranker is None:
                degraded.append("ranker")
            else:
                scored = self._try("ranker", degraded, models.ranker.score, features, survivors)
            if scored is not None and len(scored) == len(survivors):
                for c, (s, contrib) in zip(survivors, scored, strict=True):
                    c.score, c.contributions = float(s), contrib
            else:
                for c in survivors:
                    c.contributions = {
                        f"{src}_score": SOURCE_WEIGHTS.get(src, 0.0) * v
                        for src, v in c.sources.items()
                    }
                    if session_category and c.category == session_category:
                        c.contributions["session_category_match"] = SESSION_CATEGORY_BONUS
                    c.score = sum(c.contributions.values())
            survivors.sort(key=lambda c: (-c.score, c.item_id))

        with self._stage("rules", timings):
            items = self._diversify(survivors, k)

        if self.metrics is not None:
            for stage, ms in timings.items():
                self.metrics.stage_seconds.labels(stage).observe(ms / 1000)
            for part in degraded:
                self.metrics.fallbacks.labels(part).inc()
        return Recommendation(
            items, degraded, features, {s: round(v, 3) for s, v in timings.items()}
        )

    def _diversify(self, ranked: list[Candidate], k: int) -> list[Candidate]:
        """Dedupe and cap each category at ``category_cap`` of ``k`` (at least 1); the cap is
        relaxed, best first, only when the capped list would be shorter than ``k``."""
        cap = max(1, math.ceil(self.category_cap * k))
        seen: set[str] = set()
        per_category: dict[str, int] = {}
        chosen: list[Candidate] = []
        held: list[Candidate] = []
        for c in ranked:
            if c.item_id in seen:
                continue
            seen.add(c.item_id)
            key = c.category or ""
            if key and per_category.get(key, 0) >= cap:
                held.append(c)
                continue
            per_category[key] = per_category.get(key, 0) + 1
            chosen.append(c)
            if len(chosen) == k:
                return chosen
        chosen.extend(held[: k - len(chosen)])
        chosen.sort(key=lambda c: (-c.score, c.item_id))
        return chosen

    # -- readiness ------------------------------------------------------------------------------

    def readiness(self) -> dict[str, str]:
        """``ok`` or the reason, per dependency (short timeouts, never raises)."""
        out: dict[str, str] = {
            "warm_up": "ok" if self.warm.is_set() else "loading the online store, index and model"
        }
        if self.features is None:
            out["online_store"] = "not configured"
        else:
            ping = getattr(self.features, "ping", None)
            out["online_store"] = self._probe(ping or (lambda: True))
        if self.index is None:
            out["index"] = "not configured"
        else:
            index = self.index

            def alias_set() -> bool:
                if index.serving_version() is None:
                    raise RuntimeError(f"alias {index.config.alias} is not set")
                return True

            out["index"] = self._probe(alias_set)
        return out

    def _probe(self, fn: Callable[[], object], timeout_s: float = 1.0) -> str:
        future = self._executor.submit(fn)
        try:
            future.result(timeout=timeout_s)
            return "ok"
        except FutureTimeout:
            return f"timed out after {timeout_s} s"
        except Exception as exc:  # noqa: BLE001
            return f"{type(exc).__name__}: {exc}"[:200]
