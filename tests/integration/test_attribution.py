"""Online attribution on real engines: a private Kafka broker and the Flink mini-cluster running
include/flink/attribution.py.

One scenario of impressions (serving's records) and events (through the validating producer),
each event written to test one rule of the job: the request_id path (which beats a later
impression of the same item), the user+item path (the latest impression before the event, not a
later one), an event outside the window, an item never shown, a request_id whose list did not
hold the item (no fall back), a malformed request_id (treated as absent) and a duplicated
impression record. The expected rows are derived from the scenario's own records.

Ordering: the job's watermarks lag the newest record by 20 minutes (more than a scenario spans),
so no record of a burst is late whatever partition is read first; once the job's consumer group has committed every record
(a checkpoint), one "tick" impression and event 40 minutes on move both watermarks past the
scenario and the user+item joins emit. The last attributed event of the scenario (the sentinel)
reaching the committed Parquet archive proves a checkpoint after it: everything before it was
flushed to the topic, which is then read to its end.

A second scenario is split by a SIGKILL of the job: its impressions before, its events after the
restart from the newest checkpoint.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import uuid
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import orjson
import pyarrow.parquet as pq
import pytest

from lambdarec.events import format_ts
from lambdarec.harness.waiting import eventually

if TYPE_CHECKING:
    from collections.abc import Iterator

    from lambdarec.config import Settings
    from lambdarec.harness.speed import SpeedJob

pytestmark = [pytest.mark.integration, pytest.mark.slow]

WINDOW_S = 600
#: Watermark delay of the job in this test (see the module doc): more than a scenario's span.
DELAY_S = 1200
#: When the tick comes, after a scenario's start: its watermarks then pass the whole scenario.
TICK_S = 2400


# -- the scenario ------------------------------------------------------------------------------


class Scenario:
    """Impressions and events of one run (ids tagged so a rerun on a kept broker never mixes)."""

    def __init__(self, hours_ago: float) -> None:
        tag = uuid.uuid4().hex[:6]
        self.tag = tag
        self.t0 = (datetime.now(UTC) - timedelta(hours=hours_ago)).replace(microsecond=0)
        self.impressions: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []
        self.raw_events: list[tuple[str, dict[str, Any]]] = []  # (user, record) past validation
        u1, u2, u3, u9 = (f"{u}-{tag}" for u in ("u1", "u2", "u3", "u9"))
        i = {n: f"i{n}-{tag}" for n in (1, 2, 5, 7, 9, 99)}
        self.r1 = self.show(u1, "treatment", 0, [i[1], i[2], i[9] + "x"])
        self.r2 = self.show(u1, "treatment", 60, [i[2], i[9]])
        self.show_again(self.r1)  # a producer's redelivery: one row, one attribution
        self.r3 = self.show(u2, "control", 0, [i[1], i[9] + "y", i[5]], session=None)
        self.r4 = self.show(u2, "control", 200, [i[5]], session=None)
        self.r5 = self.show(u2, "control", 400, [i[7] + "z", i[1], i[9], i[5]])
        self.r6 = self.show(u3, "control", 0, [i[7]])
        self.r9 = self.show(u9, "control", 900, [i[1]])
        # (event id, user, item, type, price, seconds after t0, context)
        self.e_req = self.event("req", u1, i[2], "purchase", 20.0, 120, self.context(self.r1, 1))
        self.e_ui = self.event("ui", u2, i[5], "add_to_cart", 9.5, 300, None)
        self.event("late", u3, i[7], "view", None, WINDOW_S + 60, None)
        self.event("unshown", u1, i[99], "view", None, 130, None)
        self.event("nofallback", u1, i[9], "view", None, 140, self.context(self.r1, 2))
        self.e_bad = self.raw_event("badrid", u2, i[5], "view", 350, {"request_id": "NOT-HEX"})
        self.e_sentinel = self.event("sentinel", u9, i[1], "purchase", 5.0, 1000, None)
        self.expected = {
            self.e_req["event_id"]: self.row(self.e_req, self.r1, i[2], "request_id"),
            self.e_ui["event_id"]: self.row(self.e_ui, self.r4, i[5], "user_item"),
            self.e_bad["event_id"]: self.row(self.e_bad, self.r4, i[5], "user_item"),
            self.e_sentinel["event_id"]: self.row(self.e_sentinel, self.r9, i[1], "user_item"),
        }

    def at(self, seconds: float) -> str:
        return format_ts(self.t0 + timedelta(seconds=seconds))

    def show(
        self, user: str, variant: str, at_s: float, items: list[str], session: str | None = "s"
    ) -> dict[str, Any]:
        record = {
            "request_id": uuid.uuid4().hex,
            "ts": self.at(at_s),
            "user_id": user,
            "session_id": None if session is None else f"{session}-{user}",
            "variant": variant,
            "items": [
                {
                    "item_id": item,
                    "position": p,
                    "score": round(1.0 - p / 10, 3),
                    "source": "vector",
                }
                for p, item in enumerate(items)
            ],
            "degraded_parts": [],
            "features": {"n_events": 3},
        }
        self.impressions.append(record)
        return record

    def show_again(self, record: dict[str, Any]) -> None:
        self.impressions.append(record)

    @staticmethod
    def context(impression: dict[str, Any], position: int) -> dict[str, Any]:
        return {"request_id": impression["request_id"], "position": position, "page": "home"}

    def event(
        self,
        name: str,
        user: str,
        item: str,
        kind: str,
        price: float | None,
        at_s: float,
        context: dict[str, Any] | None,
    ) -> dict[str, Any]:
        record: dict[str, Any] = {
            "event_id": f"{name}-{self.tag}",
            "user_id": user,
            "session_id": f"s-{user}",
            "item_id": item,
            "event_type": kind,
            "ts": self.at(at_s),
        }
        if price is not None:
            record["price"] = price
        if context is not None:
            record["context"] = context
        self.events.append(record)
        return record

    def raw_event(
        self, name: str, user: str, item: str, kind: str, at_s: float, context: dict[str, Any]
    ) -> dict[str, Any]:
        """An event the contract refuses for its context alone, written to Kafka directly (a
        producer that skips validation): the job still reads it as a valid event."""
        record = {
            "event_id": f"{name}-{self.tag}",
            "user_id": user,
            "session_id": f"s-{user}",
            "item_id": item,
            "event_type": kind,
            "ts": self.at(at_s),
            "context": context,
        }
        self.raw_events.append((user, record))
        return record

    @staticmethod
    def row(
        event: dict[str, Any], impression: dict[str, Any], item: str, match: str
    ) -> dict[str, Any]:
        (shown,) = [s for s in impression["items"] if s["item_id"] == item]
        price = event.get("price")
        return {
            "event_id": event["event_id"],
            "event_ts": event["ts"],
            "event_type": event["event_type"],
            "user_id": event["user_id"],
            "session_id": event["session_id"],
            "item_id": item,
            "price": price,
            "revenue": price if event["event_type"] == "purchase" and price else 0.0,
            "request_id": impression["request_id"],
            "impression_ts": impression["ts"],
            "variant": impression["variant"],
            "position": shown["position"],
            "match": match,
        }

    def shown_rows(self) -> set[tuple[str, str, int, str]]:
        """(request_id, item_id, position, variant) of every distinct shown item."""
        return {
            (r["request_id"], s["item_id"], s["position"], r["variant"])
            for r in self.impressions
            for s in r["items"]
        }


# -- the job -----------------------------------------------------------------------------------


def _start_job(settings: Settings, extra: list[str]) -> SpeedJob:
    from lambdarec.attribution import attribution_command, attribution_env
    from lambdarec.config import get_settings
    from lambdarec.harness.platform import free_ports
    from lambdarec.harness.speed import SpeedJob
    from lambdarec.speed.jars import ensure_jars

    # The jars of the repository's state folder (the private one would resolve its own copy).
    jars = ensure_jars(get_settings())
    (rest_port,) = free_ports(1)
    command = attribution_command(
        settings, "--jars", str(jars), "--rest-port", str(rest_port), *extra
    )
    (settings.log_dir / "flink").mkdir(parents=True, exist_ok=True)
    log = settings.log_dir / "attribution.log"
    with log.open("ab") as out:
        process = subprocess.Popen(  # noqa: S603 - our own command line
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **attribution_env(settings)},
            start_new_session=True,
            cwd=settings.state_dir,
        )
    return SpeedJob(process, rest_port, log)


EXTRA = [
    "--starting-offsets",
    "earliest",
    "--checkpoint-interval-s",
    "2",
    "--out-of-orderness-s",
    str(DELAY_S),
    "--idle-timeout-s",
    "2",
]


def _wait_running(settings: Settings, job: SpeedJob) -> None:
    from lambdarec.attribution import attribution_running

    def running() -> bool:
        if job.process.poll() is not None:
            raise RuntimeError(f"the job exited ({job.process.returncode}):\n{job.tail()}")
        return attribution_running(settings, job.rest_port)

    eventually(running, 180, message=lambda: f"every task of the job to run; log:\n{job.tail()}")


@pytest.fixture(scope="module")
def attribution() -> Iterator[tuple[Settings, SpeedJob]]:
    from lambdarec.harness.platform import private_platform
    from lambdarec.streaming.kafka import ensure_topics

    with private_platform(["kafka"], attribution_window_s=WINDOW_S) as settings:
        ensure_topics(settings)
        job = _start_job(settings, EXTRA)
        try:
            _wait_running(settings, job)
            yield settings, job
        finally:
            job.kill(signal.SIGTERM)


# -- helpers -----------------------------------------------------------------------------------


def _produce(settings: Settings, scenario: Scenario) -> None:
    from lambdarec.events import Event
    from lambdarec.streaming.kafka import EventProducer, make_producer

    producer = make_producer(settings)
    for record in scenario.impressions:
        producer.produce(
            settings.topic_impressions, value=orjson.dumps(record), key=record["user_id"].encode()
        )
    for user, record in scenario.raw_events:
        producer.produce(settings.topic_events, value=orjson.dumps(record), key=user.encode())
    assert producer.flush(30) == 0
    with EventProducer(settings) as events:
        for record in scenario.events:
            assert isinstance(events.send_raw(record), Event), record
        stats = events.flush(30)
    assert stats.delivered == len(scenario.events) and stats.dead_lettered == 0, stats


def _ends(settings: Settings, topics: list[str]) -> dict[tuple[str, int], int]:
    from confluent_kafka import Consumer, TopicPartition

    from lambdarec.streaming.kafka import security_config

    probe = Consumer(
        {"bootstrap.servers": settings.bootstrap_servers, "group.id": "probe-ends"}
        | security_config(settings)
    )
    try:
        return {
            (topic, p): probe.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for topic in topics
            for p in range(settings.topic_partitions)
        }
    finally:
        probe.close()


#: COORDINATOR_LOAD_IN_PROGRESS, COORDINATOR_NOT_AVAILABLE, NOT_COORDINATOR.
_COORDINATOR_MOVES = (14, 15, 16)


def _committed_all(settings: Settings, ends: dict[tuple[str, int], int]) -> bool:
    """Whether the job's group has committed (on a checkpoint) every offset in ``ends``."""
    from confluent_kafka import Consumer, KafkaException, TopicPartition

    from lambdarec.streaming.kafka import security_config

    probe = Consumer(
        {
            "bootstrap.servers": settings.bootstrap_servers,
            "group.id": "lambdarec-attribution",
            "enable.auto.commit": False,
        }
        | security_config(settings)
    )
    try:
        parts = [TopicPartition(t, p) for t, p in ends]
        try:
            done = probe.committed(parts, timeout=10)
        except KafkaException as error:
            # A group coordinator that moves or loads (NOT_COORDINATOR and kin) says nothing yet.
            if error.args[0].retriable() or error.args[0].code() in _COORDINATOR_MOVES:
                return False
            raise
        return all(max(tp.offset, 0) >= ends[(tp.topic, tp.partition)] for tp in done)
    finally:
        probe.close()


