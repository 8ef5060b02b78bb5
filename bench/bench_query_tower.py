"""The two-tower's query encoders side by side on a dataset's VALIDATION queries.

For each encoder (``TwoTowerConfig.query_encoder``), one two-tower trained as the evaluation
trains it (the same configuration for every dataset, early stopping on validation) and ranked
alone over the whole catalog for every validation query, as serving asks it
(:func:`lambdarec.models.data.as_served`: the unknown user; a query without session
context reads the user's recent training items). Prints one JSON line per encoder: the overall
recall@100, HR@20, NDCG@10, the ``no_session_context`` segment (when the split has one), the
same with the model's own inputs (``model_inputs``: the user's id, an empty history without
session context; what the evaluation's ``two_tower`` row ranks) and the training seconds. The
test split is never read.

    python bench/bench_query_tower.py --dataset amazon-toys --encoder pooling --encoder transformer
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import dataclasses  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import time  # noqa: E402
from typing import Annotated, Any  # noqa: E402

import typer  # noqa: E402

app = typer.Typer(add_completion=False, help=__doc__)

KEYS = ("recall@100", "hr@20", "ndcg@10", "mrr@20")


@app.command()
def main(
    dataset: Annotated[
        str, typer.Option(help="amazon-toys | taobao | diginetica | synthetic | a file path")
    ] = "synthetic",
    encoder: Annotated[
        list[str] | None, typer.Option(help="pooling | transformer (repeat for both)")
    ] = None,
    epochs: Annotated[int, typer.Option(help="Epochs (early stopping may stop sooner)")] = 8,
    max_train: Annotated[int, typer.Option(help="Subsample training pairs (0: all)")] = 0,
    valid_max: Annotated[int, typer.Option(help="Validation queries ranked (0: all)")] = 0,
    option: Annotated[
        list[str] | None,
        typer.Option(
            "--set", help="A TwoTowerConfig field for every encoder, e.g. --set use_user_id=false"
        ),
    ] = None,
    seed: int = 42,
) -> None:
    from lambdarec.models import evaluate as E
    from lambdarec.models.data import as_served, load_dataset
    from lambdarec.models.two_tower import TwoTowerConfig, train_two_tower

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    data = load_dataset(dataset, seed=seed)
    valid = data.valid.sample(valid_max or None, seed)
    served = as_served(data, valid)
    fields = {f.name: f for f in dataclasses.fields(TwoTowerConfig)}
    overrides: dict[str, Any] = {}
    for item in option or []:
        key, _, value = item.partition("=")
        if key not in fields:
            raise typer.BadParameter(f"--set {item}: TwoTowerConfig has no field {key!r}")
        overrides[key] = json.loads(value)
    for name in encoder or ["pooling", "transformer"]:
        config = TwoTowerConfig(
            **{
                "epochs": epochs,
                "max_train": max_train or None,
                "seed": seed,
                "query_encoder": name,
                **overrides,
            }
        )
        t0 = time.perf_counter()
        trained = train_two_tower(data, config)
        seconds = time.perf_counter() - t0
        result = E.evaluate_ranker(trained, data, served)
        own = E.evaluate_ranker(trained, data, valid)
        line = {
            "dataset": data.name,
            "protocol": data.split.get("protocol"),
            "encoder": name,
            "set": overrides,
            "valid_queries": len(served),
            **{k: round(result.overall[k], 5) for k in KEYS},
            "train_seconds": round(seconds, 1),
            "epochs": [h["epoch"] for h in trained.history][-1:],
            "valid_recall@20_by_epoch": [h["valid_recall@20"] for h in trained.history],
        }
        segment = result.segments.get("no_session_context")
        if segment is not None:
            line["no_session_context"] = {
                "n": int(segment["n_queries"]),
                **{k: round(segment[k], 5) for k in KEYS},
            }
        line["model_inputs"] = {k: round(own.overall[k], 5) for k in KEYS}
        segment = own.segments.get("no_session_context")
        if segment is not None:
            line["model_inputs"]["no_session_context"] = {k: round(segment[k], 5) for k in KEYS}
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    app()
