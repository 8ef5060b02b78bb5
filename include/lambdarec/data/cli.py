"""``lambdarec data``: generate synthetic events, load real datasets, inspect the lake.

Run standalone with ``python -m lambdarec.data.cli --help``. An expected error (a bad option, a
file that cannot be loaded) is one line on stderr (``error: ...``) and a non-zero exit code.
"""

from __future__ import annotations

import logging
import sys
import time
from collections import Counter
from datetime import datetime, timedelta
from enum import StrEnum
from pathlib import Path  # noqa: TC003 (typer reads the annotations at runtime)
from typing import TYPE_CHECKING, Annotated, Any, Literal, cast

import typer
from typer.core import TyperGroup

from lambdarec.config import get_settings

if TYPE_CHECKING:
    from collections.abc import Iterator

    import pyarrow as pa


def _one_line(message: str) -> str:
    """A message on one line (its lines joined with ``; ``)."""
    return "; ".join(part.strip() for part in message.splitlines() if part.strip())


def _fail(message: str, code: int = 1) -> typer.Exit:
    typer.secho(f"error: {_one_line(message)}", fg=typer.colors.RED, err=True)
    return typer.Exit(code)


class _OneLineErrors(TyperGroup):
    """A usage error of a subcommand (bad option, missing value) as one ``error:`` line on stderr
    and exit code 2, instead of the usage text and a box."""

    def invoke(self, ctx: Any) -> Any:  # ctx: the Context of the click that typer vendors
        try:
            return super().invoke(ctx)
        except typer.TyperException as exc:  # typer's click errors: usage, bad parameter
            raise _fail(exc.format_message(), exc.exit_code) from None


app = typer.Typer(
    cls=_OneLineErrors,
    help="Synthetic clickstream, dataset loaders and the event lake.",
    no_args_is_help=True,
    add_completion=False,
)


class Source(StrEnum):
    taobao = "taobao"
    diginetica = "diginetica"
    generic = "generic"


class Fav(StrEnum):
    view = "view"
    drop = "drop"


class TsUnit(StrEnum):
    auto = "auto"
    s = "s"
    ms = "ms"
    us = "us"
    ns = "ns"


class OnInvalid(StrEnum):
    raise_ = "raise"
    drop = "drop"


class FileFormat(StrEnum):
    auto = "auto"
    table = "table"
    sequences = "sequences"


def _setup_logging(verbose: bool) -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.DEBUG if verbose else logging.INFO,
            format="%(levelname)s %(name)s: %(message)s",
            stream=sys.stderr,
        )


