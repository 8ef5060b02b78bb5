"""Evaluate rankers side by side: full ranking over all items, metrics@K, segments, report.

A *ranker* is anything with a ``name`` and ``scores(examples) -> (n, n_items)``; a two-stage
model is a retriever whose top-``n_candidates`` are re-ordered by a ranker's
``rerank(examples, candidates, retrieval_scores)``. :func:`evaluate` returns, per model, the
overall metrics (means over queries; HR@K is P@K in the SR-GNN papers' sense), coverage and
popularity bias, and the same per segment (short vs long session prefixes; for event data also
targets seen vs not seen in training). :func:`write_report` writes the JSON line and an HTML
report with the plots under ``settings.state_dir / "reports" / ...`` and returns the figures.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from lambdarec.models import metrics as M

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence
    from pathlib import Path

    from matplotlib.figure import Figure

    from lambdarec.models.data import Dataset, Examples

log = logging.getLogger(__name__)

SHORT_PREFIX = 5  # a session prefix of at most this many items is "short"


class Ranker(Protocol):
    name: str

    def scores(self, ex: Examples) -> np.ndarray: ...


def segments(dataset: Dataset, ex: Examples) -> dict[str, np.ndarray]:
    """Boolean masks of the evaluation segments."""
    out = {
        f"prefix<={SHORT_PREFIX}": (ex.session_len >= 1) & (ex.session_len <= SHORT_PREFIX),
        f"prefix>{SHORT_PREFIX}": ex.session_len > SHORT_PREFIX,
    }
    if (ex.session_len == 0).any():
        out["no_session_context"] = ex.session_len == 0
    if dataset.split.get("kind") != "srgnn":  # that split dropped every item unseen in training
        seen = dataset.seen_in_train()[ex.target]
        out["target_seen_in_train"] = seen
        out["target_new"] = ~seen
    return out


@dataclass
class Result:
    model: str
    overall: dict[str, float]
    segments: dict[str, dict[str, float]]
    topk: np.ndarray
    seconds: float


def evaluate_topk(
    name: str,
    topk: np.ndarray,
    dataset: Dataset,
    ex: Examples,
    *,
    seconds: float = 0.0,
    ks: Sequence[int] = M.KS,
) -> Result:
    """Metrics of ready top-k lists (e.g. a two-stage model's re-ranked lists)."""
    pop = dataset.popularity()
    pct = M.popularity_percentiles(pop)
    per_query = M.ranking_metrics(topk, ex.target, ks)
    kw: dict[str, Any] = {"n_items": dataset.n_items, "percentiles": pct, "ks": ks}
    overall = M.summarize(per_query, topk, **kw)
    overall["seconds"] = round(seconds, 2)
    segs = {s: M.summarize(per_query, topk, mask=m, **kw) for s, m in segments(dataset, ex).items()}
    return Result(name, overall, segs, topk, seconds)


def ranker_topk(
    ranker: Ranker | Callable[[Examples], np.ndarray],
    ex: Examples,
    k: int = 100,
    batch_size: int = 512,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` item indices and their scores for every query (full ranking, batched)."""
    fn = ranker.scores if hasattr(ranker, "scores") else ranker
    tops, vals = [], []
    for start in range(0, len(ex), batch_size):
        batch = ex.subset(np.arange(start, min(start + batch_size, len(ex))))
        s = np.asarray(fn(batch), dtype=np.float32)  # type: ignore[operator]
        if batch.seen is not None:
            s = M.mask_seen(s, batch.seen)
        t = M.top_k(s, k)
        tops.append(t)
        vals.append(np.take_along_axis(s, t, axis=1))
    if not tops:
        return np.zeros((0, k), dtype=np.int64), np.zeros((0, k), dtype=np.float32)
    return np.concatenate(tops), np.concatenate(vals)


def evaluate_ranker(
    ranker: Ranker, dataset: Dataset, ex: Examples, *, ks: Sequence[int] = M.KS
) -> Result:
    t0 = time.perf_counter()
    topk, _ = ranker_topk(ranker, ex, max(ks))
    res = evaluate_topk(ranker.name, topk, dataset, ex, seconds=time.perf_counter() - t0, ks=ks)
    log.info("%s: %s", ranker.name, headline(res.overall))
    return res


def headline(m: Mapping[str, float]) -> str:
    keys = ("hr@20", "mrr@20", "ndcg@10", "recall@20", "recall@100")
    return " ".join(f"{k}={m.get(k, float('nan')):.4f}" for k in keys)


def tune(
    make: Callable[..., Any],
    grid: Sequence[Mapping[str, Any]],
    dataset: Dataset,
    *,
    metric: str = "recall@20",
    max_queries: int = 5000,
    seed: int = 0,
) -> tuple[Any, dict[str, Any], list[dict[str, Any]]]:
    """Fit ``make(**params)`` for each grid point, pick the best ``metric`` on validation."""
    valid = dataset.valid.sample(max_queries, seed)
    trials: list[dict[str, Any]] = []
    best: tuple[float, Any, dict[str, Any]] | None = None
    for params in grid:
        model = make(**params).fit(dataset)
        topk, _ = ranker_topk(model, valid, 100)
        value = float(np.nanmean(M.ranking_metrics(topk, valid.target, (20, 10))[metric]))
        trials.append({**params, metric: round(value, 5)})
        log.info("tune %s %s: %s=%.4f", model.name, params, metric, value)
        if best is None or value > best[0]:
            best = (value, model, dict(params))
    assert best is not None
    return best[1], best[2], trials


def results_json(dataset: Dataset, results: Sequence[Result], extra: Mapping[str, Any]) -> dict:
    """The one JSON object of the run (rounded metrics per model and segment)."""

    def rnd(d: Mapping[str, float]) -> dict[str, float]:
        return {k: (round(v, 5) if isinstance(v, float) else v) for k, v in d.items()}

    return {
        "dataset": dataset.name,
        "split": dataset.split,
        "n_items": dataset.n_items,
        "n_test": len(dataset.test),
        "models": {r.model: rnd(r.overall) for r in results},
        "segments": {r.model: {s: rnd(m) for s, m in r.segments.items()} for r in results},
        **extra,
    }


def figures(results: Sequence[Result], ks: Sequence[int] = M.KS) -> dict[str, Figure]:
    """metric@K curves per model, and per-segment bars of HR@20 and MRR@20."""
    from matplotlib.figure import Figure

    figs: dict[str, Figure] = {}
    fig = Figure(figsize=(12, 8))
    for ax_i, metric in enumerate(("recall", "ndcg", "mrr", "hr")):
        ax = fig.add_subplot(2, 2, ax_i + 1)
        for r in results:
            ax.plot(
                list(ks),
                [r.overall.get(f"{metric}@{k}", np.nan) for k in ks],
                marker="o",
                label=r.model,
            )
        ax.set_xscale("log")
        ax.set_xticks(list(ks), [str(k) for k in ks])
        ax.set_xlabel("K")
        ax.set_title(f"{metric}@K")
        ax.grid(alpha=0.3)
    fig.axes[0].legend(fontsize=7)
    fig.tight_layout()
    figs["metrics_at_k"] = fig

    seg_names = list(results[0].segments) if results else []
    fig = Figure(figsize=(12, 4))
    for ax_i, metric in enumerate(("hr@20", "mrr@20")):
        ax = fig.add_subplot(1, 2, ax_i + 1)
        width = 0.8 / max(len(results), 1)
        for j, r in enumerate(results):
            xs = np.arange(len(seg_names)) + j * width
            ax.bar(xs, [r.segments[s][metric] for s in seg_names], width, label=r.model)
        ax.set_xticks(np.arange(len(seg_names)) + 0.4 - width / 2, seg_names, fontsize=8)
        ax.set_title(f"{metric} by segment")
    fig.axes[0].legend(fontsize=7)
    fig.tight_layout()
    figs["segments"] = fig

    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot(1, 1, 1)
    for r in results:
        ax.scatter(r.overall["popbias@20"], r.overall["coverage@20"], label=r.model)
    ax.set_xlabel("mean popularity percentile of top-20")
    ax.set_ylabel("catalog coverage@20")
    ax.legend(fontsize=7)
    fig.tight_layout()
    figs["coverage_vs_popularity"] = fig
    return figs


def _png(fig: Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    return base64.b64encode(buf.getvalue()).decode()


def write_report(
    payload: Mapping[str, Any], figs: Mapping[str, Figure], out_dir: Path
) -> tuple[Path, Path]:
    """``metrics.json`` (the JSON line) and ``report.html`` (tables + plots) in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    jpath = out_dir / "metrics.json"
    jpath.write_text(json.dumps(payload, default=str) + "\n", encoding="utf-8")
    cols = [
        "hr@20",
        "mrr@20",
        "ndcg@10",
        "recall@20",
        "recall@100",
        "ndcg@20",
        "mrr@10",
        "coverage@20",
        "popbias@20",
        "seconds",
    ]
    rows = "".join(
        "<tr><td>"
        + name
        + "</td>"
        + "".join(f"<td>{m.get(c, float('nan')):.4f}</td>" for c in cols)
        + "</tr>"
        for name, m in payload["models"].items()
    )
    seg_rows = "".join(
        f"<tr><td>{name}</td><td>{seg}</td><td>{m['n_queries']}</td>"
        f"<td>{m['hr@20']:.4f}</td><td>{m['mrr@20']:.4f}</td><td>{m['ndcg@10']:.4f}</td></tr>"
        for name, segs in payload["segments"].items()
        for seg, m in segs.items()
    )
    imgs = "".join(
        f'<h3>{k}</h3><img src="data:image/png;base64,{_png(f)}"/>' for k, f in figs.items()
    )
    cand = payload.get("served_candidates")
    cand_html = ""
    if cand:
        cand_rows = "".join(
            f"<tr><td>{name}</td><td>{row['recall']:.4f}</td><td>{row['mean_candidates']}</td>"
            f"<td>{row['mean_only_from_it']}</td></tr>"
            for name, row in cand["per_source"].items()
        )
        cand_html = (
            f"<h2>Served candidates</h2><p>Before ranking, after the filters, over "
            f"{cand['queries']} test queries: the target is among them for "
            f"{cand['union_recall']:.4f} of the queries ({cand['mean_candidates']} candidates "
            "per query).</p><table><tr><th>source</th><th>recall</th><th>per query</th>"
            f"<th>only from it</th></tr>{cand_rows}</table>"
        )
    extra = {
        k: v for k, v in payload.items() if k not in ("models", "segments", "served_candidates")
    }
    html = f"""<!doctype html><html><head><meta charset="utf-8"><title>lambdarec evaluation:
{payload["dataset"]}</title><style>body{{font-family:sans-serif}} td,th{{padding:2px 8px;
text-align:right}} table{{border-collapse:collapse}} tr:nth-child(even){{background:#eee}}</style>
</head><body><h1>Evaluation: {payload["dataset"]}</h1>
<p>Full ranking over all {payload["n_items"]} items; {payload["n_test"]} test queries.</p>
<table><tr><th>model</th>{"".join(f"<th>{c}</th>" for c in cols)}</tr>{rows}</table>
<h2>Segments</h2><table><tr><th>model</th><th>segment</th><th>n</th><th>hr@20</th>
<th>mrr@20</th><th>ndcg@10</th></tr>{seg_rows}</table>{cand_html}{imgs}
<h2>Run</h2><pre>{json.dumps(extra, indent=1, default=str)}</pre></body></html>"""
    hpath = out_dir / "report.html"
    hpath.write_text(html, encoding="utf-8")
    return jpath, hpath
