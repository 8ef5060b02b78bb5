"""The daily feature tables in DuckDB SQL: a single-machine reference for the Spark job.

Same windows, ranks, tie-breaks, co-occurrence caps and scores as ``include/spark/
daily_features.py`` (see its module docstring, :mod:`lambdarec.batch.spec` and, for the session
tables, :mod:`lambdarec.batch.neighbours`), written independently in SQL. The benchmark times it against Spark; the integration tests compare the two.

:func:`compute` returns pandas frames (columns in the order of :mod:`lambdarec.tables`),
:func:`write` writes ``<out_dir>/<table>/date=<day>/part-0.parquet`` like the job.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from lambdarec.batch.spec import (
    DAY_MS,
    DEFAULT_MAX_ITEMS,
    DEFAULT_SKNN_SAMPLE,
    DEFAULT_SR_WINDOW,
    DEFAULT_TOP_N,
    TABLES,
    first_day,
    parse_tables,
    rule_units,
    window_bounds,
)
from lambdarec.tables import PARTITION_GLOB, PARTITION_KEY, as_day, events_path, partition_dir

if TYPE_CHECKING:
    from collections.abc import Sequence
    from datetime import date, datetime

    import duckdb
    import pandas as pd


def _ms(value: datetime) -> int:
    return int(value.timestamp() * 1000)


def _bounds_ms(day: date) -> dict[str, int]:
    return {k: _ms(v) for k, v in window_bounds(day).items()}


def load_events(con: duckdb.DuckDBPyConnection, lake_dir: Path | str, day: date | str) -> int:
    """Materialise the 30-day window of events as the temp table ``ev`` (ts as ``t``, epoch ms)."""
    day = as_day(day)
    root = events_path(Path(lake_dir))
    if not root.exists():
        raise FileNotFoundError(f"no events under {root}")
    b = _bounds_ms(day)
    pattern = str(root / PARTITION_GLOB / "*.parquet").replace("'", "''")
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE ev AS
        SELECT event_id, user_id, session_id, item_id, event_type, category, price,
            epoch_ms(ts) AS t
        FROM read_parquet('{pattern}', hive_partitioning = true)
        WHERE {PARTITION_KEY} BETWEEN DATE '{first_day(day)}' AND DATE '{day}'
          AND epoch_ms(ts) >= {b["start_30d"]} AND epoch_ms(ts) < {b["end"]}
        """
    )
    row = con.execute("SELECT count(*) FROM ev").fetchone()
    return int(row[0]) if row else 0


def _user_history(b: dict[str, int]) -> str:
    return f"""
    WITH u AS (
        SELECT user_id,
            count(*) AS n_events_30d,
            count(*) FILTER (WHERE event_type = 'view') AS n_views_30d,
            count(*) FILTER (WHERE event_type = 'add_to_cart') AS n_carts_30d,
            count(*) FILTER (WHERE event_type = 'remove_from_cart') AS n_removes_30d,
            count(*) FILTER (WHERE event_type = 'purchase') AS n_purchases_30d,
            count(DISTINCT item_id) AS n_distinct_items_30d,
            avg(price) FILTER (WHERE event_type = 'view') AS avg_price_viewed_30d,
            max(price) FILTER (WHERE event_type = 'view') AS max_price_viewed_30d,
            avg(price) FILTER (WHERE event_type = 'purchase') AS avg_price_bought_30d,
            max(price) FILTER (WHERE event_type = 'purchase') AS max_price_bought_30d,
            max(t) AS last_t
        FROM ev GROUP BY user_id
    ),
    uc AS (
        SELECT user_id, category, count(*) AS n
        FROM ev WHERE category IS NOT NULL GROUP BY user_id, category
    ),
    c AS (
        SELECT user_id, count(*) AS n_distinct_categories_30d,
            list(category ORDER BY n DESC, category) AS cats
        FROM uc GROUP BY user_id
    )
    SELECT u.user_id,
        make_timestamptz({b["end"]}::BIGINT * 1000) AS event_timestamp,
        n_events_30d, n_views_30d, n_carts_30d, n_removes_30d, n_purchases_30d,
        n_distinct_items_30d,
        coalesce(n_distinct_categories_30d, 0) AS n_distinct_categories_30d,
        cats[1] AS top_category_30d,
        array_to_string(cats[1:3], '|') AS top_categories_30d,
        avg_price_viewed_30d, max_price_viewed_30d, avg_price_bought_30d, max_price_bought_30d,
        ({b["end"]} - last_t) / {float(DAY_MS)} AS days_since_last_event,
        CASE WHEN n_views_30d > 0 THEN n_purchases_30d / n_views_30d ELSE 0.0 END
            AS conversion_rate_30d
    FROM u LEFT JOIN c USING (user_id)
    """


