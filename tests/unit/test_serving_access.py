"""The serving API's access matrix: API keys and scopes, rate limits, session binding, body limits,
the bounded purchase memory and ``exclude`` in a POST /recommend body.

Every refused request is also checked for what it must not have done: nothing sent to the event
sink, no impression emitted, the purchase memory and the session bindings unchanged. No external
service: the sinks are recorders and the recommender serves from a small in-memory catalog.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

import pytest
from typer.testing import CliRunner

from lambdarec.apikeys import parse_entries
from lambdarec.harness.platform import private_settings
from lambdarec.recommend.snapshot import Snapshot
from serving import create_app
from serving.purchases import PurchaseMemory
from serving.recommender import Recommender
from serving.state import EXTENSION
from serving.validation import EXCLUDE_MAX
from tests.unit import payloads

if TYPE_CHECKING:
    from pathlib import Path

    from flask import Flask

    from lambdarec.events import Event

N_ITEMS = 300
EVENTS_KEY = "lrk_events_secret"
RECOMMEND_KEY = "lrk_recommend_secret"
BOTH_KEY = "lrk_both_secret"


def _entry(name: str, scopes: str, secret: str) -> str:
    return f"{name}:{scopes}:{hashlib.sha256(secret.encode()).hexdigest()}"


KEYS = ",".join(
    [
        _entry("ingest", "events", EVENTS_KEY),
        _entry("shop", "recommend", RECOMMEND_KEY),
        _entry("both", "events+recommend", BOTH_KEY),
    ]
)


class RecordingSink:
    """Stands in for the Kafka event sink: what would have been produced."""

    def __init__(self) -> None:
        self.sent: list[Event] = []

    def send(self, events: list[Event]) -> None:
        self.sent.extend(events)

    def ping(self) -> None:
        pass


class RecordingImpressions:
    def __init__(self) -> None:
        self.emitted: list[dict[str, Any]] = []

    def emit(self, record: dict[str, Any]) -> None:
        self.emitted.append(record)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _app(tmp_path: Path, clock: Clock | None = None, **overrides: Any) -> Flask:
    settings = private_settings(tmp_path, **{"api_keys": KEYS, **overrides})
    categories = {f"i{n}": f"c{n % 7}" for n in range(N_ITEMS)}
    popular = [(f"i{n}", float(N_ITEMS - n)) for n in range(N_ITEMS)]
    recommender = Recommender(Snapshot.from_items(categories, popular))
    return create_app(
        settings,
        recommender,
        events=RecordingSink(),  # type: ignore[arg-type]
        impressions=RecordingImpressions(),  # type: ignore[arg-type]
        clock=clock,
    )


@pytest.fixture
def app(tmp_path: Path) -> Flask:
    return _app(tmp_path)


def _sink(app: Flask) -> RecordingSink:
    sink: RecordingSink = app.extensions[EXTENSION].events
    return sink


def _impressions(app: Flask) -> RecordingImpressions:
    out: RecordingImpressions = app.extensions[EXTENSION].impressions
    return out


def _purchases(app: Flask) -> PurchaseMemory:
    memory: PurchaseMemory = app.extensions[EXTENSION].recommender.purchases
    return memory


def _event(**overrides: Any) -> dict[str, Any]:
    return payloads.event("purchase", **overrides)


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _error(resp: Any, status: int) -> dict[str, Any]:
    assert resp.status_code == status, resp.data
    assert resp.is_json, resp.data
    error: dict[str, Any] = resp.get_json()["error"]
    assert error["message"] and "\n" not in error["message"]
    return error


def _unchanged(app: Flask) -> None:
    assert _sink(app).sent == []
    assert _impressions(app).emitted == []
    assert _purchases(app).get("u1") == set()


# -- keys and scopes ----------------------------------------------------------------------------

REQUESTS = [
    ("post", "/events", {"json": _event()}, "events"),
    ("get", "/recommend?user_id=u1", {}, "recommend"),
    ("post", "/recommend", {"json": {"user_id": "u1"}}, "recommend"),
]


@pytest.mark.parametrize(("method", "path", "kwargs", "scope"), REQUESTS)
def test_no_key_is_401_with_www_authenticate(
    app: Flask, method: str, path: str, kwargs: dict[str, Any], scope: str
) -> None:
    client = app.test_client()
    for headers in ({}, _bearer("lrk_wrong"), {"X-API-Key": "lrk_wrong"}, {"Authorization": "x"}):
        resp = getattr(client, method)(path, headers=headers, **kwargs)
        _error(resp, 401)
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    _unchanged(app)


@pytest.mark.parametrize(("method", "path", "kwargs", "scope"), REQUESTS)
def test_key_without_the_scope_is_403(
    app: Flask, method: str, path: str, kwargs: dict[str, Any], scope: str
) -> None:
    other = RECOMMEND_KEY if scope == "events" else EVENTS_KEY
    resp = getattr(app.test_client(), method)(path, headers=_bearer(other), **kwargs)
    assert scope in _error(resp, 403)["message"]
    _unchanged(app)


def test_right_key_is_served_by_either_header(app: Flask) -> None:
    client = app.test_client()
    resp = client.post("/events", json=_event(), headers={"X-API-Key": EVENTS_KEY})
    assert resp.status_code == 202, resp.data
    assert [e.event_id for e in _sink(app).sent] == ["e1"]
    assert _purchases(app).get("u1") == {"i1"}
    resp = client.get("/recommend?user_id=u1&k=5", headers=_bearer(RECOMMEND_KEY))
    assert resp.status_code == 200, resp.data
    assert "i1" not in {i["item_id"] for i in resp.get_json()["items"]}  # bought: filtered
    resp = client.post("/recommend", json={"user_id": "u1", "k": 5}, headers=_bearer(BOTH_KEY))
    assert resp.status_code == 200, resp.data
    assert len(_impressions(app).emitted) == 2


def test_health_metrics_and_docs_stay_open(app: Flask) -> None:
    client = app.test_client()
    for path in ("/health", "/metrics", "/openapi.json", "/docs"):
        assert client.get(path).status_code == 200, path
    assert client.get("/ready").status_code in (200, 503)  # answered, not 401


def test_keys_off_serves_without_a_key(tmp_path: Path) -> None:
    app = _app(tmp_path, api_keys="")
    assert app.test_client().post("/events", json=_event()).status_code == 202


def test_require_api_keys_refuses_to_start_without_keys(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="LAMBDAREC_API_KEYS"):
        _app(tmp_path, api_keys="", require_api_keys=True)
    _app(tmp_path, require_api_keys=True)  # with keys it starts


def test_open_api_warns_at_startup(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING", logger="serving"):
        _app(tmp_path, api_keys="")
    assert any("open" in r.getMessage() and "API_KEYS" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    "entries",
    [
        "shop:recommend",
        "shop:recommend:nothex",
        "shop:admin:" + "a" * 64,
        "shop:recommend:" + "a" * 63,
        "sh op:recommend:" + "a" * 64,
        f"a:events:{'a' * 64},a:recommend:{'b' * 64}",
    ],
)
def test_malformed_key_entries_are_refused_at_load(tmp_path: Path, entries: str) -> None:
    with pytest.raises(ValueError, match="LAMBDAREC_API_KEYS") as info:
        private_settings(tmp_path, api_keys=entries)
    assert "lambdarec api-key new" in str(info.value)


def test_cli_mints_a_key_whose_entry_authenticates(tmp_path: Path) -> None:
    from lambdarec.cli import app as cli

    out = CliRunner().invoke(cli, ["api-key", "new", "--name", "shop", "--scopes", "recommend"])
    assert out.exit_code == 0, out.output
    lines = dict(
        line.split("=", 1) for line in out.output.splitlines() if "=" in line and " " not in line
    )
    secret, entry = lines["secret"], lines["entry"]
    assert secret not in entry
    (key,) = parse_entries(entry)
    assert key.name == "shop" and key.scopes == frozenset({"recommend"})
    app = _app(tmp_path, api_keys=entry)
    assert (
        app.test_client().get("/recommend?user_id=u1", headers=_bearer(secret)).status_code == 200
    )
    bad = CliRunner().invoke(cli, ["api-key", "new", "--name", "x", "--scopes", "admin"])
    assert bad.exit_code != 0


# -- rate limits --------------------------------------------------------------------------------


def test_over_the_rate_is_429_with_retry_after(tmp_path: Path) -> None:
    clock = Clock()
    app = _app(tmp_path, clock, rate_limit_rps=0.5, rate_limit_burst=2)
    client = app.test_client()
    for n in range(2):
        resp = client.post("/events", json=_event(event_id=f"e{n}"), headers=_bearer(BOTH_KEY))
        assert resp.status_code == 202
    resp = client.post("/events", json=_event(event_id="e9"), headers=_bearer(BOTH_KEY))
    _error(resp, 429)
    assert resp.headers["Retry-After"] == "2"  # one token at 0.5/s: 2 s
    assert [e.event_id for e in _sink(app).sent] == ["e0", "e1"]  # the refused one not sent
    _error(client.get("/recommend?user_id=u1", headers=_bearer(BOTH_KEY)), 429)
    assert _impressions(app).emitted == []
    # Another key has its own bucket.
    assert client.get("/recommend?user_id=u1", headers=_bearer(RECOMMEND_KEY)).status_code == 200
    clock.now += 2
    resp = client.post("/events", json=_event(event_id="e9"), headers=_bearer(BOTH_KEY))
    assert resp.status_code == 202


def test_without_keys_the_rate_is_per_client_ip(tmp_path: Path) -> None:
    app = _app(tmp_path, Clock(), api_keys="", rate_limit_rps=1, rate_limit_burst=1)
    client = app.test_client()
    assert client.get("/recommend?user_id=u1").status_code == 200
    _error(client.get("/recommend?user_id=u1"), 429)
    other = {"REMOTE_ADDR": "10.0.0.2"}
    assert client.get("/recommend?user_id=u1", environ_base=other).status_code == 200


def test_a_401_does_not_spend_a_keys_tokens(tmp_path: Path) -> None:
    app = _app(tmp_path, Clock(), rate_limit_rps=1, rate_limit_burst=1)
    client = app.test_client()
    for _ in range(3):
        _error(client.get("/recommend?user_id=u1", headers=_bearer("lrk_wrong")), 401)
    assert client.get("/recommend?user_id=u1", headers=_bearer(BOTH_KEY)).status_code == 200


# -- session binding ----------------------------------------------------------------------------


def test_another_users_event_on_a_session_is_409_and_not_produced(app: Flask) -> None:
    client = app.test_client()
    headers = _bearer(BOTH_KEY)
    resp = client.post("/events", json=_event(event_type="view"), headers=headers)
    assert resp.status_code == 202
    sent = list(_sink(app).sent)
    resp = client.post(
        "/events", json=_event(event_id="e2", user_id="u2", event_type="purchase"), headers=headers
    )
    assert _error(resp, 409)["field"] == "session_id"
    assert _sink(app).sent == sent
    assert _purchases(app).get("u2") == set()
    # A batch with one foreign event is refused whole.
    batch = [_event(event_id="e3", event_type="view"), _event(event_id="e4", user_id="u2")]
    _error(client.post("/events", json=batch, headers=headers), 409)
    assert _sink(app).sent == sent
    # A batch that itself mixes two users on a fresh session binds nothing.
    mixed = [
        _event(event_id="e5", session_id="s9"),
        _event(event_id="e6", session_id="s9", user_id="u2"),
    ]
    _error(client.post("/events", json=mixed, headers=headers), 409)
    ok = client.post(
        "/events", json=_event(event_id="e7", session_id="s9", user_id="u2"), headers=headers
    )
    assert ok.status_code == 202


@pytest.mark.parametrize("method", ["get", "post"])
def test_recommend_with_another_users_session_is_409(app: Flask, method: str) -> None:
    client = app.test_client()
    headers = _bearer(BOTH_KEY)
    client.post("/events", json=_event(event_type="view"), headers=headers)
    if method == "get":
        resp = client.get("/recommend?user_id=u2&session_id=s1", headers=headers)
    else:
        resp = client.post(
            "/recommend", json={"user_id": "u2", "session_id": "s1"}, headers=headers
        )
    assert _error(resp, 409)["field"] == "session_id"
    assert _impressions(app).emitted == []
    ok = client.get("/recommend?user_id=u1&session_id=s1", headers=headers)
    assert ok.status_code == 200


def test_session_bindings_are_bounded(tmp_path: Path) -> None:
    app = _app(tmp_path, api_keys="", session_bind_max=2)
    client = app.test_client()
    for n in range(3):
        client.post("/events", json=_event(event_id=f"e{n}", session_id=f"s{n}", event_type="view"))
    # s0 was evicted (the per-worker limit): another user may now take it.
    resp = client.post("/events", json=_event(event_id="x", session_id="s0", user_id="u2"))
    assert resp.status_code == 202
    _error(client.post("/events", json=_event(event_id="y", session_id="s2", user_id="u2")), 409)


# -- body limits --------------------------------------------------------------------------------


def test_oversized_bodies_are_413_and_change_nothing(app: Flask) -> None:
    client = app.test_client()
    headers = _bearer(BOTH_KEY)
    big = b"[" + b" " * 1_100_000 + b"]"
    _error(client.post("/events", data=big, content_type="application/json", headers=headers), 413)
    _error(
        client.post("/recommend", data=big, content_type="application/json", headers=headers), 413
    )
    _unchanged(app)


def test_oversized_body_without_a_key_is_401_first(app: Flask) -> None:
    big = b"[" + b" " * 1_100_000 + b"]"
    _error(app.test_client().post("/events", data=big, content_type="application/json"), 401)
    _unchanged(app)


# -- POST /recommend ----------------------------------------------------------------------------


def test_post_recommend_takes_exclude_beyond_the_get_forms_reach(app: Flask) -> None:
    client = app.test_client()
    headers = _bearer(RECOMMEND_KEY)
    exclude = [f"i{n}" for n in range(EXCLUDE_MAX)]
    resp = client.post(
        "/recommend", json={"user_id": "u1", "k": 20, "exclude": exclude}, headers=headers
    )
    assert resp.status_code == 200, resp.data
    items = [i["item_id"] for i in resp.get_json()["items"]]
    assert len(items) == 20 and not set(items) & set(exclude)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "user_id"),
        ([], "$"),
        ({"user_id": 5}, "user_id"),
        ({"user_id": "u1", "k": True}, "k"),
        ({"user_id": "u1", "k": "5"}, "k"),
        ({"user_id": "u1", "k": 101}, "k"),
        ({"user_id": "u1", "exclude": "i1,i2"}, "exclude"),
        ({"user_id": "u1", "exclude": [f"i{n}" for n in range(EXCLUDE_MAX + 1)]}, "exclude"),
        ({"user_id": "u1", "exclude": ["i1", ""]}, "exclude[1]"),
        ({"user_id": "u1", "exclude": ["i1", 2]}, "exclude[1]"),
        ({"user_id": "u1", "colour": "red"}, "colour"),
        ({"user_id": "u1", "session_id": None}, "session_id"),
    ],
)
def test_post_recommend_rejects_bad_bodies(app: Flask, body: Any, field: str) -> None:
    resp = app.test_client().post("/recommend", json=body, headers=_bearer(RECOMMEND_KEY))
    assert _error(resp, 400)["field"] == field
    assert _impressions(app).emitted == []


def test_post_recommend_needs_json(app: Flask) -> None:
    resp = app.test_client().post(
        "/recommend", data="user_id=u1", content_type="text/plain", headers=_bearer(RECOMMEND_KEY)
    )
    _error(resp, 415)


# -- the purchase memory ------------------------------------------------------------------------


def test_purchase_memory_is_bounded_in_bytes_and_exposed_in_metrics(tmp_path: Path) -> None:
    memory = PurchaseMemory(max_bytes=20_000)
    for n in range(2000):
        memory.add(f"user-{n}", f"item-{n}")
        assert memory.bytes <= 20_000
    assert memory.evictions > 0
    assert memory.get("user-1999") == {"item-1999"}
    assert memory.get("user-0") == set()
    for n in range(1000):  # one user's list is bounded too
        memory.add("user-1999", f"other-{n}")
    assert memory.bytes <= 20_000

    app = _app(tmp_path, api_keys="", purchase_memory_bytes=1 << 20)
    client = app.test_client()
    client.post("/events", json=_event())
    text = client.get("/metrics").get_data(as_text=True)
    assert _purchases(app).max_bytes == 1 << 20
    line = next(
        x for x in text.splitlines() if x.startswith("lambdarec_serving_purchase_memory_bytes ")
    )
    assert float(line.split()[1]) == _purchases(app).bytes > 0
    assert "lambdarec_serving_purchase_memory_evictions_total 0.0" in text


def test_openapi_describes_post_recommend_and_the_refusals(app: Flask) -> None:
    spec = app.test_client().get("/openapi.json").get_json()
    post = spec["paths"]["/recommend"]["post"]
    assert {"401", "403", "409", "413", "429"} <= set(post["responses"])
    query = spec["components"]["schemas"]["RecommendBody"]
    assert query["properties"]["exclude"]["maxItems"] == EXCLUDE_MAX
    assert {"401", "403", "409", "429"} <= set(spec["paths"]["/events"]["post"]["responses"])
    assert post["security"] == [{"bearer": []}, {"apiKeyHeader": []}]


class OnlineSessions:
    """An online store whose session features say who each session belongs to (as the speed
    layer writes them from any worker's events)."""

    def __init__(self, owners: dict[str, str], fail: bool = False) -> None:
        self.owners, self.fail = owners, fail
        self.reads: list[list[str]] = []

    def context(self, user_id: str, session_id: str | None) -> dict[str, Any]:
        return {}

    def read(self, refs: Any, rows: Any) -> dict[str, list[Any]]:
        if self.fail:
            raise ConnectionError("online store down")
        assert list(refs) == ["session_features:user_id"]
        sessions = [r["session_id"] for r in rows]
        self.reads.append(sessions)
        return {"session_features__user_id": [self.owners.get(s) for s in sessions]}


def _app_with_store(tmp_path: Path, store: OnlineSessions) -> Flask:
    settings = private_settings(tmp_path, api_keys="")
    recommender = Recommender(
        Snapshot.from_items({f"i{n}": "c" for n in range(50)}, [("i1", 1.0)]),
        features=store,  # type: ignore[arg-type]
    )
    return create_app(
        settings,
        recommender,
        events=RecordingSink(),  # type: ignore[arg-type]
        impressions=RecordingImpressions(),  # type: ignore[arg-type]
    )


def test_a_session_another_worker_bound_is_refused_from_the_online_features(
    tmp_path: Path,
) -> None:
    store = OnlineSessions({"s-elsewhere": "u1"})
    app = _app_with_store(tmp_path, store)
    client = app.test_client()
    resp = client.post("/events", json=_event(session_id="s-elsewhere", user_id="u2"))
    assert _error(resp, 409)["field"] == "session_id"
    _error(client.get("/recommend?user_id=u2&session_id=s-elsewhere"), 409)
    _unchanged(app)
    assert client.get("/recommend?user_id=u1&session_id=s-elsewhere").status_code == 200
    # Once this worker knows a session, it does not ask the store again.
    reads = len(store.reads)
    assert client.post("/events", json=_event(session_id="s-elsewhere")).status_code == 202
    assert len(store.reads) == reads
    # A new session (no online row) is taken by its first user.
    assert client.post("/events", json=_event(event_id="n", session_id="s-new")).status_code == 202


def test_an_online_store_down_leaves_the_workers_own_record(tmp_path: Path) -> None:
    app = _app_with_store(tmp_path, OnlineSessions({}, fail=True))
    client = app.test_client()
    assert client.post("/events", json=_event()).status_code == 202
    _error(client.post("/events", json=_event(event_id="e2", user_id="u2")), 409)
