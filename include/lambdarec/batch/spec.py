"""Conventions shared by the Spark job and the DuckDB reference: table selection and windows.

For the day ``D`` of a run (its data interval, UTC) every window ends at ``D+1 00:00 UTC``
(exclusive), which is also the ``event_timestamp`` of every feature row: a row summarises only
events strictly before its timestamp, so Feast's point-in-time joins never leak. The 1-, 7- and
30-day windows start 1, 7 and 30 days before that end.
"""

from __future__ import annotations

import math
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING

from lambdarec.tables import FEATURE_TABLES, FeatureTable, as_day

if TYPE_CHECKING:
    from collections.abc import Sequence

    from pyspark.sql import SparkSession

#: The tables the daily batch job writes (the speed layer's tables are not its business).
TABLES: dict[str, FeatureTable] = {t.name: t for t in FEATURE_TABLES}

#: The longest window any table needs, in days (the job reads this many day partitions).
WINDOW_DAYS = 30
#: Neighbours kept per item in item_cooccurrence, next items per item in sequential_rules.
DEFAULT_TOP_N = 20
#: Distinct items per user (co-bought) or session (co-viewed) taken into co-occurrence: the most
#: recent ones. Bounds the pairs of one user/session at max_items * (max_items - 1) / 2. Also
#: the length of session_items' and user_recent_items' lists.
DEFAULT_MAX_ITEMS = 50
#: Sequential rules: how many steps ahead an item still follows another (LAMBDAREC_SR_WINDOW).
DEFAULT_SR_WINDOW = 3
#: The longest window the rules accept (rule weights are integers over lcm(1..window)).
MAX_SR_WINDOW = 20
#: Sessions kept per item in item_sessions, newest first (LAMBDAREC_SKNN_SAMPLE).
DEFAULT_SKNN_SAMPLE = 200
#: Shuffle partitions for a local run on a few cores (adaptive execution coalesces small ones).
DEFAULT_SHUFFLE_PARTITIONS = 8

DAY_MS = 86_400_000


def parse_tables(spec: str | Sequence[str]) -> list[str]:
    """``"all"`` or comma-separated table names (any order) -> table names in spec order."""
    names = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else list(spec)
    names = [n for n in names if n]
    if names == ["all"]:
        return list(TABLES)
    unknown = sorted(set(names) - set(TABLES))
    if unknown or not names:
        raise ValueError(
            f"unknown table(s) {unknown or names}; use 'all' or some of: {', '.join(TABLES)}"
        )
    return [n for n in TABLES if n in names]


def rule_units(window: int) -> int:
    """The common denominator of the rule weights ``1/d``, d = 1..``window``: lcm(1..window).

    Every engine sums a pair's weight as the integer ``sum(units // d)`` and divides once, so
    Spark, DuckDB and numpy rank rules on exact integers (ties really tie, in any summation
    order) and give bit-identical weights.
    """
    if not 1 <= window <= MAX_SR_WINDOW:
        raise ValueError(f"the sequential-rules window must be 1..{MAX_SR_WINDOW}, got {window}")
    return math.lcm(*range(1, window + 1))


def window_bounds(day: date | str) -> dict[str, datetime]:
    """``end`` (= event_timestamp, exclusive) and the starts of the 1/7/30-day windows of ``day``."""
    day = as_day(day)
    end = datetime(day.year, day.month, day.day, tzinfo=UTC) + timedelta(days=1)
    return {
        "end": end,
        "start_1d": end - timedelta(days=1),
        "start_7d": end - timedelta(days=7),
        "start_30d": end - timedelta(days=WINDOW_DAYS),
    }


def first_day(day: date | str) -> date:
    """The first day partition the run reads."""
    return as_day(day) - timedelta(days=WINDOW_DAYS - 1)


def event_timestamp(day: date | str) -> datetime:
    """The ``event_timestamp`` of every feature row of ``day``: ``day + 1`` at 00:00 UTC."""
    return window_bounds(day)["end"]


#: Spark settings every run of the job wants (the job sets them; spark-submit passes them too).
SPARK_CONF: dict[str, str] = {
    "spark.sql.session.timeZone": "UTC",
    "spark.sql.adaptive.enabled": "true",
    "spark.sql.adaptive.coalescePartitions.enabled": "true",
    # INT64 micros flagged UTC (Arrow timestamp[us, tz=UTC]) rather than the legacy INT96.
    "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
    "spark.ui.enabled": "false",
    "spark.ui.showConsoleProgress": "false",
    # The throughput collector: the jobs are batch aggregations with no pause-time target. Against
    # the JVM's default (G1), the daily job's three heaviest tables at 10M events (user_history,
    # item_cooccurrence, sequential_rules; in-process, back to back) took 5-10% less in each of
    # three pairs: 141.8 -> 127.0 s, 152.0 -> 143.6 s, 132.7 -> 125.4 s. Across whole spark-submit
    # runs the gain stays inside the run-to-run noise (README, bench-batch).
    "spark.driver.extraJavaOptions": "-XX:+UseParallelGC",
    "spark.executor.extraJavaOptions": "-XX:+UseParallelGC",
}


def spark_session(
    app_name: str,
    master: str | None = None,
    shuffle_partitions: int | None = None,
    driver_memory: str | None = None,
) -> SparkSession:
    """The session every Spark job of the project starts: :data:`SPARK_CONF`, the job's shuffle
    partitions and, when given, a master (under spark-submit the launcher sets it).

    ``driver_memory`` only takes effect when this call starts the JVM (in-process use); under
    spark-submit pass ``--driver-memory`` to the launcher instead.
    """
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.appName(app_name)
    if master:
        builder = builder.master(master)
    for key, value in SPARK_CONF.items():
        builder = builder.config(key, value)
    if shuffle_partitions is not None:
        builder = builder.config("spark.sql.shuffle.partitions", str(shuffle_partitions))
    if driver_memory:
        builder = builder.config("spark.driver.memory", driver_memory)
    return builder.getOrCreate()
