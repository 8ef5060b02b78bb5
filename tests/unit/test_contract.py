"""The event contract's copies agree with ``lambdarec.events``.

The rules live once in Python (:mod:`lambdarec.events`); the Flink job checks events in the JVM
with its own copy (ParseEvent.java, read here as text: no JVM needed), the Flink program has a
skew default, and serving's OpenAPI document describes the ids. Each test names both places to change.
The Python consumers import the rules, so they are checked on behaviour instead: every checker
accepts exactly the ids the model accepts.
"""

from __future__ import annotations

import importlib.util
import re
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest

from lambdarec.data.canonical import check_canonical, empty_frame
from lambdarec.events import (
    ID_PATTERN,
    MAX_CATEGORY_LEN,
    MAX_FUTURE_SKEW,
    MAX_ID_LEN,
    MAX_PRICE,
    MIN_TS_MS,
    RETRY_HORIZON,
    SCHEMA_VERSION,
    Event,
    EventType,
    Invalid,
    parse_event,
)
from lambdarec.streaming.replay import encode_events

REPO = Path(__file__).resolve().parents[2]
PARSE_EVENT = REPO / "include" / "flink" / "java" / "io" / "lambdarec" / "flink" / "ParseEvent.java"
SPEED_JOB = REPO / "include" / "flink" / "speed_layer.py"
EVENTS_PY = "include/lambdarec/events.py"


def _java() -> str:
    return PARSE_EVENT.read_text()


def _java_find(pattern: str, what: str) -> re.Match[str]:
    found = re.search(pattern, _java(), re.DOTALL)
    assert found, (
        f"cannot find {what} in {PARSE_EVENT.relative_to(REPO)} (pattern {pattern!r}); "
        "this test reads the Java source: update it along with the Java"
    )
    return found


def _java_int(text: str) -> int:
    return int(text.replace("_", "").rstrip("L"))


def _differ(java: object, name: str, python: object) -> str:
    return (
        f"{PARSE_EVENT.relative_to(REPO)} has {java}, {EVENTS_PY} {name} is {python}: "
        "the Flink job and the Python contract must accept the same events; change both"
    )


def test_java_id_rule_is_the_contracts() -> None:
    body = _java_find(r"static boolean isId\(String s\) \{(.*?)\n    \}", "isId()").group(1)
    lengths = re.search(r"n < (\d+) \|\| n > (\d+)", body)
    assert lengths, "isId() no longer checks 'n < MIN || n > MAX'; update this test"
    assert (int(lengths.group(1)), int(lengths.group(2))) == (1, MAX_ID_LEN), _differ(
        f"ids of {lengths.group(1)}..{lengths.group(2)} chars", "MAX_ID_LEN", MAX_ID_LEN
    )
    allowed: set[str] = set()
    for low, high in re.findall(r"c >= '(.)' && c <= '(.)'", body):
        allowed |= {chr(c) for c in range(ord(low), ord(high) + 1)}
    allowed |= set(re.findall(r"c == '(.)'", body))
    python = {chr(c) for c in range(0x10000) if ID_PATTERN.fullmatch(chr(c))}
    assert allowed == python, _differ(
        f"id characters {''.join(sorted(allowed))!r}", "ID_REGEX", repr("".join(sorted(python)))
    )


