"""A service's PID file identifies its process by the kernel's start ticks, so a step of the wall
clock (which moves psutil's ``create_time``) leaves live services found, and a recycled pid is
still told apart."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import TYPE_CHECKING

import psutil
import pytest

from lambdarec.config import Settings
from lambdarec.platform import processes

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path


@pytest.fixture
def child() -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        yield process
    finally:
        process.kill()
        process.wait()


def _record(settings: Settings, pid: int, **fields: object) -> Path:
    path = processes.pid_file(settings, "svc")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"pid": pid, "started": "now", "command": [], **fields}))
    return path


def test_start_ticks_are_the_kernels_and_none_once_gone(child: subprocess.Popen[bytes]) -> None:
    ticks = processes.start_ticks(child.pid)
    assert isinstance(ticks, int) and ticks > 0
    assert processes.start_ticks(child.pid) == ticks  # stable while it lives
    child.kill()
    child.wait()
    assert processes.start_ticks(child.pid) is None


def test_a_wall_clock_step_leaves_the_service_found(
    child: subprocess.Popen[bytes], tmp_path: Path
) -> None:
    settings = Settings(state_dir=tmp_path)
    # The clock stepped 84 s after the file was written: psutil's create_time moved with it.
    shifted = psutil.Process(child.pid).create_time() - 84.0
    ticks = processes.start_ticks(child.pid)
    path = _record(settings, child.pid, create_time=shifted, start_ticks=ticks)
    found = processes.running(settings, "svc")
    assert found is not None and found.pid == child.pid
    assert path.exists()


def test_a_recycled_pid_is_not_ours_and_its_file_is_removed(
    child: subprocess.Popen[bytes], tmp_path: Path
) -> None:
    settings = Settings(state_dir=tmp_path)
    ticks = processes.start_ticks(child.pid)
    assert ticks is not None
    created = psutil.Process(child.pid).create_time()
    path = _record(settings, child.pid, create_time=created, start_ticks=ticks - 100)
    assert processes.running(settings, "svc") is None
    assert not path.exists()


def test_an_older_file_without_ticks_falls_back_to_the_create_time(
    child: subprocess.Popen[bytes], tmp_path: Path
) -> None:
    settings = Settings(state_dir=tmp_path)
    created = psutil.Process(child.pid).create_time()
    _record(settings, child.pid, create_time=created)
    assert processes.running(settings, "svc") is not None
    _record(settings, child.pid, create_time=created - 84.0)
    assert processes.running(settings, "svc") is None
