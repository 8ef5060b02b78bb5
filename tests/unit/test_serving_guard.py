"""The dependency guard: timeouts, back-off after failures in a row, inline calls.

The guard's clock is injected: back-off windows pass by advancing a fake clock, and an inline
call "takes" its time by advancing it, so nothing here sleeps through a back-off.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import pytest

from serving.guard import DependencyDown, Guard

if TYPE_CHECKING:
    from collections.abc import Iterator


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(2) as executor:
        yield executor


def test_guard_times_out_then_backs_off(pool: ThreadPoolExecutor) -> None:
    clock = Clock()
    release = threading.Event()
    calls: list[int] = []

    def hung() -> int:
        calls.append(1)
        release.wait(10)
        return 1

    guard = Guard("online_store", pool, timeout_s=0.02, backoff_s=0.3, clock=clock)
    try:
        with pytest.raises(DependencyDown, match="timed out"):
            guard.call(hung)
        with pytest.raises(DependencyDown, match="backing off"):
            guard.call(hung)
        assert len(calls) == 1  # skipped while backing off: no second timeout paid
        clock.advance(0.35)
        assert guard.call(lambda: 7) == 7  # recovers by itself
    finally:
        release.set()


def test_guard_backs_off_only_after_failures_in_a_row(pool: ThreadPoolExecutor) -> None:
    clock = Clock()
    calls: list[int] = []

    def broken() -> int:
        calls.append(1)
        raise ConnectionError("refused")

    guard = Guard("index", pool, timeout_s=0.5, backoff_s=0.3, trip_after=3, clock=clock)
    for _ in range(2):  # isolated failures degrade their own call only
        with pytest.raises(DependencyDown, match="refused"):
            guard.call(broken)
        assert guard.call(lambda: 7) == 7  # a success resets the count
    for _ in range(3):
        with pytest.raises(DependencyDown, match="refused"):
            guard.call(broken)
    with pytest.raises(DependencyDown, match="backing off"):
        guard.call(broken)
    assert len(calls) == 5
    clock.advance(0.35)
    with pytest.raises(DependencyDown, match="refused"):  # one probe, still failing:
        guard.call(broken)
    with pytest.raises(DependencyDown, match="backing off"):  # skipped again at once
        guard.call(broken)
    clock.advance(0.35)
    assert guard.call(lambda: 8) == 8
    assert len(calls) == 6


def test_an_inline_guard_keeps_late_answers_and_backs_off_a_part_that_stays_slow(
    pool: ThreadPoolExecutor,
) -> None:
    """The query tower and the ranker run in the request's thread: a failure degrades, an
    overrun keeps its answer, and a part over budget three times in a row is skipped."""
    clock = Clock()
    threads: list[str] = []

    def slow() -> int:
        threads.append(threading.current_thread().name)
        clock.advance(0.03)  # three times its 0.01 s budget
        return 1

    def broken() -> int:
        raise ValueError("bad row")

    guard = Guard(
        "ranker", pool, timeout_s=0.01, backoff_s=0.3, trip_after=3, inline=True, clock=clock
    )
    with pytest.raises(DependencyDown, match="bad row"):
        guard.call(broken)
    assert guard.call(lambda: 5) == 5  # a success resets the count
    assert [guard.call(slow) for _ in range(3)] == [1, 1, 1]  # late answers are kept
    assert threads == [threading.current_thread().name] * 3  # no hand-off to the pool
    assert "over its" in guard.last_error
    with pytest.raises(DependencyDown, match="backing off"):
        guard.call(slow)
    assert len(threads) == 3
    clock.advance(0.35)
    assert guard.call(lambda: 9) == 9  # recovers by itself
    # Concurrent inline calls are not capped like hand-offs (each is its caller's own work).
    guard.max_inflight = 1
    barrier = threading.Barrier(3)
    results: list[int] = []

    def request() -> None:
        barrier.wait()
        results.append(guard.call(lambda: 2))

    callers = [threading.Thread(target=request) for _ in range(3)]
    for t in callers:
        t.start()
    for t in callers:
        t.join()
    assert results == [2, 2, 2]


def test_inline_if_sends_calls_to_the_pool_until_it_holds(pool: ThreadPoolExecutor) -> None:
    """An index whose client is not connected yet (connecting can take seconds) is called on
    the pool, whose wait the request abandons on timeout; once connected, inline."""
    connected = False
    guard = Guard("index", pool, timeout_s=1.0, inline=True, inline_if=lambda: connected)
    assert guard.call(lambda: threading.current_thread().name).startswith("ThreadPoolExecutor")
    connected = True
    assert guard.call(lambda: threading.current_thread().name) == threading.current_thread().name
