"""The speed layer: one Flink SQL job from the events topic to fresh features and the raw archive.

Runs on the local mini-cluster (``.venv-flink/bin/python include/flink/speed_layer.py ...``) and,
unchanged, on a cluster (``flink run -py include/flink/speed_layer.py ...``). Every option has a
``LAMBDAREC_*``-derived default, so the platform starts it with the same settings as everything else.

One STATEMENT SET, four INSERTs over one Kafka source (the value read as raw text):

* **dead letter**: every record that is not a valid event (malformed JSON, missing or malformed
  fields, unknown event type, timestamp far in the future) goes to the
  dead-letter topic as ``{"reason", "field", "source", "received_at", "raw"}`` (the shape of
  ``lambdarec.events.dead_letter_record``). Each event is parsed and checked once, in the JVM,
  by the ``ParseEvent`` Java function (include/flink/java); its rowtime comes from the cheaper
  ``EventTime`` scan.
* **deduplication**: the valid events pass one keyed step on ``event_id`` (Flink SQL's
  keep-first-row deduplication on processing time: a flag per id in keyed state) before the three
  outputs below, so a copy of an event already seen (a client's retry after a 503, a producer's
  redelivery) is counted once in its session, once in trending and archived once. An id is
  remembered for ``--dedup-ttl-s`` from its first copy (state TTL in processing time), at least
  the contract's retry horizon (``lambdarec.events.RETRY_HORIZON``); a copy sent later counts
  again here (the lake still keeps one: the archive's compaction folds copies by id). The first
  copy wins: copies of one id are one event, so nothing is compared. The job-wide
  ``--state-ttl-h`` does not apply to this step: it would hold every id of the last hours. With
  ``--parallelism`` above 1 the step is a shuffle by ``event_id``, so two events of one session
  that arrive within a network buffer of each other may reach the session aggregate swapped.
* **session features**, per event: an OVER aggregation per session in arrival order (processing
  time: a row is emitted as soon as it arrives, not when a watermark passes it) with the
  ``SessionFeatures`` Java aggregate (include/flink/java), which keeps bounded state. Events are
  keyed by user, so a session's events arrive in order. Written as JSON keyed by session_id to the
  compacted features topic; ``lambdarec.speed.pusher`` pushes them into Feast's online store.
* **trending items**: per item, event-time 1-minute TUMBLE windows, then the ``TrendCounts`` Java
  aggregate over the item's minutes (views and purchases of the last 5 minutes and the last hour),
  one row per item and active minute; keyed by item_id. An event behind
  the watermark is still archived and counted in its session (it is a valid event, and a
  partition read in a burst after a restart is "late" against its neighbours) but misses the
  trending windows it belonged to; Flink counts those in the window operator's
  ``numLateRecordsDropped`` metric.
* **raw archive**: every valid event as Parquet under ``<archive-dir>/date=YYYY-MM-DD/``
  (``<lake>/archive`` on the platform). The filesystem sink commits files on checkpoints (exactly
  once); in-progress files start with ``.`` so readers skip them. The daily pipeline's
  ``compact_archive`` task folds each day into the lake's ``events/`` (typed, deduplicated,
  sorted; :mod:`lambdarec.data.archive`), so the batch layer's master dataset is what this job
  saw.

Restarts: with ``--restore auto`` (default) the job resumes from the newest completed checkpoint
under ``--checkpoint-dir``: Kafka offsets, the ids seen, session state and pending files come back
together, so no event is lost and none is counted twice. The job runs as a compiled plan (the
statements compiled to JSON, the deduplication's TTL set in it), whose operators carry uids
derived from the plan: a checkpoint restores into the same statements. Checkpoints of a version
of the job before the deduplication step do not restore into this one (start it with
``--restore none`` and ``--starting-offsets group``: it continues from the committed offsets).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

log = logging.getLogger("lambdarec.speed_layer")

REPO_ROOT = Path(__file__).resolve().parents[2]
JOB_NAME = "lambdarec-speed-layer"
UDF_CLASS = "io.lambdarec.flink.SessionFeatures"
TREND_UDF_CLASS = "io.lambdarec.flink.TrendCounts"
PARSE_UDF_CLASS = "io.lambdarec.flink.ParseEvent"
TIME_UDF_CLASS = "io.lambdarec.flink.EventTime"
OUTPUTS = ("dead-letter", "session-features", "trending", "archive")
#: The contract's retry horizon in seconds (lambdarec.events.RETRY_HORIZON; tests/unit/
#: test_contract.py checks they agree): the shortest time the job may remember an event_id.
RETRY_HORIZON_S = 120.0


def _env(name: str, default: str) -> str:
    return os.environ.get(f"LAMBDAREC_{name}", "") or default


def _state_dir() -> Path:
    return Path(_env("STATE_DIR", str(REPO_ROOT / ".state")))


def _default_bootstrap() -> str:
    return _env("KAFKA_BOOTSTRAP", f"127.0.0.1:{_env('KAFKA_PORT', '9092')}")


def add_job_options(
    p: argparse.ArgumentParser,
    *,
    group_id: str,
    checkpoint_dir: str,
    watermark_help: str,
    latency_ms: int,
) -> None:
    """The options every lambdarec Flink job takes (this one and ``attribution.py``): the broker
    and the events topic, the consumer group, checkpoints and restore, parallelism, where a
    fresh start reads from, the watermark, the state backend, the jars, the mini-cluster's REST
    port, and ``--detached``/``--print-sql``. Each job adds its own topics, outputs and state."""
    state = _state_dir()
    p.add_argument("--bootstrap-servers", default=_default_bootstrap())
    p.add_argument("--events-topic", default=_env("TOPIC_EVENTS", "lambdarec.events"))
    p.add_argument("--group-id", default=group_id)
    p.add_argument(
        "--checkpoint-dir",
        default=checkpoint_dir,
        help="Checkpoint storage: a local path or a URI (s3://..., hdfs://...).",
    )
    p.add_argument("--checkpoint-interval-s", type=float, default=10.0)
    p.add_argument(
        "--restore",
        default="auto",
        help="'auto': resume from the newest completed checkpoint under --checkpoint-dir if any; "
        "'none': start fresh; or a checkpoint/savepoint path.",
    )
    p.add_argument("--parallelism", type=int, default=1)
    p.add_argument(
        "--starting-offsets",
        choices=("earliest", "latest", "group"),
        default="group",
        help="Where a fresh start reads its topics from ('group': committed offsets, else "
        "earliest). A restore always continues from the checkpoint.",
    )
    p.add_argument("--out-of-orderness-s", type=float, default=5.0, help=watermark_help)
    p.add_argument("--idle-timeout-s", type=float, default=5.0, help="Source idleness timeout.")
    p.add_argument("--max-future-skew-s", type=float, default=300.0)
    p.add_argument(
        "--state-backend",
        choices=("hashmap", "rocksdb"),
        default=_env("FLINK_STATE_BACKEND", "hashmap"),
        help="Where keyed state lives: 'hashmap' on the JVM heap (fastest; the heap must hold "
        "it all: bench-speed's 750k sessions needed more than 1g) or 'rocksdb' on local disk "
        "(state larger than memory; incremental checkpoints).",
    )
    p.add_argument(
        "--jars",
        default=str(state / "flink" / "lib"),
        help="Connector jars: a folder or comma-separated paths; '' when the cluster has them.",
    )
    p.add_argument(
        "--latency-ms",
        type=int,
        default=latency_ms,
        help="Network buffer timeout (ms): lower is fresher, higher is more throughput.",
    )
    p.add_argument(
        "--rest-port",
        type=int,
        default=0,
        help="Mini-cluster REST port on 127.0.0.1 (0: a free one).",
    )
    p.add_argument(
        "--detached",
        action="store_true",
        help="Submit and return (cluster mode) instead of waiting.",
    )
    p.add_argument("--print-sql", action="store_true", help="Print the statements and exit.")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    state = _state_dir()
    p = argparse.ArgumentParser(
        prog="speed_layer.py",
        description="lambdarec speed layer: Kafka events -> session features, trending items, "
        "dead letters and the Parquet raw archive (Flink SQL).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_job_options(
        p,
        group_id="lambdarec-speed-layer",
        checkpoint_dir=_env("FLINK_CHECKPOINT_DIR", str(state / "flink" / "checkpoints")),
        watermark_help="Watermark delay: trending windows close this long after their end.",
        latency_ms=10,
    )
    p.add_argument("--dead-letter-topic", default=_env("TOPIC_DEAD_LETTER", "lambdarec.events.dlq"))
    p.add_argument(
        "--features-topic", default=_env("TOPIC_SESSION_FEATURES", "lambdarec.session-features")
    )
    p.add_argument(
        "--trending-topic", default=_env("TOPIC_TRENDING_ITEMS", "lambdarec.trending-items")
    )
    p.add_argument(
        "--archive-dir",
        default=str(state / "lake" / "archive"),
        help="Raw archive root (path or URI): Parquet files under date=YYYY-MM-DD/.",
    )
    p.add_argument(
        "--state-ttl-h", type=float, default=6.0, help="Idle session/item state is dropped after."
    )
    p.add_argument(
        "--dedup-ttl-s",
        type=float,
        default=float(_env("SPEED_DEDUP_TTL_S", str(RETRY_HORIZON_S))),
        help="How long an event_id is remembered after its first copy: a copy within it is "
        f"dropped. At least the contract's retry horizon ({RETRY_HORIZON_S:g} s); the state "
        "holds one entry per event of that long (an estimated ~200 bytes each on the heap).",
    )
    p.add_argument(
        "--outputs",
        default=",".join(OUTPUTS),
        help="Comma-separated INSERTs to run (e.g. the archive alone in a sibling job).",
    )
    args = p.parse_args(argv)
    if not args.dedup_ttl_s >= RETRY_HORIZON_S:
        p.error(
            f"--dedup-ttl-s {args.dedup_ttl_s:g} is shorter than the contract's retry horizon "
            f"({RETRY_HORIZON_S:g} s): a producer's retry within it would be counted twice"
        )
    return args


# -- SQL ---------------------------------------------------------------------------------------


def _q(text: str) -> str:
    """A SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


