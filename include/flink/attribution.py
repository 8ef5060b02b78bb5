"""Online attribution: one Flink SQL job joining click events to the impressions that showed them.

Runs beside the speed layer on its own mini-cluster (``.venv-flink/bin/python
include/flink/attribution.py ...``, or ``lambdarec attribution run``) and, unchanged, on a cluster
(``flink run -py include/flink/attribution.py``: the driver loads ``speed_layer.py`` from this
folder for the command-line options, the Kafka source, the interval literal and the job
configuration it shares).

Two Kafka sources, read in event time:

* **events** (the events topic, raw text): parsed and checked once in the JVM by the speed
  layer's ``ParseEvent`` function, so exactly the events the speed layer accepts are attributed;
  rowtime from ``EventTime``; deduplicated on ``event_id`` (first copy). ``context.request_id``
  counts only when it is 32 lowercase hex characters (the contract, :mod:`lambdarec.events`); any
  other value is treated as absent.
* **impressions** (serving's impression per ``/recommend`` answer, JSON): one row per shown item
  (``CROSS JOIN UNNEST(items)``), rowtime from the impression's ``ts`` (the Kafka timestamp when
  it does not parse), deduplicated on ``(request_id, item_id)`` (a producer's redelivery).

An event is attributed along exactly one of two paths:

* **request_id**, when the event carries a valid ``context.request_id``: an event-time *interval
  join* with the shown row of the same ``request_id`` and ``item_id``, the event at or after the
  impression and at most ``--window-s`` after it. A request shows an item once, so there is at
  most one match. An event whose request_id matches nothing is not attributed (it does not fall
  back to the second path: the client said which list it clicked).
* **user_item**, for an event without one: the latest impression of the same ``(user_id,
  item_id)`` at or before the event, kept if the event is at most ``--window-s`` after it. Written
  as an *event-time temporal join* against a versioned view (per ``(user_id, item_id)`` the last
  shown row by impression time: Flink's keep-last-row deduplication on rowtime). That is the
  "interval join then keep the latest" rule, but append-only: an interval join followed by a
  ``ROW_NUMBER`` keeping the latest match would emit retractions whenever a later impression
  arrives, which the Kafka and filesystem sinks cannot take. Its rows are emitted when both
  sources' watermarks pass the event (``--out-of-orderness-s`` behind the newest record; an idle
  partition stops holding them back after ``--idle-timeout-s``).

Outputs (``--outputs``), one STATEMENT SET:

* ``attributed-topic``: each attributed event as JSON to the attributed topic, keyed by user_id
  (fields of the ``attributed`` lake table; timestamps as ISO-8601 UTC strings ``...Z``);
* ``attributed-lake`` and ``impressions-lake``: the ``attributed`` rows and every shown item as
  Parquet under ``<archive-dir>/<table>/date=YYYY-MM-DD/`` (the UTC day of the event / of the
  impression), committed on checkpoints like the speed layer's archive. Flink's filesystem sink
  writes part files without a ``.parquet`` suffix and naive UTC timestamps, so
  :func:`lambdarec.attribution.compact` folds a day into the lake tables
  ``<lake>/impressions/date=.../`` and ``<lake>/attributed/date=.../``.

``revenue`` is the event's price for a purchase (0 when the purchase has no price), else 0.
Delivery is at least once (as the speed layer's topics): after a restart from a checkpoint a row
may come again, so readers count each ``event_id`` once (:func:`lambdarec.attribution.compact`
does). A record that arrives behind its source's watermark (more than ``--out-of-orderness-s``
out of order) may miss its match: raise the delay when clients send late.
State: the deduplications, the versioned view and the join buffers are kept ``--state-ttl-s``
(default twice the window) after their last use; the interval join also drops what its watermark
passed.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Sequence
    from types import ModuleType

log = logging.getLogger("lambdarec.attribution")

REPO_ROOT = Path(__file__).resolve().parents[2]
JOB_NAME = "lambdarec-attribution"
OUTPUTS = ("attributed-topic", "attributed-lake", "impressions-lake")
#: The lake tables (and archive sub-folders) this job writes.
TABLES = ("impressions", "attributed")
#: The event contract's request id (lambdarec.events.REQUEST_ID_REGEX, checked by a unit test).
REQUEST_ID_REGEX = "^[0-9a-f]{32}$"
#: Serving's impression ``ts`` (lambdarec.events.format_ts), as a Flink date format.
TS_FORMAT = "yyyy-MM-dd''T''HH:mm:ss.SSS''Z''"
DEFAULT_WINDOW_S = 1800
_VIEW = re.compile(r"CREATE TEMPORARY VIEW (\w+) AS\s")


def _speed_layer() -> ModuleType:
    """The sibling speed_layer.py (a program, not a package): its helpers are shared, not copied."""
    name = "lambdarec_flink_speed_layer"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name("speed_layer.py"))
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot load speed_layer.py beside {__file__}; keep the two together")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


sl = _speed_layer()


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of seconds") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{value} must be > 0 (seconds), e.g. 1800")
    return value


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    state = sl._state_dir()
    env = sl._env
    p = argparse.ArgumentParser(
        prog="attribution.py",
        description="lambdarec online attribution: events x impressions -> the attributed topic "
        "and the Parquet archives of the impressions and attributed tables (Flink SQL).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    sl.add_job_options(
        p,
        group_id="lambdarec-attribution",
        checkpoint_dir=str(state / "flink" / "attribution-checkpoints"),
        watermark_help="Watermark delay of both sources: a user_item attribution is emitted "
        "this long after the newest event/impression passed it.",
        latency_ms=100,
    )
    p.add_argument("--impressions-topic", default=env("TOPIC_IMPRESSIONS", "lambdarec.impressions"))
    p.add_argument("--attributed-topic", default=env("TOPIC_ATTRIBUTED", "lambdarec.attributed"))
    p.add_argument(
        "--window-s",
        type=_positive,
        default=env("ATTRIBUTION_WINDOW_S", str(DEFAULT_WINDOW_S)),
        help="Attribution window: an event counts for an impression at most this many seconds "
        "after it.",
    )
    p.add_argument(
        "--archive-dir",
        default=str(state / "lake" / "attribution-archive"),
        help="Archive root (path or URI): Parquet under <table>/date=YYYY-MM-DD/ for the tables "
        f"{', '.join(TABLES)}.",
    )
    p.add_argument(
        "--state-ttl-s",
        type=float,
        default=None,
        help="How long keyed state (ids seen, the latest impression per user and item) is kept "
        "after its last use; default twice --window-s.",
    )
    p.add_argument(
        "--outputs",
        default=",".join(OUTPUTS),
        help="Comma-separated INSERTs to run.",
    )
    args = p.parse_args(argv)
    if args.state_ttl_s is None:
        args.state_ttl_s = 2.0 * args.window_s
    if not args.state_ttl_s >= args.window_s:
        p.error(
            f"--state-ttl-s {args.state_ttl_s:g} is shorter than --window-s {args.window_s}: "
            "an impression would be forgotten inside its window; raise it"
        )
    # The names speed_layer.flink_config reads.
    args.state_ttl_h = args.state_ttl_s / 3600.0
    return args


# -- SQL ---------------------------------------------------------------------------------------


def _lake_sink(args: argparse.Namespace, table: str) -> str:
    root = sl._uri(args.archive_dir).rstrip("/")
    return f"""'connector' = 'filesystem',
  'path' = {sl._q(f"{root}/{table}")},
  'format' = 'parquet',
  'parquet.compression' = 'SNAPPY',
  'parquet.write.int64.timestamp' = 'true',
  'parquet.timestamp.time.unit' = 'millis',
  'parquet.utc-timezone' = 'true'"""


_ATTRIBUTED_COLUMNS = """event_id, event_ts, event_type, user_id, session_id, item_id, price,
  revenue, request_id, impression_ts, `variant`, `position`, `match`"""


def statements(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """(DDL, INSERTs) of the job; the INSERTs run together as one STATEMENT SET."""
    skew_ms = f"CAST({round(args.max_future_skew_s * 1000)} AS BIGINT)"
    delay = sl._interval_s(args.out_of_orderness_s)
    window = sl._interval_s(args.window_s)
    ddl = [
        f"CREATE TEMPORARY FUNCTION parse_event AS {sl._q(sl.PARSE_UDF_CLASS)} LANGUAGE JAVA",
        f"CREATE TEMPORARY FUNCTION event_time AS {sl._q(sl.TIME_UDF_CLASS)} LANGUAGE JAVA",
        f"""CREATE TABLE events_raw (
  `raw` STRING,
  `kafka_ts` TIMESTAMP_LTZ(3) METADATA FROM 'timestamp' VIRTUAL,
  `ts` AS COALESCE(event_time(`raw`, {skew_ms}), `kafka_ts`),
  `pt` AS PROCTIME(),
  WATERMARK FOR `ts` AS `ts` - {delay}
) WITH ({sl.kafka_source(args, args.events_topic)},
  'format' = 'raw'
)""",
        # serving's impression record (serving/api/recommend.py); other fields are ignored, and a
        # record that is not JSON is skipped.
        f"""CREATE TABLE impressions_raw (
  request_id STRING,
  `ts` STRING,
  user_id STRING,
  session_id STRING,
  `variant` STRING,
  items ARRAY<ROW<item_id STRING, `position` INT, score DOUBLE, `source` STRING>>,
  `kafka_ts` TIMESTAMP_LTZ(3) METADATA FROM 'timestamp' VIRTUAL,
  `shown_ts` AS COALESCE(
    CAST(TO_TIMESTAMP(`ts`, '{TS_FORMAT}') AS TIMESTAMP_LTZ(3)), `kafka_ts`),
  `pt` AS PROCTIME(),
  WATERMARK FOR `shown_ts` AS `shown_ts` - {delay}
) WITH ({sl.kafka_source(args, args.impressions_topic)},
  'format' = 'json',
  'json.ignore-parse-errors' = 'true',
  'json.fail-on-missing-field' = 'false'
)""",
        # The events the speed layer accepts (the same ParseEvent), with the request id echoed in
        # their context when it is one (32 lowercase hex characters).
        f"""CREATE TEMPORARY VIEW clicks AS SELECT
  e.event_id, e.user_id, e.session_id, e.item_id, e.event_type, e.price, `ts`, `pt`,
  CASE WHEN REGEXP(rid, '{REQUEST_ID_REGEX}') THEN rid END AS request_id
