"""The weekly retraining steps as one program; the weekly_model_retraining DAG launches each step.

    python include/models/retrain.py build --dataset lake --run-dir DIR [--feast]
    python include/models/retrain.py train-two-tower --run-dir DIR
    python include/models/retrain.py train-deepfm --run-dir DIR
    python include/models/retrain.py evaluate --run-dir DIR
    python include/models/retrain.py export --run-dir DIR
    python include/models/retrain.py notify --run-dir DIR

Each step reads and writes DIR only (see lambdarec.models.retrain) and prints one JSON line.
"""

from __future__ import annotations

from lambdarec.models.programs import QueryEncoderOption, encoder_options, prepare_tensorflow, run

prepare_tensorflow()  # before anything imports TensorFlow

import json  # noqa: E402
import logging  # noqa: E402
from pathlib import Path  # noqa: E402, TC003  (typer reads the annotation at runtime)
from typing import Annotated, Any  # noqa: E402

import typer  # noqa: E402

app = typer.Typer(add_completion=False, help=__doc__, no_args_is_help=True)
#: Exit code of a step with nothing to do (BashOperator's default skip_on_exit_code).
SKIP_EXIT_CODE = 99
RunDir = Annotated[Path, typer.Option(help="The run folder every step reads and writes")]


def _done(payload: dict[str, Any]) -> None:
    print(json.dumps(payload, default=str))


@app.callback()
def _setup() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")


@app.command()
def build(
    run_dir: RunDir,
    dataset: Annotated[
        str, typer.Option(help="lake | taobao | diginetica | synthetic | a file")
    ] = "lake",
    feast: Annotated[bool, typer.Option(help="Read the batch user features from Feast")] = False,
    only_new_data: Annotated[
        bool,
        typer.Option(
            help="Skip (exit 99) when the champion was trained and evaluated on this same data"
        ),
    ] = False,
) -> None:
    """Build the training/validation/test examples.

    Exits with SKIP_EXIT_CODE (99) when ``--only-new-data`` finds nothing new to train on."""
    from lambdarec.models.retrain import build as run

    out = run(dataset, run_dir, feast=feast, only_new_data=only_new_data)
    _done(out)
    if out.get("skipped"):
        raise typer.Exit(SKIP_EXIT_CODE)


@app.command("train-two-tower")
def train_two_tower(
    run_dir: RunDir,
    max_train: Annotated[int, typer.Option(help="Subsample training pairs (0: all)")] = 0,
    epochs: Annotated[int, typer.Option(help="Epochs (early stopping may stop sooner)")] = 8,
    query_encoder: QueryEncoderOption = None,
    seed: int = 42,
) -> None:
    """Train the two-tower retriever."""
    from lambdarec.models.retrain import train_retriever
    from lambdarec.models.two_tower import TwoTowerConfig

    _done(
        train_retriever(
            run_dir,
            TwoTowerConfig(
                epochs=epochs,
                max_train=max_train or None,
                seed=seed,
                **encoder_options(query_encoder),  # type: ignore[arg-type]
            ),
        )
    )


@app.command("train-deepfm")
def train_deepfm(
    run_dir: RunDir,
    queries: Annotated[
        int, typer.Option(help="Validation queries whose candidates train it")
    ] = 40_000,
    epochs: Annotated[
        int | None,
        typer.Option(
            help="Epochs at most (early stopping decides; default: DeepFMConfig's)", min=1
        ),
    ] = None,
    seed: int = 42,
) -> None:
    """Train the DeepFM ranker on the two-tower's candidates."""
    from dataclasses import replace

    from lambdarec.models.deepfm import DeepFMConfig
    from lambdarec.models.retrain import train_ranker

    config = DeepFMConfig(max_queries=queries, seed=seed)
    _done(train_ranker(run_dir, replace(config, epochs=epochs) if epochs else config))


@app.command()
def evaluate(
    run_dir: RunDir,
    test_max: Annotated[
        int, typer.Option(help="Evaluate on at most this many queries (0: all)")
    ] = 0,
    min_delta: Annotated[
        float, typer.Option(help="Margin a model must beat its champion by")
    ] = 0.0,
) -> None:
    """Evaluate against the baselines, log to MLflow, register, promote if better."""
    from lambdarec.models.retrain import evaluate as run

    _done(run(run_dir, test_max=test_max or None, min_delta=min_delta))


@app.command()
def export(run_dir: RunDir) -> None:
    """Publish the promoted two-tower's item embeddings to Milvus (new version + alias switch).

    Exits with SKIP_EXIT_CODE (99, Airflow's skip code) when the two-tower was not promoted."""
    from lambdarec.models.retrain import export_embeddings

    out = export_embeddings(run_dir)
    _done(out)
    if not out["published"]:
        raise typer.Exit(SKIP_EXIT_CODE)


@app.command()
def notify(run_dir: RunDir) -> None:
    """Tell serving to reload (the reload marker).

    Exits with SKIP_EXIT_CODE (99) when the build step found nothing new to train on."""
    from lambdarec.models.retrain import notify_serving

    out = notify_serving(run_dir)
    _done(out)
    if out.get("skipped"):
        raise typer.Exit(SKIP_EXIT_CODE)


if __name__ == "__main__":
    run(app)
