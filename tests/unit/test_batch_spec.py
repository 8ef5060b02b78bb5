"""Batch-layer helpers without Spark: table selection, windows, the spark-submit command, --help."""

from __future__ import annotations

import importlib.util
from datetime import UTC, date, datetime
from pathlib import Path

import pytest

from lambdarec.batch.spec import (
    SPARK_CONF,
    TABLES,
    event_timestamp,
    first_day,
    parse_tables,
    window_bounds,
)
from lambdarec.batch.submit import DAILY_FEATURES, QUICK_COMPILER, spark_job, spark_submit_args
from lambdarec.config import Settings
from lambdarec.tables import FEATURE_TABLES


def test_the_job_writes_every_batch_table() -> None:
    assert list(TABLES) == [t.name for t in FEATURE_TABLES]
    assert {"sequential_rules", "session_items", "item_sessions", "user_recent_items"} <= set(
        TABLES
    )


def test_parse_tables_keeps_spec_order_and_rejects_unknown_names() -> None:
    assert parse_tables("all") == list(TABLES)
    assert parse_tables("category_popularity, user_history_30d") == [
        "user_history_30d",
        "category_popularity",
    ]
    with pytest.raises(ValueError, match="unknown table"):
        parse_tables("user_history_30d,nope")
    with pytest.raises(ValueError):
        parse_tables("")


def test_windows_end_at_the_next_midnight_utc() -> None:
    b = window_bounds("2024-03-31")
    assert b["end"] == datetime(2024, 4, 1, tzinfo=UTC) == event_timestamp(date(2024, 3, 31))
    assert b["start_1d"] == datetime(2024, 3, 31, tzinfo=UTC)
    assert b["start_7d"] == datetime(2024, 3, 25, tzinfo=UTC)
    assert b["start_30d"] == datetime(2024, 3, 2, tzinfo=UTC)
    assert first_day("2024-03-31") == date(2024, 3, 2)
    # A datetime (Airflow's data_interval_start) is the UTC day it falls in.
    assert window_bounds(datetime(2024, 3, 31, 23, 59, tzinfo=UTC)) == b
    with pytest.raises(ValueError, match="YYYY-MM-DD"):
        window_bounds("31/03/2024")


def test_spark_job_maps_onto_spark_submit(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path)
    job = spark_job("2024-03-31", settings, tables="item_stats", shuffle_partitions=4)
    assert job.application == str(DAILY_FEATURES) and DAILY_FEATURES.exists()
    args = job.application_args
    assert args[args.index("--lake-dir") + 1] == str(settings.lake_dir)
    assert args[args.index("--date") + 1] == "2024-03-31"
    assert args[args.index("--tables") + 1] == "item_stats"
    assert job.conf["spark.sql.shuffle.partitions"] == "4"
    assert job.conf["spark.sql.session.timeZone"] == "UTC"
    assert job.env_vars["JAVA_HOME"] == str(settings.java_home)
    # The session tables' parameters come from the settings unless given.
    assert args[args.index("--sr-window") + 1] == str(settings.sr_window)
    assert args[args.index("--sknn-sample") + 1] == str(settings.sknn_sample)
    tuned = Settings(state_dir=tmp_path, sr_window=5, sknn_sample=300)
    args = spark_job("2024-03-31", tuned).application_args
    assert args[args.index("--sr-window") + 1] == "5"
    assert args[args.index("--sknn-sample") + 1] == "300"
    args = spark_job("2024-03-31", tuned, window=2).application_args
    assert args[args.index("--sr-window") + 1] == "2"
    cmd = spark_submit_args("2024-03-31", settings)
    assert cmd[cmd.index("--master") + 1] == "local[*]"
    assert cmd[cmd.index(str(DAILY_FEATURES)) + 1 :][:2] == ["--lake-dir", str(settings.lake_dir)]
    # Every setting is passed; an empty lake is a short job (the driver's JVM on C1 alone).
    extra = {"spark.driver.extraJavaOptions": f" {QUICK_COMPILER}"}
    for key, value in SPARK_CONF.items():
        assert f"{key}={value}{extra.get(key, '')}" in cmd


def test_program_has_help_and_validates_arguments_without_spark(capsys) -> None:
    spec = importlib.util.spec_from_file_location("daily_features", DAILY_FEATURES)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with pytest.raises(SystemExit) as exit_:
        module.parse_args(["--help"])
    assert exit_.value.code == 0
    assert "--lake-dir" in capsys.readouterr().out
    args = module.parse_args(["--lake-dir", "/x", "--date", "2024-01-30", "--tables", "item_stats"])
    assert args.tables == ["item_stats"] and args.date == date(2024, 1, 30)
    args = module.parse_args(
        ["--lake-dir", "/x", "--date", "2024-01-30", "--tables", "session_items,sequential_rules"]
    )
    assert args.tables == ["sequential_rules", "session_items"]  # spec order
    assert (args.sr_window, args.sknn_sample) == (3, 200)
    for bad in (["--date", "30/01/2024"], ["--date", "2024-01-30", "--tables", "nope"]):
        with pytest.raises(SystemExit):
            module.parse_args(["--lake-dir", "/x", *bad])