def _read_topic(settings: Settings, topic: str) -> list[dict[str, Any]]:
    """Every record of ``topic`` up to its current end offsets."""
    from confluent_kafka import Consumer, TopicPartition

    from lambdarec.streaming.kafka import security_config

    ends = _ends(settings, [topic])
    consumer = Consumer(
        {
            "bootstrap.servers": settings.bootstrap_servers,
            "group.id": f"test-attributed-{uuid.uuid4().hex[:6]}",
            "enable.auto.commit": False,
        }
        | security_config(settings)
    )
    consumer.assign([TopicPartition(t, p, 0) for (t, p) in ends])
    rows: list[dict[str, Any]] = []
    position = dict.fromkeys(ends, 0)

    def caught_up() -> bool:
        for message in consumer.consume(num_messages=500, timeout=0.5):
            topic, partition, offset, value = (
                message.topic(),
                message.partition(),
                message.offset(),
                message.value(),
            )
            if message.error() is not None:
                raise AssertionError(f"reading {topic}: {message.error()}")
            assert topic is not None and partition is not None and offset is not None, message
            assert value is not None, f"a record without a value at {topic}/{partition}@{offset}"
            rows.append(orjson.loads(value))
            position[(topic, partition)] = offset + 1
        return all(position[k] >= end for k, end in ends.items())

    try:
        eventually(caught_up, 60, interval_s=0, message=f"{topic} read to its end offsets {ends}")
    finally:
        consumer.close()
    return rows


