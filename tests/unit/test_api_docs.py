"""The API description built from the code (:mod:`serving.apidoc`): /openapi.json is valid OpenAPI
3.1, names every route of the app (one added later too), and says what the app really answers:
real answers are checked against the document's own schemas, and the request models accept what
the edge's validator accepts. /docs is Swagger UI whose files all come from this server.
"""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import pytest
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate
from pydantic import ValidationError
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from lambdarec.harness.platform import private_settings
from lambdarec.recommend.snapshot import Snapshot
from serving import create_app
from serving.apidoc import document, openapi_path
from serving.recommender import Recommender
from serving.schemas import EventBatch, RecommendBody, RecommendQuery
from serving.sinks import KafkaUnavailable
from serving.state import EXTENSION
from serving.validation import (
    EVENTS_MAX,
    EXCLUDE_MAX,
    RequestError,
    parse_events,
    parse_recommend,
    parse_recommend_body,
)
from tests.unit import payloads

if TYPE_CHECKING:
    from pathlib import Path

    from flask import Flask
    from werkzeug.test import TestResponse

    from lambdarec.events import Event

HTTP_METHODS = {"get", "post", "put", "patch", "delete"}


class Sink:
    """Stands in for Kafka: takes the events, or refuses them all when ``down``."""

    def __init__(self) -> None:
        self.down = False
        self.sent: list[Event] = []

    def send(self, events: list[Event]) -> None:
        if self.down:
            raise KafkaUnavailable("Kafka did not acknowledge within 1 s")
        self.sent.extend(events)

    def ping(self) -> None:
        raise KafkaUnavailable("no broker")


class Impressions:
    def emit(self, record: dict[str, Any]) -> None:
        pass


def _app(tmp_path: Path, **overrides: Any) -> Flask:
    settings = private_settings(tmp_path, **{"api_keys": "", "rate_limit_rps": 0, **overrides})
    catalog = {f"i{n}": f"c{n % 3}" for n in range(30)}
    recommender = Recommender(
        Snapshot.from_items(catalog, [(f"i{n}", 30.0 - n) for n in range(30)])
    )
    return create_app(
        settings,
        recommender,
        events=Sink(),  # type: ignore[arg-type]
        impressions=Impressions(),  # type: ignore[arg-type]
        load_model=False,
    )


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Flask:
    return _app(tmp_path_factory.mktemp("apidocs"))


@pytest.fixture(scope="module")
def doc(app: Flask) -> dict[str, Any]:
    resp = app.test_client().get("/openapi.json")
    assert resp.status_code == 200
    body: dict[str, Any] = resp.get_json()
    return body


def _routes(app: Flask) -> set[tuple[str, str]]:
    """(path, method) of every route the app serves, but Flask's own static files."""
    return {
        (openapi_path(rule.rule), method.lower())
        for rule in app.url_map.iter_rules()
        if rule.endpoint != "static"
        for method in rule.methods or ()
        if method.lower() in HTTP_METHODS
    }


def test_the_document_is_valid_openapi_3(doc: dict[str, Any]) -> None:
    assert doc["openapi"].startswith("3.1")
    validate(doc)  # raises, naming the offending part, when it is not


def test_every_route_of_the_app_is_described(app: Flask, doc: dict[str, Any]) -> None:
    described = {(path, m) for path, ops in doc["paths"].items() for m in ops}
    assert described == _routes(app)
    assert {"/recommend", "/events", "/health", "/ready", "/metrics", "/openapi.json", "/docs"} <= {
        p for p, _ in described
    }
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            where = f"{method.upper()} {path}"
            assert op["summary"] and op["tags"], where
            assert any(code.startswith("2") for code in op["responses"]), where
            unexpected = op["responses"]["500"]["content"]["application/json"]["schema"]
            assert unexpected == {"$ref": "#/components/schemas/Error"}, where


