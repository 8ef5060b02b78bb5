"""The speed_layer DAG and its operator on a private platform: the real DAG run (dag.test) starts
the job on the local mini-cluster and reports the consumer lag; a second run finds it running and
submits nothing; killing the operator's task cancels the job."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING

import pytest

from lambdarec.config import get_settings
from lambdarec.harness.waiting import eventually
from lambdarec.platform import manager
from lambdarec.platform.base import settings_env
from lambdarec.speed.control import Target, consumer_lag
from lambdarec.speed.job import find_job

if TYPE_CHECKING:
    from collections.abc import Iterator

    from lambdarec.config import Settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def platform() -> Iterator[Settings]:
    from lambdarec.harness.platform import private_platform

    with private_platform(["kafka"], start_timeout_s=240) as settings:
        yield settings


def _running(settings: Settings) -> bool:
    job = find_job(Target.parse("local").rest_url(settings))
    return bool(job) and job["state"] == "RUNNING"


def test_the_dag_starts_the_job_and_reports_lag_then_kill_cancels_it(
    platform: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lambdarec.platform.dag_run import run_dag_test
    from lambdarec.streaming.kafka import EventProducer

    settings = platform
    today = datetime.now(UTC).date()
    assert not _running(settings)
    first = run_dag_test("speed_layer", today, settings, timeout_s=600)
    assert first.tasks == {"ensure_running": "success", "consumer_lag": "success"}, first.log[
        -3000:
    ]
    assert _running(settings), "the DAG left the job running"
    assert "speed layer submitted job" in first.log

    # Events reach the job: the lag drains to 0 after a checkpoint commits the offsets.
    with EventProducer(settings) as producer:
        for i in range(50):
            producer.send_raw(
                b'{"event_id":"op%d","user_id":"u1","session_id":"s1","item_id":"i1",'
                b'"event_type":"view","ts":"2024-05-01T12:00:00.000Z"}' % i
            )
    eventually(
        lambda: consumer_lag(settings)["lag"] == 0,
        120,
        interval_s=1,
        message="the job to commit every event (consumer lag 0)",
    )
    lag = consumer_lag(settings)
    assert lag["lag"] == 0, lag
    assert lag["dead_letters"] == 0, lag
    with EventProducer(settings) as producer:
        producer.send_raw(b"not json")  # rejected at the producer, kept on the dead-letter topic
    assert consumer_lag(settings)["dead_letters"] == 1

    second = run_dag_test("speed_layer", today, settings, timeout_s=600)
    assert second.state == "success", second.log[-3000:]
    assert "already running" in second.log

    # on_kill: the operator in this process, configured as the DAG's task would be.
    from lambdarec_airflow.flink import SpeedLayerOperator

    for key, value in settings_env(settings).items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("AIRFLOW_CONN_FLINK_DEFAULT", '{"conn_type": "generic", "host": "local"}')
    get_settings.cache_clear()
    try:
        SpeedLayerOperator(task_id="ensure_running").on_kill()
    finally:
        get_settings.cache_clear()
    assert not _running(settings), "on_kill cancelled the job"
    assert not any(s.is_up for s in manager.status(["speed-layer"], settings=settings))


def test_a_bad_jobmanager_address_names_the_fix() -> None:
    from lambdarec.speed.control import SpeedLayerError

    assert Target.parse("local").local and Target.parse("").local
    assert Target.parse("flink-jobmanager:8081").jobmanager == "flink-jobmanager:8081"
    with pytest.raises(SpeedLayerError, match="LAMBDAREC_FLINK_JOBMANAGER"):
        Target.parse("flink-jobmanager")
