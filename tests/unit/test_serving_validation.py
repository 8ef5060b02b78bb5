"""The serving app at the edge: validation, JSON errors, fuzzing, health, metrics, degradation.

No external service: the app runs on a real Recommender built from a small in-memory catalog with
every dependency absent (no online store, index, model or ranker), and its Kafka sinks point at a
closed loopback port, so produces fail fast and the app must answer from the popular floor.
"""

from __future__ import annotations

import json
import math
import random
import string
from typing import TYPE_CHECKING, Any

import pytest

from lambdarec.harness.platform import free_ports, private_settings
from lambdarec.recommend.rules import CATEGORY_CAP
from lambdarec.recommend.snapshot import Snapshot
from serving import create_app
from serving.ab import Variants
from serving.recommender import Recommender
from serving.sinks import EventSink
from tests.unit import payloads

if TYPE_CHECKING:
    from pathlib import Path

    from flask.testing import FlaskClient

N_ITEMS = 300


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> FlaskClient:
    (closed_port,) = free_ports(1)
    state: Path = tmp_path_factory.mktemp("serving")
    # No rate limit: the fuzzing below sends 10,000 requests from one client at once.
    settings = private_settings(state, kafka_bootstrap=f"127.0.0.1:{closed_port}", rate_limit_rps=0)
    categories = {f"i{n}": f"c{n % 7}" for n in range(N_ITEMS)}
    popular = [(f"i{n}", float(N_ITEMS - n)) for n in range(N_ITEMS)]
    trending = [(f"i{n}", float(n)) for n in range(250, 260)]
    recommender = Recommender(Snapshot.from_items(categories, popular, trending))
    app = create_app(
        settings,
        recommender,
        variants="control:50,treatment:50",
        events=EventSink(settings, flush_timeout_s=0.3, backoff_s=30.0),
    )
    return app.test_client()


def _error(resp: Any, status: int = 400) -> dict[str, Any]:
    assert resp.status_code == status, resp.data
    assert resp.is_json, resp.data
    body = resp.get_json()
    assert set(body["error"]) >= {"field", "message"}
    assert "Traceback" not in resp.get_data(as_text=True)
    return body["error"]


def _event(**overrides: Any) -> dict[str, Any]:
    return payloads.event("view", **overrides)


# -- /recommend ---------------------------------------------------------------------------------


def test_recommend_degrades_to_popular_when_dependencies_are_absent(client: FlaskClient) -> None:
    resp = client.get("/recommend?user_id=u1&k=10")
    assert resp.status_code == 200
    body = resp.get_json()
    assert body["degraded"] is True
    assert set(body["degraded_parts"]) == {"online_store", "index", "model", "ranker"}
    items = body["items"]
    assert len(items) == 10
    assert len({i["item_id"] for i in items}) == 10
    assert {i["source"] for i in items} <= {"popular", "trending"}
    assert all(i["reasons"] for i in items)
    # Diversity: at most ceil(cap * 10) items per category when enough categories exist.
    per_cat: dict[str, int] = {}
    for i in items:
        per_cat[i["category"]] = per_cat.get(i["category"], 0) + 1
    assert max(per_cat.values()) <= math.ceil(CATEGORY_CAP * 10)
    assert body["variant"] in {"control", "treatment"}
    assert resp.headers["X-Request-Id"] == body["request_id"]


def test_exclusions_are_filtered_and_k_still_served(client: FlaskClient) -> None:
    first = [i["item_id"] for i in client.get("/recommend?user_id=u2&k=20").get_json()["items"]]
    resp = client.get(f"/recommend?user_id=u2&k=20&exclude={','.join(first)}")
    items = [i["item_id"] for i in resp.get_json()["items"]]
    assert len(items) == 20
    assert not set(items) & set(first)


def test_variant_is_deterministic_and_split() -> None:
    v = Variants.parse("control:50,treatment:50")
    users = [f"user-{n}" for n in range(4000)]
    assigned = [v.assign(u) for u in users]
    assert assigned == [v.assign(u) for u in users]
    share = assigned.count("treatment") / len(users)
    assert 0.45 < share < 0.55
    with pytest.raises(ValueError):
        Variants.parse("control:0")


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("", "user_id"),
        ("k=5", "user_id"),
        ("user_id=", "user_id"),
        ("user_id=" + "u" * 65, "user_id"),
        ("user_id=a%20b", "user_id"),
        ("user_id=u1&k=0", "k"),
        ("user_id=u1&k=101", "k"),
        ("user_id=u1&k=-1", "k"),
        ("user_id=u1&k=ten", "k"),
        ("user_id=u1&k=1.5", "k"),
        ("user_id=u1&k=%EF%BC%95", "k"),  # a full-width digit is still not ASCII
        ("user_id=u1&session_id=" + "s" * 65, "session_id"),
        ("user_id=u1&exclude=a,,b", "exclude[1]"),
        ("user_id=u1&exclude=" + ",".join(f"i{n}" for n in range(201)), "exclude"),
        ("user_id=u1&colour=red", "colour"),
        ("user_id=u1&user_id=u2", "user_id"),
    ],
)
def test_recommend_rejects_bad_queries(client: FlaskClient, query: str, field: str) -> None:
    assert _error(client.get(f"/recommend?{query}"))["field"] == field


