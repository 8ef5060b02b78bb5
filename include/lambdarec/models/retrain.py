"""The weekly retraining, one step at a time, each step reading and writing one run folder.

The ``weekly_model_retraining`` DAG launches every step as its own program
(``include/models/retrain.py <step> --run-dir DIR``) and passes only the folder between tasks, so
TensorFlow never runs inside an Airflow worker process and any step can be re-run from a shell.

Run folder::

    dataset.npz, dataset.json    the built examples (plain arrays, no pickle:
                                 :mod:`lambdarec.models.dataset_file`); name, split, data range,
                                 feature services
    item_vocabulary.json         raw category / price -> the item tower's inputs (data built from events)
    two_tower/                   export_two_tower's folder (what serving loads, item_tower/ for new
                                 items) + checkpoint + config
    deepfm/                      checkpoint + config; serving/ (the numpy export serving loads)
    evaluation/                  metrics.json + report.html (models vs baselines, full ranking),
                                 also copied with decision.json to the reports site
                                 (``<reports_dir>/models/retraining/<run>/``)
    decision.json                what the registry did for each model, and why
    export.json                  the Milvus collection version now serving (or why none)
    reload.json                  the marker serving was told to reload from

The gate: both models are logged as MLflow runs and registered, and judged together on the
served pipeline's NDCG@10 (what /recommend runs: every candidate source, the new query tower and
ranker; :mod:`lambdarec.models.served`). A model becomes champion only if that beats its
champion's on the same evaluation AND the best pipeline serving can run without neural models
(each count-based source alone, and all of them blended, evaluated alike: the floor); otherwise
it stays challenger. ``decision.json`` says what serves next (``serve``): the new models, the
champion (its own served score still beats the floor, or cannot be compared), or the best
pipeline without neural models; the MLflow run and the task log say why. Embeddings go to Milvus
only when the two-tower was promoted (serving reads the champion's query tower, so the index must
hold the champion's item vectors).

The index and the query tower must agree: the published collection records the two-tower's
registry version, and the export step switches the alias only after it wrote the reload marker
naming that version (publish unswitched, marker, switch). Serving follows the version behind the
alias (``serving.recommender``): an alias switched without a marker, or a reload that failed, is
caught by its periodic check and answered degraded (``index_version``), never by the old tower
searching the new vectors.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from lambdarec.registry import DEEPFM, TWO_TOWER

if TYPE_CHECKING:
    from pathlib import Path

    import pandas as pd

    from lambdarec.config import Settings
    from lambdarec.inference.item_tower import NewItems
    from lambdarec.models.data import Dataset
    from lambdarec.models.deepfm import DeepFMConfig
    from lambdarec.models.exposure import Attached
    from lambdarec.models.two_tower import TrainedTwoTower, TwoTowerConfig
    from lambdarec.registry import ModelRegistry

log = logging.getLogger(__name__)

STEPS = ("build", "train-two-tower", "train-deepfm", "evaluate", "export", "notify")
#: The evaluation row each model is promoted on: both on the served pipeline they make up.
PROMOTION = {TWO_TOWER: "served", DEEPFM: "served"}
#: The metric the gate compares.
GATE_METRIC = "ndcg@10"
RETRIEVAL_ROW, SERVED_ROW = "two_tower", "served"


def _settings(settings: Settings | None) -> Settings:
    from lambdarec.config import get_settings

    return settings if settings is not None else get_settings()


def _write_json(path: Path, payload: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1, default=str) + "\n", encoding="utf-8")
    return path


def _read_json(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run the step that writes it first")
    out: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return out


def load_built(run_dir: Path) -> Dataset:
    """The dataset the ``build`` step saved in ``run_dir`` (read without unpickling anything)."""
    from lambdarec.models.dataset_file import DATASET_FILE, read_dataset

    path = run_dir / DATASET_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run the 'build' step first")
    return read_dataset(path)


def evaluation_id(dataset: Dataset) -> str:
    """Names the test set: runs are only compared on the same one."""
    split = dataset.split
    if split.get("kind") == "temporal":

        def day(ms: object) -> str:
            return datetime.fromtimestamp(int(ms) / 1000, UTC).strftime("%Y-%m-%dT%H:%MZ")  # type: ignore[call-overload]

        return f"{dataset.name}:temporal:{day(split['test_start_ms'])}..{day(split['end_ms'])}"
    return (
        f"{dataset.name}:{split.get('kind', 'custom')}:{split.get('test_pairs', len(dataset.test))}"
    )


def data_range(dataset: Dataset) -> tuple[str, str] | None:
    split = dataset.split
    if split.get("kind") != "temporal" or not len(dataset.train_events.ts):
        return None

    def iso(ms: int) -> str:
        return datetime.fromtimestamp(ms / 1000, UTC).isoformat()

    return iso(int(dataset.train_events.ts.min())), iso(int(split["valid_start_ms"]))  # type: ignore[call-overload]


# -- steps ------------------------------------------------------------------------------------


def champion_trained_on(evaluation: str, settings: Settings) -> str | None:
    """The two-tower champion's version when it was trained and evaluated on the data that
    ``evaluation`` (an :func:`evaluation_id`) names, else None (no champion, or other data)."""
    registry = registry_for(TWO_TOWER, settings)
    champion = registry.get_champion()
    if champion is None or registry.evaluation_of(champion.run_id) != evaluation:
        return None
    return champion.version


def build(
    dataset: str,
    run_dir: Path,
    *,
    feast: bool = False,
    only_new_data: bool = False,
    settings: Settings | None = None,
) -> dict[str, Any]:
    """Examples of ``dataset`` (see :func:`lambdarec.models.data.load_dataset`), with the batch
    user features from Feast when ``feast`` (temporal data only).

    With ``only_new_data``, nothing is built when the champion was trained and evaluated on the
    same data (the same :func:`evaluation_id`: no event since): the result then has ``skipped``
    with the reason, and the run folder only ``dataset.json`` saying so. The scheduled run right
    after ``make demo`` (whose own run trained on the same lake) retrained for minutes for a model
    that could only tie with its champion."""
    from lambdarec.inference.vocabulary import VOCABULARY_FILE, write_vocabulary
    from lambdarec.models.data import build_from_events, load_dataset
    from lambdarec.models.dataset_file import DATASET_FILE, write_dataset

    vocabulary = None
    if dataset == "lake":  # the settings' lake (load_dataset would read the process settings)
        from lambdarec.data.lake import read_events

        events = read_events(_settings(settings).lake_dir)
        data = build_from_events(events, name="lake")
        del events
    else:
        data = load_dataset(dataset)
    if only_new_data:
        evaluation = evaluation_id(data)
        version = champion_trained_on(evaluation, _settings(settings))
        if version is not None:
            skipped = {
                "skipped": (
                    f"the {TWO_TOWER} champion (version {version}) was trained and evaluated on "
                    f"this same data ({evaluation}); no event since, nothing to retrain "
                    "(params.only_new_data=false retrains anyway)"
                ),
                "evaluation_id": evaluation,
            }
            _write_json(run_dir / "dataset.json", skipped)
            return skipped
    if data.catalog.category_vocabulary is not None:
        # What maps a new catalog item's category and price to the item tower's inputs.
        vocabulary = data.catalog.vocabulary()
    services: dict[str, str] = {}
    if feast:
        from lambdarec.models.features import attach_batch_features, feature_service_versions

        data = attach_batch_features(data, _settings(settings))
        services = feature_service_versions(_settings(settings))
    run_dir.mkdir(parents=True, exist_ok=True)
    write_dataset(data, run_dir / DATASET_FILE)
    (run_dir / VOCABULARY_FILE).unlink(missing_ok=True)
    if vocabulary is not None:
        write_vocabulary(vocabulary, run_dir / VOCABULARY_FILE)
    info = {
        "dataset": data.name,
        "split": data.split,
        "n_items": data.n_items,
        "examples": {"train": len(data.train), "valid": len(data.valid), "test": len(data.test)},
        "evaluation_id": evaluation_id(data),
        "data_range": data_range(data),
        "feature_services": services,
    }
    _write_json(run_dir / "dataset.json", info)
    return info


def _checkpoint(model: Any, path: Path, *, save: bool) -> None:
    import tensorflow as tf

    ckpt = tf.train.Checkpoint(model=model)
    if save:
        ckpt.write(str(path))
    else:
        ckpt.read(str(path)).expect_partial()


def train_retriever(run_dir: Path, config: TwoTowerConfig | None = None) -> dict[str, Any]:
    from lambdarec.inference.vocabulary import VOCABULARY_FILE, read_vocabulary
    from lambdarec.models import two_tower
    from lambdarec.models.export import export_two_tower

    data = load_built(run_dir)
    trained = two_tower.train_two_tower(data, config)
    out = run_dir / "two_tower"
    # item_embeddings.npz, query_tower/, query_tower_numpy/, item_tower/, item_index.npy, config
    export_two_tower(
        trained,
        out,
        vocabulary=read_vocabulary(run_dir / VOCABULARY_FILE),
        max_history=int(data.train.hist.shape[1]),
    )
    _checkpoint(trained.model, out / "checkpoint" / "model", save=True)
    return {"history": trained.history, "out": str(out)}


def load_retriever(run_dir: Path, data: Dataset) -> TrainedTwoTower:
    """The two-tower of :func:`train_retriever`, rebuilt around its checkpoint."""
    import numpy as np

    from lambdarec.models.two_tower import TrainedTwoTower, TwoTower, TwoTowerConfig

    folder = run_dir / "two_tower"
    raw = _read_json(folder / "two_tower_config.json")
    history = raw.pop("history", [])
    raw.setdefault("use_user_id", True)  # a config written before the field: the tower had it
    config = TwoTowerConfig(**raw)
    model = TwoTower(
        n_items=data.n_items,
        n_users=data.n_users,
        n_categories=data.catalog.n_categories,
        n_price=data.catalog.n_price_buckets,
        config=config,
    )
    _checkpoint(model, folder / "checkpoint" / "model", save=False)
    idx_map = np.load(folder / "item_index.npy")
    return TrainedTwoTower(model, config, idx_map, data.catalog, history=history)


def train_ranker(
    run_dir: Path,
    config: DeepFMConfig | None = None,
    *,
    settings: Settings | None = None,
    exposure_table: pd.DataFrame | None = None,
) -> dict[str, Any]:
    """The DeepFM on the served pipeline's candidates for validation queries (the run's
    two-tower export and the sources' statistics of the training interactions), with the lake's
    impressions of those queries when ``LAMBDAREC_EXPOSURE_NEGATIVES`` is on
    (:mod:`lambdarec.models.exposure`), exported for serving. ``exposure_table`` (an
    :func:`~lambdarec.models.exposure.exposure_table`) is attached instead of the lake's
    impressions, whatever the setting says (a benchmark's impressions)."""
    from lambdarec.models import baselines as B
    from lambdarec.models import deepfm
    from lambdarec.models.exposure import attach_exposure, training_exposure
    from lambdarec.models.served import candidate_lists, served_setup

    data = load_built(run_dir)
    tt = load_retriever(run_dir, data)
    c = config or deepfm.DeepFMConfig()
    cooc = B.CoOccurrence().fit(data)
    queries = data.valid.sample(c.max_queries, c.seed)
    setup = served_setup(data, tt, run_dir, splits={"valid": queries})
    lists = candidate_lists(setup, queries, "valid")
    exposure: Attached | None
    if exposure_table is not None:
        window_ms = _settings(settings).attribution_window_s * 1000
        exposure = attach_exposure(data, queries, lists, exposure_table, window_ms=window_ms)
    else:
        exposure = training_exposure(data, queries, lists, _settings(settings))
    if exposure is not None:
        queries, lists = exposure.ex, exposure.lists
    fm = deepfm.train_deepfm(data, queries, lists, tt.idx_map, cooc, c)
    out = run_dir / "deepfm"
    _checkpoint(fm.model, out / "checkpoint" / "model", save=True)
    _write_json(
        out / "deepfm_config.json",
        {
            **asdict(c),
            "sources": fm.sources,
            "history": fm.history,
            "exposure": None if exposure is None else exposure.stats,
        },
    )
    # What serving scores with (numpy, no TensorFlow, no dataset.npz): lambdarec.inference.ranker.
    deepfm.export_for_serving(fm, data, out / deepfm.SERVING_EXPORT)
    return {
        "history": fm.history,
        "sources": fm.sources,
        "exposure": None if exposure is None else exposure.stats,
        "out": str(out),
    }


def registry_for(name: str, settings: Settings) -> ModelRegistry:
    """The model's registry; with a file/SQLite tracking URI the artifacts go under the state dir
    (not ./mlruns of whatever folder the task runs in)."""
    from lambdarec.registry import ModelRegistry

    uri = settings.mlflow_uri
    local = uri.startswith(("sqlite:", "file:")) or "://" not in uri
    artifacts = (settings.state_dir / "mlflow" / "artifacts").resolve().as_uri() if local else None
    return ModelRegistry(uri, name, artifact_location=artifacts)


def _reference_profile(s: Settings, info: dict[str, Any], scores: Any) -> Any:
    """The drift monitor's reference for this model (``lambdarec.monitoring``): the training
    period's events in the lake and the retriever's top-10 scores on the test queries. None for
    a dataset that is not the lake (there is nothing for the monitor to compare it with)."""
    if info.get("dataset") != "lake" or not info.get("data_range"):
        return None
    import numpy as np

    from lambdarec.monitoring.profile import ProfileNotFoundError, training_profile

    start, end = (str(v)[:10] for v in info["data_range"])
    top = np.asarray(scores, dtype=float)[:, :10].ravel()
    try:
        return training_profile(s, start, end, scores=top[np.isfinite(top)])
    except ProfileNotFoundError as error:
        log.warning("no drift reference profile for this run: %s", error)
        return None


def evaluate(
    run_dir: Path,
    *,
    settings: Settings | None = None,
    baselines: bool = True,
    test_max: int | None = None,
    min_delta: float = 0.0,
) -> dict[str, Any]:
    """Full-ranking evaluation of the served pipeline with the new models against the champion
    and the baselines on the test split, logged to MLflow, and the gate (see the module doc):
    both models are promoted only if the served pipeline with them beats the champion's and the
    best pipeline without neural models; otherwise ``decision.json`` says what serves."""
    from lambdarec.models import baselines as B
    from lambdarec.models import evaluate as E
    from lambdarec.models.served import (
        evaluate_pipelines,
        evaluate_served,
        load_ranker_export,
        served_setup,
    )
    from lambdarec.recommend.types import Models

    s = _settings(settings)
    data = load_built(run_dir)
    info = _read_json(run_dir / "dataset.json")
    tt = load_retriever(run_dir, data)
    test = data.test.sample(test_max, 0)
    results = []
    if baselines:
        for model in (B.MostPopular(), B.CoOccurrence(), B.ALS()):
            results.append(E.evaluate_ranker(model.fit(data), data, test))
    cand, scores = E.ranker_topk(tt, test, 100)
    results.append(E.evaluate_topk(RETRIEVAL_ROW, cand, data, test))
    setup = served_setup(data, tt, run_dir, splits={"test": test}, sources=s.candidate_sources_list)
    load_ranker_export(setup, run_dir / "deepfm", data)
    results.append(evaluate_served(setup, data, test, name=SERVED_ROW))
    # The pipelines serving can run without neural models: each count-based source alone, and
    # all of them blended. The best one is the floor the new models must beat.
    plain = [n for n in s.candidate_sources_list if n != "vector"]
    fallbacks = {f"pipeline:{'+'.join(plain)}": plain, **{f"source:{n}": [n] for n in plain}}
    results += evaluate_pipelines(
        setup, data, test, fallbacks, models=Models(None, None), ranker_expected=False
    )
    payload = E.results_json(data, results, {"evaluation_id": info["evaluation_id"]})
    figs = E.figures(results)
    report_dir = run_dir / "evaluation"
    jpath, hpath = E.write_report(payload, figs, report_dir)
    plots = []
    for key, fig in figs.items():
        fig.savefig(report_dir / f"{key}.png", dpi=80)
        plots.append(report_dir / f"{key}.png")

    models = payload["models"]
    metric = GATE_METRIC
    floor_row = max(fallbacks, key=lambda row: models[row][metric])
    floor = (f"the best pipeline without neural models ({floor_row})", models[floor_row][metric])
    best_baseline = max(
        (m for m in models if m not in (RETRIEVAL_ROW, SERVED_ROW)),
        key=lambda m: models[m][metric],
        default=None,
    )
    decisions: dict[str, Any] = {}
    profile = _reference_profile(s, info, scores)
    for name, folder in ((TWO_TOWER, run_dir / "two_tower"), (DEEPFM, run_dir / "deepfm")):
        row = PROMOTION[name]
        metrics = {k: float(v) for k, v in models[row].items() if isinstance(v, float)}
        metrics[f"floor_{metric}"] = float(floor[1])
        if best_baseline is not None:
            metrics[f"best_baseline_{metric}"] = float(models[best_baseline][metric])
        registry = registry_for(name, s)
        run_id = registry.log_run(
            params={
                "dataset": info["dataset"],
                "run_dir": str(run_dir),
                "best_baseline": best_baseline or "none",
                "floor": floor_row,
            },
            metrics=metrics,
            evaluation_id=info["evaluation_id"],
            feature_services=info.get("feature_services") or None,
            data_range=tuple(info["data_range"]) if info.get("data_range") else None,
            plots=[*plots, jpath, hpath],
            model_dir=folder,
            run_name=f"{name} {run_dir.name}",
            reference_profile=profile,
        )
        version = registry.register(run_id)
        decision = registry.promote(
            version, metrics, metric=metric, min_delta=min_delta, floor=floor
        )
        decisions[name] = {**asdict(decision), "run_id": run_id}
        log.info("%s v%s: %s", name, version, decision.reason)
    out = {
        "evaluation_id": info["evaluation_id"],
        "best_baseline": best_baseline,
        "floor": {"row": floor_row, "sources": fallbacks[floor_row], metric: floor[1]},
        "serve": serving_choice(decisions, fallbacks[floor_row], floor[1]),
        "models": models,
        "decisions": decisions,
        "report": str(hpath),
    }
    log.info("serving: %s", out["serve"]["reason"])
    _write_json(run_dir / "decision.json", out)
    publish_evaluation(run_dir, s)
    return out


def publish_evaluation(run_dir: Path, settings: Settings) -> Path:
    """Copy the run's evaluation (``report.html``, ``metrics.json``) and ``decision.json`` to
    ``<reports_dir>/models/retraining/<run>/``, where the reports site lists it, and refresh the
    site's index. The run folder keeps its own copy (MLflow logged it from there)."""
    import shutil

    from lambdarec.reports import RETRAINING_DIR, write_index

    target = settings.reports_dir / "models" / RETRAINING_DIR / run_dir.name
    target.mkdir(parents=True, exist_ok=True)
    for source in (
        run_dir / "evaluation" / "report.html",
        run_dir / "evaluation" / "metrics.json",
        run_dir / "decision.json",
    ):
        shutil.copyfile(source, target / source.name)
    write_index(settings)
    log.info("evaluation report: %s", target / "report.html")
    return target


def serving_choice(
    decisions: dict[str, Any], floor_sources: list[str], floor_value: float
) -> dict[str, Any]:
    """What serving runs after this evaluation: the new models when both were promoted; the
    champion when its own served score on the same evaluation beats the floor (or cannot be
    compared); else the best pipeline without neural models (``floor_sources``)."""
    new, ranker = decisions[TWO_TOWER], decisions[DEEPFM]
    if new["promoted"] and ranker["promoted"]:
        return {"mode": "models", "reason": f"v{new['version']} and its ranker were promoted"}
    champion_value = new.get("champion_value")
    if new.get("champion_version") is not None and (
        champion_value is None or champion_value > floor_value
    ):
        return {
            "mode": "champion",
            "reason": f"the champion v{new['champion_version']} keeps serving: "
            + str(new["reason"]),
        }
    return {
        "mode": "baselines",
        "sources": floor_sources,
        "reason": "no model beats the best pipeline without neural models; serving "
        + "+".join(floor_sources)
        + f" ({floor_value:.6g}): "
        + str(new["reason"]),
    }


def export_embeddings(run_dir: Path, *, settings: Settings | None = None) -> dict[str, Any]:
    """Publish the promoted two-tower's item embeddings as a new Milvus collection version
    recording its registry version, write the reload marker naming it (:func:`notify_serving`),
    then switch the serving alias to it; nothing when the two-tower was not promoted. The lake
    catalog's items absent from the training data are embedded by the item tower and published
    with them (:func:`new_catalog_items`). The run's ``two_tower/`` is first checked against the
    manifest registered with its version (:class:`~lambdarec.integrity.IntegrityError`: nothing
    is published)."""
    import numpy as np

    from lambdarec.retrieval.index import VectorIndex

    decision = _read_json(run_dir / "decision.json")["decisions"][TWO_TOWER]
    if not decision["promoted"]:
        out = {"published": False, "reason": f"two_tower not promoted: {decision['reason']}"}
        _write_json(run_dir / "export.json", out)
        return out
    model_version = str(decision["version"])
    # The run folder sits on a shared volume: publish only the files that were registered.
    registry_for(TWO_TOWER, _settings(settings)).verify_local(model_version, run_dir / "two_tower")
    data = load_built(run_dir)
    emb = np.load(run_dir / "two_tower" / "item_embeddings.npz")
    ids = [str(i) for i in emb["ids"]]
    matrix = emb["embeddings"]
    categories = [str(c) for c in data.catalog.category]
    new, new_note = new_catalog_items(run_dir, _settings(settings))
    if new is not None and len(new):
        ids += new.ids
        matrix = np.concatenate([matrix, new.embeddings])
        categories += [str(c) for c in new.category_index]
    with VectorIndex.from_settings(_settings(settings)) as index:
        version = index.publish(
            ids, matrix, categories, model_version=model_version, switch=False, progress=False
        )
        out = {
            "published": True,
            "version": version,
            "collection": index.collection_name(version),
            "alias": index.config.alias,
            "items": len(ids),
            "new_items": len(new) if new is not None else 0,
            "new_items_note": new_note,
            "model_version": model_version,
            "switched": False,
        }
        # Marker first: the alias never serves a version no marker announced (serving watches
        # the marker and checks the alias at every poll until it serves this version).
        _write_json(run_dir / "export.json", out)
        notify_serving(run_dir, settings=settings)
        index.switch(version)
        out["switched"] = True
    _write_json(run_dir / "export.json", out)
    return out


def new_catalog_items(run_dir: Path, settings: Settings) -> tuple[NewItems | None, str]:
    """The lake catalog's items the run's two-tower has no embedding for, embedded by its item
    tower, and a note. A catalog row the tower cannot embed (no valid price) leaves all new items
    out of this publish with the reason in the note (the daily ``embed_new_items`` task fails on
    it): the trained items must still be published."""
    from lambdarec.data.lake import read_catalog
    from lambdarec.inference.item_tower import EXPORT_DIR, META_FILE, unseen_catalog_items
    from lambdarec.tables import catalog_path

    if not (run_dir / "two_tower" / EXPORT_DIR / META_FILE).exists():
        return None, "no item tower in this run"
    if not catalog_path(settings.lake_dir).exists():
        return None, f"no catalog at {catalog_path(settings.lake_dir)}"
    try:
        new = unseen_catalog_items(run_dir / "two_tower", read_catalog(settings.lake_dir))
    except ValueError as error:
        log.warning("new catalog items left out of this publish: %s", error)
        return None, f"left out: {error}"
    log.info(
        "embedded %d catalog item(s) absent from the training data (%d with an unknown category)",
        len(new),
        new.unknown_category,
    )
    return new, f"{len(new)} embedded by the item tower"


def reload_marker(settings: Settings) -> Path:
    """The file serving watches for a new champion / index version (``Settings.reload_marker``)."""
    return settings.reload_marker


def notify_serving(run_dir: Path, *, settings: Settings | None = None) -> dict[str, Any]:
    """Tell serving what to run: write the reload marker, which every serving process watches
    (``Recommender.watch_reload``). It names the new champion and the index version about to
    serve (serving loads that version's query tower and ranker once the alias serves it) or, when
    no model beats the best pipeline without neural models, that pipeline's sources (serving
    drops its models); when the champion keeps serving and no index was published nothing is
    written. :func:`export_embeddings` calls it before switching the alias; the ``notify`` step
    after it then leaves that marker as it is (a second write would reload serving again)."""
    s = _settings(settings)
    built = run_dir / "dataset.json"
    skipped = _read_json(built).get("skipped") if built.exists() else None
    if skipped:
        return {"skipped": skipped, "reload": False}
    export = _read_json(run_dir / "export.json")
    if export.get("published") and export.get("switched"):
        return _read_json(run_dir / "reload.json")
    decision = _read_json(run_dir / "decision.json")
    serve = decision["serve"]
    payload = {
        "at": datetime.now(UTC).isoformat(),
        "run_dir": str(run_dir),
        "two_tower_version": decision["decisions"][TWO_TOWER]["version"],
        "two_tower_promoted": decision["decisions"][TWO_TOWER]["promoted"],
        "deepfm_promoted": decision["decisions"][DEEPFM]["promoted"],
        "serve": serve,
        "index": export,
    }
    # A published index always comes with a marker: the alias must not switch unannounced.
    payload["reload"] = serve["mode"] != "champion" or bool(export.get("published"))
    payload["reason"] = serve["reason"]
    if payload["reload"]:
        _write_json(reload_marker(s), payload)
    _write_json(run_dir / "reload.json", payload)
    return payload


__all__ = [
    "STEPS",
    "build",
    "champion_trained_on",
    "evaluate",
    "evaluation_id",
    "export_embeddings",
    "load_built",
    "load_retriever",
    "new_catalog_items",
    "notify_serving",
    "registry_for",
    "reload_marker",
    "train_ranker",
    "train_retriever",
]