def test_a_route_added_to_the_app_is_described_without_a_list_to_edit(tmp_path: Path) -> None:
    app = _app(tmp_path)

    def shelf(category: str) -> str:
        """The items of one category."""
        return category

    app.add_url_rule("/shelf/<category>", view_func=shelf)
    doc = document(app)
    op = doc["paths"]["/shelf/{category}"]["get"]
    assert op["summary"] == "The items of one category."
    assert [(p["name"], p["in"], p["required"]) for p in op["parameters"]] == [
        ("category", "path", True)
    ]
    assert {"200", "500"} <= set(op["responses"])
    validate(doc)


def test_apps_built_at_once_each_get_the_whole_document(tmp_path: Path) -> None:
    # gthread workers may ask for their first document at once; nested models must survive.
    apps = [_app(tmp_path / str(n)) for n in range(4)]
    with ThreadPoolExecutor(len(apps)) as pool:
        docs = list(pool.map(document, apps))
    for doc in docs:
        assert {"Event", "RecommendedItem", "ErrorDetail"} <= set(doc["components"]["schemas"])
        validate(doc)


def test_parameters_bodies_refusals_and_security(doc: dict[str, Any]) -> None:
    get = doc["paths"]["/recommend"]["get"]
    params = {p["name"]: p for p in get["parameters"]}
    assert set(params) == {"user_id", "session_id", "k", "exclude"}
    assert [n for n, p in params.items() if p["required"]] == ["user_id"]
    assert params["k"]["schema"]["maximum"] == 100 and params["k"]["schema"]["default"] == 10
    assert "anyOf" not in params["session_id"]["schema"]  # absent, never null
    post = doc["paths"]["/recommend"]["post"]
    body = post["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/RecommendBody"}
    schemas = doc["components"]["schemas"]
    assert schemas["RecommendBody"]["properties"]["exclude"]["maxItems"] == EXCLUDE_MAX
    assert schemas["RecommendBody"]["additionalProperties"] is False
    events = doc["paths"]["/events"]["post"]
    batch = schemas["EventBatch"]["anyOf"]
    assert {"$ref": "#/components/schemas/Event"} in batch
    assert any(b.get("maxItems") == EVENTS_MAX for b in batch)
    assert schemas["Event"]["additionalProperties"] is False
    for op, codes in ((get, "400 401 403 409 429"), (post, "400 401 403 409 413 415 429")):
        assert set(codes.split()) <= set(op["responses"])
        assert op["security"] == [{"bearer": []}, {"apiKeyHeader": []}]
    assert {"202", "400", "401", "403", "409", "413", "415", "429", "503"} <= set(
        events["responses"]
    )
    assert "security" not in doc["paths"]["/health"]["get"]
    assert set(doc["components"]["securitySchemes"]) == {"bearer", "apiKeyHeader"}


def _check(doc: dict[str, Any], path: str, method: str, resp: TestResponse) -> None:
    """The answer's body matches the schema the document gives its status."""
    described = doc["paths"][path][method]["responses"][str(resp.status_code)]
    schema = described["content"]["application/json"]["schema"]
    registry: Registry[Any] = Registry().with_resource(
        "urn:lambdarec:openapi", Resource.from_contents(doc, default_specification=DRAFT202012)
    )
    ref = "urn:lambdarec:openapi" + schema["$ref"]
    errors = list(Draft202012Validator({"$ref": ref}, registry=registry).iter_errors(resp.json))
    assert not errors, f"{method.upper()} {path} {resp.status_code}: {errors[0].message}"


def test_real_answers_match_the_documented_schemas(tmp_path: Path) -> None:
    app = _app(tmp_path)
    doc = document(app)
    client = app.test_client()
    answers = [
        ("/recommend", "get", client.get("/recommend?user_id=u1&session_id=s1&k=5&exclude=i0")),
        ("/recommend", "get", client.get("/recommend?user_id=u1&colour=red")),
        ("/recommend", "post", client.post("/recommend", json={"user_id": "u2", "exclude": []})),
        ("/recommend", "post", client.post("/recommend", data="x", content_type="text/plain")),
        ("/recommend", "get", client.get("/recommend?user_id=u3&session_id=s1")),  # 409
        ("/events", "post", client.post("/events", json=[payloads.event()])),
        ("/events", "post", client.post("/events", json=[payloads.event(), {"user_id": 1}])),
        ("/health", "get", client.get("/health")),
        ("/ready", "get", client.get("/ready")),
        ("/docs/{name}", "get", client.get("/docs/no-such-file.js")),
    ]
    app.extensions[EXTENSION].events.down = True
    answers.append(("/events", "post", client.post("/events", json=payloads.event())))
    statuses = [resp.status_code for _, _, resp in answers]
    assert statuses == [200, 400, 200, 415, 409, 202, 400, 200, 503, 404, 503]
    for path, method, resp in answers:
        _check(doc, path, method, resp)