def _uri(path_or_uri: str) -> str:
    return path_or_uri if "://" in path_or_uri else Path(path_or_uri).resolve().as_uri()


#: The SQL connector jar relocates the Kafka client: its login modules live under this prefix.
_SHADED_KAFKA = "org.apache.flink.kafka.shaded.org.apache.kafka"
_LOGIN_MODULES = {
    "PLAIN": "common.security.plain.PlainLoginModule",
    "SCRAM-SHA-256": "common.security.scram.ScramLoginModule",
    "SCRAM-SHA-512": "common.security.scram.ScramLoginModule",
}


def kafka_security_options(env: Mapping[str, str] | None = None) -> str:
    """The connector's SASL options from the LAMBDAREC_KAFKA_SASL_* variables (the project's
    Settings names), or nothing when no user is set. Read from the environment, never from
    arguments: a password on the command line shows in the process list."""
    env = os.environ if env is None else env
    user = env.get("LAMBDAREC_KAFKA_SASL_USERNAME", "")
    if not user:
        return ""
    mechanism = env.get("LAMBDAREC_KAFKA_SASL_MECHANISM", "") or "SCRAM-SHA-512"
    password = env.get("LAMBDAREC_KAFKA_SASL_PASSWORD", "")
    quoted = (v.replace("\\", "\\\\").replace('"', '\\"') for v in (user, password))
    jaas = '{}.{} required username="{}" password="{}";'.format(
        _SHADED_KAFKA, _LOGIN_MODULES[mechanism], *quoted
    )
    protocol = env.get("LAMBDAREC_KAFKA_SECURITY_PROTOCOL", "") or "SASL_PLAINTEXT"
    options = (
        f", 'properties.security.protocol' = {_q(protocol)}, "
        f"'properties.sasl.mechanism' = {_q(mechanism)}, "
        f"'properties.sasl.jaas.config' = {_q(jaas)}"
    )
    ca = env.get("LAMBDAREC_KAFKA_SSL_CA_LOCATION", "")
    if protocol == "SASL_SSL" and ca:
        # Kafka's Java client reads a PEM trust store directly (no JKS conversion).
        options += (
            ", 'properties.ssl.truststore.type' = 'PEM', "
            f"'properties.ssl.truststore.location' = {_q(ca)}"
        )
    return options


