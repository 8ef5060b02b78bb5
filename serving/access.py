"""Who may call the API and how often: API keys with scopes, and a token bucket per caller.

``@guarded("events")`` on a view answers 401 (no or unknown key, with ``WWW-Authenticate``), 403
(a key without the scope) or 429 (over the rate, with ``Retry-After``) before the view reads the
body, so a refused request costs no parsing and changes nothing. Without keys configured the API
is open and the rate limit applies per client IP (``request.remote_addr``: behind a reverse proxy
that is the proxy's address unless the app is told to trust a forwarded header).

The buckets live in this process: under gunicorn each worker limits on its own, so a caller may
reach up to workers x rate in total.
"""

from __future__ import annotations

import functools
import hmac
import math
import threading
import time
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, TypeVar

from flask import current_app, request

from lambdarec.apikeys import hash_secret, parse_entries
from serving.validation import RequestError

if TYPE_CHECKING:
    from collections.abc import Callable

    from lambdarec.apikeys import ApiKey
    from lambdarec.config import Settings
    from serving.metrics import Metrics

F = TypeVar("F", bound="Callable[..., Any]")

#: Where the app factory keeps the app's :class:`Access`.
EXTENSION = "lambdarec.access"
#: Callers whose buckets are kept; the least recently seen beyond it start afresh (full).
MAX_BUCKETS = 100_000
_HOW = "send it as 'Authorization: Bearer <key>' or 'X-API-Key: <key>'"


class Refused(RequestError):
    """A RequestError carrying response headers (WWW-Authenticate, Retry-After)."""

    def __init__(self, message: str, status: int, headers: dict[str, str]) -> None:
        super().__init__("$", message, status=status)
        self.headers = headers


class RateLimiter:
    """A token bucket per caller: ``burst`` at once, refilled at ``rate`` a second."""

    def __init__(
        self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate, self.burst, self.clock = rate, burst, clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    def take(self, caller: str) -> float:
        """0 when ``caller`` may proceed (a token is spent), else the seconds until it may."""
        if self.rate <= 0:
            return 0.0
        now = self.clock()
        with self._lock:
            tokens, then = self._buckets.pop(caller, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - then) * self.rate)
            wait = 0.0
            if tokens >= 1:
                tokens -= 1
            else:
                wait = (1 - tokens) / self.rate
            self._buckets[caller] = (tokens, now)
            while len(self._buckets) > MAX_BUCKETS:
                self._buckets.popitem(last=False)
        return wait


class Access:
    """The configured keys and the rate limiter of one app."""

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.metrics = metrics
        self.keys: list[ApiKey] = parse_entries(settings.api_keys)
        self.limiter = RateLimiter(settings.rate_limit_rps, settings.rate_limit_burst, clock)

    @property
    def open(self) -> bool:
        return not self.keys

    def authenticate(self, presented: str | None) -> ApiKey:
        if not presented:
            raise _unauthorized(f"no API key; {_HOW}")
        digest = bytes.fromhex(hash_secret(presented))
        found: ApiKey | None = None
        # Every key is compared, each in constant time, so the timing says nothing of which
        # (or whether one) matched.
        for key in self.keys:
            if hmac.compare_digest(digest, key.digest):
                found = key
        if found is None:
            raise _unauthorized("unknown API key; ask for one minted by `lambdarec api-key new`")
        return found

    def check(self, scope: str) -> None:
        if self.open:
            caller = f"ip:{request.remote_addr}"
        else:
            key = self.authenticate(_presented_key())
            if scope not in key.scopes:
                raise Refused(
                    f"API key {key.name!r} lacks the {scope!r} scope; use a key minted with "
                    f"--scopes {scope}",
                    403,
                    {},
                )
            caller = f"key:{key.name}"
        wait = self.limiter.take(caller)
        if wait > 0:
            if self.metrics is not None:
                self.metrics.rate_limited.inc()
            raise Refused(
                f"over the rate limit of {self.limiter.rate:g} requests/s (burst "
                f"{self.limiter.burst}); retry after the Retry-After seconds",
                429,
                {"Retry-After": str(max(1, math.ceil(wait)))},
            )


def _unauthorized(message: str) -> Refused:
    return Refused(message, 401, {"WWW-Authenticate": 'Bearer realm="lambdarec"'})


def _presented_key() -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return request.headers.get("X-API-Key") or None


def guarded(scope: str) -> Callable[[F], F]:
    """Refuse the request (401/403/429) unless its caller may use ``scope`` now."""

    def wrap(view: F) -> F:
        @functools.wraps(view)
        def inner(*args: Any, **kwargs: Any) -> Any:
            access: Access = current_app.extensions[EXTENSION]
            access.check(scope)
            return view(*args, **kwargs)

        return inner  # type: ignore[return-value]

    return wrap
