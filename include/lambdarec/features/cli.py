"""``lambdarec features ...``: render, plan, apply and materialize the feature store."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated

import typer

app = typer.Typer(help="The Feast feature store.", no_args_is_help=True)


def _when(value: str) -> datetime:
    """An ISO date (midnight UTC) or datetime (UTC unless it says otherwise)."""
    parsed = datetime.fromisoformat(value)
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed


@app.command("render")
def render() -> None:
    """Write <state_dir>/feast/feature_store.yaml for the current settings and print its path."""
    from lambdarec.features.store import write_feature_store_yaml

    typer.echo(str(write_feature_store_yaml()))


@app.command("plan")
def plan() -> None:
    """Show what `apply` would change (registry objects, online tables)."""
    from lambdarec.features.store import plan as plan_

    typer.echo(plan_())


@app.command("apply")
def apply() -> None:
    """Register feature_repo/ in the registry and create the online tables (idempotent)."""
    from lambdarec.features.store import apply as apply_

    typer.echo(apply_() or "no changes")


@app.command("materialize")
def materialize(
    start: Annotated[str, typer.Option(help="Interval start, ISO date or datetime (UTC).")],
    end: Annotated[
        str | None, typer.Option(help="Interval end (inclusive); default: start + 1 day.")
    ] = None,
    view: Annotated[
        list[str] | None, typer.Option("--view", help="Only this view (repeatable).")
    ] = None,
) -> None:
    """Load feature rows stamped in [start, end] into the online store."""
    from lambdarec.features.store import materialize as materialize_

    begin = _when(start)
    finish = _when(end) if end else begin + timedelta(days=1)
    names = materialize_(begin, finish, views=view or None)
    typer.echo(f"materialized {', '.join(names)} for {begin.isoformat()} .. {finish.isoformat()}")
