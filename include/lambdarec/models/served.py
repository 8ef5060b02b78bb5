"""The served pipeline, offline: what ``GET /recommend`` does, evaluated on a dataset's queries.

:func:`served_setup` builds the same :class:`~lambdarec.recommend.pipeline.Pipeline` serving
runs (the configured candidate sources, the filters, the ranker, the rules) with in-memory
stand-ins for the live stores:

* the vector index: :class:`~lambdarec.recommend.memory.ExactIndex` over the trained two-tower's
  item embeddings (exact search, which the served HNSW index approximates);
* the online store: :class:`ExampleFeatures`, which answers a query's context as the speed layer
  and the daily job would have it online (the session's items, newest first; its length; the
  user's earlier events) and the views the batch layer writes (co-occurrence, sequential rules,
  the session tables: :func:`item_views`) built from the training interactions;
* the lake snapshot: the catalog, training popularity, and the last day's most active items as
  trending;
* the models: the numpy exports serving loads (the query tower and the DeepFM), written by the
  training code's own export functions into a work folder and loaded back.

:func:`evaluate_served` asks the pipeline for each query's top ``k`` and scores the lists with
the same metrics as every other row, so the served pipeline sits beside the baselines on the same
split. Serving's guards are not there (a direct call: a failure is a failure, not a degradation).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from lambdarec.recommend.memory import ExactIndex, MemoryFeatures
from lambdarec.recommend.pipeline import Pipeline
from lambdarec.recommend.snapshot import Snapshot
from lambdarec.recommend.types import Candidate, Models, Query

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from pathlib import Path

    from lambdarec.inference.vocabulary import ItemVocabulary
    from lambdarec.models.data import Dataset, Examples
    from lambdarec.models.deepfm import CandidateLists, TrainedDeepFM
    from lambdarec.models.evaluate import Result
    from lambdarec.models.two_tower import TrainedTwoTower

log = logging.getLogger(__name__)

#: The served list length evaluated (HR@20, MRR@20 and NDCG@10 need no more).
SERVED_K = 20
#: Neighbours kept per item in the co-occurrence view (the batch layer's top_n).
TOP_N = 20
#: Each group's most recent distinct items that take part in co-occurrence (the batch layer's).
MAX_ITEMS = 50
#: Candidates per query the ranker is trained on, at most (the best by the sources' blend).
MAX_WIDTH = 300


def query_session(split: str, n: int) -> str:
    """The session id a query is asked under (its context is looked up by it)."""
    return f"{split}:{n}"


class ExampleFeatures(MemoryFeatures):
    """The online features of evaluation queries, decoded from their session ids, and item views
    (``{view: {item_id: {feature: value}}}``) from the training interactions."""

    def __init__(
        self,
        item_ids: Sequence[str],
        splits: Mapping[str, Examples],
        views: Mapping[str, Mapping[str, Mapping[str, Any]]],
    ) -> None:
        super().__init__(views=views)
        self.item_ids = list(item_ids)
        self.splits = dict(splits)

    def context(self, user_id: str, session_id: str | None) -> dict[str, Any]:
        split, _, n = (session_id or "").rpartition(":")
        ex = self.splits.get(split)
        if ex is None or not n.isdigit():
            return {}
        return online_context(ex, int(n), self.item_ids)


def online_context(ex: Examples, n: int, item_ids: Sequence[str]) -> dict[str, Any]:
    """Query ``n``'s features as serving reads them online: the session's items newest first
    (``last_viewed_items``), its length so far, the user's events before the session."""
    recent = [item_ids[h] for h in ex.hist[n] if h >= 0]
    session_len = int(ex.session_len[n])
    return {
        "session_features__last_viewed_items": recent,
        "session_features__n_views": session_len,
        "session_features__n_carts": 0,
        "session_features__n_removes": 0,
        "session_features__n_purchases": 0,
        "user_history_30d__n_events_30d": max(int(ex.user_events[n]) - session_len, 0),
    }