def _archived(settings: Settings, table: str) -> list[dict[str, Any]]:
    from lambdarec.attribution import archive_root, archived_dates
    from lambdarec.data import archive

    root = archive_root(settings) / table
    return [
        row
        for day in archived_dates(archive_root(settings), table)
        for f in archive.files(root, day)
        for row in pq.read_table(f).to_pylist()
    ]


def _wait_committed(settings: Settings, job: SpeedJob) -> None:
    ends = _ends(settings, [settings.topic_events, settings.topic_impressions])
    eventually(
        lambda: _committed_all(settings, ends),
        120,
        message=lambda: f"the job to commit every record so far {ends}; log:\n{job.tail()}",
    )


def _tick_and_wait(settings: Settings, job: SpeedJob, scenario: Scenario) -> Scenario:
    """Once the job has read the scenario, an impression and a view of an item not shown (not
    attributed), TICK_S after its start, move both watermarks past it; returns when the
    scenario's sentinel is in the committed archive (every earlier row is on the topic)."""
    _wait_committed(settings, job)
    tick = Scenario.__new__(Scenario)
    tick.t0, tick.impressions, tick.events, tick.raw_events = scenario.t0, [], [], []
    tick.tag = f"tick-{scenario.tag}"
    tick.show(f"u-{tick.tag}", "control", TICK_S, [f"i-{tick.tag}"])
    tick.event("view", f"u-{tick.tag}", f"other-{tick.tag}", "view", None, TICK_S, None)
    _produce(settings, tick)
    sentinel = scenario.e_sentinel["event_id"]
    eventually(
        lambda: any(r["event_id"] == sentinel for r in _archived(settings, "attributed")),
        120,
        message=lambda: f"the sentinel {sentinel} in the committed archive; log:\n{job.tail()}",
    )
    return tick


