"""The reports site's folder: one index page linking Data Docs, drift and evaluation reports.

``<state_dir>/site/`` holds ``index.html`` and three links, ``data_docs -> <state_dir>/data_docs``,
``reports -> <state_dir>/reports`` and ``vendor -> <web_assets_dir>`` (the Data Docs' CSS/JS,
:mod:`lambdarec.quality.offline`); the ``reports`` service serves it. The index lists Data Docs
(when last built, validations passed and failed), the newest drift reports
(``reports/drift/<day>/report.html``, with their alarms), A/B readouts
(``reports/ab/<day>/readout.html``, lists per variant and the guardrail's action) and model
evaluations (``reports/models/**/report.html``: the weekly retraining's under ``retraining/<run>/``
with what was promoted, ``make evaluate``'s under ``<dataset>/<stamp>/``), each with its date and
a one-line summary. It is rewritten when the service starts and after every drift run, A/B
guardrail run and retraining evaluation, so it stays current without a server-side script.

:func:`main` (``python -m lambdarec.reports``) serves the folder: Python's static file server
without its directory listings and without following a symlink out of the three folders the site
is made of (a symlink dropped into a report folder pointing at ``/etc/passwd`` answers 404).
"""

from __future__ import annotations

import html
import json
import os
from datetime import UTC, datetime
from functools import partial
from http import HTTPStatus
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, ClassVar

from lambdarec.quality.offline import VENDOR

if TYPE_CHECKING:
    import io
    from collections.abc import Sequence
    from pathlib import Path
    from typing import BinaryIO

    from lambdarec.config import Settings

#: Reports of each kind listed on the index (newest first); the folders hold them all.
LISTED = 20
#: Where the weekly retraining's evaluations go under ``reports/models/`` (one folder per run).
RETRAINING_DIR = "retraining"
#: Validation results read for the Data Docs line (the newest; the docs show them all).
VALIDATIONS_READ = 500

_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>lambdarec reports</title>
<style>body{{font-family:sans-serif;max-width:52em;margin:2em auto}}li{{margin:.3em 0}}</style>
</head><body>
<h1>lambdarec reports</h1>
<ul>
<li><a href="data_docs/index.html">Data Docs</a>: every Great Expectations validation of the lake
and the feature tables, with the values that failed; {data_docs}</li>
<li>Reports: the model evaluations and drift reports below, one folder per run under
<code>reports/</code> (folders are not listed: follow the links)</li>
<li><a href="http://{host}:{airflow_port}/">Airflow</a> and
<a href="http://{host}:{mlflow_port}/">MLflow</a></li>
</ul>
<h2>Drift reports</h2>
{drift}
<h2>A/B readouts</h2>
{ab}
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
        result = _read_json(page.parent / "result.json")
        summary = ""
        if result:
            alarms = result.get("alarms") or []
            summary = (
                f": {result.get('n_events', 0):,} events, {len(result.get('watch') or [])} "
                f"to watch, {len(alarms)} alarm(s){' — ' + ', '.join(alarms) if alarms else ''}; "
                f"retraining: {(result.get('retraining') or {}).get('decision', '?')}"
            )
        items.append(
            f'<li><a href="reports/drift/{html.escape(day)}/report.html">{html.escape(day)}</a>'
            f"{html.escape(summary)}</li>"
        )
    return "<ul>" + "".join(items) + "</ul>"


def _ab_items(settings: Settings) -> str:
    root = settings.reports_dir / "ab"
    pages = (
        sorted((p for p in root.glob("*/readout.html")), reverse=True)[:LISTED]
        if root.is_dir()
        else []
    )
    if not pages:
        return "<p>None yet (the <code>online_metrics</code> DAG writes one per day).</p>"
    items = []
    for page in pages:
        day = page.parent.name
        period = _read_json(page.parent / "readout.json").get("period") or {}
        lists = [
            f"{name} {row.get('lists', 0):,} lists"
            for name, row in (period.get("variants") or {}).items()
            if isinstance(row, dict)
        ]
        off = _read_json(page.parent / "guardrail.json").get("changed") or []
        guard = f"guardrail switched off {', '.join(off)}" if off else "guardrail: no change"
        summary = f": {'; '.join([*lists, guard])}"
        items.append(
            f'<li><a href="reports/ab/{html.escape(day)}/readout.html">{html.escape(day)}</a>'
            f"{html.escape(summary)}</li>"
        )
    return "<ul>" + "".join(items) + "</ul>"


def _modified(path: Path) -> str:
    """A file's modification time, UTC, to the minute."""
    return datetime.fromtimestamp(path.stat().st_mtime, UTC).strftime("%Y-%m-%d %H:%M UTC")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        loaded = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return loaded if isinstance(loaded, dict) else {}


def _data_docs_summary(settings: Settings) -> str:
    """When Data Docs were last built and what the newest validations found."""
    index = settings.data_docs_dir / "index.html"
    if not index.is_file():
        return "not built yet (every gate of <code>daily_feature_pipeline</code> builds them)"
    root = settings.gx_dir / "validations"
    results = (
        sorted(root.rglob("*.json"), key=lambda p: p.stat().st_mtime, reverse=True)[
            :VALIDATIONS_READ
        ]
        if root.is_dir()
        else []
    )
    failed = sum(_read_json(p).get("success") is False for p in results)
    more = "+" if len(results) == VALIDATIONS_READ else ""
    return (
        f"built {_modified(index)}: {len(results)}{more} validation(s), "
        f"{len(results) - failed} passed, {failed} failed"
    )