@app.command()
def generate(
    users: Annotated[int, typer.Option(help="Number of users.")] = 10_000,
    items: Annotated[int, typer.Option(help="Number of catalog items.")] = 50_000,
    categories: Annotated[int, typer.Option(help="Number of leaf categories.")] = 200,
    days: Annotated[int, typer.Option(help="Days of traffic.")] = 7,
    start: Annotated[
        datetime, typer.Option(formats=["%Y-%m-%d"], help="First day (UTC).")
    ] = datetime(2024, 1, 1),
    events: Annotated[
        int | None, typer.Option(help="Target event count (default: from --sessions-per-day).")
    ] = None,
    sessions_per_day: Annotated[
        float, typer.Option(help="Sessions per user per day (ignored with --events).")
    ] = 0.3,
    seed: Annotated[
        int, typer.Option(help="Random seed; the same seed gives the same files.")
    ] = 42,
    out_dir: Annotated[
        Path | None, typer.Option(help="Output folder (default: <data_dir>/synthetic).")
    ] = None,
    lake: Annotated[
        bool, typer.Option("--lake/--no-lake", help="Also write into the lake.")
    ] = False,
    lake_dir: Annotated[Path | None, typer.Option(help="Lake folder (default: settings).")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Generate a synthetic catalog and clickstream: catalog.parquet and events.parquet."""
    import pyarrow.parquet as pq
    from pydantic import ValidationError
    from tqdm import tqdm

    from lambdarec.data import lake as lake_mod
    from lambdarec.data.generator import ClickstreamGenerator, GeneratorConfig
    from lambdarec.events import canonical_arrow_schema

    _setup_logging(verbose)
    try:
        config = GeneratorConfig(
            n_users=users,
            n_items=items,
            n_categories=categories,
            days=days,
            start=start.date(),
            n_events=events,
            sessions_per_user_per_day=sessions_per_day,
            seed=seed,
        )
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'config'}: {e['msg']}" for e in exc.errors()
        )
        raise _fail(problems, 2) from None
    settings = get_settings()
    out = out_dir or settings.data_dir / "synthetic"
    out.mkdir(parents=True, exist_ok=True)
    gen = ClickstreamGenerator(config)
    started = time.perf_counter()
    catalog = gen.catalog_table()
    lake_mod.atomic_write_parquet(catalog, out / "catalog.parquet")

    counts: Counter[str] = Counter()
    tmp = out / f".events.parquet.{seed}.tmp"
    writer = pq.ParquetWriter(tmp, canonical_arrow_schema(), compression="zstd")

    def tee() -> Iterator[pa.Table]:
        with tqdm(total=config.expected_events, unit="ev", unit_scale=True, desc="generate") as bar:
            for table in gen.iter_tables():
                writer.write_table(table, row_group_size=lake_mod.ROW_GROUP_ROWS)
                counts.update(dict(zip(*_value_counts(table), strict=True)))
                bar.update(table.num_rows)
                yield table

    try:
        if lake:
            target = lake_dir or settings.lake_dir
            dates = lake_mod.write_events(tee(), target)
            lake_mod.write_catalog(catalog, target)
        else:
            for _ in tee():
                pass
        writer.close()
        tmp.replace(out / "events.parquet")
    except lake_mod.LakeError as exc:
        raise _fail(str(exc)) from None
    finally:
        if writer.is_open:
            writer.close()
        tmp.unlink(missing_ok=True)
    elapsed = time.perf_counter() - started
    total = sum(counts.values())
    funnel = ", ".join(
        f"{k} {counts[k]:,}" for k in ("view", "add_to_cart", "remove_from_cart", "purchase")
    )
    where = f"{out}" + (
        f" and lake {lake_dir or settings.lake_dir} ({len(dates)} dates)" if lake else ""
    )
    typer.echo(
        f"generated {total:,} events ({funnel}) in {config.n_sessions:,} sessions, "
        f"{config.n_users:,} users, {config.n_items:,} items, {config.days} days from "
        f"{config.start} in {elapsed:.1f} s ({total / max(elapsed, 1e-9):,.0f} events/s) -> {where}"
    )


def _value_counts(table: pa.Table) -> tuple[list[str], list[int]]:
    import pyarrow.compute as pc

    vc = pc.value_counts(table.column("event_type"))
    return vc.field("values").to_pylist(), vc.field("counts").to_pylist()


def _parse_map(text: str | None) -> dict[str, str]:
    if not text:
        return {}
    out = {}
    for pair in text.split(","):
        key, sep, value = pair.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise typer.BadParameter(f"{pair!r} is not raw=canonical (e.g. 'fav=view,click=view')")
        out[key.strip()] = value.strip()
    return out


@app.command()
def load(
    source: Annotated[Source, typer.Option(help="Dataset format.")],
    path: Annotated[
        Path | None,
        typer.Option(
            help="Input file (default for taobao/diginetica: the shared data). generic: CSV or "
            "Parquet with one event per row, or a text file with one user per line "
            "('user item item ...', items in time order)."
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(help="Output Parquet (default: <data_dir>/<source>/events.parquet)."),
    ] = None,
    lake: Annotated[
        bool,
        typer.Option(
            "--lake/--no-lake",
            help="Also merge into the lake: upsert by event_id (a loaded row replaces the stored "
            "copy of its id), no stored event deleted.",
        ),
    ] = False,
    lake_dir: Annotated[Path | None, typer.Option(help="Lake folder (default: settings).")] = None,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="Read and validate, print what the lake merge would change per date, write "
            "nothing.",
        ),
    ] = False,
    official_window: Annotated[
        bool, typer.Option(help="taobao: keep only 2017-11-25..12-03 (UTC+8).")
    ] = False,
    fav: Annotated[Fav, typer.Option(help="taobao: keep fav as a view, or drop it.")] = Fav.view,
    session_gap_min: Annotated[
        float, typer.Option(help="Inactivity (minutes) that ends a session.")
    ] = 30.0,
    user_col: Annotated[str | None, typer.Option(help="generic: user id column.")] = None,
    session_col: Annotated[str | None, typer.Option(help="generic: session id column.")] = None,
    item_col: Annotated[str | None, typer.Option(help="generic: item id column.")] = None,
    ts_col: Annotated[str | None, typer.Option(help="generic: timestamp column.")] = None,
    event_type_col: Annotated[str | None, typer.Option(help="generic: event type column.")] = None,
    category_col: Annotated[str | None, typer.Option(help="generic: category column.")] = None,
    price_col: Annotated[str | None, typer.Option(help="generic: price column.")] = None,
    event_type_map: Annotated[
        str | None,
        typer.Option(help="generic: extra event type mapping, e.g. 'fav=view,tx=purchase'."),
    ] = None,
    ts_unit: Annotated[TsUnit, typer.Option(help="generic: epoch unit, or auto.")] = TsUnit.auto,
    on_invalid: Annotated[
        OnInvalid, typer.Option(help="generic: raise, or drop invalid rows (counted).")
    ] = OnInvalid.raise_,
    file_format: Annotated[
        FileFormat,
        typer.Option(
            "--format",
            help="generic: a table (one event per row), sequences (one user per line, no "
            "timestamps: synthetic ones keep the order, the session is the user), or auto: "
            "sequences when no column is named and the lines have no , ; tab or |.",
        ),
    ] = FileFormat.auto,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Load a dataset into the canonical event table (Parquet), and optionally the lake."""
    from lambdarec.data import lake as lake_mod
    from lambdarec.data import loaders
    from lambdarec.data.canonical import to_table

    _setup_logging(verbose)
    gap = timedelta(minutes=session_gap_min)
    try:
        if source is Source.taobao:
            df = loaders.load_taobao(
                path,
                official_window=official_window,
                session_gap=gap,
                fav=cast("Literal['view', 'drop']", fav.value),
            )
        elif source is Source.diginetica:
            df = loaders.load_diginetica_raw(path)
        else:
            if path is None:
                raise _fail("--path is required for --source generic", 2)
            df = loaders.load_interactions(
                path,
                user_col=user_col,
                session_col=session_col,
                item_col=item_col,
                ts_col=ts_col,
                event_type_col=event_type_col,
                category_col=category_col,
                price_col=price_col,
                event_type_map=_parse_map(event_type_map),
                ts_unit=cast("Literal['auto', 's', 'ms', 'us', 'ns']", ts_unit.value),
                on_invalid=cast("Literal['raise', 'drop']", on_invalid.value),
                session_gap=gap,
                format=cast("Literal['auto', 'table', 'sequences']", file_format.value),
            )
    except (loaders.LoadError, FileNotFoundError) as exc:
        raise _fail(str(exc)) from None
    if df.empty:
        raise _fail(f"no event left to load from {path or source.value}: every row was dropped")
    settings = get_settings()
    target = out or settings.data_dir / source.value / "events.parquet"
    if dry_run:
        merges = lake_mod.merge_events(to_table(df), lake_dir or settings.lake_dir, dry_run=True)
        typer.echo(_merge_table(merges, f"dry run: {len(df):,} events read; the lake merge would"))
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        lake_mod.atomic_write_parquet(to_table(df), target)
        merges = lake_mod.merge_events(to_table(df), lake_dir or settings.lake_dir) if lake else []
    except lake_mod.LakeError as exc:
        raise _fail(str(exc)) from None
    if merges:
        typer.echo(_merge_table(merges, "lake merge"))
    dates = [m.day for m in merges]
    report = df.attrs.get("load_report", {})
    counts = df["event_type"].value_counts().to_dict()
    typer.echo(
        f"loaded {len(df):,} events ({', '.join(f'{k} {v:,}' for k, v in counts.items())}) from "
        f"{report.get('rows_read', '?'):,} rows, dropped {report.get('dropped') or 'none'}; "
        f"{df['user_id'].nunique():,} users, {df['session_id'].nunique():,} sessions, "
        f"{df['item_id'].nunique():,} items -> {target}"
        + (f" and lake {lake_dir or settings.lake_dir} ({len(dates)} dates)" if lake else "")
    )


def _merge_table(merges: list[Any], title: str) -> str:
    """What a lake merge did (or would do) per date, as a table."""
    keys = ("stored", "inserted", "updated", "unchanged", "moved_out", "after")
    lines = [f"{title}:", f"  {'date':<10} " + " ".join(f"{k:>10}" for k in keys)]
    for m in merges:
        row = m.as_dict()
        lines.append(f"  {m.day:<10} " + " ".join(f"{row[k]:>10,}" for k in keys))
    if not merges:
        lines.append("  (no date touched)")
    return "\n".join(lines)


@app.command("lake-info")
def lake_info(
    lake_dir: Annotated[Path | None, typer.Option(help="Lake folder (default: settings).")] = None,
) -> None:
    """List the lake's dates with their row counts, and the catalog size."""
    import pyarrow.parquet as pq

    from lambdarec.data import lake as lake_mod
    from lambdarec.tables import catalog_path, events_path

    root = lake_dir or get_settings().lake_dir
    counts = lake_mod.date_counts(root)
    if not counts:
        typer.echo(f"no events in {root}")
    for day, n in counts.items():
        typer.echo(f"{day.isoformat()}  {n:>12,}")
    if counts:
        typer.echo(f"{len(counts)} date(s), {sum(counts.values()):,} events in {events_path(root)}")
    catalog = catalog_path(root) / lake_mod.CATALOG_FILE
    if catalog.exists():
        typer.echo(f"catalog: {pq.ParquetFile(catalog).metadata.num_rows:,} items in {catalog}")


if __name__ == "__main__":
    app()
