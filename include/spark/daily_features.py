"""The batch layer's daily Spark job: the feature tables of one day from one read of events.

Run it with ``spark-submit include/spark/daily_features.py --lake-dir DIR --date YYYY-MM-DD`` (the
DAG builds that command with :func:`lambdarec.batch.submit.spark_job`), or import :func:`run`.

For the day ``D`` given by ``--date`` (the run's data interval, UTC), the job reads the events
with ``D-29 <= date <= D`` (partition pruning on the lake's ``date=`` folders) and ``ts`` in
``[D-29 00:00, D+1 00:00)``, caches that projection once and writes each selected table to
``<out>/<table>/date=D/``, replacing just that partition (re-running a day gives the same rows).

Conventions, shared with the DuckDB reference (:mod:`lambdarec.batch.duckdb_reference`):

* ``event_timestamp`` is ``D+1 00:00:00 UTC``: the exclusive end of the data, so every event a
  row summarises is strictly before its timestamp (no leakage in point-in-time joins).
* Windows: 1d = day D, 7d = D-6..D, 30d = D-29..D, all by event time.
* ``user_history_30d``: the top categories rank by event count (all types), ties by category
  name; events without a category count everywhere except the category columns.
  ``days_since_last_event`` is (event_timestamp - last event) in days (a fraction).
* ``item_stats``: ``category``/``price`` are the values of the latest event in the 30 days that has
  one (ties: the larger value); ``popularity_rank_in_category_7d`` is a row number by
  ``views_7d`` desc then ``item_id`` asc within the category (1 = top; unique, no gaps).
* ``item_cooccurrence``: per user (purchases) or session (views), only the ``max_items`` most
  recently bought/viewed distinct items take part (ties by item id), which bounds the pair
  blow-up at ``max_items**2`` per user or session. Score = ``n(a,b) / sqrt(n(a) * n(b))`` where
  ``n(a,b)`` counts users (sessions) with both items and ``n(a)`` those with ``a``: a cosine in
  (0, 1]. Each item keeps its ``top_n`` best neighbours, best first, ties by neighbour id. Items
  with no neighbour of either kind are absent; an item with only one kind has an empty array
  (never null) for the other.
* ``category_popularity``: 7 days, events with a category; ``rank_7d`` is a row number by
  ``views_7d`` desc then category name.
* ``sequential_rules``, ``session_items``, ``item_sessions``, ``user_recent_items``: 30 days, the
  definitions of :mod:`lambdarec.batch.neighbours` (which computes them in numpy): sessions
  ordered by (ts, event_id), consecutive repeats collapsed, all event types. Rule weights are
  summed as integers over ``lcm(1..window)`` and divided once, so ranks and weights are exact.

Only built-in Spark SQL functions are used (no Python UDF), so executors need no Python.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import date, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from lambdarec.batch.spec import (
    DEFAULT_MAX_ITEMS,
    DEFAULT_SHUFFLE_PARTITIONS,
    DEFAULT_SKNN_SAMPLE,
    DEFAULT_SR_WINDOW,
    DEFAULT_TOP_N,
    TABLES,
    first_day,
    parse_tables,
    rule_units,
    spark_session,
    window_bounds,
)
from lambdarec.tables import (
    CATEGORY_POPULARITY,
    ITEM_COOCCURRENCE,
    ITEM_SESSIONS,
    ITEM_STATS,
    PARTITION_KEY,
    SEQUENTIAL_RULES,
    SESSION_ITEMS,
    USER_HISTORY,
    USER_RECENT_ITEMS,
    FeatureTable,
    as_day,
    events_path,
    partition_dir,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from pyspark.sql import Column, DataFrame, SparkSession, WindowSpec

log = logging.getLogger("lambdarec.spark.daily_features")

_SPARK_TYPES = {"int64": "bigint", "array<int64>": "array<bigint>"}


def _day_arg(value: str) -> date:
    try:
        return as_day(value)
    except ValueError as error:  # argparse shows this message, not its generic one
        raise argparse.ArgumentTypeError(str(error)) from None


# -- reading ---------------------------------------------------------------------------------
def read_events(spark: SparkSession, lake_dir: Path | str, day: date) -> DataFrame:
    """The events of the 30 days ending with ``day``, only the columns the tables need."""
    from pyspark.sql import functions as F

    root = events_path(Path(lake_dir))
    if not root.exists():
        raise FileNotFoundError(
            f"no events under {root}; load or generate events into the lake first"
        )
    bounds = window_bounds(day)
    df = spark.read.option("basePath", str(root)).parquet(str(root))
    if PARTITION_KEY not in df.columns:
        raise ValueError(f"{root} is not partitioned by {PARTITION_KEY}=YYYY-MM-DD folders")
    return df.where(
        # The partition filter prunes folders; the ts filter defines the window exactly.
        F.col(PARTITION_KEY).between(F.lit(first_day(day)), F.lit(day))
        & (F.col("ts") >= F.lit(bounds["start_30d"]))
        & (F.col("ts") < F.lit(bounds["end"]))
    ).select(
        "event_id", "user_id", "session_id", "item_id", "event_type", "category", "price", "ts"
    )


# -- the tables ------------------------------------------------------------------------------
def _is(kind: str) -> Column:
    from pyspark.sql import functions as F

    return F.col("event_type") == F.lit(kind)


def _ratio(num: str, den: str) -> Column:
    from pyspark.sql import functions as F

    return F.when(F.col(den) > 0, F.col(num) / F.col(den)).otherwise(F.lit(0.0))


def user_history(events: DataFrame, day: date) -> DataFrame:
    from pyspark.sql import functions as F

    end = window_bounds(day)["end"]
    view, buy = _is("view"), _is("purchase")
    users = events.groupBy("user_id").agg(
        F.count(F.lit(1)).alias("n_events_30d"),
        F.count(F.when(view, 1)).alias("n_views_30d"),
        F.count(F.when(_is("add_to_cart"), 1)).alias("n_carts_30d"),
        F.count(F.when(_is("remove_from_cart"), 1)).alias("n_removes_30d"),
        F.count(F.when(buy, 1)).alias("n_purchases_30d"),
        F.count_distinct("item_id").alias("n_distinct_items_30d"),
        F.avg(F.when(view, F.col("price"))).alias("avg_price_viewed_30d"),
        F.max(F.when(view, F.col("price"))).alias("max_price_viewed_30d"),
        F.avg(F.when(buy, F.col("price"))).alias("avg_price_bought_30d"),
        F.max(F.when(buy, F.col("price"))).alias("max_price_bought_30d"),
        F.max("ts").alias("last_ts"),
    )
    # Top categories: sort (-count, name) structs, keep three.
    cats = (
        events.where(F.col("category").isNotNull())
        .groupBy("user_id", "category")
        .agg(F.count(F.lit(1)).alias("n"))
        .groupBy("user_id")
        .agg(
            F.count(F.lit(1)).alias("n_distinct_categories_30d"),
            F.slice(
                F.sort_array(F.collect_list(F.struct((-F.col("n")).alias("neg"), "category"))), 1, 3
            ).alias("top"),
        )
    )
    return (
        users.join(cats, "user_id", "left")
        .withColumn(
            "n_distinct_categories_30d", F.coalesce(F.col("n_distinct_categories_30d"), F.lit(0))
        )
        .withColumn("top_category_30d", F.col("top")[0]["category"])
        .withColumn(
            "top_categories_30d",
            F.when(F.col("top").isNotNull(), F.array_join(F.col("top.category"), "|")),
        )
        .withColumn(
            "days_since_last_event",
            (F.unix_millis(F.lit(end)) - F.unix_millis(F.col("last_ts"))) / F.lit(86_400_000.0),
        )
        .withColumn("conversion_rate_30d", _ratio("n_purchases_30d", "n_views_30d"))
        .withColumn("event_timestamp", F.lit(end))
    )


def item_stats(events: DataFrame, day: date) -> DataFrame:
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    b = window_bounds(day)
    in_1d = F.col("ts") >= F.lit(b["start_1d"])
    in_7d = F.col("ts") >= F.lit(b["start_7d"])
    kinds = {"views": _is("view"), "carts": _is("add_to_cart"), "purchases": _is("purchase")}
    # First per (item, user), so unique users are plain counts (no Expand of two DISTINCTs).
    # Every buffer is a fixed-width number, so both levels are hash aggregations; the latest
    # category and price are found by their time here and read in a second, narrow pass.
    per_user = events.groupBy("item_id", "user_id").agg(
        *[
            F.count(F.when(cond & span, 1)).alias(f"{kind}_{suffix}")
            for suffix, span in (("1d", in_1d), ("7d", in_7d), ("30d", F.lit(True)))
            for kind, cond in kinds.items()
        ],
        F.max(in_7d.cast("int")).alias("seen_7d"),
        F.max(F.when(F.col("category").isNotNull(), F.col("ts"))).alias("category_ts"),
        F.max(F.when(F.col("price").isNotNull(), F.col("ts"))).alias("price_ts"),
    )
    counts = [f"{k}_{s}" for s in ("1d", "7d", "30d") for k in kinds]
    items = per_user.groupBy("item_id").agg(
        *[F.sum(c).alias(c) for c in counts],
        F.sum("seen_7d").alias("unique_users_7d"),
        F.count(F.lit(1)).alias("unique_users_30d"),
        F.max("category_ts").alias("category_ts"),
        F.max("price_ts").alias("price_ts"),
    )
    # The values at those times (ties: the larger value). A max(struct(ts, value)) above would
    # do it in one pass, but a struct buffer turns both aggregations into sorts of the window.
    at = items.select("item_id", "category_ts", "price_ts").where(
        F.col("category_ts").isNotNull() | F.col("price_ts").isNotNull()
    )
    at_category, at_price = F.col("ts") == F.col("category_ts"), F.col("ts") == F.col("price_ts")
    latest = (
        events.select("item_id", "ts", "category", "price")
        .join(F.broadcast(at), "item_id")
        .where(at_category | at_price)
        .groupBy("item_id")
        .agg(
            F.max(F.when(at_category, F.col("category"))).alias("category"),
            F.max(F.when(at_price, F.col("price"))).alias("price"),
        )
    )
    rank = Window.partitionBy("category").orderBy(F.col("views_7d").desc(), F.col("item_id"))
    return (
        items.drop("category_ts", "price_ts")
        .join(latest, "item_id", "left")
        .withColumn("conversion_7d", _ratio("purchases_7d", "views_7d"))
        .withColumn("conversion_30d", _ratio("purchases_30d", "views_30d"))
        .withColumn("popularity_rank_in_category_7d", F.row_number().over(rank))
        .withColumn("event_timestamp", F.lit(b["end"]))
    )


def _neighbours(baskets: DataFrame, group: str, top_n: int, max_items: int) -> DataFrame:
    """(item_id, items, scores) from (group, item_id, ts) rows: cosine co-occurrence, top N.

    Items become dense integer codes in item-id order first, so a pair is one long key (primitive-
    key hash aggregation instead of a pair of strings; ~20% faster at 10M events) and comparing
    codes is comparing ids (ties and the a < b halving are unchanged). Codes turn back into ids
    only for the top N.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    # One partition ranks the distinct items: small next to the pairs, and deterministic.
    codes = (
        baskets.select("item_id")
        .distinct()
        .withColumn("code", F.dense_rank().over(Window.orderBy("item_id")).cast("long"))
    )
    coded = baskets.join(F.broadcast(codes), "item_id").select(group, "code", "ts")
    # Each group's distinct items, most recent first (ties by id), capped: sort (-ms, code)
    # structs ascending, keep the first occurrence of each code, slice.
    recent = F.struct((-F.unix_millis("ts")).alias("neg_ms"), F.col("code"))
    sets = coded.groupBy(group).agg(
        F.slice(F.array_distinct(F.sort_array(F.collect_list(recent))["code"]), 1, max_items).alias(
            "items"
        )
    )
    support = (
        sets.select(F.explode("items").alias("code"))
        .groupBy("code")
        .agg(F.count(F.lit(1)).alias("n"))
    )
    # Unordered pairs (a < b) straight from the arrays (no self-join), keyed a << 32 | b.
    pair_keys = F.expr(
        "flatten(transform(items, (x, i) -> transform(slice(items, i + 2, size(items)),"
        " y -> shiftleft(least(x, y), 32) + greatest(x, y))))"
    )
    pairs = (
        sets.where(F.size("items") > 1)
        .select(F.explode(pair_keys).alias("k"))
        .groupBy("k")
        .agg(F.count(F.lit(1)).alias("n_ab"))
        .select(
            F.shiftright("k", 32).alias("a"),
            F.col("k").bitwiseAND(F.lit(0xFFFFFFFF)).alias("b"),
            "n_ab",
        )
    )
    both = pairs.unionByName(pairs.select(F.col("b").alias("a"), F.col("a").alias("b"), "n_ab"))
    sa = support.select(F.col("code").alias("a"), F.col("n").alias("n_a"))
    sb = support.select(F.col("code").alias("b"), F.col("n").alias("n_b"))
    scored = (
        both.join(F.broadcast(sa), "a")
        .join(F.broadcast(sb), "b")
        .withColumn("score", F.col("n_ab") / F.sqrt(F.col("n_a") * F.col("n_b")))
    )
    # Best first = (-score, neighbour) ascending; one aggregation, no window sort.
    best = F.struct((-F.col("score")).alias("neg"), F.col("b"))
    top = scored.groupBy("a").agg(
        F.slice(F.sort_array(F.collect_list(best)), 1, top_n).alias("top")
    )
    ids = codes.select(F.col("code").alias("b"), F.col("item_id").alias("b_id"))
    return (
        top.select("a", F.posexplode("top").alias("pos", "t"))
        .select("a", "pos", F.col("t.b").alias("b"), (-F.col("t.neg")).alias("score"))
        .join(F.broadcast(ids), "b")
        .groupBy("a")
        .agg(F.sort_array(F.collect_list(F.struct("pos", "b_id", "score"))).alias("top"))
        .join(F.broadcast(codes.withColumnRenamed("code", "a")), "a")
        .select("item_id", F.col("top.b_id").alias("items"), F.col("top.score").alias("scores"))
    )