FROM (
  SELECT `ts`, `pt`, parse_event(`raw`, {skew_ms}) AS e,
    JSON_VALUE(`raw`, '$.context.request_id') AS rid
  FROM events_raw
) WHERE e.problem IS NULL""",
        """CREATE TEMPORARY VIEW unique_clicks AS SELECT
  event_id, user_id, session_id, item_id, event_type, price, request_id, `ts`
FROM (
  SELECT *, ROW_NUMBER() OVER (PARTITION BY event_id ORDER BY `pt`) AS copy_no FROM clicks
) WHERE copy_no = 1""",
        """CREATE TEMPORARY VIEW shown AS SELECT
  request_id, `shown_ts` AS `ts`, `pt`, user_id, session_id, `variant`, t.item_id, t.`position`, t.score,
  t.`source`
FROM impressions_raw CROSS JOIN UNNEST(items) AS t (item_id, `position`, score, `source`)
WHERE request_id IS NOT NULL AND user_id IS NOT NULL AND `variant` IS NOT NULL
  AND t.item_id IS NOT NULL AND t.`position` IS NOT NULL""",
        """CREATE TEMPORARY VIEW unique_shown AS SELECT
  request_id, `ts`, user_id, session_id, `variant`, item_id, `position`, score, `source`
FROM (
  SELECT *, ROW_NUMBER() OVER (PARTITION BY request_id, item_id ORDER BY `pt`) AS copy_no
  FROM shown
) WHERE copy_no = 1""",
        # The versioned view of the user_item path: per (user, item), the last shown row by
        # impression time (Flink infers the key and keeps the rowtime: a versioned table).
        """CREATE TEMPORARY VIEW latest_shown AS SELECT
  user_id, item_id, request_id, `ts`, `variant`, `position`
