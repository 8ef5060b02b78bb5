"""Clicks change recommendations within seconds, on real engines: events posted to the Flask app's
``POST /events`` go through Kafka and the Flink speed layer into Feast's online store, and the
next ``GET /recommend`` for that session is built from them (co-occurrence candidates of the
items just viewed); a purchased item never comes back.

The batch layer's part (the catalog and the item co-occurrence table) is written to the lake as
the Spark job would and materialised with Feast; everything else runs as in production: a private
Kafka broker, the speed-layer job on the mini-cluster, the feature pusher, the app in-process.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pandas as pd
import pytest

from lambdarec.harness.waiting import eventually

if TYPE_CHECKING:
    from flask.testing import FlaskClient

pytestmark = [pytest.mark.e2e, pytest.mark.integration, pytest.mark.slow]

FRESHNESS_S = 2.0


def _event(n: int, item: str, kind: str) -> dict[str, Any]:
    ts = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    return {
        "event_id": f"fresh-{n}-{time.time_ns()}",
        "user_id": "u-fresh",
        "session_id": "s-fresh",
        "item_id": item,
        "event_type": kind,
        "ts": ts,
    }


def _items(client: FlaskClient) -> list[dict[str, Any]]:
    resp = client.get("/recommend?user_id=u-fresh&session_id=s-fresh&k=10")
    assert resp.status_code == 200, resp.get_data(as_text=True)
    return resp.get_json()["items"]  # type: ignore[no-any-return]


def _warm(client: FlaskClient) -> bool:
    return bool(client.get("/ready").get_json()["checks"].get("warm_up") == "ok")


def test_posted_clicks_change_the_recommendations_within_2s() -> None:
    from lambdarec.data import lake
    from lambdarec.data.generator import ClickstreamGenerator, GeneratorConfig
    from lambdarec.features.store import apply, materialize
    from lambdarec.harness.platform import private_platform
    from lambdarec.harness.speed import pusher_threads, speed_job
    from lambdarec.tables import ITEM_COOCCURRENCE
    from serving import create_app

    with private_platform(["kafka"], start_timeout_s=240) as settings:
        gen = ClickstreamGenerator(GeneratorConfig(n_users=20, n_items=200, n_categories=8, days=1))
        lake.write_catalog(gen.catalog_table(), settings.lake_dir)
        catalog = gen.catalog_table().column("item_id").to_pylist()
        viewed, neighbours = catalog[5], [catalog[150], catalog[170]]
        stamp = datetime.now(UTC) - timedelta(hours=1)
        folder = ITEM_COOCCURRENCE.partition(settings.lake_dir, stamp.date().isoformat())
        folder.mkdir(parents=True)
        pd.DataFrame(
            {
                "item_id": [viewed],
                "event_timestamp": [pd.Timestamp(stamp)],
                "co_bought_items": [neighbours],
                "co_bought_scores": [[1.0, 0.9]],
                "co_viewed_items": [neighbours],
                "co_viewed_scores": [[1.0, 0.9]],
            }
        ).to_parquet(folder / "part-00000.parquet")
        apply(settings)
        materialize(
            stamp - timedelta(minutes=1),
            stamp + timedelta(minutes=1),
            settings,
            views=[ITEM_COOCCURRENCE.name],
        )

        extra = ["--starting-offsets", "earliest", "--checkpoint-interval-s", "2"]
        with speed_job(settings, extra), pusher_threads(settings):
            app = create_app(settings, load_model=False)
            client = app.test_client()
            eventually(lambda: _warm(client), 120, message="the app to warm up")

            before = [i["item_id"] for i in _items(client)]
            assert not set(neighbours) & set(before), "co-occurring items are not there yet"

            # Warm the job's code path with one event, then measure a burst of clicks.
            assert client.post("/events", json=_event(0, catalog[1], "view")).status_code == 202
            time.sleep(5)
            burst = [_event(n, viewed, "view") for n in range(1, 4)]
            resp = client.post("/events", json=burst)
            assert resp.status_code == 202 and resp.get_json()["accepted"] == 3
            posted = time.monotonic()

            def with_neighbours() -> list[dict[str, Any]]:
                items = _items(client)
                return items if set(neighbours) <= {i["item_id"] for i in items} else []

            items = eventually(
                with_neighbours,
                30,
                interval_s=0.02,
                message=lambda: f"the neighbours recommended; got {_items(client)}",
            )
            elapsed = time.monotonic() - posted
            got = {i["item_id"]: i for i in items}
            print(f"the list changed {elapsed:.2f} s after the clicks were posted")
            assert elapsed <= FRESHNESS_S, f"the list changed {elapsed:.2f} s after the clicks"
            assert all("cooccurrence" in got[n]["sources"] for n in neighbours), got
            assert [i["item_id"] for i in items] != before

            # A purchase removes the item at once, and it never comes back.
            bought = neighbours[0]
            assert client.post("/events", json=_event(9, bought, "purchase")).status_code == 202
            bought_at = time.monotonic()
            until = bought_at + 5
            while time.monotonic() < until:
                assert bought not in {i["item_id"] for i in _items(client)}
                time.sleep(0.1)
            # Another worker (its own app, no memory of that POST) learns it from the session's
            # features (last_purchased_items) once the speed layer has them.
            other = create_app(settings, load_model=False).test_client()
            eventually(lambda: _warm(other), 120, message="the other app to warm up")
            eventually(
                lambda: bought not in {i["item_id"] for i in _items(other)},
                bought_at + 30 - time.monotonic(),
                interval_s=0.05,
                message="the purchase to reach the session's features",
            )
            for _ in range(20):
                assert bought not in {i["item_id"] for i in _items(other)}
                time.sleep(0.05)