def item_cooccurrence(
    events: DataFrame, day: date, *, top_n: int = DEFAULT_TOP_N, max_items: int = DEFAULT_MAX_ITEMS
) -> DataFrame:
    from pyspark.sql import functions as F

    bought = _neighbours(
        events.where(_is("purchase")).select("user_id", "item_id", "ts"),
        "user_id",
        top_n,
        max_items,
    )
    viewed = _neighbours(
        events.where(_is("view")).select("session_id", "item_id", "ts"),
        "session_id",
        top_n,
        max_items,
    )
    empty_s, empty_d = F.array().cast("array<string>"), F.array().cast("array<double>")
    return (
        bought.select(
            "item_id",
            F.col("items").alias("co_bought_items"),
            F.col("scores").alias("co_bought_scores"),
        )
        .join(
            viewed.select(
                "item_id",
                F.col("items").alias("co_viewed_items"),
                F.col("scores").alias("co_viewed_scores"),
            ),
            "item_id",
            "full",
        )
        .select(
            "item_id",
            F.lit(window_bounds(day)["end"]).alias("event_timestamp"),
            F.coalesce("co_bought_items", empty_s).alias("co_bought_items"),
            F.coalesce("co_bought_scores", empty_d).alias("co_bought_scores"),
            F.coalesce("co_viewed_items", empty_s).alias("co_viewed_items"),
            F.coalesce("co_viewed_scores", empty_d).alias("co_viewed_scores"),
        )
    )


