"""Evaluate the two-stage model against tuned baselines on one dataset (full ranking).

    python include/models/evaluate.py --dataset diginetica|taobao|synthetic|<interactions file>

Prints one JSON line of metrics and writes metrics.json + report.html under
``<state_dir>/reports/models/<dataset>/<UTC stamp>/`` (or ``--out``).
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import json  # noqa: E402
import logging  # noqa: E402
from pathlib import Path  # noqa: E402, TC003  (typer reads the annotation at runtime)
from typing import Annotated  # noqa: E402

import typer  # noqa: E402

app = typer.Typer(add_completion=False, help=__doc__)


@app.command()
def main(
    dataset: Annotated[
        str, typer.Option(help="diginetica | taobao | synthetic | a file path")
    ] = "synthetic",
    out: Annotated[
        Path | None, typer.Option(help="Report folder (default: under the state dir)")
    ] = None,
    max_train: Annotated[int, typer.Option(help="Subsample two-tower training pairs (0: all)")] = 0,
    epochs: Annotated[
        int, typer.Option(help="Two-tower epochs (early stopping may stop sooner)")
    ] = 8,
    fm_queries: Annotated[
        int, typer.Option(help="Validation queries whose candidates train DeepFM")
    ] = 40_000,
    session_ablation: Annotated[
        bool, typer.Option(help="Also train without session features")
    ] = True,
    baselines: Annotated[bool, typer.Option(help="Evaluate the tuned baselines")] = True,
    test_max: Annotated[
        int | None, typer.Option(help="Evaluate on at most this many test queries")
    ] = None,
    seed: int = 42,
) -> None:
    from lambdarec.models.data import load_dataset
    from lambdarec.models.deepfm import DeepFMConfig
    from lambdarec.models.pipeline import default_report_dir, run_evaluation
    from lambdarec.models.two_tower import TwoTowerConfig

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    data = load_dataset(dataset, seed=seed)
    out_dir = out or default_report_dir(data.name)
    payload, _ = run_evaluation(
        data,
        out_dir,
        tt_config=TwoTowerConfig(epochs=epochs, max_train=max_train or None, seed=seed),
        fm_config=DeepFMConfig(max_queries=fm_queries, seed=seed),
        session_ablation=session_ablation,
        baselines=baselines,
        test_max=test_max,
    )
    payload["report"] = str(out_dir / "report.html")
    print(json.dumps(payload, default=str))


if __name__ == "__main__":
    app()
