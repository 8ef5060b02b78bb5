"""The feature pusher's delivery rules, on stand-ins for Kafka and the store (the logic alone;
the speed-layer integration tests run it against a real broker and Feast): offsets are committed
only after every row is stored or dead-lettered; a refused push is retried with back-off, never
skipped; one bad row goes alone to the dead-letter topic with its reason."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

import orjson
import pytest

from lambdarec.harness.platform import private_settings
from lambdarec.speed import pusher as P

if TYPE_CHECKING:
    from pathlib import Path


class Msg:
    def __init__(self, topic: str, key: bytes, value: bytes | None, offset: int) -> None:
        self._topic, self._key, self._value, self._offset = topic, key, value, offset

    def error(self) -> None:
        return None

    def topic(self) -> str:
        return self._topic

    def key(self) -> bytes:
        return self._key

    def value(self) -> bytes | None:
        return self._value

    def offset(self) -> int:
        return self._offset


class Consumer:
    """Hands out one batch, records commits."""

    def __init__(self, batch: list[Msg]) -> None:
        self.queue, self.commits = list(batch), 0

    def poll(self, timeout: float) -> Msg | None:
        return self.queue.pop(0) if self.queue else None

    def consume(self, num_messages: int, timeout: float) -> list[Msg]:
        out, self.queue = self.queue[:num_messages], self.queue[num_messages:]
        return out

    def commit(self, asynchronous: bool = True) -> None:
        self.commits += 1

    def close(self) -> None:
        pass


class Producer:
    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []

    def produce(self, topic: str, value: bytes) -> None:
        self.sent.append((topic, orjson.loads(value)))

    def flush(self, timeout: float) -> int:
        return 0


def _row(session: str, n_views: int) -> bytes:
    return orjson.dumps(
        {
            "session_id": session,
            "user_id": "u1",
            "last_viewed_items": ["i1"],
            "last_carted_items": [],
            "last_purchased_items": [],
            "n_views": n_views,
            "n_carts": 0,
            "n_removes": 0,
            "n_purchases": 0,
            "n_events_30min": n_views,
            "session_category": "c1",
            "session_avg_price": 9.5,
            "seconds_since_prev_event": None,
            "event_timestamp": "2024-05-01T12:00:00.000Z",
        }
    )


@pytest.fixture
def setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[P.FeaturePusher, list[Any]]:
    settings = private_settings(tmp_path)
    pusher = P.FeaturePusher(settings, views=(P.SESSION_FEATURES.name,))
    pusher._dead_letters = Producer()  # noqa: SLF001
    monkeypatch.setattr(P, "RETRY_FIRST_S", 0.01)
    monkeypatch.setattr(P, "RETRY_MAX_S", 0.04)
    return pusher, []


def test_a_refused_push_is_retried_until_stored_then_committed(
    setup: tuple[P.FeaturePusher, list[Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    pusher, written = setup
    topic = pusher.settings.topic_session_features
    pusher._consumer = Consumer(
        [Msg(topic, b"s1", _row("s1", 1), 0), Msg(topic, b"s2", _row("s2", 2), 1)]
    )  # noqa: SLF001
    fails = iter([True, True, True, False])

    def write(view: str, rows: list[Any], settings: object) -> int:
        if next(fails):
            raise ConnectionError("Redis is down")
        written.extend(rows)
        return len(rows)

    monkeypatch.setattr(P, "write_rows", write)
    assert pusher.run_once() == 2
    assert len(written) == 2 and pusher.stats.retries == 3
    assert pusher._consumer.commits == 1  # noqa: SLF001
    assert pusher.stats.store_down_s > 0 and pusher.stats.session_rows == 2


def test_a_stop_during_an_outage_commits_nothing(
    setup: tuple[P.FeaturePusher, list[Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    pusher, _ = setup
    topic = pusher.settings.topic_session_features
    consumer = Consumer([Msg(topic, b"s1", _row("s1", 1), 0)])
    pusher._consumer = consumer  # noqa: SLF001

    def write(view: str, rows: list[Any], settings: object) -> int:
        raise ConnectionError("Redis is down")

    monkeypatch.setattr(P, "write_rows", write)
    threading.Timer(0.2, pusher.stop).start()
    stats = pusher.run()
    assert consumer.commits == 0 and stats.retries >= 2 and stats.session_rows == 0


def test_a_bad_row_goes_alone_to_the_dead_letter_topic(
    setup: tuple[P.FeaturePusher, list[Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    pusher, written = setup
    topic = pusher.settings.topic_session_features
    missing = orjson.loads(_row("s3", 1))
    del missing["n_views"]
    pusher._consumer = Consumer(  # noqa: SLF001
        [
            Msg(topic, b"s1", _row("s1", 1), 0),
            Msg(topic, b"s2", b"{not json", 1),
            Msg(topic, b"s3", orjson.dumps(missing), 2),
            Msg(topic, b"s4", _row("s4", 4).replace(b'"n_carts":0', b'"n_carts":"many"'), 3),
            Msg(topic, b"s5", _row("s5", 5), 4),
        ]
    )
    monkeypatch.setattr(
        P, "write_rows", lambda view, rows, settings: written.extend(rows) or len(rows)
    )
    assert pusher.run_once() == 5
    assert len(written) == 2  # s1 and s5: the bad rows did not take their batch with them
    sent = pusher._dead_letters.sent  # type: ignore[union-attr]  # noqa: SLF001
    assert [t for t, _ in sent] == [pusher.settings.topic_dead_letter] * 3
    reasons = [r["reason"] for _, r in sent]
    assert all(r.startswith("$: session_features row: ") for r in reasons)
    assert reasons[1].endswith("lacks column(s) n_views") and "many" in reasons[2]
    assert sent[0][1]["raw"] == "{not json" and sent[0][1]["source"] == P.DEAD_LETTER_SOURCE
    assert pusher.stats.dead_letters == 3 and pusher._consumer.commits == 1  # noqa: SLF001


def test_a_pusher_on_an_unapplied_registry_refuses_to_start_and_prepare_applies_it(
    tmp_path: Path,
) -> None:
    # Reading the registry (any service listing its views) leaves an empty registry file: the
    # platform applied only when the file was missing, so a pusher started after such a read had
    # every push refused and retried for ever, its consumer prefetching the backlog meanwhile.
    from lambdarec.features.paths import feast_paths
    from lambdarec.features.store import apply, missing_views

    settings = private_settings(tmp_path)
    views = ["session_features", "trending_items"]
    assert missing_views(views, settings) == views
    assert feast_paths(settings).registry.is_file(), "the read left a registry file"
    pusher = P.FeaturePusher(settings, views=("session_features",))
    with pytest.raises(RuntimeError, match="no session_features view: apply the feature repo"):
        pusher.open()
    apply(settings)
    assert missing_views(views, settings) == []
