"""The one way tests and benchmarks wait for something: :func:`eventually`.

A test that waits for a broker, a job or a consumer polls a condition until it holds or a timeout
passes, and on timeout says what it waited for and what it saw last, instead of a bare sleep that
is too short on a loaded machine and too long everywhere else. The clock and the sleep are
parameters, so the helper itself is tested without waiting.
"""

from __future__ import annotations

import reprlib
import time
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from collections.abc import Callable

T = TypeVar("T")

#: How the last value is shown in the timeout message: shortened, a poll may return a big dict.
_SHOWN = reprlib.Repr()
_SHOWN.maxstring = _SHOWN.maxother = 300
_SHOWN.maxlist = _SHOWN.maxdict = 20


def eventually(
    condition: Callable[[], T],
    timeout_s: float,
    *,
    interval_s: float = 0.5,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], object] = time.sleep,
    message: str | Callable[[], str] = "",
) -> T:
    """Call ``condition()`` until it returns a truthy value, and return that value.

    It is called at once, then every ``interval_s`` (the last sleep is cut to the deadline, so
    the final call is made at the timeout). An exception from ``condition`` propagates: catch in
    the condition what is expected while waiting. After ``timeout_s`` raises :class:`TimeoutError`
    with the last value and what was awaited: ``message`` (e.g. "the consumer lag to drain"), or
    a function called then, to show the state at the timeout (a log's tail, what still differs);
    by default the condition's name.
    """
    deadline = clock() + timeout_s
    checks = 0
    while True:
        value = condition()
        checks += 1
        if value:
            return value
        left = deadline - clock()
        if left <= 0:
            what = message() if callable(message) else message
            what = what or getattr(condition, "__qualname__", repr(condition))
            raise TimeoutError(
                f"waited {timeout_s:g} s ({checks} checks, last value {_SHOWN.repr(value)}) "
                f"for {what}"
            )
        sleep(min(interval_s, left))
