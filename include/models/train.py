"""Train the two-tower retriever and the DeepFM ranker on a dataset and write the artifacts.

    python include/models/train.py --dataset synthetic|taobao|diginetica|amazon-toys|<file> --out DIR

DIR gets the numpy exports serving loads, as a retraining run folder holds them:
``two_tower/`` (item_embeddings.npz: ids + float32 matrix, item_index.npy, the config,
item_tower/ and query_tower_numpy/) and ``deepfm/serving/`` (the ranker, trained on the
recommendation pipeline's candidate lists). An expected error (a bad option, data that cannot be
loaded or split) is one line on stderr and a non-zero exit code.
"""

from __future__ import annotations

from lambdarec.models.programs import (
    QueryEncoderOption,
    encoder_options,
    import_tensorflow_quietly,
    prepare_tensorflow,
    run,
)

prepare_tensorflow()  # before anything imports TensorFlow

import json  # noqa: E402
import logging  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Annotated  # noqa: E402

import typer  # noqa: E402

app = typer.Typer(add_completion=False)


@app.command(help=__doc__)
def main(
    dataset: Annotated[
        str,
        typer.Option(
            help="diginetica | taobao | amazon-sports | amazon-toys | synthetic | lake | a file"
        ),
    ] = "synthetic",
    out: Annotated[Path, typer.Option(help="Artifact folder")] = Path("artifacts/models"),
    max_train: Annotated[int, typer.Option(help="Subsample two-tower training pairs (0: all)")] = 0,
    epochs: Annotated[
        int, typer.Option(help="Two-tower epochs (early stopping may stop sooner)")
    ] = 8,
    fm_queries: Annotated[
        int, typer.Option(help="Validation queries whose candidates train DeepFM")
    ] = 40_000,
    query_encoder: QueryEncoderOption = None,
    seed: int = 42,
) -> None:
    from lambdarec.models.data import load_dataset

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    data = load_dataset(dataset, seed=seed)
    import_tensorflow_quietly()
    from lambdarec.models.deepfm import DeepFMConfig
    from lambdarec.models.pipeline import train_models
    from lambdarec.models.two_tower import TwoTowerConfig

    out.mkdir(parents=True, exist_ok=True)
    trained = train_models(
        data,
        TwoTowerConfig(
            epochs=epochs,
            max_train=max_train or None,
            seed=seed,
            **encoder_options(query_encoder),  # type: ignore[arg-type]
        ),
        DeepFMConfig(max_queries=fm_queries, seed=seed),
        work_dir=out,
    )
    print(
        json.dumps(
            {
                "dataset": data.name,
                "out": str(out),
                "seconds": trained.seconds,
                "two_tower": trained.retriever.history,
                "deepfm": trained.ranker.history,
            }
        )
    )


if __name__ == "__main__":
    run(app)
