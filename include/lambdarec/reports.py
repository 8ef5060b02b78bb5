"""The reports site's folder: one index page linking Data Docs, drift and evaluation reports.

``<state_dir>/site/`` holds ``index.html`` and two links, ``data_docs -> <state_dir>/data_docs``
and ``reports -> <state_dir>/reports``; the ``reports`` service serves it. The index lists the
newest drift reports (``reports/drift/<day>/report.html``, with their alarms) and model
evaluations (``reports/models/**/report.html``). It is rewritten when the service starts and
after every drift run, so it stays current without a server-side script.
"""

from __future__ import annotations

import html
import json
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lambdarec.config import Settings

#: Reports of each kind listed on the index (newest first); the folders hold them all.
LISTED = 20

_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>lambdarec reports</title>
<style>body{{font-family:sans-serif;max-width:52em;margin:2em auto}}li{{margin:.3em 0}}</style>
</head><body>
<h1>lambdarec reports</h1>
<ul>
<li><a href="data_docs/index.html">Data Docs</a>: every Great Expectations validation of the lake
and the feature tables, with the values that failed</li>
<li><a href="reports/">Reports</a>: model evaluations and drift reports, one folder per run</li>
<li><a href="http://{host}:{airflow_port}/">Airflow</a> and
<a href="http://{host}:{mlflow_port}/">MLflow</a></li>
</ul>
<h2>Drift reports</h2>
{drift}
<h2>Model evaluations</h2>
{evaluations}
</body></html>
"""


def _drift_items(settings: Settings) -> str:
    root = settings.drift_reports_dir
    days = (
        sorted((p for p in root.glob("*/report.html")), reverse=True)[:LISTED]
        if root.is_dir()
        else []
    )
    if not days:
        return "<p>None yet (the <code>drift_monitoring</code> DAG writes one per day).</p>"
    items = []
    for page in days:
        day = page.parent.name
        summary = ""
        try:
            result = json.loads((page.parent / "result.json").read_text())
            alarms = result.get("alarms") or []
            summary = f": {len(alarms)} alarm(s){' — ' + ', '.join(alarms) if alarms else ''}"
        except (OSError, ValueError):
            pass
        items.append(
            f'<li><a href="reports/drift/{html.escape(day)}/report.html">{html.escape(day)}</a>'
            f"{html.escape(summary)}</li>"
        )
    return "<ul>" + "".join(items) + "</ul>"


def _evaluation_items(settings: Settings) -> str:
    root = settings.reports_dir / "models"
    pages = (
        sorted(root.glob("**/report.html"), key=lambda p: p.stat().st_mtime, reverse=True)[:LISTED]
        if root.is_dir()
        else []
    )
    if not pages:
        return "<p>None yet (<code>make evaluate</code> writes them).</p>"
    items = [
        f'<li><a href="reports/{html.escape(p.relative_to(settings.reports_dir).as_posix())}">'
        f"{html.escape(p.parent.relative_to(root).as_posix())}</a></li>"
        for p in pages
    ]
    return "<ul>" + "".join(items) + "</ul>"


def write_index(settings: Settings) -> None:
    """(Re)write ``site/index.html`` from what the report folders hold now."""
    page = _PAGE.format(
        host=settings.bind_host,
        airflow_port=settings.airflow_port,
        mlflow_port=settings.mlflow_port,
        drift=_drift_items(settings),
        evaluations=_evaluation_items(settings),
    )
    site = settings.site_dir
    site.mkdir(parents=True, exist_ok=True)
    tmp = site / "index.html.tmp"
    tmp.write_text(page)
    tmp.replace(site / "index.html")


def prepare_site(settings: Settings) -> None:
    """The served folder: links to the generated report folders and the index page."""
    site = settings.site_dir
    site.mkdir(parents=True, exist_ok=True)
    for name, target in (("data_docs", settings.data_docs_dir), ("reports", settings.reports_dir)):
        target.mkdir(parents=True, exist_ok=True)
        link = site / name
        if not link.is_symlink():
            link.symlink_to(target, target_is_directory=True)
    write_index(settings)