# -- the tests ---------------------------------------------------------------------------------


def test_events_are_attributed_to_the_impression_that_showed_them(
    attribution: tuple[Settings, SpeedJob],
) -> None:
    from lambdarec.attribution import archive_root, archived_dates, compact, read

    settings, job = attribution
    scenario = Scenario(hours_ago=3)
    _produce(settings, scenario)
    tick = _tick_and_wait(settings, job, scenario)
    want_shown = scenario.shown_rows() | tick.shown_rows()
    eventually(
        lambda: (
            len({(r["request_id"], r["item_id"]) for r in _archived(settings, "impressions")})
            >= len(want_shown)
        ),
        60,
        message=lambda: f"{len(want_shown)} shown items in the committed archive",
    )
    got = _read_topic(settings, settings.topic_attributed)
    ours = [r for r in got if r["event_id"].endswith(scenario.tag)]
    assert len(ours) == len({r["event_id"] for r in ours}), "one row per attributed event"
    assert {r["event_id"]: r for r in ours} == scenario.expected
    print(f"attributed: {sorted((r['match'], r['event_id']) for r in ours)}")
    assert len(got) == len(ours), "the tick (a view of an item its user was not shown) is not"
    assert job.process.poll() is None, job.tail()

    # The Parquet archives compacted into the lake tables of the contract.
    days = sorted(
        {
            *archived_dates(archive_root(settings), "attributed"),
            *archived_dates(archive_root(settings), "impressions"),
        }
    )
    for day in days:
        for table in ("impressions", "attributed"):
            compact(archive_root(settings), settings.lake_dir, table, day)
    attributed = read(settings.lake_dir, "attributed").to_pylist()
    assert {
        r["event_id"]: {
            **r,
            "event_ts": format_ts(r["event_ts"]),
            "impression_ts": format_ts(r["impression_ts"]),
        }
        for r in attributed
    } == scenario.expected
    impressions = read(settings.lake_dir, "impressions")
    shown = {
        (r["request_id"], r["item_id"], r["position"], r["variant"])
        for r in impressions.to_pylist()
    }
    assert impressions.num_rows == len(shown), "one row per shown item (the redelivery folded)"
    assert shown == want_shown
    by_key = {(r["request_id"], r["item_id"]): r for r in impressions.to_pylist()}
    first = scenario.r3["items"][0]
    row = by_key[(scenario.r3["request_id"], first["item_id"])]
    assert row["session_id"] is None and row["score"] == first["score"]
    assert format_ts(row["ts"]) == scenario.r3["ts"] and row["source"] == "vector"
    for path in (settings.lake_dir / "impressions", settings.lake_dir / "attributed"):
        assert all(p.suffix == ".parquet" for p in path.glob("date=*/*")), list(path.rglob("*"))


