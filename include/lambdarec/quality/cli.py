"""``lambdarec quality ...``: validate a day of a lake table, regenerate the versioned suites."""

from __future__ import annotations

from typing import Annotated

import typer

app = typer.Typer(help="Data-quality gates (Great Expectations).", no_args_is_help=True)


@app.command("validate")
def validate(
    table: Annotated[str, typer.Argument(help="raw_events or a feature table name.")],
    day: Annotated[str, typer.Option(help="The partition's day, YYYY-MM-DD.")],
) -> None:
    """Validate one partition; exit 1 when the gate fails. Builds Data Docs either way."""
    from lambdarec.quality.runner import validate as validate_

    report = validate_(table, day)
    typer.echo(report.summary())
    raise typer.Exit(0 if report.success else 1)


@app.command("sync")
def sync() -> None:
    """Write the suites in code (and their checkpoints) into great_expectations/."""
    from lambdarec.quality.project import sync_project

    changed = sync_project()
    typer.echo("\n".join(changed) if changed else "great_expectations/ already matches the code")


@app.command("docs")
def docs() -> None:
    """Print the path of the Data Docs index page."""
    from lambdarec.config import get_settings

    typer.echo(str(get_settings().data_docs_dir / "index.html"))


@app.command("fetch-assets")
def fetch_assets(
    force: Annotated[bool, typer.Option(help="Fetch again even when the folder is ready.")] = False,
) -> None:
    """Vendor the Data Docs' CSS/JS from npm into LAMBDAREC_WEB_ASSETS_DIR (with licences)."""
    from lambdarec.config import get_settings
    from lambdarec.quality.offline import AssetsError
    from lambdarec.quality.offline import fetch_assets as fetch

    folder = get_settings().web_assets_dir
    try:
        fetched = fetch(folder, force=force)
    except AssetsError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"Data Docs assets {'fetched into' if fetched else 'already in'} {folder}")
