"""The daily A/B readout's Spark job: online metrics per variant from the lake's impressions and
attributed events, with confidence intervals and tests against control.

Run it with ``spark-submit include/spark/online_metrics.py --lake-dir DIR --date YYYY-MM-DD
--reports-dir DIR --variants control:90,b:10`` (the ``online_metrics`` DAG builds that command
with :func:`lambdarec.monitoring.ab_job.spark_job`), or import :func:`run`.

For the day ``D`` given by ``--date`` (the run's data interval, UTC) and the window of
``--window-days`` days ending with D, the job reads two lake tables (hive-partitioned by
``date=YYYY-MM-DD``, partition pruning on the window):

* ``impressions``: one row per shown item (request_id, ts, user_id, session_id, variant, item_id,
  position, score, source), deduplicated on (request_id, position);
* ``attributed``: one row per event attributed to an impression (event_id, event_ts, event_type,
  user_id, ..., revenue, request_id, impression_ts, variant, position, match), deduplicated on
  event_id. An absent table counts as no attributed event yet (logged).

It aggregates them in Spark to one row per (day, variant, user) — impressions (shown items),
lists (distinct request ids), shown_top_k (shown items at position < k), clicks (attributed
views), clicks_top_k (those at position < k), carts (add_to_cart), purchases, revenue — where
``day`` is the partition of the impression or of the attributed event, and ``variant`` the one
recorded with the impression (the attributed row carries it). Those rows (one per active user
and day: small) are collected to the driver and handed to :mod:`lambdarec.monitoring.ab`.

Guardrail metric: coverage = distinct items shown in the window / catalog size (the lake's
catalog), per variant and overall. The lake tables have no latency or degraded column, so latency
p99 and the degraded rate are reported as not available.

Writes ``<reports-dir>/<D>/readout.json`` and ``readout.html`` (replacing them: re-running a day
gives the same numbers). Only built-in Spark SQL functions are used (no Python UDF).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lambdarec.monitoring import ab, ab_report
from lambdarec.tables import PARTITION_KEY, as_day, catalog_path

if TYPE_CHECKING:
    from collections.abc import Sequence
    from datetime import date

    import pandas as pd
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger("lambdarec.spark.online_metrics")

IMPRESSIONS = "impressions"
ATTRIBUTED = "attributed"
DEFAULT_WINDOW_DAYS = 14
DEFAULT_SHUFFLE_PARTITIONS = 8
IMPRESSION_COLUMNS = ("request_id", "user_id", "variant", "item_id", "position")
ATTRIBUTED_COLUMNS = ("event_id", "event_type", "user_id", "revenue", "variant", "position")


def _day_arg(value: str) -> date:
    try:
        return as_day(value)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _positive(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"{value!r} is not a positive integer")
    return number


def _read_table(
    spark: SparkSession, root: Path, first: date, last: date, columns: Sequence[str]
) -> DataFrame | None:
    """The table's rows with ``first <= date <= last``, or None when it has no partition."""
    from pyspark.sql import functions as F

    if not root.is_dir() or not any(root.glob(f"{PARTITION_KEY}=*/*.parquet")):
        return None
    df = spark.read.option("basePath", str(root)).parquet(str(root))
    if PARTITION_KEY not in df.columns:
        raise ValueError(f"{root} is not partitioned by {PARTITION_KEY}=YYYY-MM-DD folders")
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(
            f"{root} lacks column(s) {missing}; it must follow the lake contract "
            f"(columns {', '.join(columns)} at least)"
        )
    return df.where(F.col(PARTITION_KEY).between(F.lit(first), F.lit(last))).select(
        F.col(PARTITION_KEY).cast("string").alias("day"), *columns
    )


