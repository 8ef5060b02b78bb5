"""Start, health-check and stop the local platform's processes on 127.0.0.1.

Each service runs in its own process group with a PID file and a log
(:mod:`lambdarec.platform.processes`); ``down`` signals the whole group (TERM, then KILL after the
service's grace period).

``up`` starts each service as soon as its requirements are up (healthy, then ``ready``): the
speed layer starts when Kafka answers, not when the slowest service started beside Kafka does. A
group name (``airflow``) stands for its parts; ``down`` of a service also stops the services that
require it.

Python API::

    from lambdarec.platform.manager import up, down, status
    up(["kafka", "redis"], settings=settings)   # returns once both are healthy
    down(settings=settings)
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from lambdarec.config import get_settings
from lambdarec.platform import processes
from lambdarec.platform.base import PlatformError, Service
from lambdarec.platform.services import build_services

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence
    from pathlib import Path

    from lambdarec.config import Settings

__all__ = ["ServiceStatus", "down", "log_path", "status", "tail", "up"]

log = logging.getLogger(__name__)

#: Lines of a service's log shown when it fails to start.
FAILURE_TAIL_LINES = 30


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    title: str
    #: "up", "unhealthy" (running, failing its health check), "down", "not started" (reserved
    #: rows with nothing listening), "built" / "not built" (reserved rows without a port),
    #: "unreachable" (an external engine, e.g. a Kafka cluster, that does not answer).
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
        _start(selected, settings, timeout)
    return status([s.name for s in selected], settings=settings)


def down(
    names: Sequence[str] | None = None,
    *,
    settings: Settings | None = None,
) -> list[str]:
    """Stop ``names`` (default: all) and what requires them, in reverse start order.

    Returns the names actually stopped.
    """
    settings = settings or get_settings()
    services = build_services(settings)
    selected = _select(services, names, with_requirements=False)
    # A group's own PID file is a leftover of an older layout (`airflow standalone`): stop it too.
    wanted = set(names or services)
    selected += [s for s in services.values() if s.parts and s.name in wanted]
    stopped = []
    with _locked(settings):
        for service in reversed(selected):
            if processes.stop(service, settings):
                stopped.append(service.name)
    return stopped


def status(
    names: Sequence[str] | None = None, *, settings: Settings | None = None
) -> list[ServiceStatus]:
    """The state of ``names`` (default: every service, reserved rows included)."""
    settings = settings or get_settings()
    services = build_services(settings)
    wanted = set(_expand(services, names)) if names else set(services)
    return [_status(s, settings) for s in services.values() if s.name in wanted and not s.parts]


def log_path(name: str, *, settings: Settings | None = None) -> Path:
    settings = settings or get_settings()
    services = build_services(settings)
    _check_names(services, [name])
    if services[name].parts:
        raise PlatformError(
            f"{name} is a group; each part has its own log: {', '.join(services[name].parts)}"
        )
    return processes.log_file(settings, name)


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


def _expand(services: dict[str, Service], names: Sequence[str]) -> list[str]:
    """``names`` with each group replaced by its parts (after checking every name exists)."""
    _check_names(services, names)
    expanded: list[str] = []
    for name in names:
        for part in services[name].parts or (name,):
            if part not in expanded:
                expanded.append(part)
    return expanded


def _select(
    services: dict[str, Service], names: Sequence[str] | None, *, with_requirements: bool
) -> list[Service]:
    """The managed services ``names`` stands for, in start order.

    With ``with_requirements``, plus what they require (for ``up``); without, plus what requires
    them (for ``down``: a scheduler without its API server is of no use).
    """
    if not names:  # ``up`` leaves opt-in services alone; ``down`` stops them too
        return [s for s in services.values() if s.managed and (s.default or not with_requirements)]
    # An external engine is named to no effect: it runs elsewhere, nothing here starts or stops it.
    names = [n for n in _expand(services, names) if not services[n].external]
    unmanaged = [n for n in names if not services[n].managed]
    if unmanaged:
        raise PlatformError(f"{', '.join(unmanaged)} is not started by the platform manager (yet)")
    wanted = set(names)
    pending = list(names)
    while pending:
        name = pending.pop()
        if with_requirements:  # an external requirement (a Kafka cluster) is not ours to start
            related = tuple(r for r in services[name].requires if services[r].managed)
        else:
            related = tuple(s.name for s in services.values() if name in s.requires)
        for other in related:
            if other not in wanted:
                wanted.add(other)
                pending.append(other)
    return [s for s in services.values() if s.name in wanted]


def _waves(selected: list[Service]) -> list[list[Service]]:
    """``selected`` in start waves: each service comes after every wave holding a requirement."""
    names = {s.name for s in selected}
    started: set[str] = set()
    pending = list(selected)
    waves = []
    while pending:
        wave = [s for s in pending if all(r in started or r not in names for r in s.requires)]
        if not wave:
            cycle = ", ".join(s.name for s in pending)
            raise PlatformError(f"services {cycle} require each other; fix their `requires`")
        waves.append(wave)
        started |= {s.name for s in wave}
        pending = [s for s in pending if s.name not in started]
    return waves


# -- ports and the lock ------------------------------------------------------------------------


def _check_ports(service: Service, settings: Settings) -> None:
    for port, field_name in service.ports.items():
        owner = processes.port_owner(settings.bind_host, port)
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


def _start(selected: list[Service], settings: Settings, timeout_s: float) -> None:
    """Launch each service of ``selected`` once its requirements are up, await them all; raises
    the first failure at the end.

    After a failure nothing more is launched; what was launched is still awaited, and services
    that came up stay up (as with one at a time)."""
    _waves(selected)  # a requirement cycle fails here, before anything starts
    names = {s.name for s in selected}
    pending = list(selected)
    waiting: list[tuple[Service, int, float]] = []
    done: set[str] = set()
    failures: list[PlatformError] = []
    while pending or waiting:
        startable = [s for s in pending if all(r in done or r not in names for r in s.requires)]
        for service in startable if not failures else []:
            pending.remove(service)
            try:
                pid = _launch(service, settings)
                if pid is None:  # running already: await it (and its ready step) right away
                    _await(service, settings, None, timeout_s, time.monotonic())
                    done.add(service.name)
                else:
                    waiting.append((service, pid, time.monotonic()))
            except PlatformError as error:
                failures.append(error)
                break
        if failures:
            pending = []
        progressed = False
        for item in list(waiting):
            service, pid, began = item
            try:
                if not _healthy_yet(service, settings, pid, timeout_s, began):
                    continue
                log.info(
                    "%s: up in %.1f s at %s", service.name, time.monotonic() - began, service.url
                )
                if service.ready:
                    service.ready()
                done.add(service.name)
            except PlatformError as error:
                failures.append(error)
            waiting.remove(item)
            progressed = True
        if waiting and not progressed:
            time.sleep(0.5)
    if failures:
        raise failures[0]


def _healthy_yet(
    service: Service,
    settings: Settings,
    pid: int,
    timeout_s: float,
    began: float,
    *,
    stop: bool = True,
) -> bool:
    """Whether ``service`` (process ``pid``, awaited since ``began``) is healthy; raises if it
    exited or ran out of time, stopping it first with ``stop``."""
    if service.health():
        return True
    if processes.is_gone(pid):
        code = processes.exit_code(pid)
        problem = "exited" + (f" with code {code}" if code is not None else "")
    elif time.monotonic() > began + timeout_s:
        problem = f"was not healthy within {timeout_s:.0f} s"
    else:
        return False
    raise _failed(service, settings, problem, stop=stop)


def _launch(service: Service, settings: Settings) -> int | None:
    """Spawn ``service`` unless it runs already; returns the new pid (None if it was running)."""
    if processes.running(settings, service.name) is not None:
        return None
    _check_ports(service, settings)
    if service.prepare:
        service.prepare()
    pid = processes.spawn(service, settings)
    log.info(
        "%s: started pid %d, waiting for health (log: %s)",
        service.name,
        pid,
        processes.log_file(settings, service.name),
    )
    return pid


def _await(
    service: Service, settings: Settings, pid: int | None, timeout_s: float, began: float
) -> None:
    """Wait until ``service`` is healthy (stopping it if it was just spawned and fails), then
    run its ``ready`` step."""
    if pid is not None:
        _wait_healthy(service, settings, pid, timeout_s, stop_on_failure=True)
        log.info("%s: up in %.1f s at %s", service.name, time.monotonic() - began, service.url)
    else:
        process = processes.running(settings, service.name)
        if process is None:  # it was running a moment ago and has exited since
            pid = _launch(service, settings)
            _await(service, settings, pid, timeout_s, time.monotonic())
            return
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


def _wait_healthy(
    service: Service, settings: Settings, pid: int, timeout_s: float, *, stop_on_failure: bool
) -> None:
    began = time.monotonic()
    while not _healthy_yet(service, settings, pid, timeout_s, began, stop=stop_on_failure):
        time.sleep(0.5)


def _failed(service: Service, settings: Settings, problem: str, *, stop: bool) -> PlatformError:
    """The error of a service that did not come up (stopped first with ``stop``): the problem and
    the tail of its log."""
    if stop:
        processes.stop(service, settings)
    path = processes.log_file(settings, service.name)
    lines = tail(path, FAILURE_TAIL_LINES)
    return PlatformError(
        f"{service.name} {problem}; last {len(lines)} lines of {path}:\n" + "\n".join(lines)
    )


# -- stop --------------------------------------------------------------------------------------


# -- status ------------------------------------------------------------------------------------


def _status(service: Service, settings: Settings) -> ServiceStatus:
    def row(state: str, pid: int | None = None, details: str = "") -> ServiceStatus:
        return ServiceStatus(service.name, service.title, state, pid, service.url, details)

    if not service.managed:
        healthy = service.health()
        if service.external:
            return row("up" if healthy else "unreachable")
        if service.ports:
            return row("up" if healthy else "not started")
        return row("built" if healthy else "not built")
    process = processes.running(settings, service.name)
    if process is None:
        taken = []
        for port, field_name in service.ports.items():
            owner = processes.port_owner(settings.bind_host, port)
            if owner:
                taken.append(f"port {port} used by {owner} (LAMBDAREC_{field_name.upper()})")
        return row("down", details="; ".join(taken))
    if not service.health():
        return row("unhealthy", process.pid, f"see {processes.log_file(settings, service.name)}")
    return row("up", process.pid, service.details() if service.details else "")