FROM (
  SELECT *, ROW_NUMBER() OVER (PARTITION BY user_id, item_id ORDER BY `ts` DESC) AS recency
  FROM unique_shown
) WHERE recency = 1""",
        f"""CREATE TEMPORARY VIEW attributions AS
SELECT c.event_id, CAST(c.`ts` AS TIMESTAMP_LTZ(3)) AS event_ts, c.event_type, c.user_id,
  c.session_id, c.item_id, c.price, s.request_id, CAST(s.`ts` AS TIMESTAMP_LTZ(3)) AS impression_ts,
  s.`variant`, s.`position`, 'request_id' AS `match`
FROM unique_clicks AS c JOIN unique_shown AS s
  ON c.request_id = s.request_id AND c.item_id = s.item_id
  AND c.`ts` BETWEEN s.`ts` AND s.`ts` + {window}
WHERE c.request_id IS NOT NULL
UNION ALL
SELECT c.event_id, CAST(c.`ts` AS TIMESTAMP_LTZ(3)), c.event_type, c.user_id, c.session_id,
  c.item_id, c.price, s.request_id, CAST(s.`ts` AS TIMESTAMP_LTZ(3)), s.`variant`, s.`position`,
  'user_item'
FROM unique_clicks AS c JOIN latest_shown FOR SYSTEM_TIME AS OF c.`ts` AS s
  ON c.user_id = s.user_id AND c.item_id = s.item_id
