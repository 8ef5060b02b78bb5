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
