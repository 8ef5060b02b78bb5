"""The local broker's cluster id: Kafka's format, and never an id the storage tool reads as a flag."""

from __future__ import annotations

import base64
import uuid
from typing import TYPE_CHECKING

from lambdarec.platform import kafka

if TYPE_CHECKING:
    import pytest


def test_a_cluster_id_never_starts_with_a_dash(monkeypatch: pytest.MonkeyPatch) -> None:
    """``kafka-storage format -t -abc...`` failed with "argument --cluster-id/-t: expected one
    argument" (CI, one format in 64): an id starting with ``-`` is drawn again, as Kafka's own
    ``Uuid.randomUuid()`` does."""
    dash = uuid.UUID(bytes=b"\xfb" + bytes(15))  # URL-safe base64 of 0xfb... starts with "-"
    assert base64.urlsafe_b64encode(dash.bytes).decode().startswith("-")
    plain = uuid.UUID(bytes=bytes(range(16)))
    drawn = iter([dash, dash, plain])
    monkeypatch.setattr(kafka.uuid, "uuid4", lambda: next(drawn))
    cluster_id = kafka.kafka_cluster_id()
    assert cluster_id == base64.urlsafe_b64encode(plain.bytes).rstrip(b"=").decode()
    assert len(cluster_id) == 22 and not cluster_id.startswith("-")
