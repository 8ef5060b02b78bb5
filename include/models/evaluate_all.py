"""Evaluate the served pipeline against the strongest baseline on every development dataset.

    python include/models/evaluate_all.py [--datasets diginetica,taobao,amazon-sports,amazon-toys]

Each dataset runs the full evaluation (``include/models/evaluate.py``'s: the tuned baselines, the
two-tower, the served pipeline and each of its candidate sources alone) under its standard
protocol, with ONE configuration for all of them (the defaults; nothing is chosen per dataset),
writes its report under ``<state_dir>/reports/models/<dataset>/<stamp>/`` and prints one JSON
line: ``dataset``, ``protocol``, ``metric`` (the headline metric: NDCG@10 for loo and temporal,
MRR@20 for session), ``served`` and ``best_baseline`` (its values), ``best_baseline_name``,
``ratio`` (served / best_baseline), ``hr20`` (the served pipeline's HR@20, the P@20 of the
session papers) beside the best baseline's by that measure (``best_baseline_hr20``, its name,
``hr20_ratio``), ``union_recall`` (how often the target is among the served candidates before
ranking), ``published`` (the anchor's value of the headline metric, or null), the queries,
the seconds and the report's path. The baselines are every row that is not the served pipeline
or a neural model: popular, trending, co-occurrence, ALS, and the pipeline's count-based sources
alone (session-kNN, sequential rules, co-occurrence as served).
"""

from __future__ import annotations

from lambdarec.models.programs import import_tensorflow_quietly, prepare_tensorflow, run

prepare_tensorflow()  # before anything imports TensorFlow

import json  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from typing import Annotated, Any  # noqa: E402

import typer  # noqa: E402

app = typer.Typer(add_completion=False, help=__doc__)

DATASETS = ("diginetica", "taobao", "amazon-sports", "amazon-toys")
#: The headline metric of each protocol.
HEADLINE = {"loo": "ndcg@10", "temporal": "ndcg@10", "session": "mrr@20", "srgnn": "mrr@20"}
#: Published anchors of the headline metric on exactly these splits (their READMEs): SR-GNN on
#: Diginetica's SR-GNN split (MRR@20 17.59%), ICLRec on the Amazon 5-core sequences (NDCG@10).
PUBLISHED = {"diginetica": 0.1759, "amazon-sports": 0.0238, "amazon-toys": 0.0480}
#: Rows that are not baselines: the served pipeline and the neural models on their own.
NOT_BASELINES = ("served", "two_tower", "source:vector")


def headline(dataset: str, payload: dict[str, Any]) -> dict[str, Any]:
    """The dataset's JSON line from an evaluation's payload."""
    protocol = str(payload["split"].get("protocol") or payload["split"].get("kind"))
    metric = HEADLINE.get(str(payload["split"].get("kind")), HEADLINE.get(protocol, "ndcg@10"))
    models = payload["models"]
    baselines = {name: row for name, row in models.items() if name not in NOT_BASELINES}
    best_name = max(baselines, key=lambda name: baselines[name][metric], default=None)
    served = models.get("served", {}).get(metric)
    best = baselines[best_name][metric] if best_name is not None else None
    hr20 = models.get("served", {}).get("hr@20")
    best_hr20_name = max(baselines, key=lambda name: baselines[name]["hr@20"], default=None)
    best_hr20 = baselines[best_hr20_name]["hr@20"] if best_hr20_name is not None else None
    return {
        "dataset": dataset,
        "protocol": protocol,
        "metric": metric,
        "served": served,
        "best_baseline": best,
        "best_baseline_name": best_name,
        "ratio": round(served / best, 4) if served is not None and best else None,
        "hr20": hr20,
        "best_baseline_hr20": best_hr20,
        "best_baseline_hr20_name": best_hr20_name,
        "hr20_ratio": round(hr20 / best_hr20, 4) if hr20 is not None and best_hr20 else None,
        "union_recall": payload.get("served_candidates", {}).get("union_recall"),
        "published": PUBLISHED.get(dataset),
        "n_test": payload.get("n_test"),
    }


@app.command()
def main(
    datasets: Annotated[
        str, typer.Option(help="Comma-separated dataset names (load_dataset's)")
    ] = ",".join(DATASETS),
    test_max: Annotated[
        int | None, typer.Option(help="Evaluate on at most this many test queries each")
    ] = None,
) -> None:
    from lambdarec.models.data import load_dataset
    from lambdarec.models.pipeline import default_report_dir, run_evaluation

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    import_tensorflow_quietly()
    for name in filter(None, (d.strip() for d in datasets.split(","))):
        t0 = time.perf_counter()
        data = load_dataset(name)
        out_dir = default_report_dir(data.name)
        payload, _ = run_evaluation(data, out_dir, session_ablation=False, test_max=test_max)
        line = headline(name, payload)
        line["seconds"] = round(time.perf_counter() - t0, 1)
        line["report"] = str(out_dir / "report.html")
        print(json.dumps(line), flush=True)
    sys.stdout.flush()


if __name__ == "__main__":
    run(app)
