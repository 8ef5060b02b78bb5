"""LAMBDAREC_DAGS_PAUSED: the platform unpauses the scheduled DAGs unless it says otherwise;
a test's private platform keeps them paused."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from lambdarec.config import Settings
from lambdarec.harness.platform import private_settings
from lambdarec.platform.airflow import SCHEDULED_DAGS, schedule_dags
from lambdarec.platform.base import PlatformError

if TYPE_CHECKING:
    from pathlib import Path


def test_the_setting_defaults_to_live_schedules_and_reads_the_variable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("LAMBDAREC_DAGS_PAUSED", raising=False)
    assert Settings(state_dir=tmp_path).dags_paused is False
    monkeypatch.setenv("LAMBDAREC_DAGS_PAUSED", "1")
    assert Settings(state_dir=tmp_path).dags_paused is True
    monkeypatch.setenv("LAMBDAREC_DAGS_PAUSED", "maybe")
    with pytest.raises(ValueError, match="dags_paused"):
        Settings(state_dir=tmp_path)


def test_a_private_platform_keeps_them_paused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("LAMBDAREC_DAGS_PAUSED", raising=False)
    assert private_settings(tmp_path).dags_paused is True
    assert private_settings(tmp_path, dags_paused=False).dags_paused is False


def test_the_four_scheduled_dags_and_a_clear_error_without_airflow(tmp_path: Path) -> None:
    assert SCHEDULED_DAGS == (
        "daily_feature_pipeline",
        "drift_monitoring",
        "online_metrics",
        "weekly_model_retraining",
    )
    with pytest.raises(PlatformError, match=r"start it first \(`lambdarec platform up airflow`\)"):
        schedule_dags(private_settings(tmp_path))
