"""One service's processes on this machine: spawned in their own session with a PID file, found
again from it, and stopped as a process group.

Every service runs in its own session (``setsid``), so its process group holds it and everything
it spawns; :func:`stop` signals the whole group (the service's stop signal, then KILL after its
grace period). A PID file per service under ``settings.run_dir`` records the pid and the process
start time, so a recycled pid is never mistaken for ours; stale PID files are removed whenever
they are read. The start time compared is the kernel's, in clock ticks after boot
(:func:`start_ticks`): a step of the wall clock (a virtual machine's clock sync) moves psutil's
``create_time``, and once made live services read as gone, left running and unstoppable.
Stdout and stderr of each service go to ``settings.log_dir/<name>.log``.
:mod:`lambdarec.platform.manager` decides what to start and stop, and in which order.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shlex
import signal
import socket
import subprocess
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import psutil

from lambdarec.platform.base import PlatformError, service_env

if TYPE_CHECKING:
    from pathlib import Path

    from lambdarec.config import Settings
    from lambdarec.platform.base import Service

log = logging.getLogger(__name__)

#: A log bigger than this is moved to ``<name>.log.1`` when the service starts.
LOG_ROTATE_BYTES = 64 * 1024 * 1024

# Popen objects of the services this process started, so their exit status is collected (no
# zombies in a long-lived caller such as pytest) and Popen never warns about a running child.
_children: dict[int, subprocess.Popen[bytes]] = {}
_exit_codes: dict[int, int] = {}


# -- PID files and processes -------------------------------------------------------------------


def pid_file(settings: Settings, name: str) -> Path:
    """The service's PID file: its pid, the process start time, the command."""
    return settings.run_dir / f"{name}.pid"


def exit_code(pid: int) -> int | None:
    """The exit code of a child that :func:`is_gone` found exited (once; None if unknown)."""
    return _exit_codes.pop(pid, None)


