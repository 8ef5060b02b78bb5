"""Start, health-check and stop the local platform's processes on 127.0.0.1.

Every service runs in its own session (``setsid``), so its process group holds it and everything
it spawns; ``down`` signals the whole group (TERM, then KILL after the service's grace period).
A PID file per service under ``settings.run_dir`` records the pid and the process start time, so a
recycled pid is never mistaken for ours; stale PID files are removed whenever they are read.
Stdout and stderr of each service go to ``settings.log_dir/<name>.log``.

Python API::

    from lambdarec.platform.manager import up, down, status
    up(["kafka", "redis"], settings=settings)   # returns once both are healthy
    down(settings=settings)
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shlex
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import psutil

from lambdarec.config import get_settings
from lambdarec.platform.services import PlatformError, Service, build_services, service_env

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence
    from pathlib import Path

    from lambdarec.config import Settings

__all__ = ["PlatformError", "ServiceStatus", "down", "log_path", "status", "tail", "up"]

log = logging.getLogger(__name__)

#: Lines of a service's log shown when it fails to start.
FAILURE_TAIL_LINES = 30
#: A log bigger than this is moved to ``<name>.log.1`` when the service starts.
LOG_ROTATE_BYTES = 64 * 1024 * 1024

# Popen objects of the services this process started, so their exit status is collected (no
# zombies in a long-lived caller such as pytest) and Popen never warns about a running child.
_children: dict[int, subprocess.Popen[bytes]] = {}
_exit_codes: dict[int, int] = {}


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    title: str
    #: "up", "unhealthy" (running, failing its health check), "down", "not started" (reserved
    #: rows with nothing listening), "built" / "not built" (reserved rows without a port).
    state: str
    pid: int | None
    url: str
    details: str = ""

    @property
    def is_up(self) -> bool:
        return self.state in ("up", "built")


# -- public API --------------------------------------------------------------------------------


def up(
    names: Sequence[str] | None = None,
    *,
    settings: Settings | None = None,
    timeout_s: float | None = None,
) -> list[ServiceStatus]:
    """Start ``names`` (default: every managed service) and their requirements, in start order.

    Returns once each is healthy. Running services are left alone. Raises :class:`PlatformError`
    when a port is taken, a tool is missing, or a service is not healthy within ``timeout_s``
    (default ``settings.start_timeout_s``); the message then ends with the tail of its log.
    """
    settings = settings or get_settings()
    services = build_services(settings)
    selected = _select(services, names, with_requirements=True)
    timeout = settings.start_timeout_s if timeout_s is None else timeout_s
    with _locked(settings):
        for service in selected:
            _start(service, settings, timeout)
    return status([s.name for s in selected], settings=settings)


def down(
    names: Sequence[str] | None = None,
    *,
    settings: Settings | None = None,
) -> list[str]:
    """Stop ``names`` (default: all) in reverse start order; returns the names actually stopped."""
    settings = settings or get_settings()
    services = build_services(settings)
    selected = _select(services, names, with_requirements=False)
    stopped = []
    with _locked(settings):
        for service in reversed(selected):
            if _stop(service, settings):
                stopped.append(service.name)
    return stopped


def status(
    names: Sequence[str] | None = None, *, settings: Settings | None = None
) -> list[ServiceStatus]:
    """The state of ``names`` (default: every service, reserved rows included)."""
    settings = settings or get_settings()
    services = build_services(settings)
    if names:
        _check_names(services, names)
    return [_status(s, settings) for s in services.values() if not names or s.name in names]


def log_path(name: str, *, settings: Settings | None = None) -> Path:
    settings = settings or get_settings()
    _check_names(build_services(settings), [name])
    return settings.log_dir / f"{name}.log"


def tail(path: Path, lines: int) -> list[str]:
    """The last ``lines`` lines of a text file (empty if it does not exist)."""
    if lines <= 0 or not path.is_file():
        return []
    with path.open("rb") as handle:
        handle.seek(0, os.SEEK_END)
        end = position = handle.tell()
        chunk = b""
        while position > 0 and chunk.count(b"\n") <= lines:
            step = min(64 * 1024, position)
            position -= step
            handle.seek(position)
            chunk = handle.read(end - position)
    return chunk.decode("utf-8", errors="replace").splitlines()[-lines:]


# -- selection ---------------------------------------------------------------------------------


def _check_names(services: dict[str, Service], names: Sequence[str]) -> None:
    unknown = [n for n in names if n not in services]
    if unknown:
        raise PlatformError(f"unknown service {', '.join(unknown)}; known: {', '.join(services)}")


def _select(
    services: dict[str, Service], names: Sequence[str] | None, *, with_requirements: bool
) -> list[Service]:
    if not names:
        return [s for s in services.values() if s.managed]
    _check_names(services, names)
    unmanaged = [n for n in names if not services[n].managed]
    if unmanaged:
        raise PlatformError(f"{', '.join(unmanaged)} is not started by the platform manager (yet)")
    wanted = set(names)
    if with_requirements:
        pending = list(names)
        while pending:
            for requirement in services[pending.pop()].requires:
                if requirement not in wanted:
                    wanted.add(requirement)
                    pending.append(requirement)
    return [s for s in services.values() if s.name in wanted]


# -- PID files and processes -------------------------------------------------------------------


def _pid_file(settings: Settings, name: str) -> Path:
    return settings.run_dir / f"{name}.pid"


def _is_gone(pid: int) -> bool:
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


def _running(settings: Settings, name: str) -> psutil.Process | None:
    """The live process recorded in the service's PID file; removes the file if it is stale."""
    path = _pid_file(settings, name)
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
        if abs(process.create_time() - started) < 1.0 and not _is_gone(pid):
            return process
    except psutil.NoSuchProcess:
        pass
    log.info("%s: removing stale PID file (pid %d is gone)", name, pid)
    path.unlink(missing_ok=True)
    return None


