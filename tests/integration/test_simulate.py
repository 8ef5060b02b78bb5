"""The shopper simulator against a real serving app: gunicorn as the platform's ``serving`` service
runs it, on a private Kafka broker, with API keys on and two A/B variants, its catalog the
generator's (the lake's catalog). Twenty shoppers browse for forty sessions (a few seconds):

* lists are fetched and every posted event is accepted (202): no error of any status;
* the events topic holds exactly the events the simulator counted, and every click from a list
  carries the ``request_id`` of an impression serving logged for that user and the ``position``
  the item had in it; off-list views carry no ``request_id``;
* a key the API does not know stops the run with one line naming ``--api-key``.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

import orjson
import pytest

from lambdarec.apikeys import mint
from lambdarec.data import lake
from lambdarec.data.generator import ClickstreamGenerator, GeneratorConfig
from lambdarec.harness.platform import private_platform
from lambdarec.harness.waiting import eventually
from lambdarec.platform import manager
from lambdarec.simulate import AccessRefused, Population, run
from lambdarec.streaming.kafka import consume, ensure_topics, make_consumer, topic_size

if TYPE_CHECKING:
    from collections.abc import Iterator

    from lambdarec.config import Settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CONFIG = GeneratorConfig(n_users=300, n_items=600, n_categories=24, seed=4)
SECRET, ENTRY = mint("simulator", ["recommend", "events"])


@pytest.fixture(scope="module")
def serving() -> Iterator[tuple[Settings, str]]:
    with private_platform(
        ["kafka"], ab_variants="control:50,treatment:50", api_keys=ENTRY
    ) as settings:
        ensure_topics(settings)
        lake.write_catalog(ClickstreamGenerator(CONFIG).catalog_table(), settings.lake_dir)
        try:
            manager.up(["serving"], settings=settings, timeout_s=240)
            base = f"http://{settings.bind_host}:{settings.serving_port}"
            # The app loads its stores in the background (here: no feature store, no index, so
            # it serves the catalog's popular items, degraded); the first answers can be slow.
            eventually(
                lambda: _answers(base),
                120,
                interval_s=0.5,
                message="serving answering /recommend",
            )
            yield settings, base
        finally:
            manager.down(["serving"], settings=settings)


def _answers(base: str) -> bool:
    import requests

    try:
        resp = requests.get(
            f"{base}/recommend",
            params={"user_id": "warm-up"},
            headers={"X-API-Key": SECRET},
            timeout=30,
        )
    except requests.RequestException:
        return False
    return resp.status_code == 200


def _read(settings: Settings, topic: str, count: int) -> list[dict[str, Any]]:
    consumer = make_consumer(f"simulate-check-{uuid.uuid4().hex}", [topic], settings)
    try:  # the idle timeout covers the consumer group's join
        return [
            orjson.loads(m.value() or b"null")
            for m in consume(consumer, max_messages=count, idle_timeout_s=15)
        ]
    finally:
        consumer.close()


def test_twenty_shoppers_browse_and_every_click_names_its_list(
    serving: tuple[Settings, str],
) -> None:
    settings, base = serving
    population = Population.from_config(CONFIG, 20, seed=1)
    before = topic_size(settings, settings.topic_events)
    earlier = (
        {e["event_id"] for e in _read(settings, settings.topic_events, before)} if before else set()
    )
    summary = run(
        population,
        base_url=base,
        minutes=1,  # an upper bound: the run ends after its sessions, a few seconds here
        rps=40,
        api_key=SECRET,
        seed=1,
        threads=4,
        max_sessions=40,
        progress=False,
    )
    print(summary.as_dict())
    assert summary.sessions == 40 and summary.lists >= 40
    assert not summary.errors, summary.errors
    assert set(summary.variants) == {"control", "treatment"}  # 20 users by hash, both variants
    assert sum(v.lists for v in summary.variants.values()) == summary.lists
    posted = sum(summary.events.values())
    assert summary.events["view"] > 0

    # Every event accepted is on the topic (acks=all before 202), and nothing else is.
    assert topic_size(settings, settings.topic_events) == before + posted
    events = [
        e
        for e in _read(settings, settings.topic_events, before + posted)
        if e["event_id"] not in earlier
    ]
    assert len(events) == posted
    users = {s.user_id for s in population.shoppers}
    assert {e["user_id"] for e in events} <= users

    # Impressions go out asynchronously: one per list fetched.
    eventually(
        lambda: topic_size(settings, settings.topic_impressions) >= summary.lists,
        30,
        interval_s=0.2,
        message="an impression per list on the impressions topic",
    )
    impressions = {
        r["request_id"]: r
        for r in _read(
            settings,
            settings.topic_impressions,
            topic_size(settings, settings.topic_impressions),
        )
    }
    from_lists = [e for e in events if "request_id" in (e.get("context") or {})]
    off_list = [e for e in events if "request_id" not in (e.get("context") or {})]
    assert from_lists, "some clicks came from lists"
    assert len(off_list) == summary.browsed
    assert all(e["event_type"] == "view" for e in off_list)
    clicks = 0
    for e in from_lists:
        shown = impressions[e["context"]["request_id"]]
        assert shown["user_id"] == e["user_id"] and shown["session_id"] == e["session_id"]
        position = e["context"]["position"]
        assert shown["items"][position]["item_id"] == e["item_id"]
        clicks += e["event_type"] == "view"
    assert clicks == sum(v.clicks for v in summary.variants.values())


def test_an_unknown_key_stops_the_run_naming_the_option(serving: tuple[Settings, str]) -> None:
    _, base = serving
    population = Population.from_config(CONFIG, 5, seed=2)
    with pytest.raises(AccessRefused) as err:
        run(population, base_url=base, minutes=0.1, rps=10, api_key="wrong", progress=False)
    assert "401" in str(err.value) and "--api-key" in str(err.value)
    assert "\n" not in str(err.value)


def test_the_command_line_runs_shoppers_and_prints_the_summary(
    serving: tuple[Settings, str],
) -> None:
    """``lambdarec simulate`` as a shopper would run it; the data options name CONFIG (the
    demo's category rule gives its 24 categories from 600 items)."""
    import json
    import os
    import subprocess
    import sys

    _, base = serving
    assert max(1, CONFIG.n_items // 25) == CONFIG.n_categories
    command = [
        sys.executable,
        "-m",
        "lambdarec.cli",
        "simulate",
        "--users",
        "5",
        "--minutes",
        "0.05",
        "--rps",
        "20",
        "--base-url",
        base,
        "--data-users",
        str(CONFIG.n_users),
        "--data-items",
        str(CONFIG.n_items),
        "--data-seed",
        str(CONFIG.seed),
    ]
    env = {**os.environ, "LAMBDAREC_SIMULATE_API_KEY": SECRET}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["lists"] > 0 and summary["errors"] == {}, summary
    assert "lists fetched" in done.stdout and "variant " in done.stdout