def cooccurrence_view(dataset: Dataset, top_n: int = TOP_N) -> dict[str, dict[str, Any]]:
    """The ``item_cooccurrence`` rows of the training interactions: co-viewed within a session
    (every interaction), bought together by a user (purchases): cosine, top ``top_n``."""
    from lambdarec.models.baselines import cosine_cooccurrence

    ev = dataset.train_events
    ids = [str(i) for i in dataset.catalog.item_ids]
    viewed = cosine_cooccurrence(ev.group, ev.item, ev.ts, dataset.n_items, MAX_ITEMS)
    bought_mask = ev.weight >= 3.0  # a purchase is the strongest event of its run
    bought = cosine_cooccurrence(
        ev.user[bought_mask], ev.item[bought_mask], ev.ts[bought_mask], dataset.n_items, MAX_ITEMS
    )
    rows: dict[str, dict[str, Any]] = {}
    for kind, matrix in (("viewed", viewed), ("bought", bought)):
        for item, (cols, values) in _top_per_row(matrix, top_n).items():
            row = rows.setdefault(
                ids[item],
                {
                    "co_bought_items": [],
                    "co_bought_scores": [],
                    "co_viewed_items": [],
                    "co_viewed_scores": [],
                },
            )
            row[f"co_{kind}_items"] = [ids[c] for c in cols]
            row[f"co_{kind}_scores"] = values
    return rows


def item_views(dataset: Dataset) -> dict[str, dict[str, dict[str, Any]]]:
    """Every view the pipeline's sources read, from the training interactions, as the batch
    layer computes them: co-occurrence, and the session tables (sequential rules, the sessions'
    items and each item's sessions, the users' recent items: :mod:`lambdarec.batch.neighbours`)."""
    from lambdarec.batch.neighbours import memory_views, tables_from_interactions

    views = memory_views(tables_from_interactions(dataset.train_events, dataset.catalog.item_ids))
    views["item_cooccurrence"] = cooccurrence_view(dataset)
    return views


def _top_per_row(matrix: Any, top_n: int) -> dict[int, tuple[list[int], list[float]]]:
    """Each row's ``top_n`` columns by value desc, ties by column."""
    out: dict[int, tuple[list[int], list[float]]] = {}
    indptr, indices, data = matrix.indptr, matrix.indices, matrix.data
    for row in range(matrix.shape[0]):
        lo, hi = indptr[row], indptr[row + 1]
        if lo == hi:
            continue
        cols, vals = indices[lo:hi], data[lo:hi]
        order = np.lexsort((cols, -vals))[:top_n]
        out[row] = (cols[order].tolist(), vals[order].astype(float).tolist())
    return out


def snapshot_of(dataset: Dataset, trending_window: float | None = None) -> Snapshot:
    """The lake snapshot serving would read: the catalog with its raw categories, training
    popularity, and the items most active in the training data's last ``trending_window``
    (a day of event time; for data without time, the last 5% of the interactions)."""
    catalog = dataset.catalog
    ids = [str(i) for i in catalog.item_ids]
    names = {v: k for k, v in (catalog.category_vocabulary or {}).items()}
    categories = {
        item: (names.get(int(c), str(int(c))) if c > 0 else "")
        for item, c in zip(ids, catalog.category, strict=True)
    }
    pop = dataset.popularity()
    order = np.argsort(-pop, kind="stable")[:5000]
    popular = [(ids[i], float(pop[i])) for i in order if pop[i] > 0]
    ev = dataset.train_events
    trending: list[tuple[str, float]] = []
    if len(ev.ts):
        if (
            dataset.split.get("timestamps", "real") == "real"
            and dataset.split.get("kind") != "srgnn"
        ):
            window = trending_window or 86_400_000.0
            recent = ev.ts >= ev.ts.max() - window
        else:
            recent = np.arange(len(ev.ts)) >= int(0.95 * len(ev.ts))
        counts = np.bincount(ev.item[recent], minlength=dataset.n_items)
        top = np.argsort(-counts, kind="stable")[:500]
        trending = [(ids[i], float(counts[i])) for i in top if counts[i] > 0]
    return Snapshot.from_items(categories, popular, trending, source="evaluation")


@dataclass
class ServedSetup:
    pipeline: Pipeline
    models: Models
    item_ids: list[str]
    position: dict[str, int]
    features: ExampleFeatures


