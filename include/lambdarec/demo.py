"""`make demo`: bring the stack up on this machine and run it end to end on synthetic data.

Each step prints what it does; re-running is safe (running services are left alone, the lake's
dates are rewritten in place, replayed events carry the same event ids so consumers deduplicate).

The online loop (step 8) closes the circle: serving runs an A/B test of the champion against a
popularity baseline, simulated shoppers (:mod:`lambdarec.simulate`) browse it through the HTTP
API, the attribution service joins their clicks to the lists that showed them, and the
``online_metrics`` DAG reads the test out.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import TYPE_CHECKING, Any, cast

from rich.console import Console

from lambdarec.config import Settings, get_settings
from lambdarec.simulate import DEMO_MINUTES, DEMO_RPS, DEMO_SHOPPERS

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence
    from datetime import date
    from pathlib import Path

    from rich.console import JustifyMethod

    from lambdarec.data.generator import GeneratorConfig
    from lambdarec.simulate import Summary

log = logging.getLogger(__name__)
# Wide enough for the status table when output is not a terminal (make, CI logs).
console = Console(width=None if sys.stdout.isatty() else 120)

#: The demo's A/B test: the champion (the full served pipeline) as control against the popularity
#: baseline, half of the users each (serving assigns a user by a hash of its id).
AB_VARIANTS = "champion:50,popular:50"
AB_POLICIES = "champion:pipeline,popular:popular"
#: Users the serving walkthrough may show: the most active ones, the first in the control.
WALKTHROUGH_CANDIDATES = 20
STEPS = 9


def ab_settings(settings: Settings) -> Settings:
    """``settings`` with the demo's A/B test: what its serving app and its readout run with."""
    return settings.model_copy(update={"ab_variants": AB_VARIANTS, "ab_policies": AB_POLICIES})


def _step(title: str, fn: Callable[[], object], seconds: dict[str, float] | None = None) -> None:
    """Run one numbered step (``"3/9 ingest: ..."``); its time goes to ``seconds["ingest"]``."""
    console.rule(f"[bold cyan]{title}")
    t0 = time.monotonic()
    fn()
    took = time.monotonic() - t0
    console.print(f"[green]done[/] in {took:.1f} s")
    if seconds is not None:
        seconds[title.partition(" ")[2].partition(":")[0]] = round(took, 1)


def _slowest(seconds: Mapping[str, float], n: int = 3) -> str:
    """The ``n`` longest tasks of a DAG run, as "task 12 s, ..."."""
    top = sorted(seconds.items(), key=lambda kv: -kv[1])[:n]
    return ", ".join(f"{task} {secs:.0f} s" for task, secs in top) or "(no task times)"


