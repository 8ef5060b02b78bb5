"""The platform's supervisor: a child that dies is restarted with back-off (its leftovers killed),
a stop signal to the process group ends both without a restart."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from typing import TYPE_CHECKING

import psutil

from lambdarec.harness.waiting import eventually
from lambdarec.platform.supervise import Supervisor, main

if TYPE_CHECKING:
    from pathlib import Path

    import pytest


def _children(pid: int) -> list[psutil.Process]:
    return psutil.Process(pid).children()


def test_a_dead_child_is_restarted_with_growing_delays_until_stopped(tmp_path: Path) -> None:
    # This supervisor shares pytest's process group (with make and the CI shell): a restart must
    # not take the group's other members for leftovers.
    sibling = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])  # noqa: S603
    runs = tmp_path / "runs"
    command = [sys.executable, "-c", f"open({str(runs)!r}, 'a').write('x'); raise SystemExit(3)"]
    supervisor = Supervisor("t", command, first_delay_s=0.05, max_delay_s=0.2)
    thread = threading.Thread(target=supervisor.run)
    thread.start()
    try:
        eventually(lambda: runs.exists() and len(runs.read_text()) >= 4, 30, message="4 runs")
    finally:
        supervisor.stop()
        thread.join(timeout=10)
    assert not thread.is_alive()
    assert supervisor.restarts >= 3
    count = len(runs.read_text())
    time.sleep(0.5)
    assert len(runs.read_text()) == count, "a stopped supervisor restarted its child"
    try:
        assert sibling.poll() is None, "a supervisor outside its own group killed a sibling"
    finally:
        sibling.kill()
        sibling.wait(timeout=10)


def test_killed_child_comes_back_and_a_group_sigterm_stops_everything(tmp_path: Path) -> None:
    # The child spawns a grandchild in the same group, as PyFlink's driver spawns its JVM.
    script = (
        "import subprocess, sys, time; "
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']); "
        "time.sleep(600)"
    )
    log = (tmp_path / "supervise.log").open("wb")
    process = subprocess.Popen(  # noqa: S603
        [
            sys.executable,
            "-m",
            "lambdarec.platform.supervise",
            "--name",
            "drill",
            "--first-delay-s",
            "0.1",
            "--",
            sys.executable,
            "-c",
            script,
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        eventually(lambda: len(_children(process.pid)) == 1, 30, message="the first child")
        (first,) = _children(process.pid)
        eventually(lambda: len(first.children()) == 1, 30, message="the grandchild")
        (grandchild,) = first.children()
        first.kill()  # a crash of the driver; its grandchild (the "JVM") is left behind

        def restarted() -> bool:
            kids = _children(process.pid)
            return len(kids) == 1 and kids[0].pid != first.pid

        eventually(restarted, 30, message="a new child")
        assert not grandchild.is_running() or grandchild.status() == psutil.STATUS_ZOMBIE, (
            "the dead child's leftover was not killed before the restart"
        )
        (second,) = _children(process.pid)
        os.killpg(process.pid, signal.SIGTERM)  # what `lambdarec platform down` does
        assert process.wait(timeout=30) == 0, "a stopped supervisor exits cleanly"
        assert not second.is_running() or second.status() == psutil.STATUS_ZOMBIE
        text = (tmp_path / "supervise.log").read_text()
        assert "drill: exited with code -9" in text and "restart #1" in text, text
        assert "restart #2" not in text, "the stop signal was taken for a crash"
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


def test_bad_arguments_fail_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--first-delay-s", "5", "--max-delay-s", "1", "--", "true"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("supervise: delays must satisfy") and "\n" not in err
    assert main([]) == 2
    assert "nothing to supervise" in capsys.readouterr().err


def test_the_platform_runs_the_speed_layer_under_the_supervisor(tmp_path: Path) -> None:
    from lambdarec.harness.platform import private_settings
    from lambdarec.platform.speed import speed_layer
    from lambdarec.speed.job import speed_layer_command

    settings = private_settings(tmp_path)
    command = list(speed_layer(settings).command)
    assert command[1:6] == ["-m", "lambdarec.platform.supervise", "--name", "speed-layer", "--"]
    assert command[6:] == speed_layer_command(settings)


def test_the_platform_runs_the_attribution_job_under_the_supervisor_on_loopback(
    tmp_path: Path,
) -> None:
    from lambdarec.attribution import attribution_command
    from lambdarec.harness.platform import private_settings
    from lambdarec.platform.services import build_services

    settings = private_settings(tmp_path)
    service = build_services(settings)["attribution"]
    assert service.default and service.requires == ("kafka",)
    assert dict(service.ports) == {settings.attribution_rest_port: "attribution_rest_port"}
    assert service.url == f"http://127.0.0.1:{settings.attribution_rest_port}"
    command = list(service.command)
    assert command[1:6] == ["-m", "lambdarec.platform.supervise", "--name", "attribution", "--"]
    assert command[6:] == attribution_command(settings)
    rest_port = command[command.index("--rest-port") + 1]
    assert rest_port == str(settings.attribution_rest_port) != str(settings.flink_rest_port)
