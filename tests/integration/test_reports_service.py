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


def test_reports_site_lists_no_directory_and_follows_no_symlink_out_of_it() -> None:
    with private_platform(["reports"]) as settings:
        base = f"http://127.0.0.1:{settings.reports_port}/"
        run = settings.reports_dir / "models" / "run-2"
        run.mkdir(parents=True)
        (run / "report.html").write_text("<html>evaluation</html>")
        (settings.data_docs_dir / "secret.txt").write_text("kept")
        (run / "passwd").symlink_to("/etc/passwd")
        (settings.site_dir / "etc").symlink_to("/etc", target_is_directory=True)
        (settings.site_dir / "passwd").symlink_to("/etc/passwd")
        (run / "elsewhere").mkdir()
        (run / "elsewhere" / "notes.txt").write_text("no index here")

        for path in ("reports/", "reports/models/", "reports/models/run-2/", "data_docs/"):
            listing = requests.get(base + path, timeout=5)
            assert listing.status_code == 404, (path, listing.status_code, listing.text[:200])
            assert "report.html" not in listing.text and "secret.txt" not in listing.text
        redirected = requests.get(base + "reports/models/run-2/elsewhere", timeout=5)
        assert redirected.status_code == 404, redirected.status_code

        for path in ("passwd", "etc/passwd", "etc/", "reports/models/run-2/passwd"):
            escaped = requests.get(base + path, timeout=5)
            assert escaped.status_code == 404, (path, escaped.status_code)
            assert "root:" not in escaped.text
        for path in ("../../../../etc/passwd", "reports/../../../etc/passwd", "%2e%2e/etc/passwd"):
            raw = requests.Request("GET", base).prepare()
            raw.url = base + path  # unnormalised, as a hostile client sends it
            with requests.Session() as session:
                escaped = session.send(raw, timeout=5)
            assert escaped.status_code in (400, 404), (path, escaped.status_code)
            assert "root:" not in escaped.text

        # What the site is for still works: the index, the two linked folders, a page in each.
        assert "Data Docs" in requests.get(base, timeout=5).text
        assert requests.get(base + "reports/models/run-2/report.html", timeout=5).ok
        assert requests.get(base + "data_docs/secret.txt", timeout=5).text == "kept"
        assert requests.get(base + "reports/models/run-2/elsewhere/notes.txt", timeout=5).ok