def _item_stats(b: dict[str, int]) -> str:
    counts = []
    for suffix, since in (("1d", b["start_1d"]), ("7d", b["start_7d"]), ("30d", b["start_30d"])):
        for name, kind in (("views", "view"), ("carts", "add_to_cart"), ("purchases", "purchase")):
            counts.append(
                f"count(*) FILTER (WHERE event_type = '{kind}' AND t >= {since}) AS {name}_{suffix}"
            )
    return f"""
    WITH i AS (
        SELECT item_id,
            {", ".join(counts)},
            count(DISTINCT user_id) FILTER (WHERE t >= {b["start_7d"]}) AS unique_users_7d,
            count(DISTINCT user_id) AS unique_users_30d,
            max(struct_pack(t := t, v := category)) FILTER (WHERE category IS NOT NULL) AS lc,
            max(struct_pack(t := t, v := price)) FILTER (WHERE price IS NOT NULL) AS lp
        FROM ev GROUP BY item_id
    )
    SELECT item_id,
        make_timestamptz({b["end"]}::BIGINT * 1000) AS event_timestamp,
        lc.v AS category, lp.v AS price,
        views_1d, carts_1d, purchases_1d, views_7d, carts_7d, purchases_7d,
        views_30d, carts_30d, purchases_30d,
        CASE WHEN views_7d > 0 THEN purchases_7d / views_7d ELSE 0.0 END AS conversion_7d,
        CASE WHEN views_30d > 0 THEN purchases_30d / views_30d ELSE 0.0 END AS conversion_30d,
        unique_users_7d, unique_users_30d,
        row_number() OVER (PARTITION BY lc.v ORDER BY views_7d DESC, item_id)
            AS popularity_rank_in_category_7d
    FROM i
    """


def _neighbours(kind: str, top_n: int) -> str:
    """A CTE body giving (item_id, items, scores) for one co-occurrence kind."""
    return f"""
        SELECT a AS item_id,
            list(b ORDER BY score DESC, b) AS items,
            list(score ORDER BY score DESC, b) AS scores
        FROM (
            SELECT a, b, score FROM (
                SELECT p.a, p.b, p.n_ab / sqrt(na.n * nb.n) AS score
                FROM (
                    SELECT a, b, n_ab FROM {kind}_pairs
                    UNION ALL SELECT b AS a, a AS b, n_ab FROM {kind}_pairs
                ) p
                JOIN {kind}_support na ON na.item_id = p.a
                JOIN {kind}_support nb ON nb.item_id = p.b
            )
            QUALIFY row_number() OVER (PARTITION BY a ORDER BY score DESC, b) <= {int(top_n)}
        )
        GROUP BY a
    """


def _cooccurrence_ctes(kind: str, event_type: str, group: str, top_n: int, max_items: int) -> str:
    return f"""
    {kind}_sets AS (
        SELECT {group} AS g, item_id FROM (
            SELECT {group}, item_id, max(t) AS last_t
            FROM ev WHERE event_type = '{event_type}' GROUP BY {group}, item_id
        )
        QUALIFY row_number() OVER (PARTITION BY {group} ORDER BY last_t DESC, item_id) <= {int(max_items)}
    ),
    {kind}_support AS (SELECT item_id, count(*) AS n FROM {kind}_sets GROUP BY item_id),
    {kind}_pairs AS (
        SELECT l.item_id AS a, r.item_id AS b, count(*) AS n_ab
        FROM {kind}_sets l JOIN {kind}_sets r ON l.g = r.g AND l.item_id < r.item_id
        GROUP BY l.item_id, r.item_id
    ),
    {kind} AS ({_neighbours(kind, top_n)})
    """


