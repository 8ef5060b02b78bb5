"""The A/B readout's files: ``readout.json`` (machine-readable) and ``readout.html`` (people).

Layout under ``settings.ab_reports_dir`` (served by the reports site at ``/reports/ab/``)::

    <day>/readout.json     the readout of :func:`lambdarec.monitoring.ab.readout` for the window
                           ending with <day>, plus coverage and the inputs' row counts
    <day>/readout.html     the per-variant table with intervals, the tests against control with
                           verdicts, daily plots with 95% bands, guardrails, the guardrail's action
    <day>/guardrail.json   what the guardrail decided (written by the DAG's second task)

The HTML is self-contained: plots are inline PNGs (matplotlib, Agg), no script, no CDN.
"""

from __future__ import annotations

import base64
import html
import io
import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pathlib import Path

    from matplotlib.figure import Figure

READOUT_JSON = "readout.json"
READOUT_HTML = "readout.html"
GUARDRAIL_JSON = "guardrail.json"
#: The served model's offline metrics (written by the DAG's ``log_to_mlflow`` task).
OFFLINE_JSON = "offline.json"
_VERDICT_COLOURS = {
    "better": "#d5efd5",
    "worse": "#f4b6b6",
    "no significant difference": "#ffffff",
    "not enough data": "#e6e6e6",
}
NOT_AVAILABLE_LATENCY = (
    "not available: the lake's impressions table has no latency column (serving's /metrics "
    "histogram lambdarec_serving_request_seconds has it, per worker)"
)
NOT_AVAILABLE_DEGRADED = (
    "not available: the lake's impressions table has no degraded flag (the impressions "
    "topic's degraded_parts field and serving's lambdarec_serving_fallbacks_total have it)"
)


def _atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def write(folder: Path, readout: dict[str, Any]) -> tuple[Path, Path]:
    """Write ``readout.json`` and ``readout.html`` (with the guardrail's file if present)."""
    folder.mkdir(parents=True, exist_ok=True)
    _atomic_text(folder / READOUT_JSON, json.dumps(readout, indent=2, allow_nan=False))
    guardrail = None
    if (folder / GUARDRAIL_JSON).is_file():
        try:
            guardrail = json.loads((folder / GUARDRAIL_JSON).read_text())
        except ValueError:
            guardrail = None
    return folder / READOUT_JSON, write_html(folder, readout, guardrail=guardrail)


def load_readout(reports_dir: Path, ds: str) -> tuple[Path, dict[str, Any]]:
    """Day ``ds``'s report folder and its ``readout.json`` (what the DAG's tasks after the Spark
    job start from); a missing readout names the job to run."""
    from lambdarec.tables import as_day

    day = as_day(ds).isoformat()
    folder = reports_dir / day
    source = folder / READOUT_JSON
    if not source.is_file():
        raise FileNotFoundError(
            f"no A/B readout at {source}; run the online_metrics Spark job for {day} first"
        )
    readout: dict[str, Any] = json.loads(source.read_text())
    return folder, readout


def read_offline(folder: Path) -> dict[str, Any] | None:
    """``offline.json`` of a readout folder, if the DAG wrote one."""
    path = folder / OFFLINE_JSON
    if not path.is_file():
        return None
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except ValueError:
        return None
    return data


def write_html(
    folder: Path, readout: dict[str, Any], *, guardrail: dict[str, Any] | None = None
) -> Path:
    """Render ``readout.html``, with the served model's offline metrics if ``offline.json`` (the
    DAG's ``log_to_mlflow`` task) is beside it."""
    _atomic_text(folder / READOUT_HTML, render_html(readout, guardrail, read_offline(folder)))
    return folder / READOUT_HTML


# -- formatting ------------------------------------------------------------------------------
def _num(value: float | None, digits: int = 4) -> str:
    if value is None:
        return "–"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{digits}g}"


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value:+.1%}"


def _p(value: float | None) -> str:
    return "–" if value is None else (f"{value:.2g}" if value >= 1e-4 else "&lt;0.0001")


def _png(fig: Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=72)
    return base64.b64encode(buf.getvalue()).decode()


