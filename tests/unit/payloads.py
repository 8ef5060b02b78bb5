"""Request bodies shared by the serving API's unit tests."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any


def event(default_type: str = "view", **overrides: Any) -> dict[str, Any]:
    """One valid event for ``POST /events`` of ``default_type``, stamped now; ``overrides``
    replace its fields (``event_type`` included)."""
    base = {
        "event_id": "e1",
        "user_id": "u1",
        "session_id": "s1",
        "item_id": "i1",
        "event_type": default_type,
        "ts": datetime.now(UTC).isoformat(),
    }
    return {**base, **overrides}