def test_a_backfill_is_one_submit_over_its_days(tmp_path: Path, capsys) -> None:
    settings = Settings(state_dir=tmp_path)
    job = spark_job("2024-03-29", settings, through="2024-03-31")
    args = job.application_args
    assert args[args.index("--date") + 1] == "2024-03-29"
    assert args[args.index("--through") + 1] == "2024-03-31"
    assert job.name == "lambdarec-daily-features-2024-03-29..2024-03-31-all"
    assert "--through" not in spark_job("2024-03-29", settings).application_args
    with pytest.raises(ValueError, match="must not end before"):
        spark_job("2024-03-29", settings, through="2024-03-28")

    spec = importlib.util.spec_from_file_location("daily_features", DAILY_FEATURES)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    args = module.parse_args(
        ["--lake-dir", "/x", "--date", "2024-02-28", "--through", "2024-03-01"]
    )
    assert module.days_of(args) == [date(2024, 2, 28), date(2024, 2, 29), date(2024, 3, 1)]
    assert module.days_of(module.parse_args(["--lake-dir", "/x", "--date", "2024-02-28"])) == [
        date(2024, 2, 28)
    ]
    with pytest.raises(SystemExit):
        module.parse_args(["--lake-dir", "/x", "--date", "2024-03-01", "--through", "2024-02-28"])
    assert "is before --date" in capsys.readouterr().err


def test_a_backfill_refuses_a_reversed_range_or_a_day_without_events(tmp_path: Path) -> None:
    from lambdarec.pipelines.daily import backfill

    settings = Settings(state_dir=tmp_path)
    with pytest.raises(ValueError, match="the last day is before the first"):
        backfill("2024-03-02", "2024-03-01", settings)
    with pytest.raises(ValueError, match=r"cannot backfill 2024-03-01\.\.2024-03-02: no events"):
        backfill("2024-03-01", "2024-03-02", settings)


def test_the_backfill_command_fails_in_one_line(tmp_path: Path, monkeypatch) -> None:
    from typer.testing import CliRunner

    from lambdarec.cli import app
    from lambdarec.config import get_settings

    monkeypatch.setenv("LAMBDAREC_STATE_DIR", str(tmp_path))
    get_settings.cache_clear()
    try:
        for args, words in (
            (["--start", "2024-3-x", "--end", "2024-03-01"], "YYYY-MM-DD"),
            (["--start", "2024-03-02", "--end", "2024-03-01"], "before the first"),
            (["--start", "2024-03-01", "--end", "2024-03-01"], "no events for 2024-03-01"),
        ):
            result = CliRunner().invoke(app, ["features", "backfill", *args])
            assert result.exit_code == 1, result.output
            errors = [line for line in result.output.splitlines() if line.startswith("error:")]
            assert len(errors) == 1 and words in errors[0], result.output
            assert "Traceback" not in result.output
    finally:
        get_settings.cache_clear()


def test_a_cluster_master_sizes_executors_and_lets_executors_reach_the_driver(
    tmp_path: Path,
) -> None:
    local = spark_job("2024-03-31", Settings(state_dir=tmp_path))
    assert local.driver_memory == "4g" and local.env_vars["SPARK_LOCAL_IP"] == "127.0.0.1"
    assert "spark.executor.memory" not in local.conf and "spark.cores.max" not in local.conf
    sized = Settings(state_dir=tmp_path, spark_executor_memory="2g", spark_cores_max=4)
    remote = spark_job("2024-03-31", sized, master="spark://spark-master:7077")
    assert remote.driver_memory == "1g"  # the driver only plans on a cluster
    assert remote.conf["spark.executor.memory"] == "2g" and remote.conf["spark.cores.max"] == "4"
    # Executors on other hosts connect back to the driver: it must not bind to loopback.
    assert "SPARK_LOCAL_IP" not in remote.env_vars
    loopback = spark_job(
        "2024-03-31", Settings(state_dir=tmp_path, spark_master="spark://127.0.0.1:7077")
    )
    assert loopback.env_vars["SPARK_LOCAL_IP"] == "127.0.0.1"
    assert "spark.cores.max" not in loopback.conf  # 0: every free core, standalone's default
    # Executors run in their worker's folder: a relative lake would be theirs, not the driver's.
    relative = spark_job("2024-03-31", Settings(state_dir=Path("rel")), master="yarn")
    lake = relative.application_args[relative.application_args.index("--lake-dir") + 1]
    assert Path(lake).is_absolute()
    with pytest.raises(ValueError, match="spark_executor_memory"):
        Settings(spark_executor_memory="lots")


def test_a_short_local_job_compiles_with_c1_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import lambdarec.batch.submit as submit
    from lambdarec.tables import events_path, partition_dir

    settings = Settings(state_dir=tmp_path)
    events = events_path(settings.lake_dir)
    for day, size in (("2024-03-01", 1_000), ("2024-03-31", 2_000), ("2024-04-01", 4_000)):
        folder = partition_dir(events, day)
        folder.mkdir(parents=True)
        (folder / "part-0.parquet").write_bytes(b"x" * size)
    # The window of 2024-03-31 is March 2..31: the 1st and April's partition are outside it.
    assert submit.window_bytes(events, first_day("2024-03-31"), date(2024, 3, 31)) == 2_000
    short = spark_job("2024-03-31", settings).conf["spark.driver.extraJavaOptions"]
    assert short == f"{SPARK_CONF['spark.driver.extraJavaOptions']} {submit.QUICK_COMPILER}"
    # A backfill through April counts April too; a cluster's driver keeps the default.
    monkeypatch.setattr(submit, "SHORT_JOB_BYTES", 5_000)
    long = spark_job("2024-03-31", settings, through="2024-04-01")
    remote = spark_job("2024-03-31", settings, master="spark://127.0.0.1:7077")
    for job in (long, remote):
        assert (
            job.conf["spark.driver.extraJavaOptions"] == SPARK_CONF["spark.driver.extraJavaOptions"]
        )