def _item_cooccurrence(b: dict[str, int], top_n: int, max_items: int) -> str:
    ctes = ",".join(
        [
            _cooccurrence_ctes("bought", "purchase", "user_id", top_n, max_items),
            _cooccurrence_ctes("viewed", "view", "session_id", top_n, max_items),
        ]
    )
    return f"""
    WITH {ctes}
    SELECT coalesce(bought.item_id, viewed.item_id) AS item_id,
        make_timestamptz({b["end"]}::BIGINT * 1000) AS event_timestamp,
        coalesce(bought.items, []::VARCHAR[]) AS co_bought_items,
        coalesce(bought.scores, []::DOUBLE[]) AS co_bought_scores,
        coalesce(viewed.items, []::VARCHAR[]) AS co_viewed_items,
        coalesce(viewed.scores, []::DOUBLE[]) AS co_viewed_scores
    FROM bought FULL OUTER JOIN viewed ON bought.item_id = viewed.item_id
    """


def _category_popularity(b: dict[str, int]) -> str:
    return f"""
    WITH c AS (
        SELECT category,
            count(*) FILTER (WHERE event_type = 'view') AS views_7d,
            count(*) FILTER (WHERE event_type = 'purchase') AS purchases_7d,
            count(DISTINCT user_id) AS unique_users_7d
        FROM ev WHERE t >= {b["start_7d"]} AND category IS NOT NULL GROUP BY category
    )
    SELECT category,
        make_timestamptz({b["end"]}::BIGINT * 1000) AS event_timestamp,
        views_7d, purchases_7d, unique_users_7d,
        row_number() OVER (ORDER BY views_7d DESC, category) AS rank_7d
    FROM c
    """


def _stamp(b: dict[str, int]) -> str:
    return f"make_timestamptz({b['end']}::BIGINT * 1000) AS event_timestamp"


def _sequential_rules(b: dict[str, int], top_n: int, window: int) -> str:
    units = rule_units(window)
    ahead = ", ".join(f"lead(item_id, {d}) OVER w AS n{d}" for d in range(1, window + 1))
    steps = " UNION ALL ".join(
        f"SELECT a, n{d} AS b, {units // d} AS u FROM ahead WHERE n{d} IS NOT NULL AND n{d} <> a"
        for d in range(1, window + 1)
    )
    return f"""
    WITH ordered AS (
        SELECT session_id, item_id, t, event_id,
            lag(item_id) OVER (PARTITION BY session_id ORDER BY t, event_id) AS prev
        FROM ev
    ),
    collapsed AS (
        SELECT session_id, item_id, t, event_id FROM ordered
        WHERE prev IS NULL OR prev <> item_id
    ),
    ahead AS (
        SELECT item_id AS a, {ahead} FROM collapsed
        WINDOW w AS (PARTITION BY session_id ORDER BY t, event_id)
    ),
    totals AS (
        SELECT a, b, sum(u)::BIGINT AS units FROM ({steps}) GROUP BY a, b
        QUALIFY row_number() OVER (PARTITION BY a ORDER BY units DESC, b) <= {int(top_n)}
    )
    SELECT a AS item_id, {_stamp(b)},
        list(b ORDER BY units DESC, b) AS next_items,
        list(units::DOUBLE / {units} ORDER BY units DESC, b) AS next_weights
    FROM totals GROUP BY a
    """


def _recent_distinct(group: str, max_items: int) -> str:
    """(group, item_id, rank, t): each group's distinct items by last (t, event_id) desc."""
    return f"""
        SELECT {group}, item_id, t,
            row_number() OVER (PARTITION BY {group} ORDER BY t DESC, event_id DESC) AS recency
        FROM (
            SELECT {group}, item_id, t, event_id FROM ev
            QUALIFY row_number() OVER (
                PARTITION BY {group}, item_id ORDER BY t DESC, event_id DESC
            ) = 1
        )
        QUALIFY recency <= {int(max_items)}
    """


def _session_items(b: dict[str, int], max_items: int) -> str:
    return f"""
    SELECT session_id, {_stamp(b)},
        list(item_id ORDER BY recency) AS items,
        make_timestamptz(max(t)::BIGINT * 1000) AS last_event_ts
    FROM ({_recent_distinct("session_id", max_items)}) GROUP BY session_id
    """