def _evaluation_summary(folder: Path) -> str:
    """What a model evaluation found: the retraining's decision, or the best model's NDCG@10."""
    decision = _read_json(folder / "decision.json")
    if decision:
        promoted = [
            f"{name} v{d.get('version')} {d.get('alias')}"
            for name, d in (decision.get("decisions") or {}).items()
        ]
        served = (decision.get("models") or {}).get("served", {}).get("ndcg@10")
        score = f"served NDCG@10 {served:.4f}; " if isinstance(served, float) else ""
        return f"{score}{', '.join(promoted) or 'nothing registered'}"
    models = _read_json(folder / "metrics.json").get("models") or {}
    scored: dict[str, float] = {
        name: value
        for name, row in models.items()
        if isinstance(row, dict) and isinstance(value := row.get("ndcg@10"), float)
    }
    best = max(scored, key=scored.__getitem__)
    return f"best NDCG@10 {best} {scored[best]:.4f} of {len(scored)} models"


def _evaluation_items(settings: Settings) -> str:
    root = settings.reports_dir / "models"
    pages = (
        sorted(root.glob("**/report.html"), key=lambda p: p.stat().st_mtime, reverse=True)[:LISTED]
        if root.is_dir()
        else []
    )
    if not pages:
        return (
            "<p>None yet (the <code>weekly_model_retraining</code> DAG and "
            "<code>make evaluate</code> write them).</p>"
        )
    items = []
    for p in pages:
        name = p.parent.relative_to(root).as_posix()
        summary = _evaluation_summary(p.parent)
        items.append(
            f'<li><a href="reports/{html.escape(p.relative_to(settings.reports_dir).as_posix())}">'
            f"{html.escape(name)}</a> ({_modified(p)})"
            f"{html.escape(': ' + summary if summary else '')}</li>"
        )
    return "<ul>" + "".join(items) + "</ul>"


def write_index(settings: Settings) -> None:
    """(Re)write ``site/index.html`` from what the report folders hold now."""
    page = _PAGE.format(
        host=settings.bind_host,
        airflow_port=settings.airflow_port,
        mlflow_port=settings.mlflow_port,
        data_docs=_data_docs_summary(settings),
        drift=_drift_items(settings),
        ab=_ab_items(settings),
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
    for name, target in (
        ("data_docs", settings.data_docs_dir),
        ("reports", settings.reports_dir),
        (VENDOR, settings.web_assets_dir),
    ):
        target.mkdir(parents=True, exist_ok=True)
        link = site / name
        if not link.is_symlink():
            link.symlink_to(target, target_is_directory=True)
    write_index(settings)


def site_roots(settings: Settings) -> tuple[str, ...]:
    """The real folders the site may serve from: the site itself and the three it links to."""
    folders = (
        settings.site_dir,
        settings.data_docs_dir,
        settings.reports_dir,
        settings.web_assets_dir,
    )
    return tuple(os.path.realpath(folder) for folder in folders)


class SiteHandler(SimpleHTTPRequestHandler):
    """Static files of the site, 404 for a directory listing or a path that resolves elsewhere.

    The stock handler lists any folder without an ``index.html`` and follows every symlink, so
    whatever a link in the reports folders points to (``/etc/passwd``) is served. Here the
    resolved path must lie in one of :attr:`roots` (the site's own two links lead to two of
    them), and folders are never listed: a report links its pages, nobody browses the tree.
    """

    roots: ClassVar[tuple[str, ...]] = ()

    def send_head(self) -> io.BytesIO | BinaryIO | None:
        real = os.path.realpath(self.translate_path(self.path))
        if not any(real == root or real.startswith(root + os.sep) for root in self.roots):
            self.send_error(HTTPStatus.NOT_FOUND, "File not found")
            return None
        return super().send_head()

    def list_directory(self, path: str | os.PathLike[str]) -> io.BytesIO | None:
        self.send_error(HTTPStatus.NOT_FOUND, "File not found")
        return None


def serve(settings: Settings) -> None:
    """Serve ``site_dir`` on ``bind_host:reports_port`` until the process is stopped."""
    handler = type("BoundSiteHandler", (SiteHandler,), {"roots": site_roots(settings)})
    address = (settings.bind_host, settings.reports_port)
    with ThreadingHTTPServer(address, partial(handler, directory=str(settings.site_dir))) as httpd:
        httpd.serve_forever()


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m lambdarec.reports``: the reports service (settings from ``LAMBDAREC_*``)."""
    import argparse

    from lambdarec.config import get_settings

    argparse.ArgumentParser(
        prog="python -m lambdarec.reports",
        description="Serve the reports site (LAMBDAREC_STATE_DIR/site) on LAMBDAREC_REPORTS_PORT.",
    ).parse_args(argv)
    serve(get_settings())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
