"""The event contract's attribution fields: ``context.request_id`` and ``context.position``.

A click on a recommended item echoes its list; both fields are optional, checked when present,
and a bad one is a one-line error naming the field and the fix, from the model, the replayer's
parser and serving's ``POST /events`` alike.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

import pytest

from lambdarec.events import REQUEST_ID_PATTERN, Event, Invalid, json_schema, parse_event
from tests.unit import payloads

if TYPE_CHECKING:
    from pathlib import Path

    from flask.testing import FlaskClient

REQUEST_ID = uuid.uuid4().hex


def _with(context: dict[str, Any] | None) -> dict[str, Any]:
    event = payloads.event("view")
    if context is not None:
        event["context"] = context
    return event


@pytest.mark.parametrize(
    "context",
    [
        None,
        {"page": "home"},
        {"request_id": REQUEST_ID},
        {"position": 0},
        {"request_id": REQUEST_ID, "position": 49, "page": "home"},
    ],
)
def test_a_click_may_carry_its_list(context: dict[str, Any] | None) -> None:
    event = parse_event(_with(context))
    assert isinstance(event, Event), event
    assert event.context == context
    # The wire form round-trips with the context untouched.
    again = parse_event(event.to_json())
    assert isinstance(again, Event) and again.context == context


@pytest.mark.parametrize(
    ("context", "field"),
    [
        ({"request_id": REQUEST_ID.upper()}, "context.request_id"),
        ({"request_id": REQUEST_ID[:-1]}, "context.request_id"),
        ({"request_id": REQUEST_ID + "0"}, "context.request_id"),
        ({"request_id": str(uuid.UUID(REQUEST_ID))}, "context.request_id"),  # with dashes
        ({"request_id": REQUEST_ID + "\n"}, "context.request_id"),
        ({"request_id": 12345}, "context.request_id"),
        ({"request_id": True}, "context.request_id"),
        ({"position": -1}, "context.position"),
        ({"position": 1.5}, "context.position"),
        ({"position": 2.0}, "context.position"),
        ({"position": "3"}, "context.position"),
        ({"position": True}, "context.position"),
        ({"request_id": REQUEST_ID, "position": -3}, "context.position"),
    ],
)
def test_a_malformed_list_reference_is_refused_naming_the_field(
    context: dict[str, Any], field: str
) -> None:
    problem = parse_event(_with(context))
    assert isinstance(problem, Invalid), problem
    assert problem.field == field
    assert "\n" not in str(problem)
    # The fix is in the message: what the value must be and where it comes from.
    assert "/recommend" in problem.reason and "must be" in problem.reason


def test_the_pattern_is_a_uuid4_hex() -> None:
    assert REQUEST_ID_PATTERN.fullmatch(uuid.uuid4().hex)
    assert not REQUEST_ID_PATTERN.fullmatch("g" * 32)


def test_the_json_schema_documents_both_fields() -> None:
    description = json_schema()["properties"]["context"]["description"]
    assert "request_id" in description and "position" in description
    assert "32 lowercase hex" in description and ">= 0" in description


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> FlaskClient:
    from lambdarec.harness.platform import free_ports, private_settings
    from lambdarec.recommend.snapshot import Snapshot
    from serving import create_app
    from serving.recommender import Recommender
    from serving.sinks import EventSink

    (closed_port,) = free_ports(1)
    state: Path = tmp_path_factory.mktemp("serving")
    settings = private_settings(state, kafka_bootstrap=f"127.0.0.1:{closed_port}", rate_limit_rps=0)
    recommender = Recommender(Snapshot.from_items({"i1": "c1"}, [("i1", 1.0)], []))
    app = create_app(
        settings, recommender, events=EventSink(settings, flush_timeout_s=0.3, backoff_s=30.0)
    )
    return app.test_client()


def test_the_api_page_documents_both_fields(client: FlaskClient) -> None:
    doc = client.get("/openapi.json").get_json()
    text = doc["paths"]["/events"]["post"]["description"]
    assert "`request_id`" in text and "`position`" in text
    context = doc["components"]["schemas"]["Event"]["properties"]["context"]
    assert "32 lowercase hex" in context["description"]


@pytest.mark.parametrize(
    ("context", "field"),
    [
        ({"request_id": "not-a-request"}, "context.request_id"),
        ({"position": -1}, "context.position"),
    ],
)
def test_post_events_answers_400_naming_the_field(
    client: FlaskClient, context: dict[str, Any], field: str
) -> None:
    resp = client.post("/events", json=[_with(None), _with(context)])
    assert resp.status_code == 400, resp.data
    error = resp.get_json()["error"]
    assert error["field"] == field and error["index"] == 1, error
    assert "Traceback" not in resp.get_data(as_text=True)
