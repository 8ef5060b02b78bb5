"""Evaluate the two-stage model against tuned baselines on one dataset (full ranking).

    python include/models/evaluate.py --dataset NAME|FILE [--protocol loo|session|temporal]

Datasets: diginetica (the SR-GNN split), taobao, amazon-sports, amazon-toys, synthetic, lake, or
a file (an interactions table, or one user per line: 'user item item ...').

Protocols: loo (per user, the last item is the test target and the second-last the validation
target; the default for a sequences file, which has no time), session (every prefix of the test
sessions: the SR-GNN split's own, or for events the sessions ending in the last --test-days days;
the default for diginetica), temporal (targets in the last --test-days days are the test set, the
--valid-days before validation; the default otherwise). --mask-seen takes each query's seen items
out of its ranking (for loo the user's whole history, else the query's own session).

Prints a table of the metrics (the protocol, the number of test queries) and the path of
metrics.json and report.html, written under <state_dir>/reports/models/<dataset>/<UTC stamp>/
(or --out); --json prints the JSON instead of the table. An expected error (a bad option, data
that cannot be loaded or split) is one line on stderr and exit code 1 (2 for a bad option).
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
from enum import StrEnum  # noqa: E402
from pathlib import Path  # noqa: E402, TC003  (typer reads the annotation at runtime)
from typing import TYPE_CHECKING, Annotated, Any, cast  # noqa: E402

import typer  # noqa: E402

if TYPE_CHECKING:
    from collections.abc import Mapping

    from lambdarec.models.data import Protocol as ProtocolName

app = typer.Typer(add_completion=False)
log = logging.getLogger("evaluate")

#: The table's columns: (metric key, header).
COLUMNS = (
    ("hr@10", "HR@10"),
    ("hr@20", "HR@20"),
    ("mrr@20", "MRR@20"),
    ("ndcg@10", "NDCG@10"),
    ("ndcg@20", "NDCG@20"),
    ("recall@20", "Recall@20"),
    ("recall@100", "Recall@100"),
    ("coverage@20", "Cov@20"),
)


class Protocol(StrEnum):
    loo = "loo"
    session = "session"
    temporal = "temporal"


def metrics_table(payload: Mapping[str, Any]) -> str:
    """The models' headline metrics as a fixed-width text table, with what was evaluated."""
    split = payload.get("split", {})
    models: Mapping[str, Mapping[str, float]] = payload["models"]
    n_queries = next((int(m.get("n_queries", 0)) for m in models.values()), 0)
    protocol = split.get("protocol", split.get("kind", "?"))
    masked = ", seen items masked" if split.get("mask_seen") else ""
    width = max([len("model"), *(len(name) for name in models)])
    lines = [
        f"{payload['dataset']}: protocol {protocol}{masked}, {n_queries:,} test queries, "
        f"{payload['n_items']:,} items ranked",
        "  ".join([f"{'model':<{width}}", *(f"{h:>10}" for _, h in COLUMNS)]),
    ]
    for name, m in models.items():
        cells = [f"{m.get(key, float('nan')):>10.4f}" for key, _ in COLUMNS]
        lines.append("  ".join([f"{name:<{width}}", *cells]))
    return "\n".join(lines)


@app.command(help=__doc__)
def main(
    dataset: Annotated[
        str,
        typer.Option(
            help="diginetica | taobao | amazon-sports | amazon-toys | synthetic | lake | a file"
        ),
    ] = "synthetic",
    protocol: Annotated[
        Protocol | None,
        typer.Option(
            help="loo | session | temporal (default: session for diginetica, loo for a "
            "sequences file, temporal otherwise)",
            show_default=False,
        ),
    ] = None,
    mask_seen: Annotated[
        bool | None,
        typer.Option(
            "--mask-seen/--no-mask-seen",
            help="Take each query's seen items out of its ranking (default: on for loo only)",
            show_default=False,
        ),
    ] = None,
    history_len: Annotated[
        int, typer.Option(min=1, help="Items of history a query sees (most recent first)")
    ] = 10,
    session_gap: Annotated[
        float | None,
        typer.Option(
            min=0.0,
            help="Minutes of inactivity that end a session, for files without a session id "
            "(default 30)",
            show_default=False,
        ),
    ] = None,
    test_days: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="temporal/session: days at the end for the test (default 1)",
            show_default=False,
        ),
    ] = None,
    valid_days: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="temporal/session: days before the test for validation (default 1)",
            show_default=False,
        ),
    ] = None,
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
    models: Annotated[
        bool, typer.Option(help="Train and evaluate the two-tower and DeepFM (TensorFlow)")
    ] = True,
    test_max: Annotated[
        int | None, typer.Option(min=1, help="Evaluate on at most this many test queries")
    ] = None,
    query_encoder: QueryEncoderOption = None,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print the JSON payload instead of the table")
    ] = False,
    seed: int = 42,
) -> None:
    from datetime import timedelta

    from lambdarec.models.data import MIN_TEST_QUERIES, load_dataset
    from lambdarec.models.pipeline import default_report_dir, run_evaluation

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    data = load_dataset(
        dataset,
        protocol=None if protocol is None else cast("ProtocolName", protocol.value),
        mask_seen=mask_seen,
        max_len=history_len,
        session_gap=None if session_gap is None else timedelta(minutes=session_gap),
        test_days=test_days,
        valid_days=valid_days,
        seed=seed,
    )
    n_test = min(len(data.test), test_max or len(data.test))
    if n_test < MIN_TEST_QUERIES <= len(data.test):
        log.warning(
            "%d test queries (--test-max): the metrics are noise (fewer than %d)",
            n_test,
            MIN_TEST_QUERIES,
        )
    tt_config = fm_config = None
    if models:
        import_tensorflow_quietly()
        from lambdarec.models.deepfm import DeepFMConfig
        from lambdarec.models.two_tower import TwoTowerConfig

        tt_config = TwoTowerConfig(
            epochs=epochs,
            max_train=max_train or None,
            seed=seed,
            **encoder_options(query_encoder),  # type: ignore[arg-type]
        )
        fm_config = DeepFMConfig(max_queries=fm_queries, seed=seed)
    out_dir = out or default_report_dir(data.name)
    payload, _ = run_evaluation(
        data,
        out_dir,
        tt_config=tt_config,
        fm_config=fm_config,
        session_ablation=session_ablation,
        baselines=baselines,
        models=models,
        test_max=test_max,
    )
    payload["report"] = str(out_dir / "report.html")
    if json_out:
        print(json.dumps(payload, default=str))
        return
    print(metrics_table(payload))
    print(f"metrics: {out_dir / 'metrics.json'}")
    print(f"report:  {out_dir / 'report.html'}")


if __name__ == "__main__":
    run(app)
