"""The recommendation pipeline as serving runs it: live stores behind guards, champion reloads.

:class:`Recommender` wraps one :class:`~lambdarec.recommend.pipeline.Pipeline` (the code offline
evaluation runs too) with what only a server needs: every dependency call through a
:class:`~serving.guard.Guard` (a dead store costs a few timeouts, then is skipped until it comes
back), the champion's models loaded off the request path and swapped in when a retraining
promotes a new one, this process's record of purchases, stage timings into the metrics, and a
readiness probe. A missing or failing part is listed in ``degraded_parts``; popular items from the
lake (or the catalog order) are the floor that always answers.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import TYPE_CHECKING, Any

from lambdarec.recommend.pipeline import DEFAULT_SOURCES, Pipeline
from lambdarec.recommend.rules import CATEGORY_CAP
from lambdarec.recommend.snapshot import Snapshot
from lambdarec.recommend.types import Models
from serving.champion import load_champion
from serving.guard import TRIP_AFTER, Guard
from serving.purchases import PurchaseMemory
from serving.stores import DeadlineIndex, FeastFeatures

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence
    from pathlib import Path

    from lambdarec.config import Settings
    from lambdarec.recommend.types import (
        FeatureReader,
        Query,
        QueryEncoder,
        Ranker,
        Recommendation,
        T,
    )
    from lambdarec.retrieval.index import VectorIndex
    from serving.metrics import Metrics

log = logging.getLogger(__name__)

#: Parts that compute in this process (no I/O): their guard runs them in the request's thread.
IN_PROCESS = frozenset({"model", "ranker"})
#: Dependencies whose calls end by their own deadline, run in the request's thread too when
#: :meth:`Recommender.from_settings` finds them so (a connected index, a SQLite online store).
OWN_DEADLINE = frozenset({"index", "online_store"})
#: Each part's time budget per request (seconds).
TIMEOUTS_S = {"online_store": 0.05, "index": 0.05, "model": 0.05, "ranker": 0.05}


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


def baseline_sources(marker: Path) -> list[str] | None:
    """The sources the reload marker says to serve without models, or None (models serve)."""
    try:
        payload = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    serve = payload.get("serve") if isinstance(payload, dict) else None
    if isinstance(serve, dict) and serve.get("mode") == "baselines" and serve.get("sources"):
        return [str(s) for s in serve["sources"]]
    return None


class Recommender:
    """The pipeline object the app calls; any dependency may be ``None`` (absent -> degraded)."""

    def __init__(
        self,
        snapshot: Snapshot,
        *,
        features: FeatureReader | None = None,
        index: VectorIndex | None = None,
        encoder: QueryEncoder | None = None,
        ranker: Ranker | None = None,
        metrics: Metrics | None = None,
        timeouts_s: dict[str, float] | None = None,
        category_cap: float = CATEGORY_CAP,
        backoff_s: float = 2.0,
        inline: Iterable[str] = IN_PROCESS,
        sources: Sequence[str] = DEFAULT_SOURCES,
    ) -> None:
        """``inline``: the parts whose calls run in the request's thread (see
        :mod:`serving.guard`); the others are handed to a pool thread that the request stops
        waiting for on timeout."""
        self.snapshot = snapshot
        self.features = features
        self.index = index
        self.metrics = metrics
        self.category_cap = category_cap
        self.purchases = PurchaseMemory()
        timeouts = {**TIMEOUTS_S, **(timeouts_s or {})}
        self._executor = ThreadPoolExecutor(max_workers=16, thread_name_prefix="recommender-dep")
        inline = frozenset(inline)
        self.guards = {
            name: Guard(name, self._executor, t, backoff_s, TRIP_AFTER, inline=name in inline)
            for name, t in timeouts.items()
        }
        # An index client still connecting can hold a caller for seconds: the pool until then.
        self.guards["index"].inline_if = lambda: bool(getattr(index, "connected", False))
        self._deadline_index = (
            None if index is None else DeadlineIndex(index, self.guards["index"].timeout_s)
        )
        #: The pipeline with the configured sources (what serves while models are in use).
        self.full_pipeline = Pipeline(
            snapshot,
            features=features,
            index=self._deadline_index,
            sources=sources,
            category_cap=category_cap,
        )
        #: One reference for the pipeline, the query tower and the ranker: a reload assigns a
        #: new triple, so a request uses one consistent set throughout.
        self._serving: tuple[Pipeline, Models] = (self.full_pipeline, Models(encoder, ranker))
        #: Cleared while :meth:`warm_up` imports Feast and loads the index and the query tower:
        #: those imports hold the GIL for seconds, so the first requests time out and degrade.
        self.warm = threading.Event()
        self.warm.set()
        self._closing = threading.Event()
        self.reloads = 0

    @property
    def pipeline(self) -> Pipeline:
        return self._serving[0]

    @property
    def models(self) -> Models:
        return self._serving[1]

    @models.setter
    def models(self, models: Models) -> None:
        """New models run in the full pipeline."""
        self._serving = (self.full_pipeline, models)

    def serve_without_models(self, sources: Sequence[str]) -> None:
        """Run the pipeline of ``sources`` ranked by their blend, without the neural models (what
        the retraining's gate chose when no model beat that pipeline)."""
        pipeline = Pipeline(
            self.snapshot,
            features=self.features,
            index=self._deadline_index,
            sources=sources,
            category_cap=self.category_cap,
            ranker_expected=False,
        )
        self._serving = (pipeline, Models(None, None))

    @property
    def encoder(self) -> QueryEncoder | None:
        return self.models.encoder

    @property
    def ranker(self) -> Ranker | None:
        return self.models.ranker

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
            sources=settings.candidate_sources_list,
            category_cap=settings.category_cap,
        )
        rec.warm_up(settings, load_model=load_model)
        if load_model:
            rec.watch_reload(settings)
        return rec

    # -- the request ----------------------------------------------------------------------------

    def _call(self, part: str, fn: Callable[..., T], /, *args: Any) -> T:
        return self.guards[part].call(fn, *args)

    def recommend(self, query: Query) -> Recommendation:
        # One read of the reference: a reload swaps the triple, never mutates it, so the request
        # uses the pipeline, the tower and the ranker of one decision throughout.
        pipeline, models = self._serving
        result = pipeline.recommend(
            query, models, self._call, blocked=self.purchases.get(query.user_id)
        )
        if self.metrics is not None:
            for stage, ms in result.timings_ms.items():
                self.metrics.stage_seconds.labels(stage).observe(ms / 1000)
            for part in result.degraded_parts:
                self.metrics.fallbacks.labels(part).inc()
        return result

    # -- models ---------------------------------------------------------------------------------

    def watch_reload(
        self,
        settings: Settings,
        *,
        every_s: float = 5.0,
        loader: Callable[[Settings], Models | QueryEncoder | None] | None = None,
    ) -> threading.Thread:
        """Reload the champion's query tower and ranker whenever the reload marker changes.

        ``weekly_model_retraining`` writes ``settings.reload_marker`` after its gate decided
        (:func:`lambdarec.models.retrain.notify_serving`): a new champion (its tower and ranker
        are loaded in this thread, then swapped in by one reference assignment: a request in
        flight finishes with what it started with, none is dropped), or the pipeline to run
        without models (:meth:`serve_without_models`). A failed load keeps the current models
        (and is logged). A new tower without a ranker drops the old ranker, which ranked another
        retriever's candidates (``loader`` may return a bare query tower: tests).
        """
        marker = settings.reload_marker
        load = loader or load_champion

        def mtime() -> float | None:
            try:
                return marker.stat().st_mtime
            except OSError:
                return None

        # Read before the thread starts: a marker written once this returns is a change, however
        # late the thread gets scheduled (it used to read it first thing and could miss one).
        initial = mtime()

        def loop() -> None:
            seen = initial
            while not self._closing.wait(every_s):
                current = mtime()
                if current is None or current == seen:
                    continue
                seen = current
                sources = baseline_sources(marker)
                if sources is not None:
                    self.serve_without_models(sources)
                    self.reloads += 1
                    log.info("reload: serving %s without models (the gate's choice)", sources)
                    continue
                try:
                    loaded = load(settings)
                except Exception:  # noqa: BLE001 - keep serving with the current tower
                    log.exception("reload: the new champion could not be loaded; keeping the old")
                    continue
                if loaded is not None:
                    self.models = loaded if isinstance(loaded, Models) else Models(loaded, None)
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
            sources = baseline_sources(settings.reload_marker) if load_model else None
            if sources is not None:
                self.serve_without_models(sources)
                log.info("serving %s without models (the last retraining's choice)", sources)
            elif load_model and self.encoder is None:
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
