"""The attribution job's program without a JVM: its SQL, its options, its command line, and the
compaction of its archive into the lake tables (pyarrow on a temporary folder).

The joins themselves run on Flink in tests/integration/test_attribution.py.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from lambdarec import attribution
from lambdarec.config import Settings
from lambdarec.events import REQUEST_ID_REGEX
from lambdarec.streaming.kafka import topic_specs

if TYPE_CHECKING:
    from types import ModuleType

REPO = Path(__file__).resolve().parents[2]
JOB = REPO / "include" / "flink" / "attribution.py"


@pytest.fixture(scope="module")
def job() -> ModuleType:
    spec = importlib.util.spec_from_file_location("lambdarec_attribution_job", JOB)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _print_sql(job: ModuleType, capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    assert job.main(["--print-sql", *argv]) == 0
    return capsys.readouterr().out


def _statement(sql: str, head: str) -> str:
    """The statement of ``sql`` starting with ``head`` (statements end with ``;`` + blank line)."""
    found = [s for s in sql.split(";\n\n") if s.lstrip().startswith(head)]
    assert len(found) == 1, f"{len(found)} statements start with {head!r}"
    return found[0]


# -- SQL ---------------------------------------------------------------------------------------


def test_print_sql_shows_both_join_paths_with_the_window(
    job: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    sql = _print_sql(job, capsys, "--window-s", "900")
    paths = _statement(sql, "CREATE TEMPORARY VIEW attributions").split("UNION ALL")
    assert len(paths) == 2
    by_request, by_user_item = paths
    window = "INTERVAL '0:15:00.000' HOUR TO SECOND"
    # (a) the interval join on the request id and item, the event within the window after it
    assert "'request_id' AS `match`" in by_request
    assert "c.request_id = s.request_id AND c.item_id = s.item_id" in by_request
    assert f"c.`ts` BETWEEN s.`ts` AND s.`ts` + {window}" in by_request
    assert "WHERE c.request_id IS NOT NULL" in by_request
    # (b) the temporal join on the latest impression of the user and item, within the window
    assert "'user_item'" in by_user_item
    assert "JOIN latest_shown FOR SYSTEM_TIME AS OF c.`ts` AS s" in by_user_item
    assert "c.user_id = s.user_id AND c.item_id = s.item_id" in by_user_item
    assert f"c.request_id IS NULL AND c.`ts` <= s.`ts` + {window}" in by_user_item
    latest = _statement(sql, "CREATE TEMPORARY VIEW latest_shown")
    assert "PARTITION BY user_id, item_id ORDER BY `ts` DESC" in latest
    assert "recency = 1" in latest
    # Another window changes both paths and only them.
    other = _print_sql(job, capsys, "--window-s", "45")
    assert other.count("INTERVAL '0:00:45.000' HOUR TO SECOND") == 2
    assert window not in other


def test_the_impressions_are_unnested_one_row_per_shown_item(
    job: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    sql = _print_sql(job, capsys)
    shown = _statement(sql, "CREATE TEMPORARY VIEW shown")
    assert "CROSS JOIN UNNEST(items) AS t (item_id, `position`, score, `source`)" in shown
    source = _statement(sql, "CREATE TABLE impressions_raw")
    assert "'topic' = 'lambdarec.impressions'" in source
    assert "ARRAY<ROW<item_id STRING, `position` INT, score DOUBLE, `source` STRING>>" in source


def test_revenue_is_the_price_of_a_purchase_only(
    job: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    view = _statement(_print_sql(job, capsys), "CREATE TEMPORARY VIEW attributed")
    assert (
        "CASE WHEN event_type = 'purchase' THEN COALESCE(price, 0.0) ELSE 0.0 END AS revenue"
        in view
    )


def test_the_sinks_are_the_contracts_tables(
    job: ModuleType, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    sql = _print_sql(
        job, capsys, "--archive-dir", str(tmp_path), "--attributed-topic", "t.attributed"
    )
    topic = _statement(sql, "CREATE TABLE attributed_out")
    assert "'topic' = 't.attributed'" in topic
    for name, table in (("lake_attributed", "attributed"), ("lake_impressions", "impressions")):
        ddl = _statement(sql, f"CREATE TABLE {name}")
        assert f"'path' = '{tmp_path.as_uri()}/{table}'" in ddl
        assert "PARTITIONED BY (`date`)" in ddl
        columns = re.findall(r"`?(\w+)`? (?:STRING|TIMESTAMP_LTZ\(3\)|DOUBLE|INT)(?=[,\s])", ddl)
        assert columns == [*attribution.SCHEMAS[table].names, "date"], columns
    sink_columns = re.findall(r"`?(\w+)`? (?:STRING|DOUBLE|INT)(?=[,\s])", topic)
    assert sink_columns == attribution.SCHEMAS["attributed"].names


def test_the_job_reads_the_contracts_request_id(job: ModuleType) -> None:
    """include/flink/attribution.py keeps its own copy of the rule (it runs without lambdarec)."""
    assert job.REQUEST_ID_REGEX == REQUEST_ID_REGEX, (
        "change REQUEST_ID_REGEX in include/flink/attribution.py and include/lambdarec/events.py "
        "together"
    )


def test_outputs_select_the_inserts(job: ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
    sql = _print_sql(job, capsys, "--outputs", "attributed-topic")
    assert sql.count("INSERT INTO") == 1 and "INSERT INTO attributed_out" in sql
    with pytest.raises(SystemExit, match="unknown"):
        job.statements(job.parse_args(["--outputs", "attributed-topic,nope"]))


# -- options -----------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["0", "-5", "1.5", "half an hour"])
def test_a_bad_window_is_a_one_line_error(
    job: ModuleType, capsys: pytest.CaptureFixture[str], value: str
) -> None:
    with pytest.raises(SystemExit) as exit_:
        job.parse_args(["--window-s", value])
    assert exit_.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("attribution.py: error: argument --window-s:")
    assert "Traceback" not in error


def test_the_window_and_topics_default_from_the_environment(
    job: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LAMBDAREC_ATTRIBUTION_WINDOW_S", "120")
    monkeypatch.setenv("LAMBDAREC_TOPIC_ATTRIBUTED", "x.attributed")
    args = job.parse_args([])
    assert args.window_s == 120 and args.attributed_topic == "x.attributed"
    assert args.state_ttl_s == 240  # twice the window by default


def test_state_must_outlive_the_window(job: ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        job.parse_args(["--window-s", "600", "--state-ttl-s", "60"])
    assert "shorter than --window-s 600" in capsys.readouterr().err


def test_the_configuration_is_the_speed_layers_under_its_own_name(
    job: ModuleType, tmp_path: Path
) -> None:
    lib = tmp_path / "lib"
    lib.mkdir()
    for name in (
        "flink-sql-connector-kafka-x.jar",
        "flink-parquet-x.jar",
        "lambdarec-flink-udf.jar",
    ):
        (lib / name).touch()
    args = job.parse_args(["--jars", str(lib), "--checkpoint-dir", str(tmp_path / "chk")])
    conf = job.flink_config(args)
    assert conf["pipeline.name"] == attribution.JOB_NAME == job.JOB_NAME
    assert conf["table.local-time-zone"] == "UTC"
    assert conf["table.exec.state.ttl"] == f"{2 * job.DEFAULT_WINDOW_S * 1000} ms"
    assert conf["execution.checkpointing.dir"] == (tmp_path / "chk").as_uri()


# -- settings and the command line ----------------------------------------------------------------


def test_settings_validate_the_window(tmp_path: Path) -> None:
    assert Settings(state_dir=tmp_path).attribution_window_s == 1800
    for bad in (0, -1):
        with pytest.raises(ValidationError, match="attribution_window_s"):
            Settings(state_dir=tmp_path, attribution_window_s=bad)


def test_the_attributed_topic_is_created_with_the_others(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path, topic_attributed="my.attributed")
    assert "my.attributed" in {spec.name for spec in topic_specs(settings)}


def test_the_command_passes_the_settings(job: ModuleType, tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path, attribution_window_s=77, kafka_bootstrap="b:1")
    command = attribution.attribution_command(settings, "--window-s", "90")
    assert command[1].endswith("include/flink/attribution.py")
    args = job.parse_args(command[2:])
    assert args.window_s == 90  # a later option wins
    assert job.parse_args(attribution.attribution_command(settings)[2:]).window_s == 77
    assert args.bootstrap_servers == "b:1"
    assert args.impressions_topic == settings.topic_impressions
    assert args.attributed_topic == settings.topic_attributed
    assert Path(args.archive_dir) == attribution.archive_root(settings)
    # Never inside the speed layer's checkpoints (its restore globs <dir>/*/chk-*).
    assert not Path(args.checkpoint_dir).is_relative_to(Path(settings.checkpoint_dir))


# -- compaction --------------------------------------------------------------------------------


def _flink_file(folder: Path, name: str, rows: list[dict[str, Any]], table: str) -> None:
    """A part file as Flink's filesystem sink writes it: no suffix, naive UTC milliseconds."""
    schema = pa.schema(
        [
            pa.field(f.name, pa.timestamp("ms") if pa.types.is_timestamp(f.type) else f.type)
            for f in attribution.SCHEMAS[table]
        ]
    )
    naive = [
        {k: v.replace(tzinfo=None) if isinstance(v, datetime) else v for k, v in r.items()}
        for r in rows
    ]
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(naive, schema=schema), folder / name)