def user_rows(impressions: DataFrame, attributed: DataFrame | None, k: int) -> DataFrame:
    """One row per (day, variant, user_id) with the counts of :data:`ab.USER_COLUMNS`."""
    from pyspark.sql import functions as F

    keys = ["day", "variant", "user_id"]
    shown = (
        impressions.dropDuplicates(["request_id", "position"])
        .groupBy(*keys)
        .agg(
            F.count(F.lit(1)).alias("impressions"),
            F.count_distinct("request_id").alias("lists"),
            F.count(F.when(F.col("position") < k, 1)).alias("shown_top_k"),
        )
    )
    if attributed is None:
        rows = shown
    else:
        kind = F.col("event_type")
        acted = (
            attributed.dropDuplicates(["event_id"])
            .groupBy(*keys)
            .agg(
                F.count(F.when(kind == "view", 1)).alias("clicks"),
                F.count(F.when((kind == "view") & (F.col("position") < k), 1)).alias(
                    "clicks_top_k"
                ),
                F.count(F.when(kind == "add_to_cart", 1)).alias("carts"),
                F.count(F.when(kind == "purchase", 1)).alias("purchases"),
                F.sum(F.coalesce(F.col("revenue"), F.lit(0.0))).alias("revenue"),
            )
        )
        rows = shown.join(acted, keys, "full_outer")
    for column in ab.USER_COLUMNS:
        if column not in rows.columns:
            rows = rows.withColumn(column, F.lit(0))
    return rows.select(
        *keys,
        *[
            F.coalesce(F.col(c), F.lit(0.0 if c == "revenue" else 0))
            .cast("double" if c == "revenue" else "bigint")
            .alias(c)
            for c in ab.USER_COLUMNS
        ],
    )


def coverage(spark: SparkSession, impressions: DataFrame, lake_dir: Path) -> dict[str, Any]:
    """Distinct items shown over the window per variant and overall, over the catalog's size."""
    from pyspark.sql import functions as F

    per_variant = {
        r["variant"]: int(r["n"])
        for r in impressions.groupBy("variant")
        .agg(F.count_distinct("item_id").alias("n"))
        .collect()
    }
    overall = int(impressions.select(F.count_distinct("item_id")).first()[0])  # type: ignore[index]
    catalog = catalog_path(lake_dir)
    size = (
        spark.read.parquet(str(catalog)).select("item_id").distinct().count()
        if catalog.is_dir() and any(catalog.glob("*.parquet"))
        else None
    )

    def share(n: int) -> float | None:
        return n / size if size else None

    return {
        "catalog_items": size,
        "distinct_items": overall,
        "coverage": share(overall),
        "variants": {
            v: {"distinct_items": n, "coverage": share(n)} for v, n in sorted(per_variant.items())
        },
    }


def _empty_rows() -> pd.DataFrame:
    import pandas as pd

    return pd.DataFrame(columns=[*ab.KEY_COLUMNS, *ab.USER_COLUMNS])


def run(
    spark: SparkSession,
    lake_dir: Path | str,
    day: date | str,
    reports_dir: Path | str,
    *,
    variants: str,
    window_days: int = DEFAULT_WINDOW_DAYS,
    k: int = ab.DEFAULT_K,
    min_lists: int = 1000,
    alpha: float = ab.DEFAULT_ALPHA,
) -> dict[str, Any]:
    """Compute the readout for ``day`` and write its files; returns the readout (JSON-ready)."""
    lake_dir, reports_dir = Path(lake_dir), Path(reports_dir)
    on = as_day(day)
    control = ab.control_variant(variants)
    configured = [p.partition(":")[0].strip() for p in variants.split(",") if p.strip()]
    first = on - timedelta(days=window_days - 1)
    spark.conf.set("spark.sql.session.timeZone", "UTC")
    started = time.perf_counter()

    impressions = _read_table(spark, lake_dir / IMPRESSIONS, first, on, IMPRESSION_COLUMNS)
    if impressions is None:
        raise FileNotFoundError(
            f"no impressions under {lake_dir / IMPRESSIONS}; the attribution job writes them "
            "from the impressions topic (serving must have answered /recommend)"
        )
    attributed = _read_table(spark, lake_dir / ATTRIBUTED, first, on, ATTRIBUTED_COLUMNS)
    if attributed is None:
        log.warning("no attributed events under %s: counting none", lake_dir / ATTRIBUTED)
    impressions = impressions.cache()
    try:
        rows_df = user_rows(impressions, attributed, k)
        rows = rows_df.toPandas() if rows_df.take(1) else _empty_rows()
        log.info("%d (day, variant, user) rows aggregated", len(rows))
        guards = {
            "coverage": coverage(spark, impressions, lake_dir),
            "latency_p99": ab_report.NOT_AVAILABLE_LATENCY,
            "degraded_rate": ab_report.NOT_AVAILABLE_DEGRADED,
        }
        inputs = {
            "impression_rows": impressions.count(),
            "attributed_rows": 0 if attributed is None else attributed.count(),
            "user_day_rows": len(rows),
        }
    finally:
        impressions.unpersist()
    result = ab.readout(
        rows, control=control, variants=configured, min_lists=min_lists, alpha=alpha, k=k
    )
    result = {
        "day": on.isoformat(),
        "window": {
            "first_day": first.isoformat(),
            "last_day": on.isoformat(),
            "days": window_days,
        },
        "ab_variants": variants,
        **result,
        "guardrails": guards,
        "inputs": inputs,
    }
    json_path, html_path = ab_report.write(reports_dir / on.isoformat(), result)
    log.info("readout for %s written in %.1f s: %s", on, time.perf_counter() - started, html_path)
    return result