def category_popularity(events: DataFrame, day: date) -> DataFrame:
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    b = window_bounds(day)
    cats = (
        events.where((F.col("ts") >= F.lit(b["start_7d"])) & F.col("category").isNotNull())
        .groupBy("category")
        .agg(
            F.count(F.when(_is("view"), 1)).alias("views_7d"),
            F.count(F.when(_is("purchase"), 1)).alias("purchases_7d"),
            F.count_distinct("user_id").alias("unique_users_7d"),
        )
    )
    # A global ordering on one partition: fine, there are few categories.
    rank = Window.orderBy(F.col("views_7d").desc(), F.col("category"))
    return cats.withColumn("rank_7d", F.row_number().over(rank)).withColumn(
        "event_timestamp", F.lit(b["end"])
    )


def _in_session_order() -> WindowSpec:
    from pyspark.sql import Window

    return Window.partitionBy("session_id").orderBy("ts", "event_id")


def sequential_rules(
    events: DataFrame, day: date, *, top_n: int = DEFAULT_TOP_N, window: int = DEFAULT_SR_WINDOW
) -> DataFrame:
    """a -> b for b up to ``window`` steps after a in a session (repeats collapsed), weight
    1/steps summed over the sessions; each item's ``top_n`` by weight desc, ties by id."""
    from pyspark.sql import functions as F

    units = rule_units(window)
    order = _in_session_order()
    collapsed = (
        events.select("session_id", "item_id", "ts", "event_id")
        .withColumn("prev", F.lag("item_id").over(order))
        .where(F.col("prev").isNull() | (F.col("prev") != F.col("item_id")))
    )
    # Each step d of the window gains units // d: integer sums, one division at the end.
    ahead = collapsed.select(
        F.col("item_id").alias("a"),
        *[F.lead("item_id", d).over(order).alias(f"n{d}") for d in range(1, window + 1)],
    )
    steps = F.array(
        *[
            F.struct(F.col(f"n{d}").alias("b"), F.lit(units // d).cast("long").alias("u"))
            for d in range(1, window + 1)
        ]
    )
    totals = (
        ahead.select("a", F.explode(steps).alias("n"))
        .where(F.col("n.b").isNotNull() & (F.col("n.b") != F.col("a")))
        .groupBy("a", F.col("n.b").alias("b"))
        .agg(F.sum("n.u").alias("units"))
    )
    best = F.struct((-F.col("units")).alias("neg"), F.col("b"))
    return (
        totals.groupBy("a")
        .agg(F.slice(F.sort_array(F.collect_list(best)), 1, top_n).alias("top"))
        .select(
            F.col("a").alias("item_id"),
            F.lit(window_bounds(day)["end"]).alias("event_timestamp"),
            F.col("top.b").alias("next_items"),
            F.transform("top.neg", lambda neg: -neg / F.lit(units)).alias("next_weights"),
        )
    )


def _recent_distinct(events: DataFrame, group: str, max_items: int) -> DataFrame:
    """(group, items, last_ts): each group's distinct items by last occurrence (ts, event_id)
    desc, at most ``max_items``, and the group's last event time.

    One aggregation: every occurrence (ts, event_id, item_id) sorted newest first; the first
    time an item appears there is its last occurrence, so ``array_distinct`` over the item ids
    keeps each item once, in the order of last occurrences. A first ``max(struct(ts, event_id))``
    per (group, item) would give the same lists, but a struct buffer is not hash-aggregatable:
    Spark sorts the whole window twice for it (2x slower at 10M events).
    """
    from pyspark.sql import functions as F

    occurrence = F.struct(F.col("ts"), F.col("event_id"), F.col("item_id"))
    newest_first = F.sort_array(F.collect_list(occurrence), asc=False)
    return events.groupBy(group).agg(
        F.slice(F.array_distinct(newest_first["item_id"]), 1, max_items).alias("items"),
        F.max("ts").alias("last_ts"),
    )


def session_items(events: DataFrame, day: date, *, max_items: int = DEFAULT_MAX_ITEMS) -> DataFrame:
    from pyspark.sql import functions as F

    return _recent_distinct(events, "session_id", max_items).select(
        "session_id",
        F.lit(window_bounds(day)["end"]).alias("event_timestamp"),
        "items",
        F.col("last_ts").alias("last_event_ts"),
    )


def item_sessions(
    events: DataFrame,
    day: date,
    *,
    max_items: int = DEFAULT_MAX_ITEMS,
    sample: int = DEFAULT_SKNN_SAMPLE,
    sessions: DataFrame | None = None,
) -> DataFrame:
    """The inverse of session_items: per item its ``sample`` newest sessions (ties by id).

    ``sessions`` is session_items as this run wrote it (``session_id, items, last_event_ts``, the
    same ``max_items``): given, the sessions' lists are read back from it instead of being
    recomputed from the events (a second aggregation of the whole window).
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    if sessions is None:
        sessions = _recent_distinct(events, "session_id", max_items)
    else:
        sessions = sessions.select("session_id", "items", F.col("last_event_ts").alias("last_ts"))
    held = sessions.select(
        "session_id", F.unix_millis("last_ts").alias("ms"), F.explode("items").alias("item_id")
    )
    newest = Window.partitionBy("item_id").orderBy(F.col("ms").desc(), F.col("session_id"))
    top = held.withColumn("rank", F.row_number().over(newest)).where(F.col("rank") <= sample)
    return (
        top.groupBy("item_id")
        .agg(F.sort_array(F.collect_list(F.struct("rank", "session_id", "ms"))).alias("top"))
        .select(
            "item_id",
            F.lit(window_bounds(day)["end"]).alias("event_timestamp"),
            F.col("top.session_id").alias("sessions"),
            F.col("top.ms").alias("last_event_ms"),
        )
    )


def user_recent_items(
    events: DataFrame, day: date, *, max_items: int = DEFAULT_MAX_ITEMS
) -> DataFrame:
    from pyspark.sql import functions as F

    return _recent_distinct(events, "user_id", max_items).select(
        "user_id", F.lit(window_bounds(day)["end"]).alias("event_timestamp"), "items"
    )


BUILDERS: dict[str, Callable[..., DataFrame]] = {
    USER_HISTORY.name: user_history,
    ITEM_STATS.name: item_stats,
    ITEM_COOCCURRENCE.name: item_cooccurrence,
    CATEGORY_POPULARITY.name: category_popularity,
    SEQUENTIAL_RULES.name: sequential_rules,
    SESSION_ITEMS.name: session_items,
    ITEM_SESSIONS.name: item_sessions,
    USER_RECENT_ITEMS.name: user_recent_items,
}
#: The parameters each table's builder takes, beyond (events, day).
PARAMETERS: dict[str, tuple[str, ...]] = {
    ITEM_COOCCURRENCE.name: ("top_n", "max_items"),
    SEQUENTIAL_RULES.name: ("top_n", "window"),
    SESSION_ITEMS.name: ("max_items",),
    ITEM_SESSIONS.name: ("max_items", "sample"),
    USER_RECENT_ITEMS.name: ("max_items",),
}


def conform(df: DataFrame, table: FeatureTable) -> DataFrame:
    """Exactly the spec's columns, in its order, cast to its types."""
    from pyspark.sql import functions as F

    return df.select(
        *[F.col(c).cast(_SPARK_TYPES.get(t, t)).alias(c) for c, t in table.columns.items()]
    )


def build(
    events: DataFrame,
    name: str,
    day: date,
    *,
    top_n: int = DEFAULT_TOP_N,
    max_items: int = DEFAULT_MAX_ITEMS,
    window: int = DEFAULT_SR_WINDOW,
    sample: int = DEFAULT_SKNN_SAMPLE,
    sessions: DataFrame | None = None,
) -> DataFrame:
    """The DataFrame of one feature table (conformed to its spec), not yet computed.

    ``sessions``: session_items as written for the same day and ``max_items``, which
    item_sessions then derives from (see :func:`item_sessions`); ignored by the other tables.
    """
    given = {"top_n": top_n, "max_items": max_items, "window": window, "sample": sample}
    params: dict[str, object] = {p: given[p] for p in PARAMETERS.get(name, ())}
    if name == ITEM_SESSIONS.name and sessions is not None:
        params["sessions"] = sessions
    return conform(BUILDERS[name](events, day, **params), TABLES[name])


def write_partition(
    df: DataFrame, table: FeatureTable, out_dir: Path, day: date, files: int
) -> Path:
    """Replace ``<out_dir>/<table>/date=<day>/`` with ``df`` in ``files`` files sorted by key."""
    target = partition_dir(out_dir / table.name, day)
    keys = list(table.keys)
    shaped = df.repartition(files) if files == 1 else df.repartition(files, *keys)
    shaped.sortWithinPartitions(*keys).write.mode("overwrite").parquet(str(target))
    return target


def run(
    spark: SparkSession,
    lake_dir: Path | str,
    day: date | str,
    *,
    tables: str | Sequence[str] = "all",
    out_dir: Path | str | None = None,
    top_n: int = DEFAULT_TOP_N,
    max_items: int = DEFAULT_MAX_ITEMS,
    window: int = DEFAULT_SR_WINDOW,
    sample: int = DEFAULT_SKNN_SAMPLE,
    files_per_table: int = 1,
    cache: bool = False,
    parallel: int = 1,
) -> dict[str, str]:
    """Compute and write the selected tables for ``day``; returns table -> partition path.

    ``out_dir`` defaults to ``<lake_dir>/features``. All tables are planned over one read of the
    window. ``cache`` keeps that read in memory across tables; measured slower than re-scanning
    the Parquet files locally (the columnar cache decodes strings more slowly than Parquet's
    vectorised reader), so it is off by default. ``parallel`` > 1 submits that many tables'
    Spark jobs at once, filling cores that a single job's narrow stages leave idle.
    """
    day = as_day(day)
    names = parse_tables(tables)
    if top_n < 1 or max_items < 2 or sample < 1 or files_per_table < 1 or parallel < 1:
        raise ValueError(
            "need top_n >= 1, max_items >= 2, sample >= 1, files_per_table >= 1, parallel >= 1"
        )
    rule_units(window)  # a window out of range fails here, before Spark starts work
    lake_dir = Path(lake_dir)
    out = Path(out_dir) if out_dir is not None else lake_dir / "features"
    spark.conf.set("spark.sql.session.timeZone", "UTC")

    events = read_events(spark, lake_dir, day)
    cached = cache and len(names) > 1
    if cached:
        events = events.cache()

    # item_sessions is session_items inverted: when both are written, it reads session_items'
    # fresh partition back instead of sorting the window's sessions a second time.
    share = SESSION_ITEMS.name in names and ITEM_SESSIONS.name in names
    futures: dict[str, Future[str]] = {}

    written: dict[str, str] = {}

    def one(name: str) -> str:
        started = time.perf_counter()
        sessions = None
        if share and name == ITEM_SESSIONS.name:
            first = futures[SESSION_ITEMS.name].result() if futures else written[SESSION_ITEMS.name]
            sessions = spark.read.parquet(first)
        df = build(
            events,
            name,
            day,
            top_n=top_n,
            max_items=max_items,
            window=window,
            sample=sample,
            sessions=sessions,
        )
        path = write_partition(df, TABLES[name], out, day, files_per_table)
        log.info("%s for %s written in %.1f s", name, day, time.perf_counter() - started)
        return str(path)

    try:
        if parallel == 1 or len(names) == 1:
            for name in names:  # in spec order: session_items before item_sessions
                written[name] = one(name)
            return written
        # The heaviest table first, so it never waits behind the small ones (session_items still
        # goes before item_sessions, which waits for it).
        order = sorted(names, key=lambda n: n != ITEM_COOCCURRENCE.name)
        with ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="table") as pool:
            for name in order:
                futures[name] = pool.submit(one, name)
            return {name: futures[name].result() for name in names}
    finally:
        if cached:
            events.unpersist()


# -- program ---------------------------------------------------------------------------------
def build_session(
    master: str | None = None,
    shuffle_partitions: int = DEFAULT_SHUFFLE_PARTITIONS,
    app_name: str = "lambdarec-daily-features",
    driver_memory: str | None = None,
) -> SparkSession:
    """A session with the job's settings (:func:`lambdarec.batch.spec.spark_session`)."""
    return spark_session(app_name, master, shuffle_partitions, driver_memory)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="daily_features.py",
        description="Compute the daily feature tables (" + ", ".join(TABLES) + ") for one day "
        "from the lake's events.",
    )
    parser.add_argument("--lake-dir", required=True, type=Path, help="lake root (holds events/)")
    parser.add_argument(
        "--date",
        required=True,
        type=_day_arg,
        help="the run's data interval end day, YYYY-MM-DD (UTC)",
    )
    parser.add_argument(
        "--through",
        type=_day_arg,
        help="a backfill's last day: every day from --date through this one, in one session "
        "(one JVM start), each written as its own run would write it",
    )
    parser.add_argument(
        "--tables", default="all", help="'all' or a comma-separated subset of: " + ", ".join(TABLES)
    )
    parser.add_argument("--out-dir", type=Path, help="feature root (default: <lake-dir>/features)")
    parser.add_argument(
        "--shuffle-partitions",
        type=int,
        default=DEFAULT_SHUFFLE_PARTITIONS,
        help="spark.sql.shuffle.partitions (AQE coalesces small ones; default %(default)s)",
    )
    parser.add_argument("--master", help="Spark master (default: whatever spark-submit set)")
    parser.add_argument("--top-n", type=int, default=DEFAULT_TOP_N, help="neighbours kept per item")
    parser.add_argument(
        "--max-items",
        type=int,
        default=DEFAULT_MAX_ITEMS,
        help="distinct items per user/session in co-occurrence, session_items and "
        "user_recent_items (most recent; default %(default)s)",
    )
    parser.add_argument(
        "--sr-window",
        type=int,
        default=DEFAULT_SR_WINDOW,
        help="steps ahead a sequential rule reaches (weight 1/steps; default %(default)s)",
    )
    parser.add_argument(
        "--sknn-sample",
        type=int,
        default=DEFAULT_SKNN_SAMPLE,
        help="newest sessions kept per item in item_sessions (default %(default)s)",
    )
    parser.add_argument(
        "--files-per-table", type=int, default=1, help="Parquet files per partition written"
    )
    parser.add_argument(
        "--cache", action="store_true", help="cache the events read across tables (slower locally)"
    )
    parser.add_argument(
        "--parallel", type=int, default=1, help="tables computed at once (default %(default)s)"
    )
    args = parser.parse_args(argv)
    try:
        args.tables = parse_tables(args.tables)
    except ValueError as exc:
        parser.error(str(exc))
    if args.through is not None and args.through < args.date:
        parser.error(f"--through {args.through} is before --date {args.date}: give the later day")
    return args


def days_of(args: argparse.Namespace) -> list[date]:
    """The run's days: ``--date``, or ``--date`` through ``--through`` (a backfill)."""
    last = args.through or args.date
    return [args.date + timedelta(days=n) for n in range((last - args.date).days + 1)]


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # pyspark may have configured the root logger already: attach to ours explicitly.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    started = time.perf_counter()
    spark = build_session(args.master, args.shuffle_partitions)
    spark.sparkContext.setLogLevel("WARN")
    log.info("session ready in %.1f s", time.perf_counter() - started)
    written: dict[str, str] = {}
    try:
        for day in days_of(args):
            day_started = time.perf_counter()
            written = run(
                spark,
                args.lake_dir,
                day,
                tables=args.tables,
                out_dir=args.out_dir,
                top_n=args.top_n,
                max_items=args.max_items,
                window=args.sr_window,
                sample=args.sknn_sample,
                files_per_table=args.files_per_table,
                cache=args.cache,
                parallel=args.parallel,
            )
            log.info("%s done in %.1f s", day, time.perf_counter() - day_started)
            for name, path in written.items():
                print(f"{name}\t{path}", flush=True)
    finally:
        spark.stop()
    log.info("done in %.1f s", time.perf_counter() - started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