def _attributed(event_id: str, second: int, **changes: Any) -> dict[str, Any]:
    row = {
        "event_id": event_id,
        "event_ts": datetime(2024, 5, 1, 12, 0, second, tzinfo=UTC),
        "event_type": "purchase",
        "user_id": "u1",
        "session_id": "s1",
        "item_id": "i1",
        "price": 5.0,
        "revenue": 5.0,
        "request_id": "a" * 32,
        "impression_ts": datetime(2024, 5, 1, 11, 59, 0, tzinfo=UTC),
        "variant": "control",
        "position": 2,
        "match": "request_id",
    }
    return {**row, **changes}


def test_compact_folds_a_day_typed_deduplicated_and_sorted(tmp_path: Path) -> None:
    archive, lake = tmp_path / "archive", tmp_path / "lake"
    day = date(2024, 5, 1)
    folder = archive / "attributed" / "date=2024-05-01"
    _flink_file(folder, "part-1-0", [_attributed("e2", 30), _attributed("e1", 10)], "attributed")
    # A restart re-emits e2; an in-progress file (hidden) is not read.
    _flink_file(folder, "part-2-0", [_attributed("e2", 30), _attributed("e3", 20)], "attributed")
    _flink_file(folder, ".part-3-0.inprogress", [_attributed("e9", 5)], "attributed")

    result = attribution.compact(archive, lake, "attributed", day)
    assert result.as_dict() == {
        "table": "attributed",
        "day": "2024-05-01",
        "archived_rows": 4,
        "lake_rows_before": 0,
        "duplicates_dropped": 1,
        "lake_rows_after": 3,
    }
    files = sorted((lake / "attributed" / "date=2024-05-01").iterdir())
    assert [f.name for f in files] == [attribution.PART_FILE]
    stored = pq.read_table(files[0])
    assert stored.schema.equals(attribution.SCHEMAS["attributed"], check_metadata=False)
    assert stored.column("event_id").to_pylist() == ["e1", "e3", "e2"]
    assert stored.column("event_ts").to_pylist()[0] == datetime(2024, 5, 1, 12, 0, 10, tzinfo=UTC)

    again = attribution.compact(archive, lake, "attributed", "2024-05-01")
    assert again.lake_rows_before == 3 and again.lake_rows_after == 3
    assert pq.read_table(files[0]).equals(stored)
    assert attribution.read(lake, "attributed").num_rows == 3
    assert attribution.read(lake, "attributed", start=date(2024, 5, 2)).num_rows == 0