def test_java_limits_are_the_contracts() -> None:
    skew = _java_int(_java_find(r"maxFutureSkewMs == null \? ([\d_]+L?)", "the skew").group(1))
    assert skew == MAX_FUTURE_SKEW.total_seconds() * 1000, _differ(
        f"a default skew of {skew} ms", "MAX_FUTURE_SKEW", MAX_FUTURE_SKEW
    )
    earliest = _java_int(_java_find(r"MIN_TS_MILLIS = ([\d_]+L?);", "the earliest ts").group(1))
    assert earliest == MIN_TS_MS, _differ(f"MIN_TS_MILLIS {earliest}", "MIN_TS_MS", MIN_TS_MS)
    category = int(_java_find(r"category\.length\(\) > (\d+)", "the category limit").group(1))
    assert category == MAX_CATEGORY_LEN, _differ(
        f"categories up to {category} chars", "MAX_CATEGORY_LEN", MAX_CATEGORY_LEN
    )
    low, high = _java_find(r"price < ([\d_]+) \|\| price > ([\d_]+)", "the price range").groups()
    assert (_java_int(low), _java_int(high)) == (0, MAX_PRICE), _differ(
        f"prices in [{low}, {high}]", "MAX_PRICE", MAX_PRICE
    )
    version = _java_find(r'!version\.equals\("(\d+)"\)', "the schema version").group(1)
    assert int(version) == SCHEMA_VERSION, _differ(
        f"schema_version {version}", "SCHEMA_VERSION", SCHEMA_VERSION
    )
    switch = _java_find(r"switch \(eventType\) \{(.*?)default:", "the event types").group(1)
    types = set(re.findall(r'case "(\w+)":', switch))
    assert types == {e.value for e in EventType}, _differ(
        f"event types {sorted(types)}", "EventType", sorted(e.value for e in EventType)
    )


def test_flink_program_skew_default_is_the_contracts() -> None:
    spec = importlib.util.spec_from_file_location("lambdarec_speed_layer_job", SPEED_JOB)
    assert spec is not None and spec.loader is not None
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    skew_s = job.parse_args([]).max_future_skew_s
    assert skew_s == MAX_FUTURE_SKEW.total_seconds(), (
        f"{SPEED_JOB.relative_to(REPO)} --max-future-skew-s defaults to {skew_s} s, "
        f"{EVENTS_PY} MAX_FUTURE_SKEW is {MAX_FUTURE_SKEW}; change both"
    )


def test_openapi_ids_are_the_contracts(tmp_path: Path) -> None:
    from lambdarec.events import ID_REGEX
    from lambdarec.harness.platform import private_settings
    from lambdarec.recommend.snapshot import Snapshot
    from serving import create_app
    from serving.apidoc import document
    from serving.recommender import Recommender

    settings = private_settings(tmp_path, api_keys="")
    app = create_app(settings, Recommender(Snapshot.from_items({"i1": "c1"}, [])), load_model=False)
    params = document(app)["paths"]["/recommend"]["get"]["parameters"]
    ids = [p for p in params if p["name"] in ("user_id", "session_id")]
    assert len(ids) == 2
    for param in ids:
        schema = param["schema"]
        assert (schema["pattern"], schema["minLength"], schema["maxLength"]) == (
            ID_REGEX,
            1,
            MAX_ID_LEN,
        ), f"serving/schemas.py describes {param['name']} as {schema}; {EVENTS_PY} says otherwise"


IDS = [
    "u1",
    "a:b.c-d_E9",
    "x" * MAX_ID_LEN,
    "x" * (MAX_ID_LEN + 1),
    "",
    "u 1",
    "u1\n",
    "\nu1",
    "u/1",
    "é",
    "\u0661",  # ARABIC-INDIC DIGIT ONE: not an ASCII digit
    "Ａ",  # FULLWIDTH A
]


def _model_accepts(value: str) -> bool:
    raw = {
        "event_id": "e1",
        "user_id": value,
        "session_id": "s1",
        "item_id": "i1",
        "event_type": "view",
        "ts": "2024-05-01T12:00:00.000Z",
    }
    return isinstance(parse_event(raw, now=datetime(2024, 5, 1, 12, tzinfo=UTC)), Event)


def _frame(user_id: str) -> pd.DataFrame:
    row = pd.DataFrame(
        {
            "event_id": ["e1"],
            "user_id": [user_id],
            "session_id": ["s1"],
            "item_id": ["i1"],
            "event_type": ["view"],
            "category": ["c"],
            "price": [1.0],
            "ts": pd.to_datetime(["2024-05-01T12:00:00Z"]).astype("datetime64[ms, UTC]"),
        }
    )
    return pd.concat([empty_frame(), row], ignore_index=True)


