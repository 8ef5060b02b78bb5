"""Items a user bought recently, as this process's ``POST /events`` saw them (bounded LRU).

A stop-gap so purchases never reappear within a worker: the online features carry only the
session's purchases (``last_purchased_items``), not the user's.

Bounded in bytes, not users: ids are up to 64 characters and a user keeps up to ``per_user``
items, so a count of users alone let a client flooding purchases grow a worker by gigabytes.
``bytes`` is an estimate from ``sys.getsizeof`` of the strings and lists plus the dict's node;
``evictions`` counts users forgotten to stay under ``max_bytes``.
"""

from __future__ import annotations

import sys
import threading
from collections import OrderedDict

#: An OrderedDict entry's own cost beyond its key and value (hash slot, links), estimated.
_ENTRY_OVERHEAD = 100
#: A list's cost per element slot (one pointer).
_SLOT = 8


def _cost(user_id: str, items: list[str]) -> int:
    return (
        _ENTRY_OVERHEAD
        + sys.getsizeof(user_id)
        + sys.getsizeof([])
        + sum(_SLOT + sys.getsizeof(item) for item in items)
    )


class PurchaseMemory:
    def __init__(self, max_bytes: int = 64 * 1024 * 1024, per_user: int = 200) -> None:
        self._items: OrderedDict[str, list[str]] = OrderedDict()
        self._lock = threading.Lock()
        self.max_bytes, self.per_user = max_bytes, per_user
        self.bytes = 0
        self.evictions = 0

    def add(self, user_id: str, item_id: str) -> None:
        with self._lock:
            items = self._items.pop(user_id, None)
            if items is not None:
                self.bytes -= _cost(user_id, items)
            else:
                items = []
            if item_id not in items:
                items = [item_id, *items][: self.per_user]
            cost = _cost(user_id, items)
            # A user alone above the budget keeps their newest items that fit.
            while items and cost > self.max_bytes:
                items.pop()
                cost = _cost(user_id, items)
            self._items[user_id] = items
            self.bytes += cost
            self._shrink()

    def limit(self, max_bytes: int) -> None:
        """Set the budget, forgetting the least recently active users above it."""
        with self._lock:
            self.max_bytes = max_bytes
            self._shrink()

    def _shrink(self) -> None:
        while self.bytes > self.max_bytes and self._items:
            user_id, items = self._items.popitem(last=False)
            self.bytes -= _cost(user_id, items)
            self.evictions += 1

    def get(self, user_id: str) -> set[str]:
        with self._lock:
            return set(self._items.get(user_id, ()))
