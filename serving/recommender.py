"""The recommendation pipeline as serving runs it: live stores behind guards, champion reloads.

:class:`Recommender` wraps one :class:`~lambdarec.recommend.pipeline.Pipeline` (the code offline
evaluation runs too) with what only a server needs: every dependency call through a
:class:`~serving.guard.Guard` (a dead store costs a few timeouts, then is skipped until it comes
back), the champion's models loaded off the request path and swapped in when a retraining
promotes a new one, this process's record of purchases, stage timings into the metrics, and a
readiness probe. A missing or failing part is listed in ``degraded_parts``; popular items from the
lake (or the catalog order) are the floor that always answers.

The query tower and the index must hold the same model version (the tower's vectors only mean
something next to its own item vectors). The alias decides which version serves: on every reload
and every ``index_check_s`` the recommender reads the version behind the alias
(:meth:`Recommender.check_index`) and, when its tower's differs, loads the tower of that version.
While they differ, requests run without vector retrieval and answer ``index_version`` in
``degraded_parts``; while they agree, the tower searches its version's collection by name, so an
alias switched in between is never searched with the old tower.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from lambdarec.integrity import IntegrityError
from lambdarec.recommend.pipeline import DEFAULT_SOURCES, Pipeline
from lambdarec.recommend.policies import PIPELINE, POLICIES
from lambdarec.recommend.rules import CATEGORY_CAP
from lambdarec.recommend.snapshot import Snapshot
from lambdarec.recommend.types import Models
from lambdarec.tables import SESSION_FEATURES
from serving.champion import load_champion
from serving.guard import TRIP_AFTER, Guard
from serving.purchases import PurchaseMemory
from serving.stores import DeadlineIndex, FeastFeatures

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence
    from pathlib import Path
    from typing import TypeAlias

    from lambdarec.config import Settings
    from lambdarec.recommend.types import (
        FeatureReader,
        Query,
        QueryEncoder,
        Ranker,
        Recommendation,
        T,
    )
    from lambdarec.retrieval.index import IndexVersion, VectorIndex
    from serving.metrics import Metrics

    #: ``loader(settings)`` loads the champion's models, ``loader(settings, version)`` those of a
    #: registry version (:func:`serving.champion.load_champion`).
    Loader: TypeAlias = Callable[..., Models | QueryEncoder | None]

log = logging.getLogger(__name__)

#: Parts that compute in this process (no I/O): their guard runs them in the request's thread.
IN_PROCESS = frozenset({"model", "ranker"})
#: Dependencies whose calls end by their own deadline, run in the request's thread too when
#: :meth:`Recommender.from_settings` finds them so (a connected index, a SQLite online store).
OWN_DEADLINE = frozenset({"index", "online_store"})
#: Each part's time budget per request (seconds).
TIMEOUTS_S = {"online_store": 0.05, "index": 0.05, "model": 0.05, "ranker": 0.05}
#: The online feature naming a session's user (the speed layer writes it from the events).
SESSION_OWNER = f"{SESSION_FEATURES.name}:user_id"
#: The degraded part while the query tower's model version differs from the index's.
INDEX_VERSION = "index_version"
#: After a reload marker announces an index version, the index is checked at every marker poll
#: (not only every ``index_check_s``) until the alias serves it, for at most this long.
AWAIT_SWITCH_S = 600.0


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


def _read_marker(marker: Path) -> dict[str, Any]:
    try:
        payload = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return payload if isinstance(payload, dict) else {}


def baseline_sources(marker: Path) -> list[str] | None:
    """The sources the reload marker says to serve without models, or None (models serve)."""
    serve = _read_marker(marker).get("serve")
    if isinstance(serve, dict) and serve.get("mode") == "baselines" and serve.get("sources"):
        return [str(s) for s in serve["sources"]]
    return None


def announced_version(marker: Path) -> str | None:
    """The model version the reload marker says the index is switching to (None: it names
    none, e.g. nothing was published)."""
    index = _read_marker(marker).get("index")
    if isinstance(index, dict) and index.get("published") and index.get("model_version"):
        return str(index["model_version"])
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
        self.sources = tuple(sources)
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
        #: Pipelines by the collection their vector source searches by name (None: the alias,
        #: "": no vector retrieval), built once each.
        self._pipelines: dict[str | None, Pipeline] = {None: self.full_pipeline}
        #: The pipeline the gate chose to run without models (None: models serve).
        self._baseline: Pipeline | None = None
        self._models = Models(encoder, ranker)
        #: What the index alias served at the last check (None: not read yet, unset, no index).
        self.index_served: IndexVersion | None = None
        #: How often :meth:`watch_reload` checks the index version (``Settings.index_check_s``).
        self.index_check_s = 30.0
        #: The version a reload marker announced, until the alias serves it or the deadline.
        self._awaiting: tuple[str, float] | None = None
        #: The version whose load last failed, and when (retried every ``index_check_s``).
        self._failed_load: tuple[str | None, float] | None = None
        self._compose_lock = threading.Lock()
        #: One reference for the pipeline, the models and the standing degraded parts: a reload
        #: assigns a new triple, so a request uses one consistent set throughout.
        self._serving: tuple[Pipeline, Models, tuple[str, ...]] = (
            self.full_pipeline,
            self._models,
            (),
        )
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
        """New models run in the full pipeline, searching their own version's collection (or
        without vector retrieval, degraded, while the index serves another version)."""
        with self._compose_lock:
            self._baseline = None
            self._models = models
            self._compose()

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
        with self._compose_lock:
            self._baseline = pipeline
            self._models = Models(None, None)
            self._compose()

    def _compose(self) -> None:
        """Assign the serving triple of the current models and the index version last read
        (under ``_compose_lock``)."""
        models, served = self._models, self.index_served
        if self._baseline is not None:
            self._serving = (self._baseline, models, ())
        elif (
            models.encoder is None
            or self._deadline_index is None
            or "vector" not in self.sources
            or served is None
            or served.model_version is None  # published before versions were recorded
        ):
            self._serving = (self.full_pipeline, models, ())
        elif models.version == served.model_version:
            self._serving = (self._pipeline_for(served.collection), models, ())
        else:
            self._serving = (self._pipeline_for(""), models, (INDEX_VERSION,))

    def _pipeline_for(self, collection: str) -> Pipeline:
        """The full pipeline searching ``collection`` by name ("": without vector retrieval)."""
        pipeline = self._pipelines.get(collection)
        if pipeline is None:
            assert self.index is not None
            sources = [s for s in self.sources if s != "vector"] if not collection else self.sources
            timeout = self.guards["index"].timeout_s
            pipeline = Pipeline(
                self.snapshot,
                features=self.features,
                index=DeadlineIndex(self.index, timeout, collection) if collection else None,
                sources=sources or ["popular"],
                category_cap=self.category_cap,
            )
            # The alias's, the no-vector one and the latest collections': a few at most.
            if len(self._pipelines) > 4:
                self._pipelines = {k: v for k, v in self._pipelines.items() if not k}
            self._pipelines[collection] = pipeline
        return pipeline

    @property
    def standing_degraded(self) -> tuple[str, ...]:
        """Parts every request answers degraded until a check or a reload clears them."""
        return self._serving[2]

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

    def recommend(
        self, query: Query, policy: str = PIPELINE, ranker: Ranker | None = None
    ) -> Recommendation:
        """The pipeline's list for ``query`` run with ``policy`` (an A/B variant's); ``ranker``
        (an A/B variant's own, ``LAMBDAREC_AB_RANKERS``) ranks in place of the champion's while
        the champion's models serve, with the champion's retrieval."""
        # One read of the reference: a reload swaps the triple, never mutates it, so the request
        # uses the pipeline, the tower and the ranker of one decision throughout.
        pipeline, models, standing = self._serving
        if ranker is not None and (models.encoder is not None or models.ranker is not None):
            models = replace(models, ranker=ranker)
        result = pipeline.recommend(
            query, models, self._call, blocked=self.purchases.get(query.user_id), policy=policy
        )
        # The standing parts concern the pipeline's own sources, which a baseline policy skips.
        for part in standing if POLICIES[policy].sources is None else ():
            if part not in result.degraded_parts:
                result.degraded_parts.append(part)
        if self.metrics is not None:
            for stage, ms in result.timings_ms.items():
                self.metrics.stage_seconds.labels(stage).observe(ms / 1000)
            for part in result.degraded_parts:
                self.metrics.fallbacks.labels(part).inc()
            if result.degraded:
                self.metrics.degraded.inc()
        return result

    def session_owners(self, session_ids: Sequence[str]) -> dict[str, str]:
        """The user each session's online features name (sessions without a row are absent);
        nothing when the online store is absent or fails (the caller keeps its own record)."""
        if self.features is None or not session_ids:
            return {}
        try:
            columns = self._call(
                "online_store",
                self.features.read,
                [SESSION_OWNER],
                [{"session_id": s} for s in session_ids],
            )
        except Exception as exc:  # noqa: BLE001 - a lookup that fails must not fail the request
            log.debug("session owners not read: %s", exc)
            return {}
        users = columns.get(SESSION_OWNER.replace(":", "__")) or []
        return {s: str(u) for s, u in zip(session_ids, users, strict=False) if u}

    # -- models ---------------------------------------------------------------------------------

    def watch_reload(
        self,
        settings: Settings,
        *,
        every_s: float = 5.0,
        loader: Loader | None = None,
    ) -> threading.Thread:
        """Reload the champion's query tower and ranker whenever the reload marker changes, and
        check the index version every ``settings.index_check_s``.

        ``weekly_model_retraining`` writes ``settings.reload_marker`` after its gate decided
        (:func:`lambdarec.models.retrain.notify_serving`): a new champion (its tower and ranker
        are loaded in this thread, then swapped in by one reference assignment: a request in
        flight finishes with what it started with, none is dropped), or the pipeline to run
        without models (:meth:`serve_without_models`). A marker announcing the index version
        about to serve is followed by a check at every poll until the alias serves it
        (:meth:`check_index` then loads that version's tower). A failed load keeps the current
        models (and is logged). A new tower without a ranker drops the old ranker, which ranked
        another retriever's candidates (``loader`` may return a bare query tower: tests).
        """
        marker = settings.reload_marker
        load: Loader = loader or load_champion
        self.index_check_s = float(getattr(settings, "index_check_s", self.index_check_s))

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
            checked = time.monotonic()
            while not self._closing.wait(every_s):
                current = mtime()
                if current is not None and current != seen:
                    seen = current
                    self._follow_marker(settings, load)
                    checked = time.monotonic()
                elif self._awaiting is not None or time.monotonic() - checked >= self.index_check_s:
                    self.check_index(settings, load)
                    checked = time.monotonic()

        thread = threading.Thread(target=loop, name="recommender-reload", daemon=True)
        thread.start()
        return thread

    def _follow_marker(self, settings: Settings, load: Loader) -> None:
        """Do what a changed reload marker says (see :meth:`watch_reload`)."""
        marker = settings.reload_marker
        sources = baseline_sources(marker)
        if sources is not None:
            self.serve_without_models(sources)
            self.reloads += 1
            log.info("reload: serving %s without models (the gate's choice)", sources)
            return
        announced = announced_version(marker)
        if announced is not None:
            # The retraining writes the marker, then switches the alias: the check loads the
            # tower once the alias serves it (this poll or a following one).
            self._awaiting = (announced, time.monotonic() + AWAIT_SWITCH_S)
            log.info("reload: the index is switching to v%s", announced)
            if self._baseline is not None:
                # Models serve again: load them now (degraded until the alias serves them).
                self._load(settings, load, announced)
            self.check_index(settings, load, force=True)
            return
        self._load(settings, load, None)
        self.check_index(settings, load)

    def _load(self, settings: Settings, load: Loader, version: str | None) -> bool:
        """Load the champion's models (or ``version``'s) and swap them in; False when the load
        failed or found none (the current models keep serving)."""
        try:
            loaded = load(settings) if version is None else load(settings, version)
        except IntegrityError as error:  # its own line says which file and what to do
            log.error("reload: refused, keeping the old: %s", error)
            self._failed_load = (version, time.monotonic())
            return False
        except Exception:  # noqa: BLE001 - keep serving with the current tower
            log.exception(
                "reload: the %s could not be loaded; keeping the old",
                "champion" if version is None else f"two-tower v{version}",
            )
            self._failed_load = (version, time.monotonic())
            return False
        if loaded is None:
            self._failed_load = (version, time.monotonic())
            return False
        self._swap_in(loaded if isinstance(loaded, Models) else Models(loaded, None))
        self.reloads += 1
        freeze_heap(f"reload #{self.reloads}")
        log.info(
            "reload: query tower v%s swapped in, ranker %s (reload #%d)",
            self.models.version,
            "too" if self.models.ranker is not None else "absent",
            self.reloads,
        )
        return True

    def _read_index(self) -> IndexVersion | None:
        """The version behind the alias now (the last one read when the index does not answer;
        None when the index records none)."""
        read = getattr(self.index, "serving_model", None)
        if read is None:
            return None
        try:
            served: IndexVersion | None = read()
        except Exception as exc:  # noqa: BLE001 - the searches degrade on their own
            log.warning("index version check: cannot read the index alias: %s", exc)
            return self.index_served
        if served is None and self.index_served is not None:
            # Once set, the alias is only ever moved, never removed; reading "no alias" means
            # it moved between the per-collection reads of a switch. Without a version the
            # pipeline searches the alias itself, so the old tower would query the new vectors:
            # keep the version read last; the next check reads the new one.
            return self.index_served
        return served

    def _swap_in(self, models: Models) -> None:
        """Serve ``models``, composed with the version the index serves now: a tower is never
        swapped in beside a version read before it was loaded (a switch may lie between)."""
        served = self._read_index()
        with self._compose_lock:
            self.index_served = served
            self._baseline = None
            self._models = models
            self._compose()

    def check_index(
        self, settings: Settings | None = None, load: Loader | None = None, *, force: bool = False
    ) -> bool:
        """Read the model version behind the index alias and compare it with the query tower's;
        when they differ, load the tower of the index's version through ``load`` (a version that
        failed to load is tried again after ``index_check_s``, or now with ``force``). Returns
        whether they agree (True when there is nothing to compare). Never raises."""
        if getattr(self.index, "serving_model", None) is None:
            return True
        served = self._read_index()
        with self._compose_lock:
            self.index_served = served
            self._compose()
        awaiting = self._awaiting
        if awaiting is not None and (
            (served is not None and served.model_version == awaiting[0])
            or time.monotonic() > awaiting[1]
        ):
            self._awaiting = None
        want = None if served is None else served.model_version
        if (
            want is None
            or self._baseline is not None  # the gate chose to serve without models
            or self._models.version == want
            or load is None
            or settings is None
        ):
            return INDEX_VERSION not in self.standing_degraded
        if INDEX_VERSION in self.standing_degraded:
            assert served is not None
            log.warning(
                "the query tower is v%s but %s holds v%s's vectors: vector retrieval is off "
                "until the v%s tower loads",
                self._models.version,
                served.collection,
                want,
                want,
            )
        failed = self._failed_load
        if (
            not force
            and failed is not None
            and failed[0] == want
            and time.monotonic() - failed[1] < self.index_check_s
        ):
            return INDEX_VERSION not in self.standing_degraded
        if self._load(settings, load, want) and self.models.version != want:
            log.warning(
                "the two-tower loaded for v%s is v%s (LAMBDAREC_SERVING_MODEL_DIR pins it?): "
                "pin the v%s export or unpin to follow the index",
                want,
                self.models.version,
                want,
            )
            self._failed_load = (want, time.monotonic())
        return INDEX_VERSION not in self.standing_degraded

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
                        self._swap_in(models)
                    log.info(
                        "query tower loaded: %s, ranker loaded: %s",
                        self.encoder is not None,
                        self.ranker is not None,
                    )
                except Exception as exc:  # noqa: BLE001
                    log.warning("no champion query tower (%s); vector retrieval is off", exc)
            if load_model and self.index is not None:
                self.check_index(settings, load_champion)

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
