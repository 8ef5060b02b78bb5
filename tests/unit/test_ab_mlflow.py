"""The readout on the champion's MLflow run (a real MLflow on SQLite): the variants that serve the
champion get their online metrics logged per day, the popular variant none; the champion's offline
metrics land beside the readout and in the report. No champion: skipped with the reason."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import pandas as pd
import pytest

from lambdarec.harness.platform import private_settings
from lambdarec.monitoring import ab_report
from lambdarec.monitoring.ab import readout
from lambdarec.monitoring.ab_mlflow import day_step, log_readout, model_variants
from lambdarec.monitoring.ab_report import OFFLINE_JSON
from lambdarec.registry import ModelRegistry

if TYPE_CHECKING:
    from pathlib import Path

    from lambdarec.config import Settings

DAY = "2026-12-05"


def _settings(tmp_path: Path) -> Settings:
    return private_settings(
        tmp_path,
        mlflow_tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
        ab_variants="champion:50,popular:50",
        ab_policies="popular:popular",
    )


def _write_readout(settings: Settings) -> dict[str, Any]:
    rows = pd.DataFrame(
        [
            {
                "day": DAY,
                "variant": variant,
                "user_id": f"{variant}-{n}",
                "impressions": 10,
                "lists": 1,
                "clicks": clicks,
                "clicks_top_k": clicks,
                "shown_top_k": 10,
                "carts": 0,
                "purchases": purchases,
                "revenue": 20.0 * purchases,
            }
            for variant, clicks, purchases in (("champion", 2, 1), ("popular", 1, 0))
            for n in range(30)
        ]
    )
    result = readout(rows, control="champion", variants=["champion", "popular"], min_lists=10)
    result |= {"day": DAY, "control": "champion", "alpha": 0.05, "min_lists": 10}
    ab_report.write(settings.ab_reports_dir / DAY, result)
    return result


def test_only_the_variants_serving_a_model_are_logged() -> None:
    assert model_variants(["champion", "popular", "lean"], "popular:popular,lean:no_ranker") == {
        "champion": "pipeline",
        "lean": "no_ranker",
    }
    # A variant ranked by its own model is not the champion, whether its folder still exists.
    assert model_variants(["champion", "new"], "", "new:/runs/gone/deepfm") == {
        "champion": "pipeline"
    }
    assert day_step(DAY) == 20261205


@pytest.mark.integration
def test_the_champions_run_gets_the_online_metrics_and_the_report_its_offline_ones(
    tmp_path: Path,
) -> None:
    settings = _settings(tmp_path)
    _write_readout(settings)
    registry = ModelRegistry.from_settings(settings, "two_tower")
    run_id = registry.log_run(params={}, metrics={"ndcg@10": 0.21, "hr@20": 0.4}, evaluation_id="e")
    registry.promote(registry.register(run_id), {"ndcg@10": 0.21})

    result = log_readout(DAY, settings)

    assert result["skipped"] is None and result["run_id"] == run_id
    assert set(result["logged"]) == {"champion"}
    history = registry.client.get_metric_history(run_id, "online.champion.ctr_at_k")
    assert [(m.step, m.value) for m in history] == [(20261205, pytest.approx(0.2))]
    assert not registry.client.get_metric_history(run_id, "online.popular.ctr_at_k")
    folder = settings.ab_reports_dir / DAY
    offline = json.loads((folder / OFFLINE_JSON).read_text())
    assert offline["metrics"] == {"hr_at_20": 0.4, "ndcg_at_10": 0.21}
    page = (folder / ab_report.READOUT_HTML).read_text()
    assert "Offline metrics of the served model" in page and "ndcg_at_10" in page


@pytest.mark.integration
def test_no_champion_skips_and_says_why(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    _write_readout(settings)
    result = log_readout(DAY, settings)
    assert result["logged"] == {} and "no champion" in result["skipped"]
    assert not (settings.ab_reports_dir / DAY / OFFLINE_JSON).exists()


def test_a_stopped_tracking_server_is_skipped_at_once(tmp_path: Path) -> None:
    settings = private_settings(tmp_path)  # the platform's MLflow port, nothing listening
    _write_readout(settings)
    result = log_readout(DAY, settings)
    assert result["logged"] == {} and "not answering" in result["skipped"]


def test_a_missing_readout_names_the_job_to_run(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="run the online_metrics Spark job"):
        log_readout(DAY, _settings(tmp_path))