def _port_owner(host: str, port: int) -> str | None:
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


def _check_ports(service: Service, settings: Settings) -> None:
    for port, field_name in service.ports.items():
        owner = _port_owner(settings.bind_host, port)
        if owner:
            raise PlatformError(
                f"{service.name}: port {port} is taken by another process ({owner}); "
                f"stop it or set LAMBDAREC_{field_name.upper()}"
            )


@contextlib.contextmanager
def _locked(settings: Settings) -> Iterator[None]:
    """Serialise ``up``/``down`` of one state folder across shells."""
    settings.run_dir.mkdir(parents=True, exist_ok=True)
    with (settings.run_dir / "platform.lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# -- start -------------------------------------------------------------------------------------


def _start(service: Service, settings: Settings, timeout_s: float) -> None:
    process = _running(settings, service.name)
    if process is not None:
        if service.health():
            log.info("%s: already up (pid %d)", service.name, process.pid)
        else:
            log.info(
                "%s: running as pid %d, waiting for it to be healthy", service.name, process.pid
            )
            try:
                _wait_healthy(service, settings, process.pid, timeout_s, stop_on_failure=False)
            except PlatformError as error:
                raise PlatformError(
                    f"{error}\n({service.name} was already running, maybe with other settings; "
                    f"`lambdarec platform down {service.name}` stops it)"
                ) from None
        if service.ready:
            service.ready()
        return

    _check_ports(service, settings)
    if service.prepare:
        service.prepare()
    pid = _spawn(service, settings)
    log.info(
        "%s: started pid %d, waiting for health (log: %s)",
        service.name,
        pid,
        _log(settings, service),
    )
    began = time.monotonic()
    _wait_healthy(service, settings, pid, timeout_s, stop_on_failure=True)
    log.info("%s: up in %.1f s at %s", service.name, time.monotonic() - began, service.url)
    if service.ready:
        service.ready()


def _log(settings: Settings, service: Service) -> Path:
    return settings.log_dir / f"{service.name}.log"


def _spawn(service: Service, settings: Settings) -> int:
    settings.log_dir.mkdir(parents=True, exist_ok=True)
    settings.run_dir.mkdir(parents=True, exist_ok=True)
    path = _log(settings, service)
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
        "started": stamp,
        "command": list(service.command),
    }
    _pid_file(settings, service.name).write_text(json.dumps(record, indent=1) + "\n")
    return child.pid


def _wait_healthy(
    service: Service, settings: Settings, pid: int, timeout_s: float, *, stop_on_failure: bool
) -> None:
    deadline = time.monotonic() + timeout_s
    problem = None
    while problem is None:
        if service.health():
            return
        if _is_gone(pid):
            code = _exit_codes.pop(pid, None)
            problem = "exited" + (f" with code {code}" if code is not None else "")
        elif time.monotonic() > deadline:
            problem = f"was not healthy within {timeout_s:.0f} s"
        else:
            time.sleep(0.5)
    if stop_on_failure:
        _stop(service, settings)
    path = _log(settings, service)
    lines = tail(path, FAILURE_TAIL_LINES)
    raise PlatformError(
        f"{service.name} {problem}; last {len(lines)} lines of {path}:\n" + "\n".join(lines)
    )


# -- stop --------------------------------------------------------------------------------------


def _group(pgid: int) -> list[psutil.Process]:
    members = []
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error, ProcessLookupError):
            if os.getpgid(process.pid) == pgid:
                members.append(process)
    return members


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
        alive = [p for p in alive if not _is_gone(p.pid) and _same(p)]
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.2)


def _same(process: psutil.Process) -> bool:
    try:
        return process.is_running()  # False once the pid was reused
    except psutil.Error:
        return False


def _stop(service: Service, settings: Settings) -> bool:
    process = _running(settings, service.name)
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
        members.update({p.pid: p for p in (_group(pgid) if pgid is not None else [])})
    targets = list(members.values())
    log.info("%s: stopping pid %d (%d processes)", service.name, pid, len(targets))
    _signal(targets, pgid, signal.SIGTERM)
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
    _pid_file(settings, service.name).unlink(missing_ok=True)
    return True


# -- status ------------------------------------------------------------------------------------


def _status(service: Service, settings: Settings) -> ServiceStatus:
    def row(state: str, pid: int | None = None, details: str = "") -> ServiceStatus:
        return ServiceStatus(service.name, service.title, state, pid, service.url, details)

    if not service.managed:
        healthy = service.health()
        if service.ports:
            return row("up" if healthy else "not started")
        return row("built" if healthy else "not built")
    process = _running(settings, service.name)
    if process is None:
        taken = []
        for port, field_name in service.ports.items():
            owner = _port_owner(settings.bind_host, port)
            if owner:
                taken.append(f"port {port} used by {owner} (LAMBDAREC_{field_name.upper()})")
        return row("down", details="; ".join(taken))
    if not service.health():
        return row("unhealthy", process.pid, f"see {_log(settings, service)}")
    return row("up", process.pid, service.details() if service.details else "")
