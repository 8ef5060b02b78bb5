"""Helpers shared by the generator, the loaders and the lake for the canonical event table.

In pandas the canonical table has exactly :data:`lambdarec.events.CANONICAL_COLUMNS`, strings as
``object`` (``str`` or ``None``), ``price`` as ``float64`` and ``ts`` as ``datetime64[ms, UTC]``:
the same frame ``pyarrow.Table.to_pandas()`` gives for :func:`canonical_arrow_schema`, so a frame
and an Arrow table convert both ways without surprises.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pyarrow as pa

from lambdarec.events import (
    CANONICAL_COLUMNS,
    ID_REGEX,
    MAX_ID_LEN,
    EventType,
    canonical_arrow_schema,
)

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

ID_COLUMNS = ("event_id", "user_id", "session_id", "item_id")
EVENT_TYPES = frozenset(e.value for e in EventType)
TS_DTYPE = "datetime64[ms, UTC]"


def empty_frame() -> pd.DataFrame:
    """A canonical table with no rows."""
    return canonical_arrow_schema().empty_table().to_pandas()


def to_table(df: pd.DataFrame) -> pa.Table:
    """A canonical frame as an Arrow table with the exact canonical schema (checks nulls too)."""
    missing = [c for c in CANONICAL_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(
            f"not a canonical event table: missing column(s) {missing}; have {list(df.columns)}"
        )
    return pa.Table.from_pandas(
        df[list(CANONICAL_COLUMNS)], schema=canonical_arrow_schema(), preserve_index=False
    )


def conform_table(table: pa.Table | pa.RecordBatch) -> pa.Table:
    """Select and cast the canonical columns of an Arrow table or batch (raises when one lacks)."""
    if isinstance(table, pa.RecordBatch):
        table = pa.Table.from_batches([table])
    schema = canonical_arrow_schema()
    missing = [c for c in schema.names if c not in table.column_names]
    if missing:
        raise ValueError(
            f"not a canonical event table: missing column(s) {missing}; have {table.column_names}"
        )
    table = table.select(schema.names)
    if table.schema.equals(schema):
        return table
    return table.cast(schema)


def as_tables(data: pd.DataFrame | pa.Table | pa.RecordBatch | Iterable) -> Iterator[pa.Table]:
    """Canonical Arrow tables from a frame, a table, a batch or an iterable of any of those."""
    if isinstance(data, pd.DataFrame):
        yield to_table(data)
    elif isinstance(data, pa.Table | pa.RecordBatch):
        yield conform_table(data)
    else:
        for part in data:
            yield from as_tables(part)


def sort_canonical(df: pd.DataFrame, tiebreak: np.ndarray | None = None) -> pd.DataFrame:
    """Sort by ``ts`` then by ``tiebreak`` (default: the current row order), with a fresh index."""
    ts = df["ts"].to_numpy(dtype="datetime64[ms]").astype("int64")
    second = np.arange(len(df)) if tiebreak is None else np.asarray(tiebreak)
    order = np.lexsort((second, ts))
    return df.iloc[order].reset_index(drop=True)


def check_canonical(df: pd.DataFrame) -> None:
    """Raise ``ValueError`` naming the first way ``df`` breaks the canonical table contract."""
    if list(df.columns) != list(CANONICAL_COLUMNS):
        raise ValueError(f"columns are {list(df.columns)}, expected {list(CANONICAL_COLUMNS)}")
    if str(df["ts"].dtype) != TS_DTYPE:
        raise ValueError(f"ts has dtype {df['ts'].dtype}, expected {TS_DTYPE}")
    if df["price"].dtype != np.float64:
        raise ValueError(f"price has dtype {df['price'].dtype}, expected float64")
    for col in (*ID_COLUMNS, "event_type"):
        if df[col].isna().any():
            raise ValueError(f"{col} has {int(df[col].isna().sum())} null value(s)")
    bad_types = set(df["event_type"].unique()) - EVENT_TYPES
    if bad_types:
        raise ValueError(f"unknown event_type value(s) {sorted(bad_types)}")
    for col in ID_COLUMNS:
        values = df[col]
        bad = ~values.str.fullmatch(ID_REGEX) | (values.str.len() > MAX_ID_LEN)
        if bad.any():
            raise ValueError(
                f"{col} has {int(bad.sum())} value(s) that break the id rule "
                f"({ID_REGEX}, at most {MAX_ID_LEN} chars), e.g. {values[bad].iloc[0]!r}"
            )
    if not df["event_id"].is_unique:
        raise ValueError(f"event_id has {int(df['event_id'].duplicated().sum())} duplicate(s)")


def catalog_arrow_schema() -> pa.Schema:
    """The item catalog: one row per item (the generator writes it; the lake stores it)."""
    return pa.schema(
        [
            pa.field("item_id", pa.string(), nullable=False),
            pa.field("category", pa.string()),
            pa.field("price", pa.float64()),
            pa.field("created_at", pa.timestamp("ms", tz="UTC")),
        ]
    )
