"""The drift report: ``result.json`` (machine-readable) and ``report.html`` (people) per day.

Layout under ``settings.drift_reports_dir`` (served by the reports site at ``/reports/drift/``)::

    <day>/result.json      every feature's PSI, KL, status, bins; the skew check; the decision
    <day>/report.html      PSI/KL table sorted by severity, reference vs current histograms per
                           feature, the trend over previous runs, the skew table
    retraining_triggers.jsonl   one line per retraining the monitor triggered (the guard reads it)
"""

from __future__ import annotations

import base64
import html
import io
import json
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from pathlib import Path

    from matplotlib.figure import Figure

    from lambdarec.config import Settings

RESULT = "result.json"
REPORT = "report.html"
#: Previous runs shown in the trend.
TREND_RUNS = 30
#: Features drawn in the trend plot (the most drifted today).
TREND_FEATURES = 8
_COLOURS = {"act": "#f4b6b6", "watch": "#f9e3a3", "ok": "#d5efd5", "no_data": "#e6e6e6"}


def day_dir(settings: Settings, day: str) -> Path:
    return settings.drift_reports_dir / day


def load_history(settings: Settings, before: str, limit: int = TREND_RUNS) -> list[dict[str, Any]]:
    """Results of earlier days (``day < before``), oldest first, at most ``limit``."""
    root = settings.drift_reports_dir
    if not root.is_dir():
        return []
    days = sorted(p.name for p in root.iterdir() if (p / RESULT).is_file() and p.name < before)
    out = []
    for d in days[-limit:]:
        try:
            out.append(json.loads((root / d / RESULT).read_text()))
        except (OSError, ValueError):
            continue  # a half-written or foreign file does not break the trend
    return out


def _png(fig: Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=72)
    return base64.b64encode(buf.getvalue()).decode()


def _histogram(feature: dict[str, Any]) -> Figure:
    from matplotlib.figure import Figure

    labels = feature["labels"]
    x = np.arange(len(labels))
    fig = Figure(figsize=(6.2, 2.6))
    ax = fig.add_subplot(1, 1, 1)
    ax.bar(x - 0.2, feature["reference"], 0.4, label=f"reference (n={feature['n_reference']})")
    ax.bar(x + 0.2, feature["current"], 0.4, label=f"current (n={feature['n_current']})")
    ax.set_xticks(
        x,
        [lab if len(lab) <= 14 else lab[:13] + "…" for lab in labels],
        rotation=60,
        ha="right",
        fontsize=6,
    )
    ax.set_ylabel("share")
    ax.set_title(
        f"{feature['feature']}  PSI {feature['psi']:.3f}  KL {feature['kl']:.3f}", fontsize=9
    )
    ax.legend(fontsize=6)
    fig.tight_layout()
    return fig


def _trend(result: dict[str, Any], history: list[dict[str, Any]]) -> Figure | None:
    from matplotlib.figure import Figure

    runs = [*history, result]
    if len(runs) < 2:
        return None
    top = [f["feature"] for f in result["features"][:TREND_FEATURES]]
    fig = Figure(figsize=(7.5, 3.2))
    ax = fig.add_subplot(1, 1, 1)
    days = [r["day"] for r in runs]
    for name in top:
        ys = [next((f["psi"] for f in r["features"] if f["feature"] == name), np.nan) for r in runs]
        ax.plot(days, ys, marker="o", label=name)
    for level, style in ((result["thresholds"]["watch"], ":"), (result["thresholds"]["act"], "--")):
        ax.axhline(level, color="grey", linestyle=style, linewidth=1)
    ax.set_ylabel("PSI")
    ax.tick_params(axis="x", labelrotation=45, labelsize=7)
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    return fig


