"""Where the replayer reads from: the lake (date by date) or a file of canonical events."""

from __future__ import annotations

from typing import TYPE_CHECKING

from lambdarec.data import lake
from lambdarec.tables import as_day

if TYPE_CHECKING:
    from collections.abc import Iterator
    from datetime import date
    from pathlib import Path

    import pandas as pd


def frames_from_lake(
    lake_dir: Path,
    start: str | date | None = None,
    end: str | date | None = None,
    *,
    batch_rows: int = 100_000,
) -> tuple[Iterator[pd.DataFrame], int]:
    """Time-ordered canonical frames of the lake between two dates (inclusive), and their count."""
    first = None if start is None else as_day(start)
    last = None if end is None else as_day(end)
    counts = {
        d: n
        for d, n in lake.date_counts(lake_dir).items()
        if (first is None or d >= first) and (last is None or d <= last)
    }
    if not counts:
        raise FileNotFoundError(
            f"no events in the lake at {lake_dir} for {first or 'the start'}..{last or 'the end'}; "
            "write some with `lambdarec data generate --lake` or `lambdarec data load ... --lake`"
        )
    batches = lake.iter_events(lake_dir, first, last, batch_rows=batch_rows)
    return (b.to_pandas() for b in batches), sum(counts.values())


def frames_from_file(path: Path) -> tuple[Iterator[pd.DataFrame], int]:
    """A Parquet or CSV file of canonical events, sorted by event time (rows are not checked here)."""
    import pandas as pd

    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    if path.suffix == ".parquet" or path.is_dir():
        df = pd.read_parquet(path)
    elif path.suffix == ".csv":
        df = pd.read_csv(path, dtype=str)
        df["price"] = pd.to_numeric(df.get("price"), errors="coerce")
        df["ts"] = pd.to_datetime(df["ts"], utc=True).astype("datetime64[ms, UTC]")
    else:
        raise ValueError(
            f"{path}: use a .parquet or .csv file of canonical events "
            "(other interaction files: `lambdarec data load --source generic`)"
        )
    # Row-level problems are the replayer's job: it dead-letters each bad row with its reason.
    df = df.sort_values("ts", kind="stable")
    return iter([df]), len(df)