def _kafka_common(args: argparse.Namespace, topic: str) -> str:
    return (
        f"'connector' = 'kafka', 'topic' = {_q(topic)}, "
        f"'properties.bootstrap.servers' = {_q(args.bootstrap_servers)}" + kafka_security_options()
    )


def kafka_source(args: argparse.Namespace, topic: str) -> str:
    """A Kafka source's options (without its format): the consumer group, offsets committed on
    checkpoints, read committed, and where a fresh start reads from (``--starting-offsets``)."""
    startup = {
        "earliest": "'scan.startup.mode' = 'earliest-offset'",
        "latest": "'scan.startup.mode' = 'latest-offset'",
        "group": "'scan.startup.mode' = 'group-offsets', "
        "'properties.auto.offset.reset' = 'earliest'",
    }[args.starting_offsets]
    return (
        f"{_kafka_common(args, topic)},\n  'properties.group.id' = {_q(args.group_id)},\n"
        "  'properties.commit.offsets.on.checkpoint' = 'true',\n"
        f"  'properties.isolation.level' = 'read_committed',\n  {startup}"
    )


def _interval_s(seconds: float) -> str:
    """A DAY-TIME interval literal (SECOND alone only takes 2 digits)."""
    ms = round(seconds * 1000)
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    return f"INTERVAL '{hours}:{minutes:02d}:{rest // 1000:02d}.{rest % 1000:03d}' HOUR TO SECOND"