def is_gone(pid: int) -> bool:
    """Whether ``pid`` has exited (a zombie counts as exited; our own children are reaped)."""
    child = _children.get(pid)
    if child is not None and child.poll() is not None:
        _exit_codes[pid] = child.returncode
        del _children[pid]
        return True
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def start_ticks(pid: int) -> int | None:
    """When ``pid`` started, in clock ticks after boot (field 22 of ``/proc/<pid>/stat``); None
    without /proc or once the process is gone. psutil's ``create_time`` adds these ticks to a
    boot time that Linux derives from the wall clock, so a clock step moves it; this does not."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as stat:  # noqa: PTH123
            text = stat.read()
    except OSError:
        return None
    # Field 2, the command name, is in parentheses and may hold spaces: count after it.
    fields = text[text.rindex(")") + 2 :].split()
    try:
        return int(fields[19])  # fields[0] is field 3 (the state), so field 22 is at 19
    except (IndexError, ValueError):
        return None


def _same_process(process: psutil.Process, created: float, ticks: object) -> bool:
    """Whether ``process`` is the one a PID file recorded (not a recycled pid): the same start
    ticks when the file has them (older files only have ``create_time``)."""
    if isinstance(ticks, int):
        now = start_ticks(process.pid)
        if now is not None:
            return now == ticks
    return abs(process.create_time() - created) < 1.0


def running(settings: Settings, name: str) -> psutil.Process | None:
    """The live process recorded in the service's PID file; removes the file if it is stale."""
    path = pid_file(settings, name)
    try:
        record = json.loads(path.read_text())
        pid, started = int(record["pid"]), float(record["create_time"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        log.warning("removing unreadable PID file %s", path)
        path.unlink(missing_ok=True)
        return None
    try:
        process = psutil.Process(pid)
        if _same_process(process, started, record.get("start_ticks")) and not is_gone(pid):
            return process
    except psutil.NoSuchProcess:
        pass
    log.info("%s: removing stale PID file (pid %d is gone)", name, pid)
    path.unlink(missing_ok=True)
    return None


def port_owner(host: str, port: int) -> str | None:
    """Who listens on ``port`` where we would bind, e.g. "pid 123 'java'"; None if it is free."""
    wildcard = {host, "0.0.0.0", "::", "::ffff:" + host}
    with contextlib.suppress(psutil.Error):
        for conn in psutil.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port:
                if conn.laddr.ip not in wildcard:
                    continue
                if conn.pid is None:
                    return "an unknown process"
                try:
                    return f"pid {conn.pid} '{psutil.Process(conn.pid).name()}'"
                except psutil.NoSuchProcess:
                    return f"pid {conn.pid}"
    # psutil may not see other users' sockets: try to bind like a server would.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return "an unknown process"
    return None


def log_file(settings: Settings, name: str) -> Path:
    """Where a service's stdout and stderr go."""
    return settings.log_dir / f"{name}.log"


def spawn(service: Service, settings: Settings) -> int:
    """Start ``service`` in its own session, output appended to its log; returns the pid."""
    settings.log_dir.mkdir(parents=True, exist_ok=True)
    settings.run_dir.mkdir(parents=True, exist_ok=True)
    path = log_file(settings, service.name)
    if path.is_file() and path.stat().st_size > LOG_ROTATE_BYTES:
        path.replace(path.with_name(path.name + ".1"))
    stamp = datetime.now(UTC).isoformat(timespec="seconds")
    with path.open("ab") as out:
        out.write(f"\n=== {stamp} lambdarec platform: {shlex.join(service.command)}\n".encode())
        out.flush()
        child = subprocess.Popen(
            list(service.command),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=service_env(service),
            cwd=service.cwd,
            start_new_session=True,  # own process group: down signals everything it spawns
        )
    _children[child.pid] = child
    try:
        created = psutil.Process(child.pid).create_time()
    except psutil.NoSuchProcess:
        created = time.time()
    record = {
        "pid": child.pid,
        "create_time": created,
        "start_ticks": start_ticks(child.pid),
        "started": stamp,
        "command": list(service.command),
    }
    pid_file(settings, service.name).write_text(json.dumps(record, indent=1) + "\n")
    return child.pid


# -- stop --------------------------------------------------------------------------------------


def group_members(pgid: int) -> list[psutil.Process]:
    """The live processes of process group ``pgid``."""
    members = []
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error, ProcessLookupError):
            if os.getpgid(process.pid) == pgid:
                members.append(process)
    return members


def kill_group_except(pgid: int, keep: int) -> int:
    """SIGKILL every process of group ``pgid`` but ``keep`` (a supervisor, its leftovers' parent)
    and wait for them; returns how many were killed.

    Refuses the caller's own group unless the caller leads it: that group holds the caller's
    parents (a shell, make, a CI runner), never leftovers."""
    if pgid == os.getpgid(0) and pgid != os.getpid():
        raise ValueError(
            f"refusing to kill process group {pgid}: it is the caller's own and the caller does "
            "not lead it (start the service with setsid)"
        )
    victims = [p for p in group_members(pgid) if p.pid != keep]
    for process in victims:
        with contextlib.suppress(psutil.Error):
            process.kill()
    psutil.wait_procs(victims, timeout=30)
    return len(victims)


def _signal(processes: list[psutil.Process], pgid: int | None, sig: signal.Signals) -> None:
    if pgid is not None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)
    for process in processes:
        with contextlib.suppress(psutil.Error):
            process.send_signal(sig)


def _wait_gone(processes: list[psutil.Process], timeout_s: float) -> list[psutil.Process]:
    deadline = time.monotonic() + timeout_s
    alive = processes
    while True:
        alive = [p for p in alive if not is_gone(p.pid) and _same(p)]
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.2)


def _same(process: psutil.Process) -> bool:
    try:
        return process.is_running()  # False once the pid was reused
    except psutil.Error:
        return False


def stop(service: Service, settings: Settings) -> bool:
    """Stop the service's process group (its stop signal, SIGKILL after its grace period);
    returns whether it was running."""
    process = running(settings, service.name)
    if process is None:
        return False
    pid = process.pid
    try:
        pgid = os.getpgid(pid)
    except ProcessLookupError:
        pgid = None
    if pgid is not None and pgid != pid:
        pgid = None  # not a session leader of ours: never signal someone else's group
    members = {pid: process}
    with contextlib.suppress(psutil.Error):
        members.update({p.pid: p for p in process.children(recursive=True)})
        members.update({p.pid: p for p in (group_members(pgid) if pgid is not None else [])})
    targets = list(members.values())
    log.info("%s: stopping pid %d (%d processes)", service.name, pid, len(targets))
    _signal(targets, pgid, service.stop_signal)
    alive = _wait_gone(targets, service.stop_timeout_s)
    if alive:
        log.warning(
            "%s: %d processes still running after %.0f s, sending SIGKILL",
            service.name,
            len(alive),
            service.stop_timeout_s,
        )
        _signal(alive, pgid, signal.SIGKILL)
        alive = _wait_gone(alive, 10.0)
    if alive:
        pids = ", ".join(str(p.pid) for p in alive)
        raise PlatformError(f"{service.name}: processes {pids} survived SIGKILL")
    pid_file(settings, service.name).unlink(missing_ok=True)
    return True