def _daily_plot(readout: dict[str, Any]) -> Figure | None:
    from matplotlib.figure import Figure

    days = sorted(readout["days"])
    if not days:
        return None
    metrics = readout["metrics"]
    fig = Figure(figsize=(11, 2.6 * ((len(metrics) + 1) // 2)))
    axes = fig.subplots((len(metrics) + 1) // 2, 2, squeeze=False).ravel()
    for ax, (name, spec) in zip(axes, metrics.items(), strict=False):
        for variant in readout["variants"]:
            xs, ys, lows, highs = [], [], [], []
            for i, day in enumerate(days):
                m = readout["days"][day]["variants"].get(variant, {}).get("metrics", {}).get(name)
                if not m or m["value"] is None:
                    continue
                xs.append(i)
                ys.append(m["value"])
                lows.append(m["ci_low"] if m["ci_low"] is not None else m["value"])
                highs.append(m["ci_high"] if m["ci_high"] is not None else m["value"])
            if not xs:
                continue
            (line,) = ax.plot(xs, ys, marker="o", label=variant)
            ax.fill_between(xs, lows, highs, alpha=0.2, color=line.get_color())
        ax.set_title(spec["label"], fontsize=10)
        ax.set_xticks(range(len(days)))
        ax.set_xticklabels([d[5:] for d in days], fontsize=7, rotation=45)
        ax.legend(fontsize=7)
    for ax in axes[len(metrics) :]:
        ax.set_visible(False)
    fig.tight_layout()
    return fig


_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>A/B readout {day}</title>
<style>body{{font-family:sans-serif;max-width:72em;margin:2em auto}}
table{{border-collapse:collapse;margin:.5em 0 1.5em}}td,th{{border:1px solid #ccc;padding:.25em .5em;
text-align:right}}th{{background:#f3f3f3}}td.l{{text-align:left}}.note{{color:#555}}</style>
</head><body>
<h1>A/B readout — {day}</h1>
<p>Window {first} to {last} ({n_days} day(s) with data). Control: <b>{control}</b> (the first
variant of <code>LAMBDAREC_AB_VARIANTS</code>). Intervals are 95%, clustered by user (delta
method on per-user sums). Tests at α = {alpha}; a test needs {min_lists:,} lists in the variant
and in control, else it says “not enough data”.</p>
{guardrail}
<h2>Variants over the window</h2>
{variants}
<h2>Tests against control over the window</h2>
{tests}
<h2>Offline metrics of the served model</h2>
{offline}
<h2>Daily metrics</h2>
{plot}
<h2>Guardrail metrics</h2>
{guards}
<h2>Inputs</h2>
{inputs}
</body></html>
"""


def _variants_table(section: dict[str, Any], readout: dict[str, Any]) -> str:
    head = "".join(f"<th>{html.escape(s['label'])}</th>" for s in readout["metrics"].values())
    rows = []
    for variant, v in section["variants"].items():
        cells = []
        for name in readout["metrics"]:
            m = v["metrics"][name]
            cells.append(
                f"<td>{_num(m['value'])}<br><small>[{_num(m['ci_low'])}, "
                f"{_num(m['ci_high'])}]</small></td>"
            )
        rows.append(
            f"<tr><td class=l>{html.escape(variant)}</td><td>{v['users']:,}</td>"
            f"<td>{v['lists']:,}</td><td>{v['impressions']:,}</td>{''.join(cells)}</tr>"
        )
    return (
        "<table><tr><th>variant</th><th>users</th><th>lists</th><th>impressions</th>"
        f"{head}</tr>{''.join(rows)}</table>"
    )


def _tests_table(section: dict[str, Any], readout: dict[str, Any]) -> str:
    if not section["tests"]:
        return "<p>Only the control has data: nothing to compare.</p>"
    rows = []
    for variant, t in section["tests"].items():
        for name, m in t["metrics"].items():
            colour = _VERDICT_COLOURS.get(m["verdict"], "#fff")
            low, high = m["lift_ci"]
            rows.append(
                f"<tr><td class=l>{html.escape(variant)}</td>"
                f"<td class=l>{html.escape(readout['metrics'][name]['label'])}</td>"
                f"<td>{_num(m['difference'])}<br><small>[{_num(m['difference_ci'][0])}, "
                f"{_num(m['difference_ci'][1])}]</small></td>"
                f"<td>{_pct(m['lift'])}<br><small>[{_pct(low)}, {_pct(high)}]</small></td>"
                f"<td>{_p(m['p_value'])}</td>"
                f'<td class=l style="background:{colour}">{html.escape(m["verdict"])}</td></tr>'
            )
    return (
        "<table><tr><th>variant</th><th>metric</th><th>difference vs control [95% CI]</th>"
        "<th>relative lift [95% CI]</th><th>p-value</th><th>verdict</th></tr>"
        f"{''.join(rows)}</table>"
    )


def _guardrail_html(guardrail: dict[str, Any] | None) -> str:
    if guardrail is None:
        return (
            "<p class=note>Guardrail: not applied yet for this day (the DAG's "
            "<code>apply_guardrail</code> task runs after the readout).</p>"
        )
    items = []
    for variant, d in guardrail["decisions"].items():
        action = "set to weight 0" if variant in guardrail["changed"] else d["action"]
        note = f" ({d['note']})" if d.get("note") else ""
        items.append(
            f"<li><b>{html.escape(variant)}</b>: {html.escape(action)}{html.escape(note)} — "
            f"{html.escape(d['why'])}</li>"
        )
    off = sorted(v for v, w in guardrail["weights"].items() if w == 0)
    state = (
        f"Switched off now (users served control): <b>{html.escape(', '.join(off))}</b>."
        if off
        else "No variant is switched off."
    )
    return (
        f"<h2>Guardrail</h2><p>Rule: conversion worse than control with p &lt; "
        f"{guardrail['p_threshold']:g} and the minimum sample met → weight 0 in "
        f"<code>{html.escape(guardrail['override_path'])}</code>. {state}</p>"
        f"<ul>{''.join(items) or '<li>no variant besides control</li>'}</ul>"
    )


def _guards_html(readout: dict[str, Any]) -> str:
    guards = readout.get("guardrails") or {}
    coverage = guards.get("coverage") or {}
    rows = []
    for variant, c in (coverage.get("variants") or {}).items():
        value = c.get("coverage")
        rows.append(
            f"<tr><td class=l>{html.escape(variant)}</td><td>{c.get('distinct_items', 0):,}</td>"
            f"<td>{'–' if value is None else f'{value:.2%}'}</td></tr>"
        )
    catalog = coverage.get("catalog_items")
    table = (
        "<table><tr><th>variant</th><th>distinct items shown</th><th>coverage</th></tr>"
        f"{''.join(rows)}</table>"
        if rows
        else ""
    )
    return (
        f"<p>Coverage = distinct items shown over the window / catalog size "
        f"({'catalog not found: coverage not available' if not catalog else f'{catalog:,} items'}"
        f").</p>{table}<ul>"
        f"<li>latency p99: {html.escape(str(guards.get('latency_p99', NOT_AVAILABLE_LATENCY)))}</li>"
        f"<li>degraded rate: "
        f"{html.escape(str(guards.get('degraded_rate', NOT_AVAILABLE_DEGRADED)))}</li></ul>"
    )


def _offline_html(offline: dict[str, Any] | None) -> str:
    if not offline:
        return (
            '<p class="note">Not logged yet (the DAG\'s <code>log_to_mlflow</code> task writes '
            "them when a champion is registered).</p>"
        )
    rows = "".join(
        f'<tr><td class="l">{html.escape(k)}</td><td>{_num(v)}</td></tr>'
        for k, v in offline.get("metrics", {}).items()
    )
    return (
        f"<p>Model <b>{html.escape(str(offline.get('model')))}</b> version "
        f"<b>{html.escape(str(offline.get('version')))}</b> (MLflow run "
        f"<code>{html.escape(str(offline.get('run_id')))}</code>), served to "
        f"{html.escape(', '.join(offline.get('variants') or []) or 'no variant')}; its "
        "evaluation's metrics, logged by the retraining, beside the online ones above (the "
        "online ones are on the same run as <code>online.&lt;variant&gt;.&lt;metric&gt;</code>, "
        "one point per day).</p>"
        f"<table><tr><th>metric</th><th>value</th></tr>{rows}</table>"
    )


def render_html(
    readout: dict[str, Any],
    guardrail: dict[str, Any] | None = None,
    offline: dict[str, Any] | None = None,
) -> str:
    period = readout["period"]
    fig = _daily_plot(readout)
    plot = (
        f'<img alt="daily metrics" src="data:image/png;base64,{_png(fig)}"/>'
        if fig is not None
        else "<p>No day with data.</p>"
    )
    inputs = readout.get("inputs") or {}
    return _PAGE.format(
        day=html.escape(str(readout.get("day", period.get("last_day")))),
        first=html.escape(str(period.get("first_day"))),
        last=html.escape(str(period.get("last_day"))),
        n_days=len(readout["days"]),
        control=html.escape(readout["control"]),
        alpha=readout["alpha"],
        min_lists=readout["min_lists"],
        guardrail=_guardrail_html(guardrail),
        variants=_variants_table(period, readout),
        tests=_tests_table(period, readout),
        offline=_offline_html(offline),
        plot=plot,
        guards=_guards_html(readout),
        inputs="<ul>"
        + "".join(
            f"<li>{html.escape(str(k))}: {html.escape(str(v))}</li>" for k, v in inputs.items()
        )
        + "</ul>",
    )
