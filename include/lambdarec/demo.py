"""`make demo`: bring the stack up on this machine and run it end to end on synthetic data.

Each step prints what it does; re-running is safe (running services are left alone, the lake's
dates are rewritten in place, replayed events carry the same event ids so consumers deduplicate).
"""

from __future__ import annotations

import logging
import sys
import time
from typing import TYPE_CHECKING, cast

from rich.console import Console

from lambdarec.config import Settings, get_settings

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

log = logging.getLogger(__name__)
# Wide enough for the status table when output is not a terminal (make, CI logs).
console = Console(width=None if sys.stdout.isatty() else 120)


def _step(title: str, fn: Callable[[], object]) -> None:
    console.rule(f"[bold cyan]{title}")
    t0 = time.monotonic()
    fn()
    console.print(f"[green]done[/] in {time.monotonic() - t0:.1f} s")


def run_demo(
    *,
    users: int,
    items: int,
    days: int,
    seed: int,
    services: Sequence[str] | None = None,
    settings: Settings | None = None,
) -> dict[str, object]:
    """Run the demo; returns the figures it printed (for tests)."""
    from lambdarec.data import lake
    from lambdarec.data.generator import ClickstreamGenerator, GeneratorConfig
    from lambdarec.platform import manager
    from lambdarec.platform.cli import _table as status_table
    from lambdarec.streaming.kafka import topic_size
    from lambdarec.streaming.replay import replay
    from lambdarec.streaming.sources import frames_from_lake

    s = settings or get_settings()
    figures: dict[str, object] = {}

    _step("1/5 platform: starting the local services",
          lambda: manager.up(list(services) if services else None, settings=s))

    config = GeneratorConfig(n_users=users, n_items=items, n_categories=min(200, max(1, items // 25)),
                             days=days, seed=seed)

    def generate() -> None:
        gen = ClickstreamGenerator(config)
        lake.write_catalog(gen.catalog_table(), s.lake_dir)
        dates = lake.write_events(gen.iter_tables(), s.lake_dir)
        counts = lake.date_counts(s.lake_dir)
        figures["events"] = sum(counts[d] for d in dates)
        figures["days"] = [d.isoformat() for d in dates]
        console.print(
            f"{figures['events']:,} events from {users:,} users over {items:,} items, "
            f"{dates[0]} .. {dates[-1]}, written to {s.lake_dir}"
        )

    _step("2/5 data: generating the seeded synthetic clickstream into the lake", generate)

    def replay_all() -> None:
        first, last = figures["days"][0], figures["days"][-1]  # type: ignore[index]
        before = topic_size(s, s.topic_events)
        frames, total = frames_from_lake(s.lake_dir, first, last)
        result = replay(frames, settings=s, total=total)
        figures["replay"] = result.as_dict()
        after = topic_size(s, s.topic_events)
        figures["topic_events_added"] = after - before
        console.print(
            f"replayed {result.produced:,} events ({result.events_per_s:,.0f}/s) into "
            f"{s.topic_events}; {result.dead_lettered} dead-lettered; "
            f"topic grew by {after - before:,} messages"
        )
        if after - before != result.produced:
            raise RuntimeError(
                f"the events topic grew by {after - before} but {result.produced} were produced"
            )

    _step("3/5 ingest: replaying the lake into Kafka in event-time order", replay_all)

    def batch_layer() -> None:
        from lambdarec.features.store import get_online_features
        from lambdarec.pipelines.dag_run import run_dag_test

        runs = {}
        days = cast("list[str]", figures["days"])
        for n, day in enumerate(days, 1):
            console.print(f"[{n}/{len(days)}] daily_feature_pipeline for {day} "
                          "(gates, spark-submit, materialize) ...")
            t0 = time.monotonic()
            run = run_dag_test("daily_feature_pipeline", day, s)
            runs[day] = run.state
            console.print(f"      {run.state} in {time.monotonic() - t0:.0f} s: "
                          f"{sum(st == 'success' for st in run.tasks.values())}/{len(run.tasks)} "
                          "tasks succeeded")
            if not run.success:
                failed = {t: st for t, st in run.tasks.items() if st != "success"}
                raise RuntimeError(f"daily_feature_pipeline failed for {day}: {failed}\n"
                                   + "\n".join(run.log.splitlines()[-30:]))
        figures["daily_feature_pipeline"] = runs
        sample = lake.read_events(s.lake_dir, columns=["user_id"])["user_id"].value_counts().index[0]
        online = get_online_features(
            ["user_history_30d:n_events_30d", "user_history_30d:top_category_30d",
             "user_history_30d:conversion_rate_30d"], [{"user_id": sample}], s)
        figures["online_sample"] = online
        console.print(f"online store, user {sample}: {online}")
        console.print(f"Data Docs: file://{s.data_docs_dir / 'index.html'}")

    _step("4/5 batch layer: the daily feature pipeline DAG for each day -> Feast online store",
          batch_layer)

    def summary() -> None:
        rows = manager.status(settings=s)
        console.print(status_table(rows))
        console.print(
            "\nNext: open the URLs above; `make status` shows them again, "
            "`make platform-down` stops everything."
        )

    _step("5/5 summary", summary)
    return figures