def test_unknown_route_and_method_are_json(client: FlaskClient) -> None:
    _error(client.get("/nope"), 404)
    _error(client.put("/recommend?user_id=u1"), 405)


# -- /events ------------------------------------------------------------------------------------


def test_events_malformed_json(client: FlaskClient) -> None:
    err = _error(client.post("/events", data="{not json", content_type="application/json"))
    assert err["field"] == "$" and "malformed" in err["message"]


def test_events_need_json_content_type(client: FlaskClient) -> None:
    _error(client.post("/events", data=json.dumps(_event()), content_type="text/plain"), 415)


def test_events_unknown_field_and_batch_index(client: FlaskClient) -> None:
    err = _error(client.post("/events", json=_event(colour="red")))
    assert err["field"] == "colour" and "index" not in err
    batch = [_event(event_id="a"), _event(event_id="b", event_type="like"), _event(event_id="c")]
    err = _error(client.post("/events", json=batch))
    assert err == {**err, "field": "event_type", "index": 1}


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ([], "$"),
        ([_event()] * 501, "$"),
        (42, "$"),
        ("text", "$"),
        ([1], "$"),
        ({**_event(), "user_id": "u" * 65}, "user_id"),
        ({"user_id": "u1"}, "event_id"),
    ],
)
def test_events_invalid_payloads(client: FlaskClient, payload: Any, field: str) -> None:
    assert _error(client.post("/events", json=payload))["field"] == field


def test_events_body_limit(client: FlaskClient) -> None:
    big = "[" + ",".join([json.dumps(_event(context={"pad": "x" * 500}))] * 2000) + "]"
    _error(client.post("/events", data=big, content_type="application/json"), 413)


def test_valid_events_with_kafka_down_get_503_not_500(client: FlaskClient) -> None:
    resp = client.post("/events", json=[_event(event_id="ok1"), _event(event_id="ok2")])
    _error(resp, 503)
    assert resp.headers["Retry-After"]


# -- health, metrics, docs ----------------------------------------------------------------------


def test_health_metrics_docs(client: FlaskClient) -> None:
    assert client.get("/health").get_json() == {"status": "ok"}
    client.get("/recommend?user_id=u9")
    text = client.get("/metrics").get_data(as_text=True)
    assert "lambdarec_serving_request_seconds_bucket" in text
    assert 'lambdarec_serving_stage_seconds_bucket{le="0.001",stage="candidates"}' in text
    assert 'lambdarec_serving_fallbacks_total{part="online_store"}' in text
    spec = client.get("/openapi.json").get_json()
    assert {"/recommend", "/events", "/health", "/ready", "/metrics"} <= set(spec["paths"])
    assert "get" in spec["paths"]["/recommend"]
    page = client.get("/docs").get_data(as_text=True)
    assert "swagger-ui" in page and "/openapi.json" in page
    assert "https://" not in page and "http://" not in page  # its files are this server's


def test_ready_reports_what_is_down(client: FlaskClient) -> None:
    resp = client.get("/ready")
    assert resp.status_code == 503
    body = resp.get_json()
    assert set(body["down"]) == {"online_store", "index", "kafka"}


# -- fuzzing ------------------------------------------------------------------------------------

_ALPHABET = string.printable + "éü中\u0000\u202e😀%&=,"


def _junk(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(9 if depth < 3 else 6)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, False])
    if kind == 2:
        return rng.choice([0, -1, 1, 10**30, 3.5, float("1e308"), -0.0])
    if kind in (3, 4, 5):
        n = rng.choice([0, 1, 5, 64, 65, 300])
        return "".join(rng.choice(_ALPHABET) for _ in range(n))
    if kind in (6, 7):
        return {_junk_key(rng): _junk(rng, depth + 1) for _ in range(rng.randrange(4))}
    return [_junk(rng, depth + 1) for _ in range(rng.randrange(4))]


def _junk_key(rng: random.Random) -> str:
    return rng.choice(
        [
            "user_id",
            "k",
            "exclude",
            "session_id",
            "event_id",
            "item_id",
            "ts",
            "event_type",
            "price",
            "context",
            "x",
            "",
        ]
    )


def _mutated_event(rng: random.Random) -> Any:
    event: dict[str, Any] = _event(event_id=f"f{rng.randrange(10**6)}")
    for _ in range(rng.randrange(1, 4)):
        op = rng.randrange(3)
        key = rng.choice([*event, "extra"])
        if op == 0:
            event.pop(key, None)
        else:
            event[key] = _junk(rng)
    return event


