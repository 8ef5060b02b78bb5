"""`make demo`: bring the stack up on this machine and run it end to end on synthetic data.

Each step prints what it does; re-running is safe (running services are left alone, the lake's
dates are rewritten in place, replayed events carry the same event ids so consumers deduplicate).
"""

from __future__ import annotations

import logging
import sys
import time
from typing import TYPE_CHECKING, Any, cast

from rich.console import Console

from lambdarec.config import Settings, get_settings

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from pathlib import Path

log = logging.getLogger(__name__)
# Wide enough for the status table when output is not a terminal (make, CI logs).
console = Console(width=None if sys.stdout.isatty() else 120)


def _step(title: str, fn: Callable[[], object]) -> None:
    console.rule(f"[bold cyan]{title}")
    t0 = time.monotonic()
    fn()
    console.print(f"[green]done[/] in {time.monotonic() - t0:.1f} s")


def wait_archived(
    settings: Settings, days: list[str], expected: int, *, timeout_s: float = 900.0
) -> int:
    """Wait until the speed layer's archive holds ``expected`` distinct events of ``days``.

    Files are committed on Flink checkpoints, so the count moves in steps. Raises with the job's
    log location when it stalls.
    """
    from datetime import date

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from lambdarec.data import archive

    wanted = [date.fromisoformat(d) for d in days]
    deadline = time.monotonic() + timeout_s
    last, last_change = -1, time.monotonic()
    with Progress(
        "archived",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as bar:
        task = bar.add_task("archive", total=expected)
        while True:
            got = archive.distinct_ids(settings.archive_dir, wanted)
            bar.update(task, completed=min(got, expected))
            if got >= expected:
                return got
            if got != last:
                last, last_change = got, time.monotonic()
            if time.monotonic() > deadline or time.monotonic() - last_change > 180:
                raise RuntimeError(
                    f"the speed layer archived {got:,} of {expected:,} events and stalled; see "
                    f"{settings.log_dir / 'speed-layer.log'} and `lambdarec platform status`"
                )
            time.sleep(2)


def _show_online(
    view: str, names: Sequence[str], entity: dict[str, str], layer: str, settings: Settings
) -> dict[str, list[object]]:
    """Read a few features of one entity from the online store and print them."""
    from lambdarec.features.store import get_online_features

    online = get_online_features([f"{view}:{n}" for n in names], [entity], settings)
    key, value = next(iter(entity.items()))
    console.print(f"online store ({layer}), {key} {value}: {online}")
    return online


def sample_session(source: Path) -> str:
    """The session with the most views in the generated data (a readable example)."""
    from lambdarec.data import lake

    frame = lake.read_events(source, columns=["session_id", "event_type"])
    return str(frame.loc[frame["event_type"] == "view", "session_id"].value_counts().index[0])


def run_demo(
    *,
    users: int,
    items: int,
    days: int,
    seed: int,
    services: Sequence[str] | None = None,
    settings: Settings | None = None,
    model_epochs: int = 8,
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

    started: list[manager.ServiceStatus] = []
    _step(
        "1/8 platform: starting the local services",
        lambda: started.extend(manager.up(list(services) if services else None, settings=s)),
    )
    streaming = any(row.name == "speed-layer" and row.is_up for row in started)

    config = GeneratorConfig(
        n_users=users,
        n_items=items,
        n_categories=min(200, max(1, items // 25)),
        days=days,
        seed=seed,
    )
    # The generated clickstream is the shoppers' traffic: it goes to Kafka, and the speed layer
    # archives what it reads into the lake. Without the speed layer it is written to the lake
    # directly (a backfill).
    source = s.data_dir / "demo" / f"seed-{seed}-u{users}-i{items}-d{days}"

    def generate() -> None:
        gen = ClickstreamGenerator(config)
        lake.write_catalog(gen.catalog_table(), s.lake_dir)
        target = source if streaming else s.lake_dir
        dates = lake.write_events(gen.iter_tables(), target)
        counts = lake.date_counts(target)
        figures["events"] = sum(counts[d] for d in dates)
        figures["days"] = [d.isoformat() for d in dates]
        console.print(
            f"{figures['events']:,} events from {users:,} users over {items:,} items, "
            f"{dates[0]} .. {dates[-1]}, written to {target}"
        )

    _step("2/8 data: generating the seeded synthetic clickstream", generate)

    def replay_all() -> None:
        first, last = figures["days"][0], figures["days"][-1]  # type: ignore[index]
        before = topic_size(s, s.topic_events)
        frames, total = frames_from_lake(source if streaming else s.lake_dir, first, last)
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

    _step("3/8 ingest: replaying the clickstream into Kafka in event-time order", replay_all)

    def archived() -> None:
        if not streaming:
            console.print("the speed layer is not running: the lake was written directly")
            return
        days = cast("list[str]", figures["days"])
        figures["archived"] = wait_archived(s, days, cast("int", figures["events"]))
        session = sample_session(source)
        figures["session_sample"] = _show_online(
            "session_features",
            ("n_views", "last_viewed_items", "session_category"),
            {"session_id": session},
            "speed layer",
            s,
        )

    _step("4/8 speed layer: Flink archives every event and keeps session features fresh", archived)

    def batch_layer() -> None:
        from lambdarec.platform.dag_run import run_dag_test

        runs = {}
        days = cast("list[str]", figures["days"])
        for n, day in enumerate(days, 1):
            console.print(
                f"[{n}/{len(days)}] daily_feature_pipeline for {day} "
                "(archive compaction, gates, spark-submit, materialize) ..."
            )
            t0 = time.monotonic()
            run = run_dag_test("daily_feature_pipeline", day, s)
            runs[day] = run.state
            console.print(
                f"      {run.state} in {time.monotonic() - t0:.0f} s: "
                f"{sum(st == 'success' for st in run.tasks.values())}/{len(run.tasks)} "
                "tasks succeeded"
            )
            if not run.success:
                failed = {t: st for t, st in run.tasks.items() if st != "success"}
                raise RuntimeError(
                    f"daily_feature_pipeline failed for {day}: {failed}\n"
                    + "\n".join(run.log.splitlines()[-30:])
                )
        figures["daily_feature_pipeline"] = runs
        sample = str(
            lake.read_events(s.lake_dir, columns=["user_id"])["user_id"].value_counts().index[0]
        )
        figures["sample_user"] = sample
        figures["online_sample"] = _show_online(
            "user_history_30d",
            ("n_events_30d", "top_category_30d", "conversion_rate_30d"),
            {"user_id": sample},
            "batch layer",
            s,
        )
        console.print(f"Data Docs: file://{s.data_docs_dir / 'index.html'}")

    _step(
        "5/8 batch layer: the daily feature pipeline DAG for each day -> Feast online store",
        batch_layer,
    )

    def summary() -> None:
        rows = manager.status(settings=s)
        console.print(status_table(rows))
        console.print(
            "\nNext: open the URLs above; `make status` shows them again, "
            "`make platform-down` stops everything."
        )

    def models() -> None:
        from datetime import date, timedelta

        from lambdarec.platform.dag_run import run_dag_test

        day = date.fromisoformat(cast("list[str]", figures["days"])[-1]) + timedelta(days=1)
        console.print(
            "weekly_model_retraining: datasets from the lake and Feast, two-tower + DeepFM, "
            "evaluation against the champion, Milvus publish, reload marker ..."
        )
        run = run_dag_test("weekly_model_retraining", day, s, conf={"epochs": model_epochs})
        figures["weekly_model_retraining"] = run.tasks
        console.print(f"      {run.state}: {run.tasks}")
        if not run.success:
            raise RuntimeError(
                f"weekly_model_retraining failed: {run.tasks}\n"
                + "\n".join(run.log.splitlines()[-30:])
            )

    _step("6/8 models: the retraining DAG trains, evaluates and publishes the champion", models)

    def serve() -> None:
        manager.up(["serving"], settings=s)
        figures["serving"] = serving_walkthrough(s, cast("str", figures["sample_user"]))

    _step("7/8 serving: /recommend before and after a few clicks", serve)
    _step("8/8 summary", summary)
    return figures


def _http(method: str, url: str, body: object = None, timeout_s: float = 10.0) -> tuple[int, Any]:
    import json
    import urllib.error
    import urllib.request

    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(  # noqa: S310 - our own app on loopback
        url, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:  # noqa: S310
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def serving_walkthrough(
    settings: Settings, user: str, *, wait_s: float = 120.0, change_within_s: float = 10.0
) -> dict[str, object]:
    """Ask the running app for recommendations, post a few clicks of a new session through
    ``POST /events``, and ask again until the list reflects them; print both and the curl
    commands that do the same."""
    import json
    import uuid
    from datetime import UTC, datetime

    from rich.table import Table

    from lambdarec.events import format_ts

    base = f"http://{settings.bind_host}:{settings.serving_port}"
    deadline = time.monotonic() + wait_s
    while True:  # the app loads the feature store, the index and the champion in the background
        status, ready = _http("GET", f"{base}/ready")
        if status == 200 or time.monotonic() > deadline:
            break
        time.sleep(1)
    console.print(f"/ready: {ready}")
    session = f"demo-{uuid.uuid4().hex[:8]}"
    url = f"{base}/recommend?user_id={user}&session_id={session}&k=10"
    status, before = _http("GET", url)
    if status != 200:
        raise RuntimeError(f"GET /recommend answered {status}: {before}")
    # Clicks: views of three items of one category the list did not show, then a purchase of
    # the first recommended item (which must never come back).
    shown = [i["item_id"] for i in before["items"]]
    snapshot = _catalog_by_category(settings)
    category = next(c for c, items in snapshot.items() if len(set(items) - set(shown)) >= 3)
    viewed = [i for i in snapshot[category] if i not in shown][:3]
    bought = shown[0]
    clicks = [*((item, "view") for item in viewed), (bought, "purchase")]
    events = [
        {
            "event_id": uuid.uuid4().hex,
            "user_id": user,
            "session_id": session,
            "item_id": item,
            "event_type": kind,
            "ts": format_ts(datetime.now(UTC)),
        }
        for item, kind in clicks
    ]
    status, accepted = _http("POST", f"{base}/events", events)
    if status != 202:
        raise RuntimeError(f"POST /events answered {status}: {accepted}")
    posted = time.monotonic()
    after = before
    while time.monotonic() - posted < change_within_s:
        time.sleep(0.2)
        _, after = _http("GET", url)
        if [i["item_id"] for i in after["items"]] != shown:
            break
    changed_after_s = round(time.monotonic() - posted, 2)

    table = Table(title=f"/recommend for user {user}, session {session}")
    table.add_column("#")
    table.add_column(f"before the clicks (degraded: {before['degraded_parts'] or 'no'})")
    table.add_column(f"after them (degraded: {after['degraded_parts'] or 'no'})")
    for n, (b, a) in enumerate(zip(before["items"], after["items"], strict=False)):
        table.add_row(
            str(n + 1),
            f"{b['item_id']} ({b['source']}, {b['category']})",
            f"{a['item_id']} ({a['source']}, {a['category']})",
        )
    console.print(table)
    after_ids = [i["item_id"] for i in after["items"]]
    console.print(
        f"clicks: viewed {', '.join(viewed)} (category {category}), bought {bought}; the list "
        f"changed {changed_after_s} s after POST /events; bought item shown again: "
        f"{bought in after_ids}"
    )
    # The shell fills in a fresh event id and timestamp each time the command is run.
    body = (
        json.dumps(
            {
                "event_id": "demo-@ID@",
                "user_id": user,
                "session_id": session,
                "item_id": viewed[0],
                "event_type": "view",
                "ts": "@TS@",
            }
        )
        .replace("@ID@", "'$(date +%s%N)'")
        .replace("@TS@", "'$(date -u +%Y-%m-%dT%H:%M:%SZ)'")
    )
    console.print(
        "\nTry it yourself:\n"
        f"  curl '{url}'\n"
        f"  curl -X POST {base}/events -H 'Content-Type: application/json' -d '{body}'\n"
        f"  docs: {base}/docs   metrics: {base}/metrics",
        markup=False,
        highlight=False,
    )
    return {
        "user_id": user,
        "session_id": session,
        "before": shown,
        "after": after_ids,
        "viewed": viewed,
        "bought": bought,
        "changed_after_s": changed_after_s,
        "degraded_before": before["degraded_parts"],
        "degraded_after": after["degraded_parts"],
    }


def _catalog_by_category(settings: Settings) -> dict[str, list[str]]:
    """Item ids per category, most popular first (the lake's catalog and events)."""
    from lambdarec.data import lake

    events = lake.read_events(settings.lake_dir, columns=["item_id", "category"])
    counts = events.groupby(["category", "item_id"]).size().reset_index(name="n")
    counts = counts.sort_values(["category", "n"], ascending=[True, False])
    return {str(c): [str(i) for i in g["item_id"]] for c, g in counts.groupby("category")}
