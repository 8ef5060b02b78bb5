"""Exposure as training signal, measured: the DeepFM trained with and without impressions.

On the synthetic data (``load_dataset("synthetic")``, the generator's hidden model behind it):

1. the two-tower and the served pipeline (the configured candidate sources) as evaluation builds
   them; a DeepFM trained on the pipeline's candidates of the validation queries (``baseline``:
   what the ranker is without impressions);
2. impressions: the served pipeline with that ranker shows each validation query of a known user
   its top 10 (logged a millisecond before the query's next event); the simulator's shoppers
   (:mod:`lambdarec.simulate`: position-based examination, the hidden model's preferences, the
   cart and purchase funnel) click, cart and buy from them with a seeded generator; the clicks
   become the ``attributed`` rows the attribution job would write;
3. two more DeepFMs on the same queries with the same seed: ``exposure`` (the impressions
   attached, :func:`lambdarec.models.exposure.attach_exposure`, with the position field) and
   ``exposure_no_position`` (the same examples without the position field: what the position
   adds); and ``baseline_reseeded``, the baseline with another seed (training noise alone);
4. each served pipeline evaluated on the same test queries: offline, the project's metrics
   against the real next item (NDCG@10, HR@20, MRR@20); and in the simulator's choice model, each
   test query's served top 10 shown to its shopper: the expected CTR@10 (a click on the list)
   and conversion (a purchase from it), computed exactly from the same probabilities the
   simulator draws from, paired per query (the difference's mean and 95% interval).

Prints one JSON line. ``--quick`` is a small run for a smoke test.

    python bench/bench_exposure.py
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import json  # noqa: E402
import logging  # noqa: E402
import time  # noqa: E402
from typing import TYPE_CHECKING, Annotated, Any  # noqa: E402

import numpy as np  # noqa: E402
import typer  # noqa: E402

if TYPE_CHECKING:
    import pandas as pd

    from lambdarec.models.data import Dataset, Examples
    from lambdarec.models.served import ServedSetup
    from lambdarec.simulate import Population, Shopper

app = typer.Typer(add_completion=False, help=__doc__)
K = 10


def _shoppers(population: Population) -> dict[str, Shopper]:
    return {s.user_id: s for s in population.shoppers}


def log_impressions(
    setup: ServedSetup,
    data: Dataset,
    queries: Examples,
    population: Population,
    seed: int,
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, int]]:
    """The served top 10 of each validation query of a known user, and what its shopper did."""
    import pandas as pd

    from lambdarec.models.served import served_topk
    from lambdarec.simulate import choose

    rng = np.random.default_rng(seed)
    shoppers = _shoppers(population)
    topk, _ = served_topk(setup, queries, "valid", k=K)
    shown, outcomes = [], []
    lists = clicks = purchases = 0
    for q in np.flatnonzero(queries.user > 0).tolist():
        user_id = str(data.user_ids[queries.user[q] - 1])
        shopper = shoppers.get(user_id)
        items = [setup.item_ids[c] for c in topk[q] if c >= 0]
        if shopper is None or not items:
            continue
        rid, ts = f"valid-{q}", int(queries.ts[q]) - 1
        lists += 1
        shown += [(rid, ts, user_id, item, p) for p, item in enumerate(items)]
        chosen = choose(
            population, shopper, [{"item_id": i, "position": p} for p, i in enumerate(items)], rng
        )
        if chosen is None:
            continue
        item = items[chosen]
        clicks += 1
        outcomes.append((rid, item, ts + 500, "view"))
        if rng.random() < population.cart_probability(shopper, item, None):
            outcomes.append((rid, item, ts + 600, "add_to_cart"))
            if rng.random() < population.purchase_probability(shopper, item, None):
                outcomes.append((rid, item, ts + 700, "purchase"))
                purchases += 1
    impressions = pd.DataFrame(
        shown, columns=["request_id", "ts", "user_id", "item_id", "position"]
    )
    attributed = pd.DataFrame(outcomes, columns=["request_id", "item_id", "event_ts", "event_type"])
    return impressions, attributed, {"lists": lists, "clicks": clicks, "purchases": purchases}


def simulated(
    setup: ServedSetup, data: Dataset, test: Examples, population: Population
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per test query of a known shopper: (query index, expected click on the served top 10,
    expected purchase from it) under the simulator's choice model (scan top down, each place
    examined with ``examination``, the first examined item that appeals clicked)."""
    from lambdarec.models.served import served_topk
    from lambdarec.simulate import examination

    shoppers = _shoppers(population)
    topk, _ = served_topk(setup, test, "test", k=K)
    qs, ctr, conv = [], [], []
    for q in np.flatnonzero(test.user > 0).tolist():
        shopper = shoppers.get(str(data.user_ids[test.user[q] - 1]))
        if shopper is None:
            continue
        none_yet, clicked, bought = 1.0, 0.0, 0.0
        for p, c in enumerate(c for c in topk[q] if c >= 0):
            item = setup.item_ids[c]
            take = examination(p) * population.click_probability(shopper, item, None)
            first = none_yet * take
            clicked += first
            bought += (
                first
                * population.cart_probability(shopper, item, None)
                * population.purchase_probability(shopper, item, None)
            )
            none_yet *= 1.0 - take
        qs.append(q)
        ctr.append(clicked)
        conv.append(bought)
    return np.array(qs), np.array(ctr), np.array(conv)