GET_QUERIES: list[dict[str, str]] = [
    {"user_id": "u1"},
    {"user_id": "u1", "session_id": "s-1", "k": "100", "exclude": "i1,i2"},
    {"user_id": "u1", "exclude": ""},
    {},
    {"user_id": ""},
    {"user_id": "a b"},
    {"user_id": "u" * 65},
    {"user_id": "u1", "k": "0"},
    {"user_id": "u1", "k": "101"},
    {"user_id": "u1", "k": "ten"},
    {"user_id": "u1", "session_id": ""},
    {"user_id": "u1", "colour": "red"},
]
POST_BODIES: list[dict[str, Any]] = [
    {"user_id": "u1"},
    {"user_id": "u1", "session_id": "s1", "k": 7, "exclude": ["i1", "i2"]},
    {"user_id": "u1", "k": None},
    {"user_id": "u1", "exclude": [f"i{n}" for n in range(EXCLUDE_MAX)]},
    {"user_id": "u1", "exclude": [f"i{n}" for n in range(EXCLUDE_MAX + 1)]},
    {"user_id": "u1", "exclude": "i1"},
    {"user_id": "u1", "exclude": [1]},
    {"user_id": "u1", "k": "5"},
    {"user_id": "u1", "k": True},
    {"user_id": "u1", "k": 0},
    {"user_id": "u1", "session_id": None},
    {"user_id": None},
    {"user_id": 7},
    {"user_id": "u1", "colour": "red"},
    {},
]


def _accepts(parse: Any, value: Any) -> bool:
    try:
        parse(value)
    except (RequestError, ValidationError):
        return False
    return True


@pytest.mark.parametrize("query", GET_QUERIES)
def test_the_query_model_accepts_what_the_edge_accepts(query: dict[str, str]) -> None:
    edge = _accepts(parse_recommend, {k: [v] for k, v in query.items()})
    assert _accepts(RecommendQuery.model_validate, query) == edge, query


@pytest.mark.parametrize("body", POST_BODIES)
def test_the_body_model_accepts_what_the_edge_accepts(body: dict[str, Any]) -> None:
    edge = _accepts(parse_recommend_body, body)
    assert _accepts(RecommendBody.model_validate, body) == edge, str(body)[:120]


@pytest.mark.parametrize(
    "batch",
    [
        payloads.event(),
        [payloads.event(), payloads.event("purchase", event_id="e2")],
        [],
        [payloads.event(event_id=f"e{n}") for n in range(EVENTS_MAX + 1)],
        [payloads.event(), payloads.event(colour="red")],
        payloads.event(event_type="wave"),
        "view",
    ],
    ids=["one", "two", "empty", "too-many", "unknown-field", "bad-type", "a-string"],
)
def test_the_event_batch_model_accepts_what_the_edge_accepts(batch: Any) -> None:
    edge = _accepts(parse_events, batch)
    assert _accepts(EventBatch.model_validate, batch) == edge


def test_the_docs_page_loads_only_files_of_this_server(app: Flask) -> None:
    client = app.test_client()
    resp = client.get("/docs")
    assert resp.status_code == 200 and resp.mimetype == "text/html"
    page = resp.get_data(as_text=True)
    assert '"url": "/openapi.json"' in page and '"validatorUrl": null' in page
    files = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert len(files) == 3, files
    for url in files:
        assert url.startswith("/docs/"), url  # never another host: the page works offline
        assert client.get(url).status_code == 200, url
    assert "Apache License" in client.get("/docs/LICENSE").get_data(as_text=True)
