"""Fault tolerance of the speed layer: SIGKILL the job (driver and mini-cluster JVM) in the middle
of a 200k-event replay, restart it from its last checkpoint, and check that nothing was lost or
counted twice: the raw archive holds every produced event exactly once and every session's
features in the online store equal an independent computation over the same events.

Its own broker and state folder (not the module fixture of test_speed_layer): the kill must not
disturb other tests.
"""

from __future__ import annotations

import signal
import threading
import time
from typing import TYPE_CHECKING, Any

import pandas as pd
import pytest

from lambdarec.harness.waiting import eventually
from lambdarec.speed.control import GROUP_ID
from tests.integration.test_speed_layer import _renamed, expected_session_features, online

if TYPE_CHECKING:
    from lambdarec.config import Settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EVENTS = 200_000


def _committed(settings: Settings) -> int:
    from confluent_kafka import Consumer, TopicPartition

    probe = Consumer(
        {
            "bootstrap.servers": settings.bootstrap_servers,
            "group.id": GROUP_ID,
            "enable.auto.commit": False,
        }
    )
    try:
        parts = [TopicPartition(settings.topic_events, p) for p in range(settings.topic_partitions)]
        return sum(max(tp.offset, 0) for tp in probe.committed(parts, timeout=10))
    finally:
        probe.close()


def _wrong_counts(
    settings: Settings, expected: dict[str, dict[str, Any]]
) -> dict[str, tuple[Any, Any]]:
    """Sessions whose counts online differ from ``expected``: (expected, online n_views) each."""
    sessions = list(expected)
    got: dict[str, dict[str, Any]] = {}
    for i in range(0, len(sessions), 2000):
        got.update(online(settings, sessions[i : i + 2000]))
    return {
        s: (want["n_views"], got.get(s, {}).get("n_views"))
        for s, want in expected.items()
        if any(
            want[k] != got.get(s, {}).get(k)
            for k in ("n_views", "n_carts", "n_removes", "n_purchases", "n_events_30min")
        )
    }


def _stream() -> pd.DataFrame:
    """200k real Taobao events: copies of the subset under new ids, each copy in time order."""
    from lambdarec.data.loaders import load_taobao

    base = load_taobao().sort_values("ts", kind="stable").reset_index(drop=True)
    copies = []
    n = 0
    while n < EVENTS:
        part = _renamed(base, f"k{len(copies)}").iloc[: EVENTS - n]
        copies.append(part)
        n += len(part)
    return pd.concat(copies, ignore_index=True)


def test_kill_and_restart_loses_nothing_and_double_counts_nothing() -> None:
    from lambdarec.data import archive
    from lambdarec.features.store import apply
    from lambdarec.harness.platform import private_platform
    from lambdarec.harness.speed import pusher_threads, start_job, wait_running
    from lambdarec.streaming.replay import replay

    events = _stream()
    expected = expected_session_features(events)
    extra = ["--starting-offsets", "earliest", "--checkpoint-interval-s", "3"]
    with private_platform(["kafka"], start_timeout_s=240) as settings:
        apply(settings)
        with pusher_threads(settings):
            job = start_job(settings, extra)
            try:
                wait_running(job, settings)
                produced: list[int] = []
                producer = threading.Thread(
                    target=lambda: produced.append(
                        replay([events], settings=settings, progress=False).produced
                    )
                )
                producer.start()

                # Kill once a checkpoint has committed part of the stream, well before the end.
                def progressed() -> bool:
                    if _committed(settings) >= EVENTS // 5:
                        return True
                    assert job.process.poll() is None, job.tail()
                    return False

                eventually(
                    progressed,
                    300,
                    message=lambda: f"a checkpoint past {EVENTS // 5:,} events:\n{job.tail()}",
                )
                at_kill = _committed(settings)
                job.kill(signal.SIGKILL)
                producer.join()
                assert produced == [EVENTS]
                assert at_kill < EVENTS, "the job finished before the kill: nothing was tested"

                restarted = start_job(settings, extra, name="speed-layer-restarted")
                try:
                    wait_running(restarted, settings)
                    log = restarted.log.read_text(errors="replace")
                    assert "resuming from" in log, "the restart did not restore the checkpoint"
                    eventually(
                        lambda: (
                            _committed(settings) >= EVENTS
                            and archive.count(settings.archive_dir) >= EVENTS
                        ),
                        600,
                        interval_s=1,
                        message=lambda: f"every event committed and archived:\n{restarted.tail()}",
                    )
                    time.sleep(3)  # one more checkpoint: anything extra would show now
                    assert archive.count(settings.archive_dir) == EVENTS, "archived exactly once"
                    assert archive.distinct_ids(settings.archive_dir) == EVENTS

                    wrong: dict[str, tuple[Any, Any]] = {}

                    def counts_right() -> bool:
                        nonlocal wrong
                        wrong = _wrong_counts(settings, expected)
                        return not wrong

                    eventually(
                        counts_right,
                        120,
                        interval_s=2,
                        message=lambda: (
                            f"every session's counts after the restart; {len(wrong)} of "
                            f"{len(expected)} are wrong (expected, online n_views): "
                            f"{dict(list(wrong.items())[:5])}"
                        ),
                    )
                finally:
                    restarted.kill(signal.SIGTERM)
            finally:
                job.kill(signal.SIGTERM)