def paired(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """b against a on the same queries: means, the relative lift and its 95% interval."""
    d = b - a
    se = float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else float("nan")
    base = float(a.mean()) or float("nan")
    return {
        "control": round(float(a.mean()), 5),
        "treatment": round(float(b.mean()), 5),
        "lift": round(float(d.mean()) / base, 4),
        "lift_ci95": [
            round((float(d.mean()) - 1.96 * se) / base, 4),
            round((float(d.mean()) + 1.96 * se) / base, 4),
        ],
    }


@app.command()
def main(
    events: Annotated[int, typer.Option(help="Synthetic events generated")] = 60_000,
    tt_epochs: Annotated[int, typer.Option(help="Two-tower epochs")] = 3,
    fm_epochs: Annotated[int, typer.Option(help="DeepFM epochs (early stopping decides)")] = 20,
    queries: Annotated[int, typer.Option(help="Validation queries the rankers train on")] = 20_000,
    test_queries: Annotated[int, typer.Option(help="Test queries evaluated")] = 5_000,
    seed: Annotated[int, typer.Option(help="Data, training and shoppers' seed")] = 42,
    quick: Annotated[bool, typer.Option(help="A small run (smoke test)")] = False,
) -> None:
    import tempfile
    from dataclasses import replace
    from pathlib import Path

    from lambdarec.data.generator import ClickstreamGenerator, GeneratorConfig
    from lambdarec.models import baselines as B
    from lambdarec.models import deepfm
    from lambdarec.models.data import load_dataset
    from lambdarec.models.exposure import attach_exposure, exposure_table
    from lambdarec.models.served import candidate_lists, evaluate_served, served_setup, with_ranker
    from lambdarec.models.two_tower import TwoTowerConfig, train_two_tower
    from lambdarec.simulate import Population

    if quick:
        events, tt_epochs, fm_epochs, queries, test_queries = 20_000, 1, 2, 2_000, 500
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    # each DeepFM epoch and the exposure join's counts on stderr: a long run shows where it is
    for name in ("lambdarec.models.deepfm", "lambdarec.models.exposure"):
        logging.getLogger(name).setLevel(logging.INFO)
    t0 = time.perf_counter()
    data = load_dataset("synthetic", synthetic_events=events, seed=seed)
    # load_dataset's synthetic configuration, whose hidden model the shoppers are
    config = GeneratorConfig(
        n_users=2_000, n_items=3_000, n_categories=40, days=7, n_events=events, seed=seed
    )
    model = ClickstreamGenerator(config).hidden_model()
    population = Population(model, len(model.user_ids), seed=seed)
    valid = data.valid.sample(queries, seed)
    test = data.test.sample(test_queries, seed)
    tt = train_two_tower(data, TwoTowerConfig(epochs=tt_epochs, seed=seed))
    cooc = B.CoOccurrence().fit(data)
    fm_config = deepfm.DeepFMConfig(epochs=fm_epochs, max_queries=queries, seed=seed)
    out: dict[str, Any] = {"bench": "exposure", "dataset": data.name, "events": events}
    with tempfile.TemporaryDirectory() as work:
        root = Path(work)
        setup = served_setup(data, tt, root, splits={"valid": valid, "test": test})
        lists = candidate_lists(setup, valid, "valid")
        arms: dict[str, Any] = {}
        arms["baseline"] = deepfm.train_deepfm(data, valid, lists, tt.idx_map, cooc, fm_config)
        with_ranker(setup, arms["baseline"], data, root / "baseline")
        impressions, attributed, logged = log_impressions(setup, data, valid, population, seed)
        table = exposure_table(impressions, attributed)
        attached = attach_exposure(data, valid, lists, table, window_ms=1_800_000)
        out["impressions"] = {**logged, **attached.stats}
        arms["exposure"] = deepfm.train_deepfm(
            data, attached.ex, attached.lists, tt.idx_map, cooc, fm_config
        )
        arms["exposure_no_position"] = deepfm.train_deepfm(
            data, attached.ex, replace(attached.lists, shown=None), tt.idx_map, cooc, fm_config
        )
        # the baseline again with another seed: how far training noise alone moves the figures
        arms["baseline_reseeded"] = deepfm.train_deepfm(
            data, valid, lists, tt.idx_map, cooc, replace(fm_config, seed=seed + 1)
        )
        offline, sim = {}, {}
        for name, fm in arms.items():
            with_ranker(setup, fm, data, root / name)
            result = evaluate_served(setup, data, test, split="test", name=name)
            offline[name] = {
                m: round(result.overall[m], 5) for m in ("ndcg@10", "hr@20", "mrr@20")
            } | {"epochs": len(fm.history)}
            sim[name] = simulated(setup, data, test, population)
    qs, base_ctr, base_conv = sim["baseline"]
    out["offline"] = offline
    out["simulated"] = {"shoppers_queries": len(qs)}
    for name in ("exposure", "exposure_no_position", "baseline_reseeded"):
        assert (sim[name][0] == qs).all()
        out["simulated"][name] = {
            "ctr@10": paired(base_ctr, sim[name][1]),
            "conversion": paired(base_conv, sim[name][2]),
        }
    out["seconds"] = round(time.perf_counter() - t0, 1)
    out["cpu_count"] = os.cpu_count()
    print(json.dumps(out))


if __name__ == "__main__":
    app()
