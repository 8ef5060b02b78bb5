"""The ``lambdarec`` command line: one entry point for the platform, data, Kafka and the demo."""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import Annotated

import typer

from lambdarec.config import get_settings
from lambdarec.data.cli import app as data_app
from lambdarec.features.cli import app as features_app
from lambdarec.platform.cli import app as platform_app
from lambdarec.quality.cli import app as quality_app
from lambdarec.simulate import DEMO_MINUTES, DEMO_RPS, DEMO_SHOPPERS

app = typer.Typer(
    help="lambdarec: a Lambda-architecture real-time e-commerce recommender.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
app.add_typer(platform_app, name="platform", help="Start, stop and inspect the local services.")
app.add_typer(data_app, name="data", help="Generate and load datasets; manage the lake.")
app.add_typer(
    features_app, name="features", help="The Feast feature store: apply, materialize, backfill."
)
app.add_typer(quality_app, name="quality", help="Great Expectations gates and Data Docs.")

schema_app = typer.Typer(help="The event contract.", no_args_is_help=True)
app.add_typer(schema_app, name="schema")
topics_app = typer.Typer(help="Kafka topics.", no_args_is_help=True)
app.add_typer(topics_app, name="topics")

api_key_app = typer.Typer(help="API keys of the serving API.", no_args_is_help=True)
app.add_typer(api_key_app, name="api-key")
attribution_app = typer.Typer(
    help="Online attribution: clicks joined to the impressions that showed them (Flink).",
    no_args_is_help=True,
)
app.add_typer(attribution_app, name="attribution")

SCHEMA_FILE = Path(__file__).parent / "schemas" / "event.schema.json"


@app.callback()
def _main(verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    # Libraries that narrate their own imports at INFO (faiss via milvus-lite, Feast's Milvus
    # config warning) would bury the project's own progress lines.
    logging.getLogger("faiss").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message='Field name "vector_enabled"', category=UserWarning)


@schema_app.command("export")
def schema_export(
    out: Annotated[Path, typer.Option(help="Where to write the JSON Schema.")] = SCHEMA_FILE,
) -> None:
    """Write the event JSON Schema (generated from the contract's model)."""
    from lambdarec.events import json_schema

    out.write_text(json.dumps(json_schema(), indent=2, sort_keys=True) + "\n")
    typer.echo(f"wrote {out}")


@topics_app.command("create")
def topics_create() -> None:
    """Create the project's topics on the configured broker (idempotent)."""
    from lambdarec.streaming.kafka import ensure_topics

    created = ensure_topics()
    typer.echo(f"created: {', '.join(created) or 'nothing (all exist)'}")


@topics_app.command("list")
def topics_list() -> None:
    """List topics with their partition counts."""
    from lambdarec.streaming.kafka import admin_client

    meta = admin_client().list_topics(timeout=10)
    for name in sorted(meta.topics):
        if not name.startswith("__"):
            typer.echo(f"{name}\t{len(meta.topics[name].partitions)} partitions")


@api_key_app.command("new")
def api_key_new(
    name: Annotated[str, typer.Option(help="Who holds the key (letters, digits, _ . -).")],
    scopes: Annotated[
        str, typer.Option(help="Comma-separated: events (POST /events), recommend (/recommend).")
    ] = "recommend",
) -> None:
    """Mint a key: prints the secret (shown once, never stored) and its LAMBDAREC_API_KEYS entry."""
    from lambdarec.apikeys import mint

    try:
        secret, entry = mint(name, [s.strip() for s in scopes.split(",") if s.strip()])
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    typer.echo(f"secret={secret}")
    typer.echo(f"entry={entry}")
    typer.echo(
        "# Give the secret to the client (Authorization: Bearer <secret>); it is not shown "
        "again. Append the entry to LAMBDAREC_API_KEYS (comma-separated) and restart serving."
    )


@attribution_app.command(
    "run", context_settings={"allow_extra_args": True, "ignore_unknown_options": True}
)
def attribution_run(ctx: typer.Context) -> None:
    """Run the attribution job in the foreground (Ctrl-C stops it; a restart resumes from its
    checkpoint). Options after -- go to include/flink/attribution.py (`-- --help` lists them)."""
    from lambdarec.attribution import AttributionError, run_job
    from lambdarec.speed.jars import JarError

    try:
        code = run_job(get_settings(), list(ctx.args))
    except (JarError, AttributionError) as error:
        typer.echo(str(error), err=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        code = 130
    raise typer.Exit(code)


@attribution_app.command("compact")
def attribution_compact(
    day: Annotated[str, typer.Argument(help="The UTC day to fold, YYYY-MM-DD.")],
) -> None:
    """Fold one day of the job's archive into the lake tables impressions/ and attributed/."""
    from lambdarec.attribution import SCHEMAS, AttributionError, archive_root, compact
    from lambdarec.tables import as_day

    settings = get_settings()
    try:
        when = as_day(day)
        for table in SCHEMAS:
            result = compact(archive_root(settings), settings.lake_dir, table, when)
            typer.echo(json.dumps(result.as_dict()))
    except (ValueError, AttributionError) as exc:
        raise typer.BadParameter(str(exc)) from None


@features_app.command("backfill")
def backfill(
    start: Annotated[str, typer.Option(help="First day to backfill, YYYY-MM-DD (UTC).")],
    end: Annotated[str, typer.Option(help="Last day to backfill (inclusive), YYYY-MM-DD.")],
    materialize: Annotated[
        bool, typer.Option(help="Load the last day's features into the online store.")
    ] = True,
) -> None:
    """The daily pipeline for every day start..end, with one spark-submit for all of them: per
    day the archive compaction and the gates, then the last day materialized. For history loaded
    at once; the daily DAG runs the days after it."""
    from lambdarec.pipelines.daily import backfill as backfill_
    from lambdarec.quality.report import DataQualityError
    from lambdarec.tables import as_day

    try:
        first, last = as_day(start), as_day(end)
        done = backfill_(first, last, materialize=materialize, report=typer.echo)
    except (ValueError, DataQualityError, RuntimeError) as error:
        message = "; ".join(line.strip() for line in str(error).splitlines() if line.strip())
        typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from None
    steps = ", ".join(f"{step} {secs:.0f} s" for step, secs in done["seconds"].items())
    typer.echo(f"backfilled {done['days'][0]} .. {done['days'][-1]}: {steps}")


@app.command("replay")
def replay_cmd(
    source: Annotated[
        str,
        typer.Option(help="'lake' (the master dataset) or a Parquet/CSV file of canonical events."),
    ] = "lake",
    start: Annotated[
        str | None, typer.Option(help="First date (YYYY-MM-DD) when replaying the lake.")
    ] = None,
    end: Annotated[
        str | None, typer.Option(help="Last date (YYYY-MM-DD) when replaying the lake.")
    ] = None,
    speed: Annotated[
        float | None,
        typer.Option(help="1 = real time, 60 = one hour a minute; omit for as fast as possible."),
    ] = None,
    topic: Annotated[
        str | None, typer.Option(help="Target topic (default: the events topic).")
    ] = None,
) -> None:
    """Stream events into Kafka in event-time order, with a progress bar and a final count."""
    from lambdarec.streaming.replay import replay
    from lambdarec.streaming.sources import frames_from_file, frames_from_lake

    settings = get_settings()
    if source == "lake":
        frames, total = frames_from_lake(settings.lake_dir, start, end)
    else:
        frames, total = frames_from_file(Path(source))
    result = replay(frames, settings=settings, speed=speed, topic=topic, total=total)
    typer.echo(json.dumps(result.as_dict()))


@app.command("demo")
def demo_cmd(
    users: Annotated[int, typer.Option(min=1)] = 2000,
    items: Annotated[int, typer.Option(min=10)] = 5000,
    days: Annotated[
        int,
        typer.Option(
            min=3, max=365, help="Days of clickstream (3+: training, validation and test days)."
        ),
    ] = 5,
    seed: Annotated[int, typer.Option()] = 42,
    services: Annotated[
        str, typer.Option(help="Comma-separated services to bring up (default: all).")
    ] = "",
    ab_minutes: Annotated[
        float,
        typer.Option(min=0, help="Minutes the shoppers browse the A/B test (0: skip the step)."),
    ] = DEMO_MINUTES,
    ab_shoppers: Annotated[
        int, typer.Option(min=1, help="Simulated shoppers of the A/B test (at most --users).")
    ] = DEMO_SHOPPERS,
    ab_rps: Annotated[
        float, typer.Option(min=0.1, help="Their requests a second, all together.")
    ] = DEMO_RPS,
) -> None:
    """Bring the stack up, replay a generated clickstream through Kafka and Flink, run the batch
    layer and the retraining DAG, serve recommendations that change with posted clicks, then
    let simulated shoppers browse an A/B test of the champion against a popularity baseline and
    read it out."""
    from lambdarec.demo import run_demo

    run_demo(
        users=users,
        items=items,
        days=days,
        seed=seed,
        services=[s for s in services.split(",") if s] or None,
        ab_minutes=ab_minutes,
        ab_shoppers=ab_shoppers,
        ab_rps=ab_rps,
    )


@app.command("simulate")
def simulate_cmd(
    users: Annotated[int, typer.Option(help="Shoppers to simulate (users of the generated data).")],
    minutes: Annotated[float, typer.Option(help="How long to run (fractions allowed).")],
    rps: Annotated[float, typer.Option(help="Requests a second, all shoppers together.")],
    base_url: Annotated[
        str | None,
        typer.Option(help="Serving's URL (default: the proxy's, else serving's, on loopback)."),
    ] = None,
    api_key: Annotated[
        str | None,
        typer.Option(envvar="LAMBDAREC_SIMULATE_API_KEY", help="Key with recommend+events."),
    ] = None,
    seed: Annotated[int, typer.Option(min=0, help="Seed of the shoppers' choices.")] = 0,
    threads: Annotated[int, typer.Option(help="Concurrent shoppers.")] = 4,
    data_users: Annotated[
        int, typer.Option(help="Users the served data was generated with (demo: --users).")
    ] = 2000,
    data_items: Annotated[
        int, typer.Option(help="Items the served data was generated with (demo: --items).")
    ] = 5000,
    data_seed: Annotated[
        int, typer.Option(help="Seed the served data was generated with (demo: --seed).")
    ] = 42,
) -> None:
    """Simulated shoppers browse the running serving app: lists, clicks, carts and purchases
    by the generator's hidden preferences, with position bias; prints the run's summary."""
    from lambdarec.data.generator import GeneratorConfig
    from lambdarec.simulate import (
        Population,
        SimulateError,
        check_args,
        default_base_url,
        render,
        run,
    )

    try:
        check_args(
            users=users,
            minutes=minutes,
            rps=rps,
            threads=threads,
            base_url=base_url or "http://127.0.0.1",
        )
        if data_users < 1 or data_items < 1:
            raise SimulateError("--data-users and --data-items must be positive; give the demo's")
        config = GeneratorConfig(
            n_users=data_users,
            n_items=data_items,
            n_categories=min(200, max(1, data_items // 25)),  # the demo's rule
            seed=data_seed,
        )
        population = Population.from_config(config, users, seed=seed)
        url = base_url or default_base_url(get_settings())
        typer.echo(f"{users} shoppers on {url} for {minutes:g} min at {rps:g} requests/s")
        summary = run(
            population,
            base_url=url,
            minutes=minutes,
            rps=rps,
            api_key=api_key,
            seed=seed,
            threads=threads,
        )
    except SimulateError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None
    typer.echo(render(summary))
    typer.echo(json.dumps(summary.as_dict()))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
