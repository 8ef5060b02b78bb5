"""The expectation suites, as code: one for a day of raw events, one per feature table.

Column names and types come from lambdarec.events and lambdarec.tables; range rules follow the
column naming of those specs (counts >= 0, ranks >= 1, conversions >= 0 and at most 1 for 99% of rows, scores in (0, 1]).
Bounds that depend on the run (the day, the previous partition's row count, the price cap) are
suite parameters, filled in by :func:`lambdarec.quality.runner.validate`.

``lambdarec quality sync`` writes these suites into the versioned great_expectations/ project;
a unit test fails when the files and this code disagree.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lambdarec.events import CANONICAL_COLUMNS, EventType
from lambdarec.tables import FEATURE_TABLES, FeatureTable

if TYPE_CHECKING:
    import pandas as pd

    from great_expectations import ExpectationSuite
    from great_expectations.expectations import Expectation

RAW_EVENTS = "raw_events"
TABLES: dict[str, FeatureTable] = {t.name: t for t in FEATURE_TABLES}
SUITE_NAMES: tuple[str, ...] = (RAW_EVENTS, *TABLES)
EVENT_KEYS = ("event_id", "user_id", "session_id", "item_id", "event_type", "ts")

#: Suite parameters every suite takes (see runner.expectation_parameters).
PARAM_MIN_ROWS, PARAM_MAX_ROWS = "min_rows", "max_rows"
PARAM_DAY_START, PARAM_DAY_END = "day_start", "day_end"
PARAM_MAX_PRICE = "max_price"


def _p(name: str) -> dict[str, str]:
    return {"$PARAMETER": name}


def build_suite(name: str) -> ExpectationSuite:
    import great_expectations as gx

    if name == RAW_EVENTS:
        expectations = raw_events_expectations()
    elif name in TABLES:
        expectations = feature_table_expectations(TABLES[name])
    else:
        raise KeyError(f"no suite {name!r}; known: {', '.join(SUITE_NAMES)}")
    return gx.ExpectationSuite(name=name, expectations=expectations)


def _row_count() -> Expectation:
    import great_expectations.expectations as gxe

    return gxe.ExpectTableRowCountToBeBetween(
        min_value=_p(PARAM_MIN_ROWS), max_value=_p(PARAM_MAX_ROWS)
    )


def raw_events_expectations() -> list[Expectation]:
    import great_expectations.expectations as gxe

    return [
        gxe.ExpectTableColumnsToMatchSet(column_set=list(CANONICAL_COLUMNS), exact_match=True),
        _row_count(),
        *(gxe.ExpectColumnValuesToNotBeNull(column=c) for c in EVENT_KEYS),
        gxe.ExpectColumnValuesToBeUnique(column="event_id"),
        gxe.ExpectColumnValuesToBeInSet(
            column="event_type", value_set=[e.value for e in EventType]
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column="price", min_value=0, max_value=_p(PARAM_MAX_PRICE)
        ),
        # Freshness: a day's partition holds that day's events, nothing later or earlier.
        gxe.ExpectColumnValuesToBeBetween(
            column="ts", min_value=_p(PARAM_DAY_START), max_value=_p(PARAM_DAY_END), strict_max=True
        ),
    ]


def feature_table_expectations(table: FeatureTable) -> list[Expectation]:
    import great_expectations.expectations as gxe

    out: list[Expectation] = [
        gxe.ExpectTableColumnsToMatchSet(
            column_set=[*table.columns, *derived_columns(table)], exact_match=True
        ),
        _row_count(),
        *(gxe.ExpectColumnValuesToNotBeNull(column=k) for k in table.keys),
        gxe.ExpectColumnValuesToNotBeNull(column="event_timestamp"),
        # A row is stamped with the end of its day: after the day starts, at the latest at the
        # next midnight.
        gxe.ExpectColumnValuesToBeBetween(
            column="event_timestamp", min_value=_p(PARAM_DAY_START), max_value=_p(PARAM_DAY_END)
        ),
    ]
    if len(table.keys) == 1:
        out.append(gxe.ExpectColumnValuesToBeUnique(column=table.keys[0]))
    else:
        out.append(gxe.ExpectCompoundColumnsToBeUnique(column_list=list(table.keys)))
    for column, kind in table.columns.items():
        if column in table.keys or column == "event_timestamp":
            continue
        if kind == "int64":
            low = 1 if "rank" in column else 0
            out.append(gxe.ExpectColumnValuesToBeBetween(column=column, min_value=low))
        elif kind == "double" and "conversion" in column:
            # Purchases per view. Real logs buy some items without a recorded view (Taobao: 13
            # of 43k items on a day), so a few values above 1 are normal; many mean lost views.
            out.append(gxe.ExpectColumnValuesToBeBetween(column=column, min_value=0))
            out.append(gxe.ExpectColumnValuesToBeBetween(column=column, max_value=1, mostly=0.99))
        elif kind == "double":
            out.append(gxe.ExpectColumnValuesToBeBetween(column=column, min_value=0))
        elif kind == "array<double>" and "score" in column:
            out.append(
                gxe.ExpectColumnValuesToBeBetween(
                    column=f"{column}__min", min_value=0, strict_min=True
                )
            )
            out.append(gxe.ExpectColumnValuesToBeBetween(column=f"{column}__max", max_value=1))
            items = column.replace("_scores", "_items")
            if items in table.columns:
                out.append(
                    gxe.ExpectColumnPairValuesToBeEqual(
                        column_A=f"{items}__len", column_B=f"{column}__len"
                    )
                )
    # Wider windows hold at least what narrower ones do (views_7d >= views_1d...).
    for column in table.columns:
        for narrow, wide in (("_1d", "_7d"), ("_7d", "_30d")):
            if column.endswith(narrow) and column.replace(narrow, wide) in table.columns:
                if table.columns[column] != "int64":
                    continue
                out.append(
                    gxe.ExpectColumnPairValuesAToBeGreaterThanB(
                        column_A=column.replace(narrow, wide), column_B=column, or_equal=True
                    )
                )
    return out


def derived_columns(table: FeatureTable) -> list[str]:
    """The columns :func:`prepare_frame` adds to a partition of ``table``."""
    out: list[str] = []
    for column, kind in table.columns.items():
        if kind.startswith("array<"):
            out.append(f"{column}__len")
        if kind == "array<double>":
            out += [f"{column}__min", f"{column}__max"]
    return out


def prepare_frame(name: str, df: pd.DataFrame) -> pd.DataFrame:
    """Add the derived columns the suite checks: ``<col>__min/__max/__len`` of array columns
    (GX has no expectation over list elements)."""
    if name not in TABLES:
        return df
    import numpy as np

    df = df.copy()
    for column, kind in TABLES[name].columns.items():
        if not kind.startswith("array<") or column not in df.columns:
            continue
        values = df[column]
        df[f"{column}__len"] = values.map(lambda v: None if v is None else len(v)).astype("Int64")
        if kind == "array<double>":
            df[f"{column}__min"] = values.map(_reduce(np.min))
            df[f"{column}__max"] = values.map(_reduce(np.max))
    return df


def _reduce(fn: Any) -> Any:
    def apply(value: Any) -> float | None:
        if value is None or len(value) == 0:
            return None
        return float(fn(value))

    return apply