def render_html(result: dict[str, Any], history: list[dict[str, Any]]) -> str:
    esc = html.escape
    rows = "".join(
        f'<tr style="background:{_COLOURS[f["status"]]}"><td>{esc(f["feature"])}</td>'
        f"<td>{esc(f['group'])}</td><td>{f['status']}</td><td>{f['psi']:.4f}</td>"
        f"<td>{f['kl']:.4f}</td><td>{f['n_reference']}</td><td>{f['n_current']}</td></tr>"
        for f in result["features"]
    )
    skew = result.get("skew") or {}
    skew_rows = "".join(
        f"<tr><td>{esc(name)}</td><td>{v['mismatches']}</td><td>{v['n']}</td>"
        f"<td>{v['rate']:.2%}</td><td><code>{esc(json.dumps(v['examples'][:1], default=str))}"
        "</code></td></tr>"
        for name, v in sorted(skew.get("features", {}).items(), key=lambda kv: -kv[1]["rate"])
    )
    skew_html = (
        f"<p>{skew.get('n_sampled', 0)} impressions rebuilt point-in-time from Feast's offline "
        f"store; features with mismatches: {esc(', '.join(skew.get('mismatched_features', [])) or 'none')}.</p>"
        "<table><tr><th>feature</th><th>mismatches</th><th>n</th><th>rate</th>"
        f"<th>first example</th></tr>{skew_rows}</table>"
        if skew
        else f"<p>{esc(result.get('skew_note', 'not run'))}</p>"
    )
    trend = _trend(result, history)
    trend_html = (
        f'<img src="data:image/png;base64,{_png(trend)}"/>'
        if trend is not None
        else "<p>No earlier runs yet.</p>"
    )
    hists = "".join(
        f'<img src="data:image/png;base64,{_png(_histogram(f))}"/>'
        for f in result["features"]
        if f["n_reference"] and f["n_current"]
    )
    decision = result.get("retraining", {})
    th = result["thresholds"]
    return f"""<!doctype html><html><head><meta charset="utf-8">
<title>lambdarec drift {esc(result["day"])}</title><style>body{{font-family:sans-serif;
max-width:80em;margin:1em auto}} td,th{{padding:2px 8px;text-align:right}}
td:first-child{{text-align:left}} table{{border-collapse:collapse}} img{{margin:2px}}</style>
</head><body><h1>Drift: {esc(result["day"])}</h1>
<p>Window {esc(result["window"][0])} .. {esc(result["window"][1])}; champion
{esc(str(result.get("champion", {}).get("name")))} v{esc(str(result.get("champion", {}).get("version")))}
(run {esc(str(result.get("champion", {}).get("run_id")))}); {result["n_events"]} events,
{result["n_impressions"]} impressions.</p>
<p>Thresholds: PSI &ge; {th["watch"]} watch, &ge; {th["act"]} act.
<b>Alarms (act): {esc(", ".join(result["alarms"]) or "none")}</b>; watch:
{esc(", ".join(result["watch"]) or "none")}.</p>
<p>Retraining: <b>{esc(str(decision.get("decision", "-")))}</b> — {esc(str(decision.get("reason", "")))}</p>
<h2>PSI and KL, most severe first</h2>
<table><tr><th>feature</th><th>group</th><th>status</th><th>PSI</th><th>KL(cur||ref)</th>
<th>n ref</th><th>n cur</th></tr>{rows}</table>
<h2>Trend over previous runs</h2>{trend_html}
<h2>Training/serving skew</h2>{skew_html}
<h2>Reference vs current, per feature</h2>{hists}
</body></html>"""


def write(settings: Settings, result: dict[str, Any]) -> tuple[Path, Path]:
    """Write ``result.json`` and ``report.html`` for ``result["day"]``; returns both paths."""
    folder = day_dir(settings, result["day"])
    folder.mkdir(parents=True, exist_ok=True)
    history = load_history(settings, before=result["day"])
    jpath, hpath = folder / RESULT, folder / REPORT
    # Written beside and renamed: a reader (the trend, the site) never sees half a file.
    for path, text in (
        (jpath, json.dumps(result, indent=1, default=str)),
        (hpath, render_html(result, history)),
    ):
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    return jpath, hpath
