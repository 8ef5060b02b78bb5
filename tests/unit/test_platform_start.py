"""The platform starts each service as soon as its requirements are up (real processes, fake
services: ``sleep`` commands whose health the test controls)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import pytest

from lambdarec.config import Settings
from lambdarec.platform import manager
from lambdarec.platform.base import PlatformError, Service

if TYPE_CHECKING:
    from pathlib import Path


def _services(tmp_path: Path, events: list[tuple[str, str]], spec: dict) -> dict[str, Service]:
    """``spec``: name -> (seconds until healthy or None for never, requires, command)."""
    out = {}
    for name, (healthy_after, requires, command) in spec.items():
        launched: dict[str, float] = {}

        def prepare(name: str = name, launched: dict[str, float] = launched) -> None:
            events.append(("launch", name))
            launched["at"] = time.monotonic()

        def health(
            after: float | None = healthy_after, launched: dict[str, float] = launched
        ) -> bool:
            return (
                after is not None
                and "at" in launched
                and time.monotonic() - launched["at"] >= after
            )

        def ready(name: str = name) -> None:
            events.append(("ready", name))

        out[name] = Service(
            name=name,
            title=name,
            ports={},
            url=name,
            health=health,
            command=command,
            cwd=tmp_path,
            requires=requires,
            prepare=prepare,
            ready=ready,
            stop_timeout_s=2.0,
        )
    return out


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(state_dir=tmp_path)


def test_a_service_starts_once_its_requirements_are_up_not_after_the_slowest(
    tmp_path: Path, settings: Settings, monkeypatch
) -> None:
    events: list[tuple[str, str]] = []
    sleep = ("sleep", "60")
    spec = {
        "slow": (3.0, (), sleep),
        "broker": (0.0, (), sleep),
        "job": (0.0, ("broker",), sleep),
        "after-both": (0.0, ("slow", "job"), sleep),
    }
    monkeypatch.setattr(manager, "build_services", lambda s: _services(tmp_path, events, spec))
    try:
        manager.up(settings=settings, timeout_s=30)
        order = list(events)
        # The job started on the broker's health, before the slow service was up...
        assert order.index(("launch", "job")) < order.index(("ready", "slow"))
        # ...and what requires both waited for both.
        assert order.index(("launch", "after-both")) > order.index(("ready", "slow"))
        assert order.index(("launch", "after-both")) > order.index(("ready", "job"))
        assert {e[1] for e in events if e[0] == "ready"} == set(spec)
    finally:
        manager.down(settings=settings)


def test_after_a_failure_nothing_more_starts_and_the_error_names_the_service(
    tmp_path: Path, settings: Settings, monkeypatch
) -> None:
    events: list[tuple[str, str]] = []
    spec = {
        "bad": (None, (), ("false",)),
        "good": (0.5, (), ("sleep", "60")),
        "needs-bad": (0.0, ("bad",), ("sleep", "60")),
    }
    monkeypatch.setattr(manager, "build_services", lambda s: _services(tmp_path, events, spec))
    try:
        with pytest.raises(PlatformError, match="bad exited"):
            manager.up(settings=settings, timeout_s=30)
        assert ("launch", "needs-bad") not in events
        assert ("ready", "good") in events  # what was launched was still awaited
    finally:
        manager.down(settings=settings)


def test_engines_the_settings_place_elsewhere_are_rows_the_platform_never_starts(
    tmp_path: Path,
) -> None:
    """With LAMBDAREC_KAFKA_BOOTSTRAP and LAMBDAREC_FLINK_JOBMANAGER set, Kafka and the speed
    layer are the cluster's: no local broker or mini-cluster beside them."""
    from lambdarec.platform.services import build_services

    local = build_services(Settings(state_dir=tmp_path))
    assert local["kafka"].managed and local["speed-layer"].managed
    assert not local["kafka"].external

    clusters = Settings(
        state_dir=tmp_path,
        kafka_bootstrap="10.0.0.1:9092,10.0.0.2:9092",
        flink_jobmanager="jobmanager:8081",
    )
    services = build_services(clusters)
    for name in ("kafka", "speed-layer"):
        assert services[name].external and not services[name].managed, name
    assert services["kafka"].url == "10.0.0.1:9092,10.0.0.2:9092"
    assert services["speed-layer"].url == "http://jobmanager:8081"
    # The pusher requires Kafka; up(["feature-pusher"]) selects the pusher alone.
    assert "kafka" in services["feature-pusher"].requires
    selected = manager._select(services, ["feature-pusher"], with_requirements=True)  # noqa: SLF001
    assert [s.name for s in selected] == ["feature-pusher"]
    # Naming an external engine starts or stops nothing, and is no error.
    assert manager._select(services, ["kafka"], with_requirements=True) == []  # noqa: SLF001
    assert manager._select(services, ["speed-layer"], with_requirements=False) == []  # noqa: SLF001
    # `up` without names starts neither.
    everything = manager._select(services, None, with_requirements=True)  # noqa: SLF001
    assert not {"kafka", "speed-layer"} & {s.name for s in everything}


def test_an_external_engine_reads_up_or_unreachable(
    tmp_path: Path, settings: Settings, monkeypatch
) -> None:
    answers = {"kafka": True}
    services = {
        "kafka": Service(
            name="kafka",
            title="Kafka (external)",
            ports={},
            url="broker:9092",
            health=lambda: answers["kafka"],
            external=True,
        )
    }
    monkeypatch.setattr(manager, "build_services", lambda s: services)
    assert [row.state for row in manager.status(settings=settings)] == ["up"]
    answers["kafka"] = False
    [row] = manager.status(settings=settings)
    assert (row.state, row.is_up, row.url) == ("unreachable", False, "broker:9092")
