"""The A/B readout job's command line and its spark-submit command, without starting Spark."""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING

import pytest

from lambdarec.monitoring.ab_job import ONLINE_METRICS, spark_job

if TYPE_CHECKING:
    from pathlib import Path


@pytest.fixture(scope="module")
def job():
    spec = importlib.util.spec_from_file_location("online_metrics", ONLINE_METRICS)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


REQUIRED = ["--lake-dir", "/l", "--reports-dir", "/r", "--variants", "control:90,b:10"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--date", "2024-13-01"], "is not a day"),
        (["--date", "2024-05-01", "--window-days", "0"], "not a positive integer"),
        (["--date", "2024-05-01", "--alpha", "1.5"], "is not in (0, 1)"),
    ],
)
def test_bad_arguments_are_one_line_errors(job, capsys, extra, message) -> None:
    with pytest.raises(SystemExit) as info:
        job.parse_args([*REQUIRED, *extra])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1]


def test_empty_variant_spec_is_refused(job, capsys) -> None:
    with pytest.raises(SystemExit):
        job.parse_args(
            ["--lake-dir", "/l", "--reports-dir", "/r", "--variants", ",", "--date", "2024-05-01"]
        )
    assert "names no variant" in capsys.readouterr().err


def test_a_lake_without_impressions_fails_before_starting_spark(
    job, tmp_path: Path, capsys
) -> None:
    code = job.main(
        [
            "--lake-dir",
            str(tmp_path),
            "--reports-dir",
            str(tmp_path / "r"),
            "--variants",
            "control:1",
            "--date",
            "2024-05-01",
        ]
    )
    assert code == 2
    assert "no impressions under" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_spark_job_takes_its_arguments_from_settings(tmp_path: Path) -> None:
    from lambdarec.config import Settings

    settings = Settings(
        state_dir=tmp_path, ab_variants="control:80,b:20", ab_min_lists=50, ab_window_days=7
    )
    job = spark_job("2024-05-03", settings)
    args = dict(zip(job.application_args[::2], job.application_args[1::2], strict=True))
    assert args["--lake-dir"] == str(settings.lake_dir)
    assert args["--reports-dir"] == str(settings.ab_reports_dir)
    assert args["--date"] == "2024-05-03"
    assert args["--variants"] == "control:80,b:20"
    assert (args["--window-days"], args["--min-lists"]) == ("7", "50")
    assert job.application == str(ONLINE_METRICS) and job.master == settings.spark_master
    command = job.command("spark-submit")
    assert command[:3] == ["spark-submit", "--master", settings.spark_master]
    assert command[-len(job.application_args) - 1] == str(ONLINE_METRICS)


def test_a_short_readout_compiles_with_c1_alone(tmp_path: Path) -> None:
    from lambdarec.batch.submit import QUICK_COMPILER
    from lambdarec.config import Settings

    settings = Settings(state_dir=tmp_path)
    assert QUICK_COMPILER in spark_job("2024-05-03", settings).conf["spark.driver.extraJavaOptions"]
    remote = spark_job("2024-05-03", settings, master="spark://127.0.0.1:7077")
    assert QUICK_COMPILER not in remote.conf["spark.driver.extraJavaOptions"]
