"""The fault drills (:mod:`lambdarec.harness.drills`) in their short form. While 90k real events
flow (60 s at 1,500/s), the Redis online store is stopped for 5 s, the Kafka broker is killed and
restarted after 5 s, and the speed layer's processes are killed (its supervisor must restart it
from its checkpoint); afterwards every event is in the archive exactly once and every session's
online features are exact. A load into a lake on a 1 MB file system fails in one line and leaves
the lake as it was. The Milvus server killed half-way through a publish: the publish fails cleanly
and the alias keeps answering with the old version. (The daily DAG run twice: tests/integration/test_daily_pipeline.py.)

``make bench-faults`` runs each fault alone at full length (200k events, 30 s outages).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import pytest

from lambdarec.harness.drills import FAULTS, stream_drill

if TYPE_CHECKING:
    from lambdarec.harness.drills import SoakResult

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EVENTS = 90_000


def test_broker_job_and_store_faults_while_events_flow_lose_nothing() -> None:
    result = stream_drill(FAULTS, events=EVENTS, rate=1_500, outage_s=5, timeout_s=300)
    print(json.dumps({k: v for k, v in result.as_dict().items() if k != "problems"}))
    assert result.problems == []
    assert [fault for fault, _, _ in result.timeline] == list(FAULTS), "each fault struck"
    counts = (result.produced, result.events_lost, result.duplicates, result.updates_lost)
    assert counts == (EVENTS, 0, 0, 0), "(produced, events lost, duplicates, updates lost)"


def test_a_full_disk_under_the_lake_fails_in_one_line_and_changes_nothing() -> None:
    from lambdarec.harness.drills import disk_full_drill

    result = disk_full_drill(200_000)
    print(json.dumps(result.as_dict()))
    assert result.problems == []
    assert result.error.startswith("the lake's disk is full") and "\n" not in result.error
    assert result.dates_after == result.dates_before, "a partial merge became visible"
    assert result.stored_day_unchanged and result.leftovers == [] and result.usable_after


@pytest.fixture(scope="module")
def soak() -> SoakResult:
    """Two minutes here (the first is warm-up: the speed layer's first windows close at one
    minute, and the pusher's first trending batch sizes it); ``make bench-faults`` soaks for 30."""
    from lambdarec.harness.drills import soak_drill

    result = soak_drill(120, 50, warmup_s=60)
    print(json.dumps(result.as_dict()))
    return result


def test_a_soak_at_50_requests_per_second_keeps_serving_flat_and_events_flowing(
    soak: SoakResult,
) -> None:
    assert soak.problems == [] and soak.errors == 0
    assert soak.requests >= 0.8 * 120 * 50, f"the load fell behind: {soak.achieved_rps} req/s"
    assert soak.events_through >= soak.events_posted, "the posted events did not flow"
    assert soak.growth_pct["serving"] < soak.LIMIT_PCT, soak.growth_pct


def test_a_soak_at_50_requests_per_second_keeps_the_pusher_flat_and_pushing(
    soak: SoakResult,
) -> None:
    # The events reached the online store (the pusher's own counts), without a refused push:
    # a pusher on an empty registry had every push refused and its consumer's prefetch grew it.
    assert soak.pusher_stats.get("session_rows", 0) > 0, soak.pusher_stats
    assert soak.pusher_stats.get("retries") == 0, soak.pusher_stats
    assert soak.growth_pct["feature-pusher"] < soak.LIMIT_PCT, soak.growth_pct


def test_milvus_killed_during_a_publish_leaves_the_old_version_serving() -> None:
    from lambdarec.harness.drills import milvus_publish_drill

    result = milvus_publish_drill()
    print(json.dumps(result.as_dict()))
    assert result.problems == []
    assert result.ended_after_s is not None, "the publish hung after the server died"
    assert result.error.startswith("VectorIndexError: publishing"), result.error
    assert result.serving_after == result.serving_before and result.answers_after