def test_fuzz_no_500(client: FlaskClient) -> None:
    rng = random.Random(20240501)
    statuses: dict[int, int] = {}
    for n in range(10_000):
        if n % 2 == 0:
            params = {_junk_key(rng): str(_junk(rng))[:400] for _ in range(rng.randrange(5))}
            if rng.random() < 0.5:
                params["user_id"] = rng.choice(["u1", "x" * 64, str(_junk(rng))[:80]])
            resp = client.get("/recommend", query_string=params)
        else:
            choice = rng.randrange(4)
            if choice == 0:
                data: str | bytes = json.dumps(_mutated_event(rng), default=str)
            elif choice == 1:
                data = json.dumps(
                    [_mutated_event(rng) for _ in range(rng.randrange(1, 6))], default=str
                )
            elif choice == 2:
                data = json.dumps(_junk(rng), default=str)
            else:
                data = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 200)))
            resp = client.post("/events", data=data, content_type="application/json")
        statuses[resp.status_code] = statuses.get(resp.status_code, 0) + 1
        assert resp.status_code < 500 or resp.status_code == 503, (resp.status_code, resp.data)
        assert resp.is_json
    assert 200 in statuses and 400 in statuses


def test_calls_with_their_own_deadline_run_in_the_request_thread() -> None:
    """A connected index is searched in the request's thread with the guard's timeout as its
    deadline (no hand-off to the pool); an index not connected yet (connecting can take seconds)
    goes through the pool, whose wait the request abandons on timeout."""
    import threading

    import numpy as np

    from serving.recommender import IN_PROCESS, OWN_DEADLINE
    from serving.validation import parse_recommend

    calls: list[tuple[str, float | None]] = []

    class Index:
        connected = False

        def search(self, vector: Any, k: int, timeout_s: float | None = None) -> Any:
            calls.append((threading.current_thread().name, timeout_s))
            return [[("i2", 0.5)]]

    class Encoder:
        def encode(self, features: dict[str, Any]) -> Any:
            return np.ones(4, dtype=np.float32)

    index = Index()
    rec = Recommender(
        Snapshot.from_items({"i1": "c1", "i2": "c2"}, [("i1", 1.0)]),
        index=index,
        encoder=Encoder(),  # type: ignore[arg-type]
        inline=IN_PROCESS | OWN_DEADLINE,
    )
    query = parse_recommend({"user_id": ["u1"], "k": ["2"]})
    first = rec.recommend(query)
    assert calls[-1][0].startswith("recommender-dep")  # not connected: on the pool
    index.connected = True
    second = rec.recommend(query)
    assert calls[-1] == (threading.current_thread().name, rec.guards["index"].timeout_s)
    for result in (first, second):
        assert "index" not in result.degraded_parts
        assert "vector" in {s for c in result.items for s in c.sources}


def test_from_settings_runs_a_sqlite_store_inline_and_a_redis_store_on_the_pool(
    tmp_path: Path,
) -> None:
    """SQLite is a local file (in WAL mode a read never waits for the writer): its reads run in
    the request's thread. A Redis store's client has no deadline of its own: it keeps the pool."""
    for store, inline in (("sqlite", True), ("redis", False)):
        settings = private_settings(tmp_path / store, online_store=store)
        rec = Recommender.from_settings(settings, load_model=False)
        try:
            assert rec.warm.wait(60)
            assert rec.guards["online_store"].inline is inline
            assert rec.guards["index"].inline and rec.guards["model"].inline
        finally:
            rec.close()
            if rec.index is not None:
                rec.index.close()


def test_warm_up_freezes_the_long_lived_heap_out_of_garbage_collection(tmp_path: Path) -> None:
    """What exists when the warm-up ends (Feast, the index client, the models, the snapshot)
    is moved out of the collector's generations: full collections no longer walk it."""
    import gc

    long_lived = [{"item": n} for n in range(10)]
    rec = Recommender(Snapshot.from_items({"i1": "c1"}, [("i1", 1.0)]))
    try:
        rec.warm_up(private_settings(tmp_path), load_model=False)
        assert rec.warm.wait(30)
        assert gc.get_freeze_count() > 0
        assert not any(o is long_lived for o in gc.get_objects())  # frozen: in no generation
        created_after = [{"item": "new"}]
        assert any(o is created_after for o in gc.get_objects())  # later objects still are
    finally:
        gc.unfreeze()  # the rest of the test session collects as usual


def test_ready_says_loading_while_the_warm_up_runs() -> None:
    rec = Recommender(Snapshot.from_items({"i1": "c1"}, [("i1", 1.0)]))
    assert rec.readiness()["warm_up"] == "ok"
    rec.warm.clear()  # what warm_up() does until Feast, the index and the model are loaded
    assert rec.readiness()["warm_up"].startswith("loading")
