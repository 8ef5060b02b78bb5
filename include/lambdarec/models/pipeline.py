"""The end-to-end runs the CLIs launch: train the served models, evaluate against baselines.

:func:`train_models` fits the two-tower retriever, builds the served pipeline around it (the
configured candidate sources on in-memory stand-ins, :mod:`lambdarec.models.served`) and fits the
DeepFM ranker on that pipeline's candidates for validation queries; :func:`run_evaluation` adds
the tuned baselines, the retriever alone, the served pipeline and each of its sources alone on the
same test queries, optionally the session-feature ablation, and writes the report.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from lambdarec.models import baselines as B
from lambdarec.models import evaluate as E

if TYPE_CHECKING:
    from collections.abc import Mapping
    from pathlib import Path

    import pandas as pd

    from lambdarec.models.data import Dataset, Examples
    from lambdarec.models.deepfm import DeepFMConfig, TrainedDeepFM
    from lambdarec.models.served import CandidateStats, ServedSetup
    from lambdarec.models.two_tower import TrainedTwoTower, TwoTowerConfig

log = logging.getLogger(__name__)


@dataclass
class Trained:
    retriever: TrainedTwoTower
    ranker: TrainedDeepFM
    cooc: B.CoOccurrence
    seconds: dict[str, float]
    #: The served pipeline with both models (its stand-ins answer the ``valid`` queries; add
    #: others to ``setup.features.splits``).
    setup: ServedSetup


def train_models(
    dataset: Dataset,
    tt_config: TwoTowerConfig | None = None,
    fm_config: DeepFMConfig | None = None,
    *,
    work_dir: Path,
    cooc: B.CoOccurrence | None = None,
    exposure: pd.DataFrame | None = None,
    exposure_window_ms: int = 1_800_000,
) -> Trained:
    """Both models, the served pipeline around them, their numpy exports under ``work_dir``.
    ``exposure`` (:func:`lambdarec.models.exposure.exposure_table`): impressions the ranker
    trains on too, matched to its queries within ``exposure_window_ms``."""
    from lambdarec.models import deepfm, two_tower
    from lambdarec.models.served import candidate_lists, served_setup, with_ranker

    t0 = time.perf_counter()
    tt = two_tower.train_two_tower(dataset, tt_config)
    t1 = time.perf_counter()
    cooc = cooc or B.CoOccurrence().fit(dataset)
    fm_cfg = fm_config or deepfm.DeepFMConfig()
    queries = dataset.valid.sample(fm_cfg.max_queries, fm_cfg.seed)
    setup = served_setup(dataset, tt, work_dir, splits={"valid": queries})
    lists = candidate_lists(setup, queries, "valid")
    if exposure is not None:
        from lambdarec.models.exposure import attach_exposure

        attached = attach_exposure(dataset, queries, lists, exposure, window_ms=exposure_window_ms)
        queries, lists = attached.ex, attached.lists
    fm = deepfm.train_deepfm(dataset, queries, lists, tt.idx_map, cooc, fm_cfg)
    with_ranker(setup, fm, dataset, work_dir)
    t2 = time.perf_counter()
    return Trained(
        tt, fm, cooc, {"two_tower": round(t1 - t0, 1), "deepfm": round(t2 - t1, 1)}, setup
    )


def _trending_grid(dataset: Dataset) -> list[dict[str, Any]]:
    if dataset.split.get("timestamps", "real") == "real" and dataset.split.get("kind") != "srgnn":
        return [{"window": h * 3_600_000} for h in (1, 3, 12, 24)]
    n = float(dataset.split.get("train_sessions", 1))  # type: ignore[arg-type]
    return [{"window": n * f} for f in (0.01, 0.05, 0.2)]


def run_evaluation(
    dataset: Dataset,
    out_dir: Path,
    *,
    tt_config: TwoTowerConfig | None = None,
    fm_config: DeepFMConfig | None = None,
    session_ablation: bool = True,
    baselines: bool = True,
    models: bool = True,
    served: bool = True,
    test_max: int | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Evaluate baselines and models on the test split; write ``metrics.json`` and
    ``report.html`` in ``out_dir``. Returns (the JSON payload, the figures).

    Settings are chosen on the validation split; for the test, every model is refit on the
    interactions before the test queries (:meth:`Dataset.for_test`: training and validation):
    the count-based ones (the baselines, the served pipeline's sources, the ranker's item
    statistics) and the two-tower (the epochs validation chose: :func:`refit_for_test`). The
    DeepFM keeps the weights it learnt on the validation queries (its training data)."""
    from lambdarec.models.data import as_served

    test = dataset.test.sample(test_max, 0)
    refit = dataset.for_test() if dataset.before_test is not None else dataset
    results: list[E.Result] = []
    extra: dict[str, Any] = {"tuning": {}, "train_seconds": {}, "refit": refit is not dataset}
    cooc = refit_cooc = None
    if baselines:
        results.append(E.evaluate_ranker(B.MostPopular().fit(refit), refit, test))
        grids: list[tuple[Any, list[dict[str, Any]]]] = [
            (B.Trending, _trending_grid(dataset)),
            (B.CoOccurrence, [{"decay": d} for d in (0.3, 0.7, 1.0)]),
            (B.ALS, [{"factors": f, "regularization": r} for f in (32, 64) for r in (0.01, 0.1)]),
        ]
        for make, grid in grids:
            model, params, trials = E.tune(make, grid, dataset)
            extra["tuning"][model.name] = {"best": params, "trials": trials}
            final = make(**params).fit(refit)
            if isinstance(model, B.CoOccurrence):
                cooc = model  # the ranker's co-occurrence feature: training's statistics
                refit_cooc = final  # ... and at test (refit_for_test)
            results.append(E.evaluate_ranker(final, refit, test))
    if models:
        trained = train_models(
            dataset, tt_config, fm_config, cooc=cooc, work_dir=out_dir / "served_models"
        )
        extra["train_seconds"] = trained.seconds
        extra["two_tower_history"] = trained.retriever.history
        extra["deepfm_history"] = trained.ranker.history
        retriever, setup = trained.retriever, trained.setup
        if refit is not dataset:
            t0 = time.perf_counter()
            retriever, setup = refit_for_test(
                trained, refit, out_dir / "served_models_refit", cooc=refit_cooc
            )
            extra["train_seconds"]["refit"] = round(time.perf_counter() - t0, 1)
            extra["two_tower_refit_history"] = retriever.history
        # asked as serving asks it (the unknown user; the user's recent items without a session)
        retrieval = E.evaluate_ranker(retriever, refit, as_served(refit, test))
        results.append(retrieval)
        if served:
            rows, stats = _served_rows(refit, setup, test)
            results.extend(rows)
            extra["served_candidates"] = stats.to_json()
            _log_candidates(extra["served_candidates"])
        if session_ablation:
            extra["session_ablation"] = _session_ablation(dataset, retrieval, tt_config, test_max)
    payload = E.results_json(dataset, results, extra)
    if dataset.split.get("kind") == "srgnn":
        payload["published_srgnn_protocol"] = {
            "GRU4Rec": {"P@20": 29.45, "MRR@20": 8.33},
            "NARM": {"P@20": 49.70, "MRR@20": 16.17},
            "SR-GNN": {"P@20": 50.73, "MRR@20": 17.59},
        }
        payload["ours_p20_mrr20_percent"] = {
            r.model: {
                "P@20": round(100 * r.overall["hr@20"], 2),
                "MRR@20": round(100 * r.overall["mrr@20"], 2),
            }
            for r in results
        }
    figs = E.figures(results)
    E.write_report(payload, figs, out_dir)
    return payload, figs


