"""The reports service serves the index page, Data Docs and reports on loopback."""

from __future__ import annotations

import pytest
import requests

from lambdarec.harness.platform import private_platform
from lambdarec.platform import manager

pytestmark = pytest.mark.integration


def test_reports_site_serves_index_data_docs_and_reports() -> None:
    with private_platform(["reports"]) as settings:
        base = f"http://127.0.0.1:{settings.reports_port}/"
        index = requests.get(base, timeout=5)
        assert index.ok and "Data Docs" in index.text and "reports/" in index.text

        (settings.data_docs_dir / "index.html").write_text("<html>docs</html>")
        run = settings.reports_dir / "models" / "run-1"
        run.mkdir(parents=True)
        (run / "report.html").write_text("<html>evaluation</html>")
        assert requests.get(base + "data_docs/index.html", timeout=5).text == "<html>docs</html>"
        assert (
            "evaluation" in requests.get(base + "reports/models/run-1/report.html", timeout=5).text
        )

        rows = {s.name: s for s in manager.status(settings=settings)}
        assert rows["reports"].state == "up"
        assert rows["data-docs"].state == "built"
        assert rows["data-docs"].url == base + "data_docs/index.html"
    assert not any(s.is_up for s in manager.status(["reports"], settings=settings))