WHERE c.request_id IS NULL AND c.`ts` <= s.`ts` + {window}""",
        """CREATE TEMPORARY VIEW attributed AS SELECT
  event_id, event_ts, event_type, user_id, session_id, item_id, price,
  CASE WHEN event_type = 'purchase' THEN COALESCE(price, 0.0) ELSE 0.0 END AS revenue,
  request_id, impression_ts, `variant`, `position`, `match`
FROM attributions""",
        f"""CREATE TABLE attributed_out (
  event_id STRING, event_ts STRING, event_type STRING, user_id STRING, session_id STRING,
  item_id STRING, price DOUBLE, revenue DOUBLE, request_id STRING, impression_ts STRING,
  `variant` STRING, `position` INT, `match` STRING
) WITH ({sl._kafka_common(args, args.attributed_topic)},
  'sink.delivery-guarantee' = 'at-least-once',
  'key.format' = 'raw', 'key.fields' = 'user_id',
  'value.format' = 'json', 'value.fields-include' = 'ALL'
)""",
        f"""CREATE TABLE lake_attributed (
  event_id STRING, event_ts TIMESTAMP_LTZ(3), event_type STRING, user_id STRING,
  session_id STRING, item_id STRING, price DOUBLE, revenue DOUBLE, request_id STRING,
  impression_ts TIMESTAMP_LTZ(3), `variant` STRING, `position` INT, `match` STRING, `date` STRING
) PARTITIONED BY (`date`) WITH (
  {_lake_sink(args, "attributed")}
)""",
        f"""CREATE TABLE lake_impressions (
  request_id STRING, `ts` TIMESTAMP_LTZ(3), user_id STRING, session_id STRING, `variant` STRING,
  item_id STRING, `position` INT, score DOUBLE, `source` STRING, `date` STRING
) PARTITIONED BY (`date`) WITH (
  {_lake_sink(args, "impressions")}
)""",
    ]
    wire_ts = f"'{TS_FORMAT}'"
    inserts = {
        "attributed-topic": f"""INSERT INTO attributed_out SELECT
  event_id, DATE_FORMAT(event_ts, {wire_ts}), event_type, user_id, session_id, item_id, price,
  revenue, request_id, DATE_FORMAT(impression_ts, {wire_ts}), `variant`, `position`, `match`
