"""The reports site's index lists what the report folders hold, each with its date and a one-line
summary: Data Docs, drift reports, A/B readouts, the retraining's and `make evaluate`'s
evaluations."""

from __future__ import annotations

import json
import os
import re
from typing import TYPE_CHECKING

from lambdarec.config import Settings
from lambdarec.reports import RETRAINING_DIR, prepare_site, site_roots, write_index

if TYPE_CHECKING:
    from pathlib import Path


def _text(settings: Settings) -> str:
    page = (settings.site_dir / "index.html").read_text()
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", page))


def _put(folder: Path, name: str, payload: object, mtime: float | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(payload if isinstance(payload, str) else json.dumps(payload))
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


def test_an_empty_state_says_what_writes_each_kind(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path, web_assets_dir=tmp_path / "assets")
    prepare_site(settings)
    text = _text(settings)
    assert "Data Docs" in text and "not built yet" in text
    assert "drift_monitoring DAG writes one per day" in text
    assert "weekly_model_retraining DAG and make evaluate write them" in text
    # The vendored CSS/JS are part of the site (its own link, one of the folders it serves).
    assert (settings.site_dir / "vendor").resolve() == (tmp_path / "assets").resolve()
    assert str((tmp_path / "assets").resolve()) in site_roots(settings)


def test_each_report_is_listed_with_its_date_and_summary(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path, web_assets_dir=tmp_path / "assets")
    noon = 1_704_110_400.0  # 2024-01-01 12:00 UTC
    run = settings.reports_dir / "models" / RETRAINING_DIR / "manual__2024-01-04"
    _put(run, "report.html", "<html>evaluation</html>", noon)
    _put(
        run,
        "decision.json",
        {
            "models": {"served": {"ndcg@10": 0.25}},
            "decisions": {
                "two_tower": {"version": "3", "alias": "champion"},
                "deepfm": {"version": "3", "alias": "champion"},
            },
        },
    )
    manual = settings.reports_dir / "models" / "synthetic" / "20240102T000000Z"
    _put(manual, "report.html", "<html>evaluation</html>", noon + 86_400)
    _put(manual, "metrics.json", {"models": {"popular": {"ndcg@10": 0.1}, "als": {"ndcg@10": 0.2}}})
    drift = settings.drift_reports_dir / "2024-01-03"
    _put(drift, "report.html", "<html>drift</html>")
    _put(
        drift,
        "result.json",
        {"n_events": 1234, "watch": ["price"], "alarms": [], "retraining": {"decision": "none"}},
    )
    ab = settings.ab_reports_dir / "2024-01-05"
    _put(ab, "readout.html", "<html>readout</html>")
    _put(ab, "readout.json", {"period": {"variants": {"champion": {"lists": 1500}}}})
    _put(ab, "guardrail.json", {"changed": ["popular"]})
    docs = _put(settings.data_docs_dir, "index.html", "<html>docs</html>", noon)
    validations = settings.gx_dir / "validations" / "raw_events"
    _put(validations, "a.json", {"success": True})
    _put(validations, "b.json", {"success": False})
    write_index(settings)

    text = _text(settings)
    assert "built 2024-01-01 12:00 UTC: 2 validation(s), 1 passed, 1 failed" in text
    assert (
        "retraining/manual__2024-01-04 (2024-01-01 12:00 UTC): served NDCG@10 0.2500; "
        "two_tower v3 champion, deepfm v3 champion" in text
    )
    assert (
        "synthetic/20240102T000000Z (2024-01-02 12:00 UTC): best NDCG@10 als 0.2000 of 2 models"
        in text
    )
    # Newest evaluation first.
    assert text.index("synthetic/2024") < text.index("retraining/manual")
    assert "2024-01-03 : 1,234 events, 1 to watch, 0 alarm(s); retraining: none" in text
    assert "2024-01-05 : champion 1,500 lists; guardrail switched off popular" in text
    page = (settings.site_dir / "index.html").read_text()
    assert 'href="reports/models/retraining/manual__2024-01-04/report.html"' in page
    assert 'href="reports/drift/2024-01-03/report.html"' in page
    assert 'href="reports/ab/2024-01-05/readout.html"' in page
    assert docs.is_file()


def test_the_retraining_publishes_its_evaluation_where_the_index_lists_it(tmp_path: Path) -> None:
    from lambdarec.models.retrain import publish_evaluation

    settings = Settings(state_dir=tmp_path, web_assets_dir=tmp_path / "assets")
    run_dir = settings.state_dir / "models" / "runs" / "scheduled__2024-01-07"
    _put(run_dir / "evaluation", "report.html", "<html>evaluation</html>")
    _put(run_dir / "evaluation", "metrics.json", {"models": {}})
    _put(
        run_dir,
        "decision.json",
        {"models": {}, "decisions": {"two_tower": {"version": "1", "alias": "challenger"}}},
    )
    target = publish_evaluation(run_dir, settings)
    assert target == settings.reports_dir / "models" / RETRAINING_DIR / run_dir.name
    assert sorted(p.name for p in target.iterdir()) == [
        "decision.json",
        "metrics.json",
        "report.html",
    ]
    assert "retraining/scheduled__2024-01-07" in _text(settings)
    assert "two_tower v1 challenger" in _text(settings)