def _item_sessions(b: dict[str, int], max_items: int, sample: int) -> str:
    return f"""
    WITH held AS ({_recent_distinct("session_id", max_items)}),
    sessions AS (SELECT session_id, max(t) AS ms FROM held GROUP BY session_id),
    newest AS (
        SELECT held.item_id, held.session_id, sessions.ms FROM held JOIN sessions USING (session_id)
        QUALIFY row_number() OVER (
            PARTITION BY held.item_id ORDER BY sessions.ms DESC, held.session_id
        ) <= {int(sample)}
    )
    SELECT item_id, {_stamp(b)},
        list(session_id ORDER BY ms DESC, session_id) AS sessions,
        list(ms ORDER BY ms DESC, session_id) AS last_event_ms
    FROM newest GROUP BY item_id
    """


def _user_recent_items(b: dict[str, int], max_items: int) -> str:
    return f"""
    SELECT user_id, {_stamp(b)}, list(item_id ORDER BY recency) AS items
    FROM ({_recent_distinct("user_id", max_items)}) GROUP BY user_id
    """


def table_sql(
    name: str,
    day: date | str,
    *,
    top_n: int = DEFAULT_TOP_N,
    max_items: int = DEFAULT_MAX_ITEMS,
    window: int = DEFAULT_SR_WINDOW,
    sample: int = DEFAULT_SKNN_SAMPLE,
) -> str:
    """The query of one table over the temp table ``ev`` (see :func:`load_events`)."""
    b = _bounds_ms(as_day(day))
    if name == "user_history_30d":
        body = _user_history(b)
    elif name == "item_stats":
        body = _item_stats(b)
    elif name == "item_cooccurrence":
        body = _item_cooccurrence(b, top_n, max_items)
    elif name == "category_popularity":
        body = _category_popularity(b)
    elif name == "sequential_rules":
        body = _sequential_rules(b, top_n, window)
    elif name == "session_items":
        body = _session_items(b, max_items)
    elif name == "item_sessions":
        body = _item_sessions(b, max_items, sample)
    elif name == "user_recent_items":
        body = _user_recent_items(b, max_items)
    else:
        raise ValueError(f"unknown table {name!r}; use one of {', '.join(TABLES)}")
    columns = ", ".join(TABLES[name].columns)
    keys = ", ".join(TABLES[name].keys)
    return f"SELECT {columns} FROM ({body}) ORDER BY {keys}"


def connect(
    threads: int | None = None, memory_limit: str | None = None
) -> duckdb.DuckDBPyConnection:
    import duckdb

    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    if threads:
        con.execute(f"SET threads = {int(threads)}")
    if memory_limit:
        con.execute(f"SET memory_limit = '{memory_limit}'")
    return con


def compute(
    lake_dir: Path | str,
    day: date | str,
    *,
    tables: str | Sequence[str] = "all",
    top_n: int = DEFAULT_TOP_N,
    max_items: int = DEFAULT_MAX_ITEMS,
    window: int = DEFAULT_SR_WINDOW,
    sample: int = DEFAULT_SKNN_SAMPLE,
    con: duckdb.DuckDBPyConnection | None = None,
) -> dict[str, pd.DataFrame]:
    """The selected tables of ``day`` as pandas frames, sorted by key."""
    con = con or connect()
    load_events(con, lake_dir, day)
    params = {"top_n": top_n, "max_items": max_items, "window": window, "sample": sample}
    return {name: con.execute(table_sql(name, day, **params)).df() for name in parse_tables(tables)}


def write(
    lake_dir: Path | str,
    day: date | str,
    out_dir: Path | str,
    *,
    tables: str | Sequence[str] = "all",
    top_n: int = DEFAULT_TOP_N,
    max_items: int = DEFAULT_MAX_ITEMS,
    window: int = DEFAULT_SR_WINDOW,
    sample: int = DEFAULT_SKNN_SAMPLE,
    con: duckdb.DuckDBPyConnection | None = None,
) -> dict[str, Path]:
    """Write the selected tables to ``<out_dir>/<table>/date=<day>/part-0.parquet``."""
    day = as_day(day)
    con = con or connect()
    load_events(con, lake_dir, day)
    params = {"top_n": top_n, "max_items": max_items, "window": window, "sample": sample}
    written: dict[str, Path] = {}
    for name in parse_tables(tables):
        target = partition_dir(Path(out_dir) / name, day)
        target.mkdir(parents=True, exist_ok=True)
        path = target / "part-0.parquet"
        query = table_sql(name, day, **params)
        con.execute(
            f"COPY ({query}) TO '{str(path).replace(chr(39), chr(39) * 2)}' (FORMAT parquet)"
        )
        written[name] = target
    return written