FROM attributed""",
        "attributed-lake": f"""INSERT INTO lake_attributed SELECT
  {_ATTRIBUTED_COLUMNS}, DATE_FORMAT(event_ts, 'yyyy-MM-dd')
FROM attributed""",
        "impressions-lake": """INSERT INTO lake_impressions SELECT
  request_id, CAST(`ts` AS TIMESTAMP_LTZ(3)), user_id, session_id, `variant`, item_id, `position`,
  score, `source`, DATE_FORMAT(`ts`, 'yyyy-MM-dd')
FROM unique_shown""",
    }
    wanted = [o.strip() for o in args.outputs.split(",") if o.strip()]
    unknown = sorted(set(wanted) - set(inserts))
    if unknown or not wanted:
        raise SystemExit(f"--outputs: unknown {unknown}; choose from {', '.join(OUTPUTS)}")
    return ddl, [inserts[o] for o in wanted]


# -- configuration ----------------------------------------------------------------------------


def flink_config(args: argparse.Namespace) -> dict[str, str]:
    """The speed layer's configuration (checkpoints, restarts, restore, jars, loopback), named
    for this job."""
    conf: dict[str, Any] = sl.flink_config(args)
    conf["pipeline.name"] = JOB_NAME
    return conf


def run(args: argparse.Namespace):  # noqa: ANN201 - pyflink's TableResult (untyped)
    """Submit the job; returns the STATEMENT SET's TableResult (``.wait()`` blocks until it ends)."""
    from pyflink.common import Configuration
    from pyflink.table import EnvironmentSettings, TableEnvironment

    # No Python function in the job: no Beam worker pool (see speed_layer.run).
    os.environ["_python_worker_execution_mode"] = "process"  # noqa: SIM112 - PyFlink reads this name
    conf = Configuration()
    for key, value in flink_config(args).items():
        conf.set_string(key, value)
    env_settings = (
        EnvironmentSettings.new_instance().in_streaming_mode().with_configuration(conf).build()
    )
    t_env = TableEnvironment.create(env_settings)
    ddl, inserts = statements(args)
    for statement in ddl:
        view = _VIEW.match(statement)
        if view:
            # A view registered as a planned query is one node wherever it is used. A SQL view is
            # re-planned at each use, and each UNNEST gets its own correlation id, so no two plans
            # of the impressions are alike and none is shared: five copies of the unnest and its
            # deduplication, two of each join (the job graph, before this).
            t_env.create_temporary_view(view.group(1), t_env.sql_query(statement[view.end() :]))
        else:
            t_env.execute_sql(statement)
    statement_set = t_env.create_statement_set()
    for statement in inserts:
        statement_set.add_insert_sql(statement)
    return statement_set.execute()


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    args = parse_args(argv)
    if args.print_sql:
        ddl, inserts = statements(args)
        text = ";\n\n".join([*ddl, *inserts]) + ";"
        password = os.environ.get("LAMBDAREC_KAFKA_SASL_PASSWORD", "")
        print(text.replace(password, "******") if password else text)
        return 0
    result = run(args)
    client = result.get_job_client()
    job_id = client.get_job_id() if client is not None else "?"
    log.info("submitted %s as job %s (window %d s)", JOB_NAME, job_id, args.window_s)
    print(f"attribution job {job_id} submitted", flush=True)
    if not args.detached:
        result.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
