"""Which user a session belongs to: the first user seen on it, so nobody writes into or reads
from another user's session by reusing its id.

The record is per worker process and bounded (least recently used sessions forgotten first):
under gunicorn a session first used on one worker is unknown to the others, and a forgotten
session can be taken by anyone. It is a first line, not a guarantee; the speed layer's session
features (which carry the session's user_id) are the shared record a stronger check would read.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterable


class SessionOwners:
    def __init__(self, max_sessions: int = 100_000) -> None:
        self.max_sessions = max_sessions
        self._owners: OrderedDict[str, str] = OrderedDict()
        self._lock = threading.Lock()

    def claim(self, pairs: Iterable[tuple[str, str]]) -> str | None:
        """Bind each (session_id, user_id) unless one session belongs to another user (in the
        record or in ``pairs`` itself): then bind nothing and return that session id."""
        pairs = list(pairs)
        with self._lock:
            wanted: dict[str, str] = {}
            for session_id, user_id in pairs:
                owner = wanted.get(session_id) or self._owners.get(session_id)
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