def _wait_with_bar(
    label: str,
    total: int,
    done: Callable[[], int],
    *,
    timeout_s: float,
    stall_s: float,
    stalled: Callable[[int], str],
) -> int:
    """Poll ``done()`` every 2 s under a progress bar until it reaches ``total`` (returns that
    last count); raise
    ``RuntimeError(stalled(count))`` past ``timeout_s``, or when the count stops moving for
    ``stall_s`` (files committed on checkpoints move it in steps)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    deadline = time.monotonic() + timeout_s
    last, last_change = -1, time.monotonic()
    with Progress(
        label, BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
    ) as bar:
        task = bar.add_task(label, total=total)
        while True:
            got = done()
            bar.update(task, completed=min(got, total))
            if got >= total:
                return got
            if got != last:
                last, last_change = got, time.monotonic()
            if time.monotonic() > deadline or time.monotonic() - last_change > stall_s:
                raise RuntimeError(stalled(got))
            time.sleep(2)


def wait_archived(
    settings: Settings, days: list[str], expected: int, *, timeout_s: float = 900.0
) -> int:
    """Wait until the speed layer's archive holds ``expected`` distinct events of ``days``.

    Files are committed on Flink checkpoints, so the count moves in steps. Raises with the job's
    log location when it stalls.
    """
    from datetime import date

    from lambdarec.data import archive

    wanted = [date.fromisoformat(d) for d in days]
    return _wait_with_bar(
        "archived",
        expected,
        lambda: archive.distinct_ids(settings.archive_dir, wanted),
        timeout_s=timeout_s,
        stall_s=180.0,
        stalled=lambda got: (
            f"the speed layer archived {got:,} of {expected:,} events and stalled; see "
            f"{settings.log_dir / 'speed-layer.log'} and `lambdarec platform status`"
        ),
    )


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
    ab_minutes: float = DEMO_MINUTES,
    ab_shoppers: int = DEMO_SHOPPERS,
    ab_rps: float = DEMO_RPS,
) -> dict[str, object]:
    """Run the demo; returns the figures it printed (for tests).

    The online loop's simulated shoppers browse for ``ab_minutes`` (0 skips the step; serving
    then runs the champion alone), ``ab_shoppers`` of them (at most ``users``) at ``ab_rps``
    requests a second."""
    from lambdarec.data import lake
    from lambdarec.data.generator import ClickstreamGenerator, GeneratorConfig
    from lambdarec.platform import manager
    from lambdarec.platform.cli import _table as status_table
    from lambdarec.streaming.kafka import topic_size
    from lambdarec.streaming.replay import replay
    from lambdarec.streaming.sources import frames_from_lake

    s = settings or get_settings()
    # Serving and the readout run the A/B test; everything else is indifferent to it.
    served_by = ab_settings(s) if ab_minutes > 0 else s
    figures: dict[str, object] = {}
    # Each step's seconds, by its name ("platform", "ingest", ...).
    seconds: dict[str, float] = {}
    figures["step_seconds"] = seconds

    def step(title: str, fn: Callable[[], object]) -> None:
        _step(title, fn, seconds)

    step(
        f"1/{STEPS} platform: starting the local services",
        lambda: manager.up(list(services) if services else None, settings=s),
    )
    # The speed layer runs on the platform's mini-cluster or, with LAMBDAREC_FLINK_JOBMANAGER, on a
    # session cluster (where the speed_layer DAG submitted it): its row says which and whether.
    streaming = any(row.is_up for row in manager.status(["speed-layer"], settings=s))

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

    step(f"2/{STEPS} data: generating the seeded synthetic clickstream", generate)

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

    step(f"3/{STEPS} ingest: replaying the clickstream into Kafka in event-time order", replay_all)

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

    step(
        f"4/{STEPS} speed layer: Flink archives every event and keeps session features fresh",
        archived,
    )

    def batch_layer() -> None:
        from lambdarec.pipelines.daily import backfill
        from lambdarec.platform.dag_run import run_dag_test

        days = cast("list[str]", figures["days"])
        if len(days) > 1:
            # History arrives at once: the earlier days are a backfill (the same compaction,
            # gates and Spark job, one spark-submit for all of them); the DAG runs the last day.
            console.print(
                f"backfill {days[0]} .. {days[-2]}: archive compaction and gates per day, "
                "one spark-submit for every day ..."
            )
            t0 = time.monotonic()
            done = backfill(
                days[0],
                days[-2],
                s,
                materialize=False,
                report=lambda line: console.print(f"      {line}", markup=False),
            )
            figures["backfill"] = done
            console.print(
                f"      {len(done['days'])} days in {time.monotonic() - t0:.0f} s: "
                f"{_slowest(done['seconds'], 4)}"
            )
        day = days[-1]
        console.print(
            f"[{len(days)}/{len(days)}] daily_feature_pipeline for {day} "
            "(archive compaction, gates, spark-submit, materialize) ..."
        )
        t0 = time.monotonic()
        run = run_dag_test("daily_feature_pipeline", day, s)
        console.print(
            f"      {run.state} in {time.monotonic() - t0:.0f} s: "
            f"{sum(st == 'success' for st in run.tasks.values())}/{len(run.tasks)} "
            f"tasks succeeded; slowest: {_slowest(run.seconds)}"
        )
        if not run.success:
            failed = {t: st for t, st in run.tasks.items() if st != "success"}
            raise RuntimeError(
                f"daily_feature_pipeline failed for {day}: {failed}\n"
                + "\n".join(run.log.splitlines()[-30:])
            )
        figures["daily_feature_pipeline"] = {day: run.state}
        active = lake.read_events(s.lake_dir, columns=["user_id"])["user_id"].value_counts()
        figures["active_users"] = [str(u) for u in active.index[:WALKTHROUGH_CANDIDATES]]
        sample = str(active.index[0])
        figures["sample_user"] = sample
        figures["online_sample"] = _show_online(
            "user_history_30d",
            ("n_events_30d", "top_category_30d", "conversion_rate_30d"),
            {"user_id": sample},
            "batch layer",
            s,
        )
        console.print(f"Data Docs: file://{s.data_docs_dir / 'index.html'}")

    step(
        f"5/{STEPS} batch layer: the earlier days backfilled, the daily feature pipeline DAG "
        "for the last -> Feast online store",
        batch_layer,
    )

    def summary() -> None:
        from lambdarec.platform.airflow import schedule_dags
        from lambdarec.platform.base import PlatformError

        rows = manager.status(settings=s)
        if any(row.name == "airflow-scheduler" and row.is_up for row in rows):
            # Paused while the demo ran its own runs of them; live from now on, on their schedules.
            try:
                states = schedule_dags(s)
            except PlatformError as error:  # the demo's work is done: say it, do not fail it
                console.print(
                    f"[yellow]scheduled DAGs left paused[/]: {error}; `make platform-up` retries"
                )
            else:
                live = [d for d, paused in states.items() if not paused]
                console.print(
                    f"scheduled DAGs: {', '.join(live)} run on their schedules"
                    if live
                    else "scheduled DAGs stay paused (LAMBDAREC_DAGS_PAUSED)"
                )
        console.print(status_table(rows))
        console.print(
            "\nNext: open the URLs above; `make status` shows them again, "
            "`make platform-down` stops everything."
        )
        base = f"http://{s.bind_host}:{s.serving_port}"
        figures["pages"] = {"shop": f"{base}/shop", "dashboard": f"{base}/dashboard"}
        console.print(
            f"\nStorefront (click an item, watch the list change): {base}/shop\n"
            f"Operator dashboard (events, lag, freshness, latency, model, DAG runs): "
            f"{base}/dashboard",
            markup=False,
            highlight=False,
        )

    def models() -> None:
        from datetime import date, timedelta

        from lambdarec.platform.dag_run import run_dag_test

        day = date.fromisoformat(cast("list[str]", figures["days"])[-1]) + timedelta(days=1)
        console.print(
            "weekly_model_retraining: datasets from the lake and Feast, two-tower + DeepFM, "
            "evaluation against the champion, Milvus publish, reload marker ..."
        )

        def dag(dag_id: str, on: date | str, **conf: object) -> dict[str, str]:
            """Run ``dag_id`` for ``on``; its task states, printed; a failure raises with the log."""
            run = run_dag_test(dag_id, on, s, conf=conf or None)
            figures[dag_id] = run.tasks
            console.print(f"      {run.state}: {run.tasks}")
            console.print(f"      slowest: {_slowest(run.seconds)}")
            if not run.success:
                raise RuntimeError(
                    f"{dag_id} failed for {on}: {run.tasks}\n"
                    + "\n".join(run.log.splitlines()[-30:])
                )
            return run.tasks

        # The ranker keeps the DAG's default epochs (early stopping decides): capped at the
        # two-tower's 8, the demo's champion scored NDCG@10 .156 instead of .177 and its margin
        # over the pipeline without neural models (.144) shrank to 8%.
        dag("weekly_model_retraining", day, epochs=model_epochs)
        last = cast("list[str]", figures["days"])[-1]
        console.print(f"drift_monitoring for {last}: the champion's reference against that day ...")
        drift_tasks = dag("drift_monitoring", last)
        if drift_tasks.get("trigger_retraining") == "success":
            # The monitor's real decision: the queued run starts once the DAGs are unpaused.
            console.print(
                f"drift on {last} reached the act threshold: a weekly_model_retraining run "
                f"(drift__{last}) is queued and starts when the scheduled DAGs are unpaused"
            )
        console.print(
            f"reports: http://{s.bind_host}:{s.reports_port}/ (the evaluation, drift/{last})",
            markup=False,
            highlight=False,
        )

    step(
        f"6/{STEPS} models: the retraining DAG trains, evaluates and publishes the champion; "
        "drift_monitoring for the last day",
        models,
    )

    def serve() -> None:
        manager.up(["serving"], settings=served_by)
        figures["serving"] = serving_walkthrough(
            served_by, cast("list[str]", figures["active_users"])
        )

    step(f"7/{STEPS} serving: /recommend before and after a few clicks", serve)

    def ab_test() -> None:
        if ab_minutes <= 0:
            console.print("skipped (no A/B minutes: `lambdarec demo --ab-minutes 3` runs it)")
            return
        # Started with the platform unless the services were chosen without it; a no-op if up.
        manager.up(["attribution"], settings=s)
        figures["ab"] = online_loop(
            served_by,
            config,
            shoppers=min(ab_shoppers, users),
            minutes=ab_minutes,
            rps=ab_rps,
            seed=seed,
        )

    step(
        f"8/{STEPS} online loop: shoppers browse an A/B test, attribution, the online_metrics DAG",
        ab_test,
    )
    step(f"{STEPS}/{STEPS} summary", summary)
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
    settings: Settings,
    users: Sequence[str],
    *,
    wait_s: float = 120.0,
    change_within_s: float = 10.0,
) -> dict[str, object]:
    """Ask the running app for recommendations, post a few clicks of a new session through
    ``POST /events``, and ask again until the list reflects them; print both and the curl
    commands that do the same.

    The user is the first of ``users`` that serving puts in the control variant (the champion,
    when an A/B test runs), asked in turn; every list it answered is counted per variant
    (``shown``: lists and items), since each is an impression the A/B readout will count."""
    import json
    import uuid
    from collections import Counter
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
    lists: Counter[str] = Counter()
    items_shown: Counter[str] = Counter()

    def recommend(url: str) -> dict[str, Any]:
        status, answer = _http("GET", url)
        if status != 200:
            raise RuntimeError(f"GET /recommend answered {status}: {answer}")
        variant = str(answer.get("variant", ""))
        lists[variant] += 1
        items_shown[variant] += len(answer["items"])
        return cast("dict[str, Any]", answer)

    control = settings.ab_variant_names[0]
    session = f"demo-{uuid.uuid4().hex[:8]}"
    for user in users:
        url = f"{base}/recommend?user_id={user}&session_id={session}&k=10"
        before = recommend(url)
        if before.get("variant", control) == control:
            break
        session = f"demo-{uuid.uuid4().hex[:8]}"  # a session belongs to its first user
    console.print(
        f"user {user}: variant {before.get('variant')!r}, policy {before.get('policy')!r}"
    )
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
        after = recommend(url)
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
        "variant": before.get("variant"),
        "shown": {v: {"lists": lists[v], "items": items_shown[v]} for v in sorted(lists)},
    }


def _catalog_by_category(settings: Settings) -> dict[str, list[str]]:
    """Item ids per category, most popular first (the lake's catalog and events)."""
    from lambdarec.data import lake

    events = lake.read_events(settings.lake_dir, columns=["item_id", "category"])
    counts = events.groupby(["category", "item_id"]).size().reset_index(name="n")
    counts = counts.sort_values(["category", "n"], ascending=[True, False])
    return {str(c): [str(i) for i in g["item_id"]] for c, g in counts.groupby("category")}


# -- the online loop ---------------------------------------------------------------------------


def online_loop(
    settings: Settings,
    config: GeneratorConfig,
    *,
    shoppers: int,
    minutes: float,
    rps: float,
    seed: int,
    wait_s: float = 600.0,
) -> dict[str, object]:
    """Simulated shoppers browse the running app's A/B test; once the attribution job has
    archived their lists and clicks, the ``online_metrics`` DAG reads the test out for each day
    they browsed, and the readout is printed. ``settings`` carry the test's variants."""
    from datetime import UTC, datetime, timedelta

    from lambdarec.monitoring.ab_report import READOUT_HTML, READOUT_JSON
    from lambdarec.platform.dag_run import run_dag_test
    from lambdarec.simulate import Population, default_base_url, render
    from lambdarec.simulate import run as simulate

    base_url = default_base_url(settings)
    population = Population.from_config(config, shoppers, seed=seed)
    console.print(
        f"A/B test {settings.ab_variants} (policies {settings.ab_policies}): {shoppers:,} "
        f"shoppers of the generated data browse {base_url} for {minutes:g} min at {rps:g} "
        "requests/s ..."
    )
    first = datetime.now(UTC).date()
    summary = simulate(population, base_url=base_url, minutes=minutes, rps=rps, seed=seed)
    days = [first + timedelta(days=n) for n in range((datetime.now(UTC).date() - first).days + 1)]
    console.print(render(summary), markup=False, highlight=False)
    if not summary.lists:
        raise RuntimeError(f"the shoppers got no list from {base_url}: {summary.errors}")

    archived = wait_attributed(settings, summary, days, timeout_s=wait_s)
    console.print(
        f"attribution archived the run's {archived['impressions']:,} shown items and "
        f"{archived['attributed']:,} events that name their list"
    )
    runs = {}
    for day in days:
        console.print(
            f"online_metrics for {day} (compact_attribution, spark_online_metrics, "
            "apply_guardrail, log_to_mlflow) ..."
        )
        t0 = time.monotonic()
        run = run_dag_test("online_metrics", day, settings)
        runs[day.isoformat()] = run.tasks
        console.print(f"      {run.state} in {time.monotonic() - t0:.0f} s: {run.tasks}")
        if not run.success:
            raise RuntimeError(
                f"online_metrics failed for {day}: {run.tasks}\n"
                + "\n".join(run.log.splitlines()[-30:])
            )
    folder = settings.ab_reports_dir / days[-1].isoformat()
    readout = json.loads((folder / READOUT_JSON).read_text())
    console.print(readout_table(readout))
    url = (
        f"http://{settings.bind_host}:{settings.reports_port}/reports/ab/{days[-1]}/{READOUT_HTML}"
    )
    console.print(f"report: {url}", markup=False, highlight=False)
    return {
        "simulated": summary.as_dict(),
        "archived": archived,
        "online_metrics": runs,
        "readout": readout,
        "report": str(folder / READOUT_HTML),
        "report_url": url,
    }


def archived_outcomes(settings: Settings, prefix: str, days: Sequence[date]) -> dict[str, int]:
    """What the attribution job committed to its archive for the sessions whose id starts with
    ``prefix`` on ``days``: distinct shown items (``impressions``) and distinct events attributed
    through the list they name (``attributed``, the ``request_id`` path)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from lambdarec.attribution import archive_root
    from lambdarec.data import archive

    root = archive_root(settings)
    shown: set[tuple[str, str]] = set()
    acted: set[str] = set()
    for day in days:
        for f in archive.files(root / "impressions", day):
            t = pq.read_table(f, columns=["request_id", "item_id", "session_id"])
            t = t.filter(pc.starts_with(t["session_id"], prefix))
            shown.update(zip(t["request_id"].to_pylist(), t["item_id"].to_pylist(), strict=True))
        for f in archive.files(root / "attributed", day):
            t = pq.read_table(f, columns=["event_id", "match"])
            t = t.filter(
                pc.and_(pc.starts_with(t["event_id"], prefix), pc.equal(t["match"], "request_id"))
            )
            acted.update(t["event_id"].to_pylist())
    return {"impressions": len(shown), "attributed": len(acted)}


def wait_attributed(
    settings: Settings,
    summary: Summary,
    days: Sequence[date],
    *,
    timeout_s: float = 600.0,
    stall_s: float = 120.0,
) -> dict[str, int]:
    """Wait until the attribution job's archive holds every item the simulated run was shown and
    every event it posted from a list (clicks, carts, purchases: each names its list), with a
    progress bar. Files are committed on the job's checkpoints, so the counts move in steps.
    Raises with the service's log when they stall."""
    variants = summary.variants.values()
    expected = {
        "impressions": sum(v.shown for v in variants),
        "attributed": sum(v.clicks + v.carts + v.purchases for v in variants),
    }
    got: dict[str, int] = dict.fromkeys(expected, 0)

    def count() -> int:
        got.update(archived_outcomes(settings, summary.session_prefix, days))
        return sum(min(got[k], expected[k]) for k in expected)

    _wait_with_bar(
        "attributed",
        sum(expected.values()),
        count,
        timeout_s=timeout_s,
        stall_s=stall_s,
        stalled=lambda _: (
            f"the attribution job archived {got} of the run's {expected} and stalled; "
            f"see {settings.log_dir / 'attribution.log'} and `lambdarec platform status`"
        ),
    )
    return got


def _ci(metric: dict[str, Any], fmt: str) -> str:
    value, low, high = metric.get("value"), metric.get("ci_low"), metric.get("ci_high")
    if value is None:
        return "-"
    if low is None or high is None:
        return format(value, fmt)
    return f"{value:{fmt}} [{low:{fmt}}, {high:{fmt}}]"


def _p_values(test: dict[str, Any] | None) -> str:
    if test is None:
        return "control"
    values = (test["metrics"][m]["p_value"] for m in ("ctr_at_k", "conversion", "revenue_per_1000"))
    return ", ".join("-" if p is None else f"{p:.3g}" for p in values)


def readout_table(readout: dict[str, Any]) -> object:
    """The readout's whole period as a table: per variant its users, lists and impressions, CTR,
    conversion and revenue per 1,000 impressions with their 95% intervals, the p-values of the
    three against control, and the conversion's verdict."""
    from rich.table import Table

    period = readout["period"]
    k = readout.get("k", 10)
    table = Table(
        title=f"A/B readout {period['first_day']} .. {period['last_day']} "
        f"(control: {readout['control']}; 95% intervals clustered by user)"
    )
    columns: list[tuple[str, JustifyMethod]] = [
        ("variant", "left"),
        ("users", "right"),
        ("lists", "right"),
        ("impressions", "right"),
        (f"CTR@{k}", "right"),
        ("conversion per list", "right"),
        ("revenue per 1,000 impressions", "right"),
        ("p vs control: CTR, conversion, revenue", "right"),
        ("verdict (conversion)", "left"),
    ]
    for column, justify in columns:
        table.add_column(column, justify=justify)
    for name in readout["variants"]:
        row = period["variants"][name]
        test = period["tests"].get(name)
        metrics = row["metrics"]
        table.add_row(
            name,
            f"{row['users']:,}",
            f"{row['lists']:,}",
            f"{row['impressions']:,}",
            _ci(metrics["ctr_at_k"], ".2%"),
            _ci(metrics["conversion"], ".3f"),
            _ci(metrics["revenue_per_1000"], ",.0f"),
            _p_values(test),
            "control" if test is None else test["metrics"]["conversion"]["verdict"],
        )
    return table