def refit_for_test(
    trained: Trained, dataset: Dataset, work_dir: Path, *, cooc: B.CoOccurrence | None = None
) -> tuple[TrainedTwoTower, ServedSetup]:
    """The served pipeline as it would stand when the test queries come: every part that learns
    from interactions refit on ``dataset`` (:meth:`Dataset.for_test`) with the settings chosen on
    validation. The two-tower is trained again for the epochs validation chose (so its
    candidates are as fresh as the other sources'), the ranker's item statistics (popularity,
    co-occurrence) and the sources' stores are recounted; the DeepFM's weights are kept. The
    exports go to ``work_dir``; ``cooc``: the co-occurrence already refit on ``dataset`` with the
    ranker's decay (else it is fit here)."""
    from lambdarec.models.deepfm import item_table
    from lambdarec.models.served import served_setup, with_ranker
    from lambdarec.models.two_tower import refit_two_tower

    tt = refit_two_tower(dataset, trained.retriever)
    if cooc is None or cooc.decay != trained.cooc.decay:
        cooc = B.CoOccurrence(decay=trained.cooc.decay).fit(dataset)
    ranker = replace(
        trained.ranker, cooc=cooc, table=item_table(dataset, trained.ranker.idx_map, cooc)
    )
    sources = [s.name for s in trained.setup.pipeline.sources]
    setup = served_setup(dataset, tt, work_dir, splits={}, sources=sources)
    return tt, with_ranker(setup, ranker, dataset, work_dir)


