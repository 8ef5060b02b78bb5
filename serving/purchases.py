"""Items a user bought recently, as this process's ``POST /events`` saw them (bounded LRU).

A stop-gap so purchases never reappear within a worker: the online features carry only the
session's purchases (``last_purchased_items``), not the user's.
"""

from __future__ import annotations

import threading
from collections import OrderedDict


class PurchaseMemory:
    def __init__(self, max_users: int = 100_000, per_user: int = 200) -> None:
        self._items: OrderedDict[str, list[str]] = OrderedDict()
        self._lock = threading.Lock()
        self.max_users, self.per_user = max_users, per_user

    def add(self, user_id: str, item_id: str) -> None:
        with self._lock:
            items = self._items.pop(user_id, [])
            if item_id not in items:
                items = [item_id, *items][: self.per_user]
            self._items[user_id] = items
            while len(self._items) > self.max_users:
                self._items.popitem(last=False)

    def get(self, user_id: str) -> set[str]:
        with self._lock:
            return set(self._items.get(user_id, ()))
