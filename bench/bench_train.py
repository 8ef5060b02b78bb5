"""Training throughput of the two-tower retriever (each query encoder) and the DeepFM ranker.

Prints one JSON line per model: {"model", "device", "examples_per_s", "epoch_seconds", ...};
the two-tower's lines are ``two_tower`` (the pooling encoder, in-batch negatives, whose
candidates the DeepFM trains on) and ``two_tower_transformer`` (self-attention).
The device is whatever TensorFlow sees (a GPU when there is one, else the CPU); the script is
the same on both. The first epoch includes graph tracing, so the figure is the best later epoch.

    python bench/bench_train.py --dataset synthetic --epochs 3
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import json  # noqa: E402
import logging  # noqa: E402
from typing import Annotated  # noqa: E402

import typer  # noqa: E402

app = typer.Typer(add_completion=False, help=__doc__)


@app.command()
def main(
    dataset: Annotated[
        str, typer.Option(help="synthetic | taobao | diginetica | a file path")
    ] = "synthetic",
    epochs: Annotated[int, typer.Option(help="Epochs per model (>= 2: the first one traces)")] = 3,
    max_train: Annotated[int | None, typer.Option(help="Two-tower training pairs")] = 100_000,
    synthetic_events: int = 150_000,
    transformer: Annotated[
        bool, typer.Option(help="Also train the transformer query encoder")
    ] = True,
) -> None:
    import tempfile
    from pathlib import Path

    import tensorflow as tf

    from lambdarec.models.baselines import CoOccurrence
    from lambdarec.models.data import load_dataset
    from lambdarec.models.deepfm import DeepFMConfig, train_deepfm
    from lambdarec.models.served import candidate_lists, served_setup
    from lambdarec.models.two_tower import TwoTowerConfig, train_two_tower

    logging.basicConfig(level=logging.WARNING)
    gpus = tf.config.list_physical_devices("GPU")
    device = f"GPU:{gpus[0].name}" if gpus else "CPU"
    data = load_dataset(dataset, synthetic_events=synthetic_events)
    # patience = epochs so early stopping never cuts the benchmark short
    tt = train_two_tower(data, TwoTowerConfig(epochs=epochs, max_train=max_train, patience=epochs))
    histories = {"two_tower": tt.history}
    if transformer:
        config = TwoTowerConfig(
            epochs=epochs, max_train=max_train, patience=epochs, query_encoder="transformer"
        )
        histories["two_tower_transformer"] = train_two_tower(data, config).history
    cooc = CoOccurrence().fit(data)
    queries = data.valid.sample(10_000, 0)
    # the DeepFM trains on the served pipeline's candidate lists, as models.pipeline builds them
    with tempfile.TemporaryDirectory() as work:
        setup = served_setup(data, tt, Path(work), splits={"valid": queries})
        lists = candidate_lists(setup, queries, "valid")
        fm = train_deepfm(
            data, queries, lists, tt.idx_map, cooc, DeepFMConfig(epochs=epochs, patience=epochs)
        )
    # What one example is: a (context, next item) pair for the retriever; for the listwise
    # ranker, one (query, candidate) row of the 100 it scores per query.
    units = {
        "two_tower": "training pair",
        "two_tower_transformer": "training pair",
        "deepfm": "(query, candidate) row",
    }
    for name, hist in {**histories, "deepfm": fm.history}.items():
        steady = hist[1:] or hist
        best = max(steady, key=lambda h: h["examples_per_s"])
        print(
            json.dumps(
                {
                    "model": name,
                    "device": device,
                    "examples_per_s": best["examples_per_s"],
                    "epoch_seconds": best["epoch_seconds"],
                    "first_epoch_seconds": hist[0]["epoch_seconds"],
                    "example": units[name],
                    "dataset": data.name,
                    "cpu_count": os.cpu_count(),
                }
            )
        )


if __name__ == "__main__":
    app()