def statements(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """(DDL, INSERTs) of the job; the INSERTs run together as one STATEMENT SET."""
    # The allowed clock skew: beyond it an event is dead-lettered and kept out of the watermark.
    skew_ms = f"CAST({round(args.max_future_skew_s * 1000)} AS BIGINT)"
    ddl = [
        f"""CREATE TEMPORARY FUNCTION session_features AS {_q(UDF_CLASS)} LANGUAGE JAVA""",
        f"""CREATE TEMPORARY FUNCTION trend_counts AS {_q(TREND_UDF_CLASS)} LANGUAGE JAVA""",
        f"""CREATE TEMPORARY FUNCTION parse_event AS {_q(PARSE_UDF_CLASS)} LANGUAGE JAVA""",
        f"""CREATE TEMPORARY FUNCTION event_time AS {_q(TIME_UDF_CLASS)} LANGUAGE JAVA""",
        f"""CREATE TABLE events_raw (
  `raw` STRING,
  `kafka_ts` TIMESTAMP_LTZ(3) METADATA FROM 'timestamp' VIRTUAL,
  `ts` AS COALESCE(event_time(`raw`, {skew_ms}), `kafka_ts`),
  `pt` AS PROCTIME(),
  WATERMARK FOR `ts` AS `ts` - {_interval_s(args.out_of_orderness_s)}
) WITH ({kafka_source(args, args.events_topic)},
  'format' = 'raw'
)""",
        # One parse and check per event, in Java (include/flink/java: ParseEvent); the rules and
        # the reasons are the event contract's (lambdarec.events).
        f"""CREATE TEMPORARY VIEW checked AS SELECT
  `raw`, `ts`, `pt`, e.event_id, e.user_id, e.session_id, e.item_id, e.event_type, e.category,
  e.price, e.problem
FROM (
  SELECT `raw`, `ts`, `pt`, parse_event(`raw`, {skew_ms}) AS e
  FROM events_raw
)""",
        """CREATE TEMPORARY VIEW valid_events AS SELECT
  event_id, user_id, session_id, item_id, event_type, category, price, `ts`, `pt`
FROM checked WHERE problem IS NULL""",
        # The first copy of each event_id (the planner's keep-first-row deduplication: insert
        # only, and the time attributes ts and pt pass through); its TTL is set in the compiled
        # plan (with_dedup_ttl).
        """CREATE TEMPORARY VIEW unique_events AS SELECT
  event_id, user_id, session_id, item_id, event_type, category, price, `ts`, `pt`
FROM (
  SELECT *, ROW_NUMBER() OVER (PARTITION BY event_id ORDER BY `pt`) AS copy_no
  FROM valid_events
) WHERE copy_no = 1""",
        f"""CREATE TABLE dead_letter (
  reason STRING, field STRING, source STRING, received_at STRING, `raw` STRING
) WITH ({_kafka_common(args, args.dead_letter_topic)},
  'sink.delivery-guarantee' = 'at-least-once',
  'format' = 'json', 'json.encode.ignore-null-fields' = 'true'
)""",
        # The value is the JSON the SessionFeatures function writes (the pusher's row: session_id,
        # event_timestamp, user_id and the features of lambdarec.tables.SESSION_FEATURES).
        f"""CREATE TABLE session_features_out (
  session_id STRING,
  features BYTES
) WITH ({_kafka_common(args, args.features_topic)},
  'sink.delivery-guarantee' = 'at-least-once',
  'properties.linger.ms' = '2',
  'key.format' = 'raw', 'key.fields' = 'session_id',
  'value.format' = 'raw', 'value.fields-include' = 'EXCEPT_KEY'
)""",
        f"""CREATE TABLE trending_items_out (
  item_id STRING,
  event_timestamp TIMESTAMP_LTZ(3),
  views_5min BIGINT, purchases_5min BIGINT, views_1h BIGINT, purchases_1h BIGINT,
  trend_score DOUBLE
) WITH ({_kafka_common(args, args.trending_topic)},
  'sink.delivery-guarantee' = 'at-least-once',
  'key.format' = 'raw', 'key.fields' = 'item_id',
  'value.format' = 'json', 'value.fields-include' = 'ALL',
  'value.json.timestamp-format.standard' = 'ISO-8601'
)""",
        f"""CREATE TABLE lake_events (
  event_id STRING, user_id STRING, session_id STRING, item_id STRING, event_type STRING,
  category STRING, price DOUBLE, `ts` TIMESTAMP_LTZ(3), `date` STRING
) PARTITIONED BY (`date`) WITH (
  'connector' = 'filesystem',
  'path' = {_q(_uri(args.archive_dir).rstrip("/"))},
  'format' = 'parquet',
  'parquet.compression' = 'SNAPPY',
  -- Dictionary lookups were ~12% of the source thread (JFR); without them the Taobao events
  -- take ~4% more space with Snappy, and the daily compaction rewrites each day anyway.
  'parquet.enable.dictionary' = 'false',
  'parquet.write.int64.timestamp' = 'true',
  'parquet.timestamp.time.unit' = 'millis',
  'parquet.utc-timezone' = 'true'
)""",
    ]
    inserts = {
        "dead-letter": """INSERT INTO dead_letter SELECT
  problem, REGEXP_EXTRACT(problem, '^([^:]+):', 1), 'speed-layer',
  DATE_FORMAT(CURRENT_TIMESTAMP, 'yyyy-MM-dd''T''HH:mm:ss.SSS''Z'''), `raw`
FROM checked WHERE problem IS NOT NULL""",
        "session-features": """INSERT INTO session_features_out SELECT
  session_id,
  session_features(session_id, user_id, event_type, item_id, category, price, `ts`) OVER (
    PARTITION BY session_id ORDER BY `pt`
    ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)
FROM unique_events""",
        # Per item and minute (one TUMBLE window per event), then the hour's buckets in the
        # TrendCounts aggregate: one row per item and active minute. trend_score: the last 5
        # minutes' activity (a purchase weighs 5 views) over the hour's 5-minute average, +1 so a
        # brand-new item does not divide by zero.
        "trending": """INSERT INTO trending_items_out SELECT
  item_id, CAST(window_end AS TIMESTAMP_LTZ(3)),
  t.views_5min, t.purchases_5min, t.views_1h, t.purchases_1h,
  CAST(t.views_5min + 5 * t.purchases_5min AS DOUBLE)
    / ((t.views_1h + 5 * t.purchases_1h) / 12.0 + 1.0)
FROM (
  SELECT item_id, window_end,
    trend_counts(window_end, minute_views, minute_purchases) OVER (
      PARTITION BY item_id ORDER BY window_time
      ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS t
  FROM (
    SELECT item_id, window_end, window_time,
      SUM(CASE WHEN event_type = 'view' THEN 1 ELSE 0 END) AS minute_views,
      SUM(CASE WHEN event_type = 'purchase' THEN 1 ELSE 0 END) AS minute_purchases
    FROM TABLE(TUMBLE(TABLE unique_events, DESCRIPTOR(`ts`), INTERVAL '1' MINUTE))
    GROUP BY item_id, window_start, window_end, window_time
  )
)""",
        "archive": """INSERT INTO lake_events SELECT
  event_id, user_id, session_id, item_id, event_type, category, price,
  CAST(`ts` AS TIMESTAMP_LTZ(3)), DATE_FORMAT(`ts`, 'yyyy-MM-dd')
FROM unique_events""",
    }
    wanted = [o.strip() for o in args.outputs.split(",") if o.strip()]
    unknown = sorted(set(wanted) - set(inserts))
    if unknown or not wanted:
        raise SystemExit(f"--outputs: unknown {unknown}; choose from {', '.join(OUTPUTS)}")
    return ddl, [inserts[o] for o in wanted]


# -- configuration ----------------------------------------------------------------------------


def jar_uris(spec: str) -> list[str]:
    """``file://`` URIs of the connector jars named by ``--jars`` (a folder or a list)."""
    if not spec.strip():
        return []
    paths: list[Path] = []
    for part in filter(None, (s.strip() for s in spec.split(","))):
        path = Path(part)
        if path.is_dir():
            paths.extend(sorted(path.glob("*.jar")))
        elif path.is_file():
            paths.append(path)
        else:
            raise SystemExit(
                f"--jars: {path} does not exist; resolve the connector jars first with "
                "`.venv/bin/python -m lambdarec.speed.jars` (Maven + javac)"
            )
    names = " ".join(p.name for p in paths)
    for needed in ("flink-sql-connector-kafka", "flink-parquet", "lambdarec-flink-udf"):
        if needed not in names:
            raise SystemExit(
                f"--jars {spec}: no {needed} jar; run `.venv/bin/python -m lambdarec.speed.jars`"
            )
    return [p.resolve().as_uri() for p in paths]


def latest_checkpoint(checkpoint_dir: str) -> str | None:
    """The newest completed checkpoint (``<dir>/<job-id>/chk-N`` with ``_metadata``), if any.

    Only local paths are searched; pass a remote checkpoint explicitly with ``--restore``.
    """
    if "://" in checkpoint_dir and not checkpoint_dir.startswith("file:"):
        return None
    root = Path(checkpoint_dir.removeprefix("file://"))
    done = [m.parent for m in root.glob("*/chk-*/_metadata")]
    if not done:
        return None
    return str(max(done, key=lambda p: p.stat().st_mtime))


def flink_config(args: argparse.Namespace) -> dict[str, str]:
    """The job's configuration (FINDINGS: checkpoint storage, unbounded restarts with back-off,
    low latency)."""
    conf = {
        "pipeline.name": JOB_NAME,
        "parallelism.default": str(args.parallelism),
        "table.local-time-zone": "UTC",
        "execution.checkpointing.interval": f"{int(args.checkpoint_interval_s * 1000)} ms",
        "execution.checkpointing.mode": "EXACTLY_ONCE",
        "execution.checkpointing.storage": "filesystem",
        "execution.checkpointing.dir": _uri(args.checkpoint_dir),
        "execution.checkpointing.num-retained": "3",
        "execution.checkpointing.externalized-checkpoint-retention": "RETAIN_ON_CANCELLATION",
        "execution.checkpointing.min-pause": "1 s",
        "state.backend.type": args.state_backend,
        # Restarts never give up (a Kafka or disk outage of any length is waited out): 1 s
        # doubling to 1 min between tries, back to 1 s after 10 min of running (it used to fail
        # for good after 3 restarts 5 s apart, and nothing restarted it).
        "restart-strategy.type": "exponential-delay",
        "restart-strategy.exponential-delay.initial-backoff": "1 s",
        "restart-strategy.exponential-delay.max-backoff": "1 min",
        "restart-strategy.exponential-delay.backoff-multiplier": "2.0",
        "restart-strategy.exponential-delay.reset-backoff-threshold": "10 min",
        "restart-strategy.exponential-delay.jitter-factor": "0.1",
        "restart-strategy.exponential-delay.attempts-before-reset-backoff": str(2**31 - 1),
        "execution.buffer-timeout.interval": f"{args.latency_ms} ms",
        "pipeline.auto-watermark-interval": "200 ms",
        "table.exec.source.idle-timeout": f"{int(args.idle_timeout_s * 1000)} ms",
        "table.exec.state.ttl": f"{int(args.state_ttl_h * 3600 * 1000)} ms",
        "table.exec.sink.not-null-enforcer": "DROP",
        # Chained operators hand rows over without a copy (the planner's operators do not keep
        # references to input rows); copying them cost ~7% of the job's CPU (JFR, bench-speed).
        "pipeline.object-reuse": "true",
        # The four INSERTs share one parse-and-validate step: without this the planner inlines
        # the views into every branch and parses each event's JSON four times.
        "table.optimizer.reuse-optimize-block-with-digest-enabled": "true",
    }
    if args.state_backend == "rocksdb":
        conf["execution.checkpointing.incremental"] = "true"
    jars = jar_uris(args.jars)
    if jars:
        conf["pipeline.jars"] = ";".join(jars)
    # The mini-cluster's blob server listens on jobmanager.bind-host, every interface by default.
    # (A cluster's daemons read their own configuration: this key does not reach them.)
    conf["jobmanager.bind-host"] = "127.0.0.1"
    # Its REST endpoint too: without --rest-port the mini-cluster still starts one, on a free port.
    conf["rest.bind-address"] = "127.0.0.1"
    conf["rest.address"] = "127.0.0.1"
    if args.rest_port:
        conf["rest.port"] = str(args.rest_port)
    restore = latest_checkpoint(args.checkpoint_dir) if args.restore == "auto" else args.restore
    if restore and restore != "none":
        conf["execution.state-recovery.path"] = restore
        log.info("resuming from %s", restore)
    return conf


def with_dedup_ttl(plan_json: str, ttl_s: float) -> str:
    """The compiled plan with the deduplication's state TTL set to ``ttl_s``.

    Flink SQL gives every stateful operator the job-wide ``table.exec.state.ttl`` (the sessions'
    hours); a compiled plan carries a TTL per operator's state, which is where one operator gets
    its own (FLIP-292). A plan without the step (``--outputs dead-letter``) is returned as is.
    """
    plan = json.loads(plan_json)
    states = [
        state
        for node in plan["nodes"]
        if node["type"].startswith("stream-exec-deduplicate_")
        for state in node.get("state", [])
    ]
    if len(states) > 1:
        raise RuntimeError(f"the plan deduplicates {len(states)} times; expected once (reuse off?)")
    for state in states:
        state["ttl"] = f"{round(ttl_s * 1000)} ms"
    return json.dumps(plan)


def run(args: argparse.Namespace):  # noqa: ANN201 - pyflink's TableResult (untyped)
    """Submit the job; returns the STATEMENT SET's TableResult (``.wait()`` blocks until it ends)."""
    from pyflink.common import Configuration
    from pyflink.table import CompiledPlan, EnvironmentSettings, PlanReference, TableEnvironment

    # The job's functions are Java (include/flink/java), so it needs no Python worker. Left to
    # itself, PyFlink on a mini-cluster starts a Beam "loopback" worker pool anyway: a gRPC server
    # on every interface ([::]) with no authentication, whose one call can change this process's
    # environment, sys.path and working directory. 'process' mode starts no server.
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
        t_env.execute_sql(statement)
    statement_set = t_env.create_statement_set()
    for statement in inserts:
        statement_set.add_insert_sql(statement)
    plan = with_dedup_ttl(statement_set.compile_plan().as_json_string(), args.dedup_ttl_s)
    # Not t_env.load_plan(...): PyFlink 2.2's load_plan gives the CompiledPlan the Java
    # environment, and its execute() then calls a Python-only method on it and fails.
    reference = PlanReference.from_json_string(plan)
    return CompiledPlan(t_env._j_tenv.loadPlan(reference._j_plan_reference), t_env).execute()


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
    log.info("submitted %s as job %s", JOB_NAME, job_id)
    print(f"speed-layer job {job_id} submitted", flush=True)
    if not args.detached:
        result.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