def _served_rows(
    dataset: Dataset, setup: ServedSetup, test: Examples
) -> tuple[list[E.Result], CandidateStats]:
    """The served pipeline (every configured source, the ranker, the rules) and each of its
    sources alone (ranked by its own score), on the same test queries of ``dataset`` (the
    interactions before the test, what ``setup``'s stores hold); and the served candidates'
    statistics (the union's recall, what each source adds)."""
    from lambdarec.models.served import (
        CandidateStats,
        evaluate_pipelines,
        evaluate_served,
    )
    from lambdarec.recommend.types import Models

    setup.features.splits["test"] = test
    stats = CandidateStats()
    rows = [evaluate_served(setup, dataset, test, name="served", stats=stats)]
    alone = {f"source:{s.name}": [s.name] for s in setup.pipeline.sources}
    rows += evaluate_pipelines(
        setup, dataset, test, alone, models=Models(setup.models.encoder, None)
    )
    return rows, stats


def _log_candidates(stats: Mapping[str, Any]) -> None:
    """The served candidates' statistics as a table in the log."""
    lines = [
        f"served candidates over {stats['queries']} test queries: the target among them "
        f"{stats['union_recall']:.4f}, {stats['mean_candidates']} per query",
        f"  {'source':<20} {'recall':>8} {'per query':>10} {'only from it':>13}",
    ]
    for name, row in stats["per_source"].items():
        lines.append(
            f"  {name:<20} {row['recall']:>8.4f} {row['mean_candidates']:>10} "
            f"{row['mean_only_from_it']:>13}"
        )
    log.info("\n".join(lines))


def _session_ablation(
    dataset: Dataset,
    with_session: E.Result,
    tt_config: TwoTowerConfig | None,
    test_max: int | None,
) -> dict[str, Any]:
    """The same two-tower trained and evaluated with the session context blanked.

    Kept out of the model table on purpose: its row once sat there as ``two_tower(no session
    features)`` and was read as the two-tower's result. Without session features the query tower
    keeps only the user id and the user's event count; SR-GNN data has neither, so there the
    query is the same vector for every prefix and the ranking is a popularity ranking.
    """
    from lambdarec.models.two_tower import TwoTowerConfig, train_two_tower

    blank = dataset.without_session_features()
    config = tt_config or TwoTowerConfig()
    tt0 = train_two_tower(blank, config)
    res = E.evaluate_ranker(tt0, blank, blank.test.sample(test_max, 0))
    keys = ("hr@20", "recall@20", "ndcg@10", "mrr@20")
    with_s, without = with_session.overall, res.overall
    return {
        "model": with_session.model,
        "with_session_features": {k: round(with_s[k], 5) for k in keys},
        "without_session_features": {k: round(without[k], 5) for k in keys},
        "relative_lift": {
            k: round(with_s[k] / without[k] - 1.0, 4) if without[k] else None for k in keys
        },
        "query_inputs_left": (
            ("user id, user event count" if config.use_user_id else "user event count")
            if dataset.has_users
            else "none"
        ),
    }


def default_report_dir(dataset_name: str) -> Path:
    from datetime import UTC, datetime

    from lambdarec.config import get_settings

    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return get_settings().state_dir / "reports" / "models" / dataset_name / stamp


__all__ = ["Trained", "default_report_dir", "refit_for_test", "run_evaluation", "train_models"]
