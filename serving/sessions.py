"""Which user a session belongs to: the first user seen on it, so nobody writes into or reads
from another user's session by reusing its id.

The record is per worker process and bounded (least recently used sessions forgotten first).
A session this worker does not know is looked up in the speed layer's session features (which
carry the session's user_id, whichever worker took its events), one online read per new session
per worker. What that still lets through: a session whose first events have not reached the
online store yet (the speed layer's lag, about a second) when another worker takes another
user's request on it, and everything while the online store is down (the worker's own record
only).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence


class SessionOwners:
    def __init__(self, max_sessions: int = 100_000) -> None:
        self.max_sessions = max_sessions
        self._owners: OrderedDict[str, str] = OrderedDict()
        self._lock = threading.Lock()

    def claim(
        self,
        pairs: Iterable[tuple[str, str]],
        lookup: Callable[[Sequence[str]], dict[str, str]] | None = None,
    ) -> str | None:
        """Bind each (session_id, user_id) unless one session belongs to another user (in the
        record, in ``lookup``'s answer for the sessions not in the record, or in ``pairs``
        itself): then bind nothing and return that session id."""
        pairs = list(pairs)
        found: dict[str, str] = {}
        if lookup is not None:
            with self._lock:
                unknown = sorted({sid for sid, _ in pairs if sid not in self._owners})
            # Outside the lock: a read of the online store must not hold up other requests.
            found = lookup(unknown) if unknown else {}
        with self._lock:
            wanted: dict[str, str] = {}
            for session_id, user_id in pairs:
                owner = (
                    wanted.get(session_id) or self._owners.get(session_id) or found.get(session_id)
                )
                if owner is not None and owner != user_id:
                    return session_id
                wanted[session_id] = user_id
            for session_id, user_id in wanted.items():
                self._owners.pop(session_id, None)
                self._owners[session_id] = user_id
            while len(self._owners) > self.max_sessions:
                self._owners.popitem(last=False)
        return None

    def __len__(self) -> int:
        return len(self._owners)
