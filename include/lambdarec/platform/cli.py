"""``lambdarec platform up|down|status|logs``: the local platform from a shell.

Mounted in the main CLI as ``lambdarec platform``; also runs alone:
``python -m lambdarec.platform.cli status``.
"""

import logging
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from lambdarec.platform import manager
from lambdarec.platform.base import PlatformError

app = typer.Typer(
    help="Start, check and stop the local platform (Kafka, Redis, MLflow, Airflow) on 127.0.0.1.",
    no_args_is_help=True,
)
# Wide enough for the status table when output is not a terminal (make, CI logs).
console = Console(width=None if sys.stdout.isatty() else 120)
errors = Console(stderr=True)

Services = Annotated[
    list[str] | None,
    typer.Argument(
        help="Services or groups (kafka, redis, mlflow, airflow = its four parts, ...; see `status`); default: all.",
        show_default=False,
    ),
]

STATE_STYLE = {"up": "green", "built": "green", "unhealthy": "yellow"}


@app.callback()
def _setup() -> None:
    # Run alone (python -m lambdarec.platform.cli), nothing has configured logging yet; mounted in
    # the main CLI, its callback already has, and a second handler would print every line twice.
    if logging.getLogger().handlers:
        return
    handler = RichHandler(console=errors, show_time=False, show_path=False, markup=False)
    logger = logging.getLogger("lambdarec")
    if not any(isinstance(h, RichHandler) for h in logger.handlers):
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)


def _fail(error: PlatformError) -> typer.Exit:
    errors.print(f"[bold red]error:[/] {error}", markup=True, highlight=False)
    return typer.Exit(1)


def _table(rows: list[manager.ServiceStatus]) -> Table:
    table = Table(title="lambdarec platform")
    for column in ("service", "state", "pid", "url", "details"):
        table.add_column(column, overflow="fold")
    for row in rows:
        style = STATE_STYLE.get(row.state, "dim")
        table.add_row(
            row.name,
            f"[{style}]{row.state}[/]",
            str(row.pid or ""),
            row.url,
            row.details,
        )
    return table


@app.command()
def up(services: Services = None) -> None:
    """Start services in dependency order and wait until each is healthy. With Airflow up, the
    scheduled DAGs are unpaused (LAMBDAREC_DAGS_PAUSED=1 pauses them instead)."""
    from lambdarec.config import get_settings
    from lambdarec.platform.airflow import schedule_dags

    try:
        rows = manager.up(services)
        if any(row.name == "airflow-scheduler" and row.is_up for row in rows):
            states = schedule_dags(get_settings())
            paused = sorted(d for d, is_paused in states.items() if is_paused)
            running = sorted(d for d, is_paused in states.items() if not is_paused)
            if running:
                console.print(f"scheduled DAGs running: {', '.join(running)}")
            if paused:
                console.print(f"DAGs paused (LAMBDAREC_DAGS_PAUSED): {', '.join(paused)}")
    except PlatformError as error:
        raise _fail(error) from None
    console.print(_table(manager.status()))


@app.command()
def down(services: Services = None) -> None:
    """Stop services (process groups: TERM, then KILL after a grace period)."""
    try:
        stopped = manager.down(services)
    except PlatformError as error:
        raise _fail(error) from None
    console.print(f"stopped: {', '.join(stopped) if stopped else 'nothing was running'}")


@app.command()
def status() -> None:
    """Show each service, its state, pid, URL and login."""
    console.print(_table(manager.status()))


@app.command("kafka-jars")
def kafka_jars() -> None:
    """Resolve the Kafka broker jars into the state folder with Maven (skipped when current)."""
    from lambdarec.config import get_settings
    from lambdarec.platform.kafka import resolve_kafka_jars

    try:
        libs = resolve_kafka_jars(get_settings())
    except PlatformError as error:
        raise _fail(error) from None
    console.print(f"Kafka broker jars: {libs} ({len(list(libs.glob('*.jar')))} jars)")


@app.command()
def logs(
    service: Annotated[
        str, typer.Argument(help="A service as `status` names it, e.g. kafka, airflow-scheduler.")
    ],
    lines: Annotated[int, typer.Option("--lines", "-n", help="Lines to show.")] = 50,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new lines.")
    ] = False,
) -> None:
    """Print the end of a service's log (stdout and stderr of its process)."""
    try:
        path = manager.log_path(service)
    except PlatformError as error:
        raise _fail(error) from None
    if not path.is_file() and not follow:
        errors.print(f"{path} does not exist yet ({service} was never started here)")
        raise typer.Exit(1)
    for line in manager.tail(path, lines):
        print(line)
    if follow:
        _follow(path)


def _follow(path: Path) -> None:
    position = path.stat().st_size if path.is_file() else 0
    try:
        while True:
            size = path.stat().st_size if path.is_file() else 0
            if size < position:  # rotated or truncated
                position = 0
            if size > position:
                with path.open("rb") as handle:
                    handle.seek(position)
                    chunk = handle.read()
                position += len(chunk)
                print(chunk.decode("utf-8", errors="replace"), end="", flush=True)
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    app()