def _canonical_accepts(value: str) -> bool:
    try:
        check_canonical(_frame(value))
    except ValueError:
        return False
    return True


def _replay_accepts(value: str) -> bool:
    pairs, bad = encode_events(_frame(value))
    assert len(pairs) + len(bad) == 1
    if bad:
        assert isinstance(bad[0][1], Invalid)
    return bool(pairs)


def _serving_accepts(value: str) -> bool:
    from serving.validation import RequestError, check_id

    try:
        check_id("user_id", value)
    except RequestError:
        return False
    return True


@pytest.mark.parametrize("value", IDS)
def test_every_python_checker_accepts_exactly_the_models_ids(value: str) -> None:
    expected = _model_accepts(value)
    got = {
        "lambdarec.data.canonical.check_canonical": _canonical_accepts(value),
        "lambdarec.streaming.replay.encode_events": _replay_accepts(value),
        "serving.validation.check_id": _serving_accepts(value),
    }
    assert got == dict.fromkeys(got, expected), f"id {value!r}: the Event model says {expected}"


def test_the_speed_layer_restarts_without_a_cap() -> None:
    """An outage of any length is waited out with back-off; a fixed number of restarts used to
    leave the job failed for good after ~15 s of a broker restart."""
    spec = importlib.util.spec_from_file_location("lambdarec_speed_layer_job", SPEED_JOB)
    assert spec is not None and spec.loader is not None
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    conf = job.flink_config(job.parse_args([]))
    assert conf["restart-strategy.type"] == "exponential-delay"
    assert (
        int(conf["restart-strategy.exponential-delay.attempts-before-reset-backoff"]) == 2**31 - 1
    )
    assert conf["restart-strategy.exponential-delay.max-backoff"] == "1 min"


def test_the_speed_layer_remembers_event_ids_for_the_retry_horizon() -> None:
    """The job drops a copy of an event_id within --dedup-ttl-s of the first: at least the
    contract's retry horizon (a shorter one is refused), set on the deduplication's state alone
    in the compiled plan (the job-wide TTL would keep every id for the sessions' hours)."""
    import json

    from lambdarec.config import Settings

    spec = importlib.util.spec_from_file_location("lambdarec_speed_layer_job", SPEED_JOB)
    assert spec is not None and spec.loader is not None
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    horizon_s = RETRY_HORIZON.total_seconds()
    assert job.RETRY_HORIZON_S == horizon_s == job.parse_args([]).dedup_ttl_s, (
        f"{SPEED_JOB.relative_to(REPO)} RETRY_HORIZON_S is {job.RETRY_HORIZON_S} s, "
        f"{EVENTS_PY} RETRY_HORIZON is {RETRY_HORIZON}; change both"
    )
    assert Settings().speed_dedup_ttl_s == horizon_s
    with pytest.raises(ValueError, match="speed_dedup_ttl_s"):
        Settings(speed_dedup_ttl_s=horizon_s - 1)
    with pytest.raises(SystemExit):
        job.parse_args(["--dedup-ttl-s", str(horizon_s - 1)])

    plan = {
        "nodes": [
            {"id": 1, "type": "stream-exec-calc_1"},
            {"id": 2, "type": "stream-exec-deduplicate_1", "state": [{"index": 0, "ttl": "6 h"}]},
            {"id": 3, "type": "stream-exec-over-aggregate_1", "state": [{"ttl": "6 h"}]},
        ]
    }
    nodes = json.loads(job.with_dedup_ttl(json.dumps(plan), 600))["nodes"]
    assert [n.get("state") for n in nodes] == [
        None,
        [{"index": 0, "ttl": "600000 ms"}],
        [{"ttl": "6 h"}],
    ]
