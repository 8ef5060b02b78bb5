"""``eventually``: polls until the condition holds, names what it awaited on timeout, never waits
longer than asked (a fake clock: no test here sleeps)."""

from __future__ import annotations

import pytest

from lambdarec.harness.waiting import eventually


class FakeClock:
    """A monotonic clock that only moves when the code under test sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_returns_the_first_truthy_value_without_sleeping_when_it_already_holds() -> None:
    clock = FakeClock()
    assert eventually(lambda: {"lag": 0}, 10, clock=clock, sleep=clock.sleep) == {"lag": 0}
    assert clock.sleeps == []


def test_polls_every_interval_until_the_condition_holds() -> None:
    clock = FakeClock()
    answers = iter([0, None, [], "ready"])
    got = eventually(lambda: next(answers), 10, interval_s=0.5, clock=clock, sleep=clock.sleep)
    assert got == "ready"
    assert clock.sleeps == [0.5, 0.5, 0.5]


def test_times_out_naming_what_was_awaited_and_the_last_value() -> None:
    clock = FakeClock()
    with pytest.raises(TimeoutError) as raised:
        eventually(
            lambda: 0, 2, interval_s=0.5, clock=clock, sleep=clock.sleep, message="the lag to drain"
        )
    assert str(raised.value) == "waited 2 s (5 checks, last value 0) for the lag to drain"
    assert clock.now == pytest.approx(1002.0)  # gave up at the timeout, not an interval later


def test_the_last_sleep_is_cut_to_the_deadline_and_the_condition_is_checked_there() -> None:
    clock = FakeClock()
    checked_at: list[float] = []

    def condition() -> bool:
        checked_at.append(clock.now - 1000.0)
        return False

    with pytest.raises(TimeoutError, match=r"\(4 checks, last value False\)"):
        eventually(condition, 2.5, interval_s=1.0, clock=clock, sleep=clock.sleep)
    assert clock.sleeps == [1.0, 1.0, 0.5]
    assert checked_at == [0.0, 1.0, 2.0, 2.5]


def test_a_long_last_value_is_shortened_and_the_condition_named_by_default() -> None:
    clock = FakeClock()

    def broker_answers() -> str:
        return ""

    with pytest.raises(TimeoutError, match=r"waited 1 s .* for .*broker_answers$"):
        eventually(broker_answers, 1, clock=clock, sleep=clock.sleep)

    class Pending:
        """A falsy answer with a long repr (a whole consumer-lag report, say)."""

        def __bool__(self) -> bool:
            return False

        def __repr__(self) -> str:
            return "Pending(" + "0, " * 5000 + ")"

    with pytest.raises(TimeoutError) as raised:
        eventually(Pending, 1, clock=clock, sleep=clock.sleep)
    assert "Pending(0, 0," in str(raised.value) and len(str(raised.value)) < 500


def test_a_message_function_shows_the_state_at_the_timeout() -> None:
    clock = FakeClock()
    seen: list[int] = []

    def lag() -> bool:
        seen.append(10 - len(seen))
        return False

    with pytest.raises(TimeoutError, match=r"for the lag to drain \(still 8 behind\)$"):
        eventually(
            lag,
            1,
            clock=clock,
            sleep=clock.sleep,
            message=lambda: f"the lag to drain (still {seen[-1]} behind)",
        )


def test_an_error_of_the_condition_is_not_swallowed() -> None:
    clock = FakeClock()

    def broken() -> bool:
        raise ConnectionError("refused")

    with pytest.raises(ConnectionError, match="refused"):
        eventually(broken, 10, clock=clock, sleep=clock.sleep)
    assert clock.sleeps == []