def served_setup(
    dataset: Dataset,
    retriever: TrainedTwoTower,
    work_dir: Path,
    *,
    splits: Mapping[str, Examples],
    sources: Sequence[str] | None = None,
) -> ServedSetup:
    """The served pipeline over ``dataset`` with the trained retriever, through its numpy export
    (written to ``work_dir``) and in-memory stand-ins (see the module doc); no ranker yet
    (:func:`with_ranker` adds one). The sources and the rules are the settings' (what serving
    runs): ``LAMBDAREC_CANDIDATE_SOURCES`` unless ``sources`` says, ``LAMBDAREC_CATEGORY_CAP``."""
    from lambdarec.config import get_settings
    from lambdarec.inference.query_tower import EXPORT_DIR, QueryEncoder
    from lambdarec.models.export import export_two_tower

    if not (work_dir / "two_tower" / EXPORT_DIR).is_dir():  # a run folder has it already
        export_two_tower(
            retriever,
            work_dir / "two_tower",
            vocabulary=_vocabulary(dataset),
            max_history=int(dataset.train.hist.shape[1]),
        )
    encoder = QueryEncoder.load(work_dir / "two_tower")
    ids, matrix = retriever.item_embeddings()
    item_ids = [str(i) for i in ids]
    features = ExampleFeatures(item_ids, splits, item_views(dataset))
    pipeline = Pipeline(
        snapshot_of(dataset),
        features=features,
        index=ExactIndex(item_ids, matrix),
        sources=get_settings().candidate_sources_list if sources is None else sources,
        category_cap=get_settings().category_cap,
    )
    return ServedSetup(
        pipeline,
        Models(encoder, None),
        item_ids,
        {item: n for n, item in enumerate(item_ids)},
        features,
    )


def _vocabulary(dataset: Dataset) -> ItemVocabulary | None:
    catalog = dataset.catalog
    return catalog.vocabulary() if catalog.category_vocabulary is not None else None


def with_ranker(
    setup: ServedSetup, ranker: TrainedDeepFM, dataset: Dataset, work_dir: Path
) -> ServedSetup:
    """The setup with the DeepFM, through the numpy export serving loads."""
    from lambdarec.models.deepfm import SERVING_EXPORT, export_for_serving

    export_for_serving(ranker, dataset, work_dir / "deepfm" / SERVING_EXPORT)
    return load_ranker_export(setup, work_dir / "deepfm", dataset)


def load_ranker_export(setup: ServedSetup, deepfm_dir: Path, dataset: Dataset) -> ServedSetup:
    """The setup with the numpy DeepFM exported in a run's ``deepfm/`` folder."""
    from lambdarec.inference.ranker import DeepFMRanker

    ranker = DeepFMRanker.from_model_dir(deepfm_dir, _vocabulary(dataset))
    if ranker is None:
        raise FileNotFoundError(f"{deepfm_dir} holds no DeepFM serving export: train it first")
    setup.models = Models(setup.models.encoder, ranker)
    return setup


def candidate_lists(
    setup: ServedSetup, ex: Examples, split: str, *, k: int = SERVED_K, width: int = MAX_WIDTH
) -> CandidateLists:
    """Each query's candidates from the pipeline's sources, before ranking: what the ranker is
    trained on (and ranks when served), at most ``width`` per query, the best by the blend (a
    user with a long history to exclude makes every source fetch that much more)."""
    from tqdm import tqdm

    from lambdarec.models.deepfm import CandidateLists
    from lambdarec.recommend.ranking import source_matrix

    sources = [s.name for s in setup.pipeline.sources]
    per_query = []
    for query in tqdm(
        served_queries(ex, split, setup.item_ids, k), desc=f"candidates ({split})", leave=False
    ):
        _, cands = setup.pipeline.candidates(query, setup.models)
        if len(cands) > width:
            cands = sorted(cands, key=lambda c: (-c.blend, c.item_id))[:width]
        scores, ranks = source_matrix(cands, sources)
        positions = np.array([setup.position[c.item_id] for c in cands], dtype=np.int64)
        per_query.append((positions, scores, ranks))
    width = max((len(p) for p, _, _ in per_query), default=1) or 1
    n, s = len(per_query), len(sources)
    cand = np.full((n, width), -1, dtype=np.int64)
    score_arr = np.full((n, width, s), np.nan)
    rank_arr = np.full((n, width, s), np.nan)
    for q, (positions, scores, ranks) in enumerate(per_query):
        cand[q, : len(positions)] = positions
        score_arr[q, : len(positions)] = scores
        rank_arr[q, : len(positions)] = ranks
    return CandidateLists(sources, cand, score_arr, rank_arr)


def served_queries(ex: Examples, split: str, item_ids: Sequence[str], k: int) -> list[Query]:
    """The query of each example: its user, its session id, ``k``, and its seen items (when the
    protocol masks them) as exclusions."""
    seen = getattr(ex, "seen", None)
    queries = []
    for n in range(len(ex)):
        exclude: tuple[str, ...] = ()
        if seen is not None:
            row = seen.indices[seen.indptr[n] : seen.indptr[n + 1]]
            exclude = tuple(item_ids[i] for i in row)
        # the batch tables name a user by its index; an unknown user (0) has none of its own
        user = str(int(ex.user[n])) if ex.user[n] > 0 else f"anon-{split}-{n}"
        queries.append(Query(user, query_session(split, n), k, exclude))
    return queries


