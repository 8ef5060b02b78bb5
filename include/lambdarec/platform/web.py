"""The web front of the local platform: the Flask recommendation API under gunicorn (opt-in, on
loopback behind the nginx of :mod:`lambdarec.platform.proxy`, whose port is the public URL), the
reports site (one static server for Data Docs, drift and evaluation reports, its folder written by
:mod:`lambdarec.reports`) and the Data Docs row."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from lambdarec.platform.base import Service, http_ok, venv_bin
from lambdarec.reports import prepare_site

if TYPE_CHECKING:
    from lambdarec.config import Settings


def serving_workers(settings: Settings) -> list[str]:
    """gunicorn's worker options: one process when the index is a Milvus Lite file (the file is
    locked by the first process that opens it: a second worker would serve without an index),
    three of two threads each with a Milvus server.

    Threads of one process share its GIL: each request thread is another contender for it, so
    fewer threads per process answered faster, and a third process keeps the cores busy while
    the others wait on the index and the online store. Measured on 2 cores, 200k items in the
    Milvus server, at 200 req/s (p50 / p99): 2x4 17 / 66 ms with 12 of 12,000 answers degraded
    by timeouts, 2x2 12 / 79 ms, 4x1 14 / 76 ms, 3x2 12 / 53 ms and none degraded; at 100 req/s
    2x4 9 / 27 ms, 2x2 8 / 21 ms.
    """
    if "://" in settings.milvus_uri:
        return ["-w", "3", "--threads", "2"]
    return ["-w", "1", "--threads", "8"]


def serving(settings: Settings) -> Service:
    """The Flask recommendation API under gunicorn (opt-in: ``lambdarec platform up serving``, or
    ``up proxy`` for it and the nginx in front of it, the public URL)."""
    host, port = settings.bind_host, settings.serving_port
    url = f"http://{host}:{port}"
    return Service(
        name="serving",
        title="Flask recommendation API (gunicorn; opt-in)",
        ports={port: "serving_port"},
        url=url,
        health=lambda: http_ok(f"{url}/health"),
        command=[
            str(venv_bin() / "gunicorn"),
            "serving:create_app()",
            "-b",
            f"{host}:{port}",
            *serving_workers(settings),
        ],
        cwd=settings.home,
        stop_timeout_s=10.0,
        details=lambda: (
            f"public URL (through `proxy`) http://{host}:{settings.proxy_port}; "
            f"docs {url}/docs; readiness {url}/ready; metrics {url}/metrics"
        ),
        default=False,
    )


def reports(settings: Settings) -> Service:
    """A static web server (loopback) for Data Docs and the HTML reports: no directory listings,
    no symlink followed out of the site's folders (:class:`lambdarec.reports.SiteHandler`)."""
    host, port = settings.bind_host, settings.reports_port
    url = f"http://{host}:{port}/"
    return Service(
        name="reports",
        title="Reports: one index of Data Docs, drift and evaluation reports",
        ports={port: "reports_port"},
        url=url,
        health=lambda: http_ok(url),
        # Host, port and folders come from the LAMBDAREC_* variables every service starts with.
        command=[sys.executable, "-m", "lambdarec.reports"],
        prepare=lambda: prepare_site(settings),
        stop_timeout_s=5.0,
    )


def data_docs(settings: Settings) -> Service:
    index = settings.data_docs_dir / "index.html"
    return Service(
        name="data-docs",
        title="Great Expectations Data Docs",
        ports={},
        url=f"http://{settings.bind_host}:{settings.reports_port}/data_docs/index.html",
        health=index.is_file,
        details=lambda: f"served by `reports`; also {index.as_uri()}",
    )
