"""Train the two-tower retriever and the DeepFM ranker on a dataset and write the artifacts.

    python include/models/train.py --dataset synthetic|taobao|diginetica|amazon-toys|<file> --out DIR

DIR gets item_embeddings.npz (ids + float32 matrix), query_tower/ (SavedModel),
query_tower_numpy/ (the same tower in numpy), item_tower/, item_index.npy,
two_tower_config.json and deepfm.weights.h5. An expected error (a bad option, data that cannot
be loaded or split) is one line on stderr and a non-zero exit code.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
# TensorFlow reads these when it loads: no CUDA probing and no C++ info lines on a CPU machine.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
if not os.path.exists("/dev/nvidia0"):
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import json  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Annotated  # noqa: E402

import typer  # noqa: E402

app = typer.Typer(add_completion=False)


def import_tensorflow_quietly() -> None:
    """Import TensorFlow with stderr muted on a machine without a GPU: its CUDA probe and the
    lines it writes before its logging is set up are noise there, and no setting turns them
    off."""
    if os.environ.get("CUDA_VISIBLE_DEVICES") != "":
        return
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        import tensorflow as tf

        tf.config.list_logical_devices("CPU")  # the CUDA probe happens here, once
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


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
        TwoTowerConfig(epochs=epochs, max_train=max_train or None, seed=seed),
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


def run() -> None:
    """The program: an expected error is one ``error:`` line on stderr, not a traceback."""
    from lambdarec.data.loaders import LoadError
    from lambdarec.models.data import DatasetError

    try:
        code = app(standalone_mode=False)
    except typer.TyperException as exc:  # typer's click errors: usage, bad parameter
        _die(exc.format_message(), exc.exit_code)
    except (LoadError, DatasetError, FileNotFoundError) as exc:
        _die(str(exc), 1)
    if isinstance(code, int) and code:
        raise SystemExit(code)


def _die(message: str, code: int) -> None:
    line = "; ".join(part.strip() for part in message.splitlines() if part.strip())
    print(f"error: {line}", file=sys.stderr)
    raise SystemExit(code)


if __name__ == "__main__":
    run()