# -- program ---------------------------------------------------------------------------------
def build_session(
    master: str | None = None,
    shuffle_partitions: int = DEFAULT_SHUFFLE_PARTITIONS,
    app_name: str = "lambdarec-online-metrics",
) -> SparkSession:
    """A session with the job's settings (:func:`lambdarec.batch.spec.spark_session`)."""
    from lambdarec.batch.spec import spark_session

    return spark_session(app_name, master, shuffle_partitions)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="online_metrics.py",
        description="The A/B readout of one day: per-variant online metrics with confidence "
        "intervals and tests against control, from the lake's impressions and attributed tables.",
    )
    parser.add_argument(
        "--lake-dir", required=True, type=Path, help="lake root (holds impressions/, attributed/)"
    )
    parser.add_argument(
        "--date", required=True, type=_day_arg, help="the run's day, YYYY-MM-DD (UTC)"
    )
    parser.add_argument(
        "--reports-dir",
        required=True,
        type=Path,
        help="where <date>/readout.json and readout.html go (settings.ab_reports_dir)",
    )
    parser.add_argument(
        "--variants",
        required=True,
        help="the A/B spec name:weight,... (LAMBDAREC_AB_VARIANTS); the first is the control",
    )
    parser.add_argument(
        "--window-days",
        type=_positive,
        default=DEFAULT_WINDOW_DAYS,
        help="days of the readout, ending with --date (default %(default)s)",
    )
    parser.add_argument(
        "--k", type=_positive, default=ab.DEFAULT_K, help="CTR@k's k (default %(default)s)"
    )
    parser.add_argument(
        "--min-lists",
        type=_positive,
        default=1000,
        help="lists a variant and control need before a verdict (default %(default)s)",
    )
    parser.add_argument(
        "--alpha", type=float, default=ab.DEFAULT_ALPHA, help="test level (default %(default)s)"
    )
    parser.add_argument(
        "--shuffle-partitions",
        type=_positive,
        default=DEFAULT_SHUFFLE_PARTITIONS,
        help="spark.sql.shuffle.partitions (default %(default)s)",
    )
    parser.add_argument("--master", help="Spark master (default: whatever spark-submit set)")
    args = parser.parse_args(argv)
    try:
        ab.control_variant(args.variants)
    except ValueError as exc:
        parser.error(str(exc))
    if not 0 < args.alpha < 1:
        parser.error(f"--alpha {args.alpha} is not in (0, 1); use e.g. 0.05")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    started = time.perf_counter()
    if not any((args.lake_dir / IMPRESSIONS).glob(f"{PARTITION_KEY}=*/*.parquet")):
        # Before starting a JVM: the commonest mistake answers in a second.
        log.error(
            "no impressions under %s; the attribution job writes them from the impressions "
            "topic (check --lake-dir)",
            args.lake_dir / IMPRESSIONS,
        )
        return 2
    spark = build_session(args.master, args.shuffle_partitions)
    spark.sparkContext.setLogLevel("WARN")
    log.info("session ready in %.1f s", time.perf_counter() - started)
    try:
        result = run(
            spark,
            args.lake_dir,
            args.date,
            args.reports_dir,
            variants=args.variants,
            window_days=args.window_days,
            k=args.k,
            min_lists=args.min_lists,
            alpha=args.alpha,
        )
    except (FileNotFoundError, ValueError) as exc:
        log.error("%s", exc)
        return 2
    finally:
        spark.stop()
    folder = args.reports_dir / result["day"]
    print(f"readout\t{folder / ab_report.READOUT_JSON}")
    print(f"report\t{folder / ab_report.READOUT_HTML}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