def test_compact_of_an_empty_day_leaves_the_lake_alone(tmp_path: Path) -> None:
    result = attribution.compact(
        tmp_path / "archive", tmp_path / "lake", "impressions", "2024-05-01"
    )
    assert (result.archived_rows, result.lake_rows_after) == (0, 0)
    assert not (tmp_path / "lake").exists()


def test_compact_refuses_foreign_files_and_tables(tmp_path: Path) -> None:
    folder = tmp_path / "archive" / "impressions" / "date=2024-05-01"
    folder.mkdir(parents=True)
    pq.write_table(pa.table({"x": [1]}), folder / "part-0")
    with pytest.raises(attribution.AttributionError, match=r"lacks column\(s\).*move it out"):
        attribution.compact(tmp_path / "archive", tmp_path / "lake", "impressions", "2024-05-01")
    with pytest.raises(attribution.AttributionError, match="unknown table 'clicks'; use one of"):
        attribution.compact(tmp_path / "archive", tmp_path / "lake", "clicks", "2024-05-01")


def test_run_checks_the_jobs_options_before_creating_anything(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """``lambdarec attribution run -- --window-s 0``: the program's own one-line error (it runs
    on the Flink venv's python without a JVM), and no folder, topic or jar is made."""
    settings = Settings(state_dir=tmp_path / "state")
    assert attribution.run_job(settings, ["--window-s", "0"]) == 2
    error = capfd.readouterr().err.strip().splitlines()[-1]
    assert error == "attribution.py: error: argument --window-s: 0 must be > 0 (seconds), e.g. 1800"
    assert not (tmp_path / "state").exists()


def test_both_jobs_take_the_shared_options_and_keep_rest_on_loopback(job: ModuleType) -> None:
    """The options both Flink jobs take come from one function of speed_layer.py; each job's
    mini-cluster serves REST on 127.0.0.1 only, with a port or without."""
    shared = ["--jars", "", "--checkpoint-interval-s", "3", "--starting-offsets", "latest"]
    for program in (job.sl, job):
        args = program.parse_args([*shared, "--restore", "none"])
        assert (args.checkpoint_interval_s, args.parallelism, args.restore) == (3.0, 1, "none")
        conf = program.flink_config(args)
        assert conf["execution.checkpointing.interval"] == "3000 ms"
        assert conf["rest.bind-address"] == conf["jobmanager.bind-host"] == "127.0.0.1"
        assert "rest.port" not in conf
        assert (
            program.flink_config(program.parse_args([*shared, "--rest-port", "18082"]))["rest.port"]
            == "18082"
        )
    assert job.parse_args([]).group_id == "lambdarec-attribution"
    assert job.sl.parse_args([]).group_id == "lambdarec-speed-layer"
    assert job.parse_args([]).latency_ms == 100 and job.sl.parse_args([]).latency_ms == 10


def test_both_sources_start_where_the_option_says(
    job: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    sql = _print_sql(job, capsys, "--starting-offsets", "latest")
    for table in ("CREATE TABLE events_raw", "CREATE TABLE impressions_raw"):
        statement = _statement(sql, table)
        assert "'scan.startup.mode' = 'latest-offset'" in statement
        assert "'properties.group.id' = 'lambdarec-attribution'" in statement
