"""The storefront's and the dashboard's server side: pages that load nothing from outside the app,
validated query strings, the shop's catalog from the serving snapshot and the lake, the
dashboard's figures from real readings (serving's own histogram, the pusher's heartbeat file) and
its access rule under API keys. Kafka is replaced by a sequence of readings where a rate is
checked; MLflow and Airflow are not running, so the dashboard must say so in one line each.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pytest

from lambdarec.data import lake
from lambdarec.data.generator import ClickstreamGenerator, GeneratorConfig
from lambdarec.harness.platform import private_settings
from lambdarec.monitoring import operations
from lambdarec.recommend.snapshot import Snapshot
from lambdarec.speed.pusher import LIVE_S, PushStats, heartbeat_path
from serving import create_app
from serving.metrics import BUCKETS
from serving.pages import dashboard, shop
from serving.recommender import Recommender
from tests.unit.test_serving_access import RecordingImpressions, RecordingSink

if TYPE_CHECKING:
    from pathlib import Path

    from flask import Flask

N_ITEMS = 120
DASHBOARD_KEY = "lrk_dashboard_secret"
RECOMMEND_KEY = "lrk_recommend_secret"


def _entry(name: str, scopes: str, secret: str) -> str:
    return f"{name}:{scopes}:{hashlib.sha256(secret.encode()).hexdigest()}"


def _app(tmp_path: Path, **overrides: Any) -> Flask:
    settings = private_settings(tmp_path, **overrides)
    categories = {f"i{n}": f"c{n % 4}" for n in range(N_ITEMS)}
    # i0 is the most popular; items of c3 are popular only from i3, i7, ...
    popular = [(f"i{n}", float(N_ITEMS - n)) for n in range(0, N_ITEMS, 2)]
    app = create_app(
        settings,
        Recommender(Snapshot.from_items(categories, popular)),
        events=RecordingSink(),  # type: ignore[arg-type]
        impressions=RecordingImpressions(),  # type: ignore[arg-type]
    )
    app.testing = True
    return app


@pytest.fixture
def app(tmp_path: Path) -> Flask:
    shop._shoppers.clear()
    return _app(tmp_path)


def _error(resp: Any, status: int) -> str:
    assert resp.status_code == status, resp.data
    message: str = resp.get_json()["error"]["message"]
    assert message and "\n" not in message and "Traceback" not in message
    return message


# -- the pages ----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/shop", "/dashboard"])
def test_pages_load_only_from_the_app(app: Flask, path: str) -> None:
    client = app.test_client()
    page = client.get(path)
    assert page.status_code == 200 and page.mimetype == "text/html"
    html = page.get_data(as_text=True)
    # Every script and stylesheet is the app's own (no CDN: the pages work offline) ...
    # (the icon is an empty data: URL, so the browser asks for no favicon).
    assets = [a for a in re.findall(r'(?:src|href)="([^"]+)"', html) if a != "data:,"]
    assert assets and all(a.startswith("/") and not a.startswith("//") for a in assets), assets
    # ... and is served.
    for asset in assets:
        assert client.get(asset).status_code == 200, asset
    assert "api-key" not in html  # the API is open: no key asked for


def test_the_shop_asks_for_a_key_when_the_api_wants_one(tmp_path: Path) -> None:
    app = _app(tmp_path, api_keys=_entry("shop", "recommend+events", RECOMMEND_KEY))
    html = app.test_client().get("/shop").get_data(as_text=True)
    assert 'id="api-key"' in html and "keysRequired: true" in html
    # The page itself carries no key: it has only what the person pastes.
    assert RECOMMEND_KEY not in html and "lrk_" not in html


# -- the shop's catalog and status -----------------------------------------------------------------


def test_catalog_lists_categories_largest_first_and_a_category_popular_first(app: Flask) -> None:
    client = app.test_client()
    body = client.get("/shop/catalog").get_json()
    assert [c["items"] for c in body["categories"]] == [30, 30, 30, 30]
    assert "items" not in body and body["shoppers"] == []  # the lake is empty
    c1 = client.get("/shop/catalog?category=c1&limit=20").get_json()
    ids = [i["item_id"] for i in c1["items"]]
    assert len(ids) == 20 and {i["category"] for i in c1["items"]} == {"c1"}
    # The popular list holds even ids only: c1 (odd ids) has no popular item; c2's popular
    # items come first, in the popular list's order.
    assert all(i["popular_rank"] is None for i in c1["items"])
    c2 = client.get("/shop/catalog?category=c2&limit=40").get_json()["items"]
    ranked = [i["item_id"] for i in c2 if i["popular_rank"] is not None]
    assert ranked == [f"i{n}" for n in range(2, N_ITEMS, 4)]
    assert [i["item_id"] for i in c2[: len(ranked)]] == ranked


@pytest.mark.parametrize(
    ("query", "status", "field"),
    [
        ("category=nope", 404, "category"),
        ("category=", 400, "category"),
        ("category=c1&limit=0", 400, "limit"),
        ("category=c1&limit=101", 400, "limit"),
        ("category=c1&limit=ten", 400, "limit"),
        ("category=c1&category=c2", 400, "category"),
        ("sort=price", 400, "sort"),
    ],
)
def test_catalog_refuses_a_bad_query_naming_the_field(
    app: Flask, query: str, status: int, field: str
) -> None:
    resp = app.test_client().get(f"/shop/catalog?{query}")
    _error(resp, status)
    assert resp.get_json()["error"]["field"] == field


def test_shoppers_are_the_most_active_users_of_the_newest_day(tmp_path: Path) -> None:
    app = _app(tmp_path)
    shop._shoppers.clear()
    settings = app.extensions["lambdarec"].settings
    gen = ClickstreamGenerator(GeneratorConfig(n_users=40, n_items=60, n_categories=4, days=2))
    lake.write_events(gen.iter_tables(), settings.lake_dir)
    newest = lake.list_dates(settings.lake_dir)[-1]
    counts = lake.read_events(settings.lake_dir, newest, newest, columns=["user_id"])[
        "user_id"
    ].value_counts()
    listed = app.test_client().get("/shop/catalog").get_json()["shoppers"]
    assert listed and listed == [str(u) for u in counts.index[: len(listed)]]
    assert counts[listed[0]] == counts.max()


def test_status_names_the_model_version_and_the_variants(tmp_path: Path) -> None:
    app = _app(tmp_path, ab_variants="champion:50,popular:50", ab_policies="popular:popular")
    body = app.test_client().get("/shop/status").get_json()
    assert body["model_version"] is None  # no champion loaded in this app
    assert body["variants"] == [
        {"name": "champion", "policy": "pipeline", "switched_off": False},
        {"name": "popular", "policy": "popular", "switched_off": False},
    ]
    assert body["keys_required"] is False
    _error(app.test_client().get("/shop/status?x=1"), 400)


# -- the dashboard's figures ---------------------------------------------------------------------


def test_quantile_interpolates_inside_the_bucket_like_prometheus() -> None:
    bounds = (0.01, 0.02, 0.05)
    # 10 requests <= 10 ms, 10 more <= 20 ms, none above.
    assert dashboard.quantile(0.5, [10, 20, 20, 20], bounds) == pytest.approx(0.01)
    assert dashboard.quantile(0.75, [10, 20, 20, 20], bounds) == pytest.approx(0.015)
    assert dashboard.quantile(0.25, [10, 20, 20, 20], bounds) == pytest.approx(0.005)
    # In the +Inf bucket: the largest finite bound.
    assert dashboard.quantile(0.99, [0, 0, 0, 5], bounds) == 0.05
    with pytest.raises(ValueError, match="no observations"):
        dashboard.quantile(0.5, [0, 0, 0, 0], bounds)


def test_pusher_freshness_counts_live_rows_only() -> None:
    stats = PushStats()
    now = datetime.now(UTC)
    stats.observe_freshness(
        [
            now - timedelta(milliseconds=40),
            now - timedelta(milliseconds=900),
            now - timedelta(days=3),
        ]
    )
    summary = stats.summary()
    assert summary["fresh_ms_n"] == 2  # the replayed row of three days ago says nothing
    assert 900 <= summary["fresh_ms_p99"] < 900 + LIVE_S * 1000
    assert 40 <= summary["fresh_ms_p50"] <= summary["fresh_ms_p99"]
    assert "fresh_ms" not in summary


def _readings(monkeypatch: pytest.MonkeyPatch, offsets: list[int]) -> None:
    """Kafka answers ``offsets`` in turn (lag 7, 2 dead letters)."""
    answers = iter(offsets)
    monkeypatch.setattr(
        operations,
        "kafka_figures",
        lambda settings: {"events_offset": next(answers), "lag": 7, "dead_letters": 2},
    )


def test_dashboard_data_from_real_readings(app: Flask, monkeypatch: pytest.MonkeyPatch) -> None:
    client = app.test_client()
    for n in range(5):
        assert client.get(f"/recommend?user_id=u{n}&k=5").status_code == 200
    settings = app.extensions["lambdarec"].settings
    beat = heartbeat_path(settings)
    beat.parent.mkdir(parents=True, exist_ok=True)
    beat.write_text(json.dumps({"lag": 3, "fresh_ms_p50": 18.5, "fresh_ms_p99": 60.0}))
    _readings(monkeypatch, [1000, 1050])
    t0 = time.time()
    with app.test_request_context():
        dashboard.take_reading(t0 - 5)
    body = client.get("/dashboard/data").get_json()
    # Two readings 5 s apart, 50 events between them.
    assert body["events"] == {
        "ok": True,
        "events_offset": 1050,
        "lag": 7,
        "dead_letters": 2,
        "per_s": pytest.approx(10.0, rel=0.05),
    }
    assert body["freshness"]["ok"] and body["freshness"]["fresh_ms_p99"] == 60.0
    serving = body["serving"]
    # The five requests were before both readings: the window saw none, so the worker's life.
    assert serving["requests"] == 5 and serving["window_s"] is None
    assert 0 < serving["p50_ms"] <= serving["p99_ms"] <= BUCKETS[-1] * 1000
    assert serving["degraded_rate"] == pytest.approx(1.0)  # no feature store, no index here
    assert serving["model_version"] is None
    # MLflow and Airflow are not running: one line each, the rest of the figures stand.
    assert body["champion"]["ok"] is False and "not answering" in body["champion"]["note"]
    assert body["dags"]["ok"] is False and "not reachable" in body["dags"]["note"]
    assert body["history"]["events_per_s"] == [pytest.approx(10.0, rel=0.05)]
    assert body["history"]["lag"] == [7]


def test_dashboard_serving_window_counts_the_last_minute(
    app: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = app.test_client()
    _readings(monkeypatch, [1, 2, 3])
    with app.test_request_context():
        dashboard.take_reading(time.time() - 30)
    for n in range(3):
        client.get(f"/recommend?user_id=u{n}&k=5")
    serving = client.get("/dashboard/data").get_json()["serving"]
    assert serving["requests"] == 3 and serving["window_s"] == pytest.approx(30, abs=2)


def test_a_reading_a_second_at_most(app: Flask, monkeypatch: pytest.MonkeyPatch) -> None:
    _readings(monkeypatch, [1, 2, 3])
    with app.test_request_context():
        now = time.time()
        dashboard.take_reading(now)
        dashboard.take_reading(now + 0.5)  # shared with the previous one
        kept = dashboard.take_reading(now + 1.0)
    assert [r.kafka["events_offset"] for r in kept.history] == [1, 2]


def test_a_stale_or_missing_heartbeat_is_one_line(tmp_path: Path) -> None:
    settings = private_settings(tmp_path)
    with pytest.raises(operations.Unavailable, match="feature-pusher heartbeat"):
        operations.pusher_figures(settings)
    beat = heartbeat_path(settings)
    beat.parent.mkdir(parents=True)
    beat.write_text("{}")
    with pytest.raises(operations.Unavailable, match="not running"):
        operations.pusher_figures(settings, now=time.time() + 60)


def test_dashboard_data_refuses_a_bad_query(app: Flask) -> None:
    _error(app.test_client().get("/dashboard/data?points=0"), 400)
    _error(app.test_client().get("/dashboard/data?window=5"), 400)


def test_dashboard_data_needs_the_dashboard_scope_when_keys_are_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = ",".join(
        [_entry("ops", "dashboard", DASHBOARD_KEY), _entry("shop", "recommend", RECOMMEND_KEY)]
    )
    app = _app(tmp_path, api_keys=keys)
    _readings(monkeypatch, [1])
    client = app.test_client()
    assert "no API key" in _error(client.get("/dashboard/data"), 401)
    assert "lacks the 'dashboard' scope" in _error(
        client.get("/dashboard/data", headers={"X-API-Key": RECOMMEND_KEY}), 403
    )
    ok = client.get("/dashboard/data", headers={"X-API-Key": DASHBOARD_KEY})
    assert ok.status_code == 200 and ok.get_json()["events"]["events_offset"] == 1
    # The pages themselves are open: they carry no figures and no key.
    assert client.get("/dashboard").status_code == 200


def test_kafka_not_answering_is_one_line(tmp_path: Path) -> None:
    settings = private_settings(tmp_path)  # a free port: no broker there
    with pytest.raises(operations.Unavailable, match="did not answer"):
        operations.kafka_figures(settings, timeout_s=1.0)
