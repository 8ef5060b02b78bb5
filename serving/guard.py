"""The dependency guard: every call serving makes to a dependency goes through one.

A :class:`Guard` calls one part with a timeout; after ``trip_after`` failures in a row it skips
the part for ``backoff_s`` (then one call probes it: a failure skips it again, a success resets
the count). So a dead store costs a few timeouts, not one per request; a single slow call degrades
only its own request; and the store comes back by itself. A skipped or failed call raises
:class:`DependencyDown`, which the pipeline reads as "this part is degraded".

Two ways to call: handed to a pool thread that the request stops waiting for on timeout (a Redis
read, an index still connecting), or *inline*, in the request's thread, for in-process work (the
query tower, the ranker: a thread cannot stop a running computation, so a hand-off only let the
request go on while it kept burning CPU) and for calls that carry their own deadline (a connected
vector index: the timeout is its gRPC deadline; a SQLite read). Each hand-off cost ~0.2 ms of
CPU. An inline call that overruns keeps its answer but counts as a failure, so a part that is
slow ``trip_after`` times in a row is skipped for the back-off.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import TimeoutError as FutureTimeout
from typing import TYPE_CHECKING, Any, TypeVar

from lambdarec.recommend.types import PartUnavailable

if TYPE_CHECKING:
    from collections.abc import Callable
    from concurrent.futures import ThreadPoolExecutor

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Failures in a row before a dependency is skipped for the back-off. One slow call (a busy
#: host, a GC pause) degrades its own request only; at 1, each one blanked the part for every
#: request of the next 2 s (about 50 answers in the fault test, 400 at 200 requests/s).
TRIP_AFTER = 3


class DependencyDown(PartUnavailable):
    """A dependency is absent, failed, timed out or is backing off after a recent failure."""


class Guard:
    """Calls one dependency with a timeout and backs off after failures in a row."""

    def __init__(
        self,
        name: str,
        executor: ThreadPoolExecutor,
        timeout_s: float,
        backoff_s: float = 2.0,
        trip_after: int = 1,
        *,
        inline: bool = False,
        inline_if: Callable[[], bool] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        #: Run in the caller's thread (see the module doc); ``inline_if`` narrows it per call
        #: (an index runs inline only once its client is connected).
        self.inline = inline
        self.inline_if = inline_if
        self.timeout_s = timeout_s
        self.backoff_s = backoff_s
        self.trip_after = trip_after
        self.clock = clock
        self._failures = 0  # in a row
        self._executor = executor
        self._down_until = 0.0
        self.last_error = ""
        #: Calls still running (timed-out calls keep running): capped so a hung dependency
        #: cannot take every worker thread.
        self._inflight = 0
        self._inflight_lock = threading.Lock()
        self.max_inflight = 4

    @property
    def down(self) -> bool:
        return self.clock() < self._down_until

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` within the timeout, or :class:`DependencyDown`."""
        if self.down:
            raise DependencyDown(f"{self.name} backing off after: {self.last_error}")
        if self.inline and (self.inline_if is None or self.inline_if()):
            return self._call_inline(fn, *args)
        with self._inflight_lock:
            if self._inflight >= self.max_inflight:
                raise DependencyDown(f"{self.name}: {self._inflight} earlier calls still running")
            self._inflight += 1
        future = self._executor.submit(fn, *args)
        future.add_done_callback(self._done)
        try:
            result = future.result(timeout=self.timeout_s)
        except FutureTimeout:
            future.cancel()
            self._fail(f"timed out after {self.timeout_s:.3f} s")
        except Exception as exc:  # noqa: BLE001 - any failure of a dependency degrades
            self._fail(f"{type(exc).__name__}: {exc}"[:300])
        else:
            self._failures = 0
            return result
        raise DependencyDown(f"{self.name}: {self.last_error}")

    def _call_inline(self, fn: Callable[..., T], *args: Any) -> T:
        t0 = self.clock()
        try:
            result = fn(*args)
        except Exception as exc:  # noqa: BLE001 - any failure of a part degrades
            self._fail(f"{type(exc).__name__}: {exc}"[:300])
            raise DependencyDown(f"{self.name}: {self.last_error}") from None
        elapsed = self.clock() - t0
        if elapsed > self.timeout_s:
            self._fail(f"took {elapsed:.3f} s, over its {self.timeout_s:.3f} s budget")
        else:
            self._failures = 0
        return result

    def _done(self, _future: object) -> None:
        with self._inflight_lock:
            self._inflight -= 1

    def _fail(self, reason: str) -> None:
        self.last_error = reason
        with self._inflight_lock:
            self._failures += 1
            failures = self._failures
        if failures < self.trip_after:
            log.info("%s failed (%s), %d in a row", self.name, reason, failures)
            return
        if not self.down:
            log.warning("%s failed (%s); skipping it for %.1f s", self.name, reason, self.backoff_s)
        self._down_until = self.clock() + self.backoff_s