@dataclass
class CandidateStats:
    """The served pipeline's candidates (after the filters, before ranking) over the queries:
    how often the target is among them (the union's recall and each source's), how many each
    source gives, and how many only it gives (what it adds to the others)."""

    queries: int = 0
    union_hits: int = 0
    union_size: int = 0
    given: Counter[str] = field(default_factory=Counter)
    only: Counter[str] = field(default_factory=Counter)
    hits: Counter[str] = field(default_factory=Counter)

    def add(self, pool: Sequence[Candidate], target: str) -> None:
        self.queries += 1
        self.union_size += len(pool)
        for c in pool:
            self.given.update(c.sources.keys())
            if len(c.sources) == 1:
                self.only.update(c.sources.keys())
            if c.item_id == target:
                self.union_hits += 1
                self.hits.update(c.sources.keys())

    def to_json(self) -> dict[str, Any]:
        n = max(self.queries, 1)
        return {
            "queries": self.queries,
            "union_recall": round(self.union_hits / n, 5),
            "mean_candidates": round(self.union_size / n, 1),
            "per_source": {
                name: {
                    "recall": round(self.hits[name] / n, 5),
                    "mean_candidates": round(self.given[name] / n, 1),
                    "mean_only_from_it": round(self.only[name] / n, 1),
                }
                for name in sorted(self.given, key=lambda s: -self.hits[s])
            },
        }


def served_topk(
    setup: ServedSetup,
    ex: Examples,
    split: str,
    k: int = SERVED_K,
    stats: CandidateStats | None = None,
) -> tuple[np.ndarray, dict[str, int]]:
    """Each query's served top ``k`` as catalog positions (-1 pads a shorter list), and how many
    lists each part degraded (a direct call raises instead: the counts are for the record).
    ``stats`` collects the candidates' statistics on the way."""
    from tqdm import tqdm

    out = np.full((len(ex), k), -1, dtype=np.int64)
    degraded: dict[str, int] = {}
    position = setup.position
    queries = served_queries(ex, split, setup.item_ids, k)
    for n, query in enumerate(tqdm(queries, desc=f"served pipeline ({split})", leave=False)):
        result = setup.pipeline.recommend(query, setup.models)
        for part in result.degraded_parts:
            degraded[part] = degraded.get(part, 0) + 1
        got = [position[c.item_id] for c in result.items]
        out[n, : len(got)] = got
        if stats is not None:
            stats.add(result.pool, setup.item_ids[int(ex.target[n])])
    return out, degraded


def evaluate_pipelines(
    setup: ServedSetup,
    dataset: Dataset,
    ex: Examples,
    rows: Mapping[str, Sequence[str]],
    *,
    models: Models,
    ranker_expected: bool = True,
) -> list[Result]:
    """One row per entry of ``rows`` (row name -> its sources): the pipeline of those sources over
    the setup's snapshot and stores, with ``models``, evaluated like :func:`evaluate_served`. The
    setup's own pipeline and models are put back afterwards."""
    full, kept = setup.pipeline, setup.models
    results = []
    try:
        setup.models = models
        for name, sources in rows.items():
            setup.pipeline = Pipeline(
                full.snapshot,
                features=full.features,
                index=full.index,
                sources=list(sources),
                ranker_expected=ranker_expected,
                category_cap=full.category_cap,
            )
            results.append(evaluate_served(setup, dataset, ex, name=name))
    finally:
        setup.pipeline, setup.models = full, kept
    return results


def evaluate_served(
    setup: ServedSetup,
    dataset: Dataset,
    ex: Examples,
    *,
    split: str = "test",
    name: str = "served",
    stats: CandidateStats | None = None,
) -> Result:
    """The served pipeline's row: its top lists scored like every other model's (``stats``
    collects its candidates' statistics)."""
    from lambdarec.models import evaluate as E

    t0 = time.perf_counter()
    topk, degraded = served_topk(setup, ex, split, stats=stats)
    if degraded:
        log.info("%s: parts missing from the served lists: %s", name, degraded)
    short = int((topk < 0).any(axis=1).sum())
    if short:
        log.warning("%s: %d of %d lists shorter than %d", name, short, len(ex), topk.shape[1])
    ks = tuple(k for k in E.M.KS if k <= topk.shape[1])
    result = E.evaluate_topk(name, topk, dataset, ex, seconds=time.perf_counter() - t0, ks=ks)
    log.info("%s: %s", name, E.headline(result.overall))
    return result
