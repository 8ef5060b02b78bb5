"""The fault drills (:mod:`lambdarec.harness.drills`) in their short form: while 90k real events
flow (60 s at 1,500/s), the Redis online store is stopped for 5 s, the Kafka broker is killed and
restarted after 5 s, and the speed layer's processes are killed (its supervisor must restart it
from its checkpoint); afterwards every event is in the archive exactly once and every session's
online features are exact.

``make bench-faults`` runs each fault alone at full length (200k events, 30 s outages).
"""

from __future__ import annotations

import json

import pytest

from lambdarec.harness.drills import FAULTS, stream_drill

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EVENTS = 90_000


def test_broker_job_and_store_faults_while_events_flow_lose_nothing() -> None:
    result = stream_drill(FAULTS, events=EVENTS, rate=1_500, outage_s=5, timeout_s=300)
    print(json.dumps({k: v for k, v in result.as_dict().items() if k != "problems"}))
    assert result.problems == []
    assert [fault for fault, _, _ in result.timeline] == list(FAULTS), "each fault struck"
    counts = (result.produced, result.events_lost, result.duplicates, result.updates_lost)
    assert counts == (EVENTS, 0, 0, 0), "(produced, events lost, duplicates, updates lost)"