def test_each_join_and_the_unnest_run_once(attribution: tuple[Settings, SpeedJob]) -> None:
    """The three sinks share one plan of the impressions and of each join (see ``run`` in
    include/flink/attribution.py): the job's operators, from its REST API."""
    import requests

    from lambdarec.attribution import JOB_NAME
    from lambdarec.speed.job import find_job

    settings, job = attribution
    rest = f"http://{settings.bind_host}:{job.rest_port}"
    found = find_job(rest, JOB_NAME)
    assert found is not None, f"no {JOB_NAME} job at {rest}"
    plan = requests.get(f"{rest}/jobs/{found['jid']}/plan", timeout=10).json()["plan"]
    text = " ".join(node["description"] for node in plan["nodes"])
    print(text)
    counts = {
        op: len(re.findall(rf"\b{op}\(", text))
        for op in ("IntervalJoin", "TemporalJoin", "Correlate")
    }
    assert counts == {"IntervalJoin": 1, "TemporalJoin": 1, "Correlate": 1}, counts


def test_a_restarted_job_still_knows_the_impressions_it_read(
    attribution: tuple[Settings, SpeedJob],
) -> None:
    """Impressions read, the job killed (SIGKILL) and started again: it resumes from its newest
    checkpoint (Kafka offsets and state together), so the events that come afterwards are
    attributed to impressions it will not read again."""
    settings, job = attribution
    scenario = Scenario(hours_ago=2)
    events, raw_events = scenario.events, scenario.raw_events
    scenario.events, scenario.raw_events = [], []
    _produce(settings, scenario)  # the impressions alone
    _wait_committed(settings, job)
    job.kill(signal.SIGKILL)
    restarted = _start_job(settings, EXTRA)
    try:
        _wait_running(settings, restarted)
        assert "resuming from" in restarted.tail(400), restarted.tail()
        scenario.events, scenario.raw_events, scenario.impressions = events, raw_events, []
        _produce(settings, scenario)
        _tick_and_wait(settings, restarted, scenario)
        rows = [
            r
            for r in _read_topic(settings, settings.topic_attributed)
            if r["event_id"].endswith(scenario.tag)
        ]
        assert len(rows) == len({r["event_id"] for r in rows}), rows
        assert {r["event_id"]: r for r in rows} == scenario.expected
    finally:
        restarted.kill(signal.SIGTERM)
