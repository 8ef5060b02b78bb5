"""What every service of the local platform is made of: the :class:`Service` record, the error it
raises, health probes and the environment its process starts with.

The service families (:mod:`~lambdarec.platform.kafka`, :mod:`~lambdarec.platform.stores`,
:mod:`~lambdarec.platform.airflow`, :mod:`~lambdarec.platform.speed`,
:mod:`~lambdarec.platform.web`) build :class:`Service` values from the settings; the manager runs
them without knowing anything service-specific.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    from lambdarec.config import Settings

#: Configuration files shipped with the package (log4j2 for Kafka).
CONF_DIR = Path(__file__).resolve().parent / "conf"


class PlatformError(RuntimeError):
    """A service cannot be prepared, started or stopped; the message says what to do about it."""


@dataclass(frozen=True)
class Service:
    """One process of the local platform (or a reserved row when ``command`` is empty)."""

    name: str
    title: str
    #: Port -> the settings field that moves it, e.g. ``{9092: "kafka_port"}``; the field is named in
    #: port-conflict errors.
    ports: Mapping[int, str]
    url: str
    health: Callable[[], bool]
    command: Sequence[str] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    #: Services started first when this one is asked for.
    requires: tuple[str, ...] = ()
    #: Runs before each start: folders, config files, one-time initialisation (may be slow).
    prepare: Callable[[], None] | None = None
    #: Runs after the service is healthy, on every ``up``: idempotent setup such as topics.
    ready: Callable[[], None] | None = None
    #: Extra text for the status table (e.g. the Airflow login); called only when up.
    details: Callable[[], str] | None = None
    #: Seconds between SIGTERM and SIGKILL on ``down``.
    stop_timeout_s: float = 30.0
    #: A group (no command): its name stands for these services in ``up``, ``down`` and ``status``.
    parts: tuple[str, ...] = ()
    #: The signal ``down`` sends first (SIGKILL follows after ``stop_timeout_s``).
    stop_signal: signal.Signals = signal.SIGTERM
    #: Whether ``up`` without names starts it (opt-in services are started only when named).
    default: bool = True
    #: A reserved row for an engine the settings place elsewhere (a Kafka cluster, a Flink session
    #: cluster): ``up`` starts nothing for it, ``status`` probes it there ("up" / "unreachable").
    external: bool = False

    @property
    def managed(self) -> bool:
        """Whether ``up``/``down`` start and stop it (reserved rows are only probed)."""
        return bool(self.command)


# -- health probes -----------------------------------------------------------------------------


def tcp_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """Whether something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def http_ok(url: str, timeout: float = 2.0) -> bool:
    import requests

    try:
        return requests.get(url, timeout=timeout).ok
    except requests.RequestException:
        return False


# -- processes and their environment -----------------------------------------------------------


def venv_bin() -> Path:
    """The folder of this virtualenv's console scripts (airflow, mlflow, gunicorn)."""
    # Not resolved: .venv/bin/python is a symlink to the base interpreter.
    return Path(sys.executable).parent


def base_env() -> dict[str, str]:
    """Our environment with the venv first on PATH."""
    env = dict(os.environ)
    # Console scripts of the venv (airflow, mlflow) spawn siblings by name.
    env["PATH"] = f"{venv_bin()}{os.pathsep}{env.get('PATH', '')}"
    return env


def settings_env(settings: Settings) -> dict[str, str]:
    """The settings as the ``LAMBDAREC_*`` environment variables that reproduce them.

    Secrets are exported as their values (a dump shows them masked), and a field read under
    another program's own name (MLflow's ``MLFLOW_TRACKING_*``) under that name."""
    from pydantic import AliasChoices, SecretStr

    exported = {}
    for name, value in settings.model_dump(mode="json").items():
        raw = getattr(settings, name)
        if isinstance(raw, SecretStr):
            value = raw.get_secret_value()
        if value is not None:
            # pydantic-settings parses complex fields (lists, dicts) from JSON
            text = json.dumps(value) if isinstance(value, list | dict) else str(value)
            alias = type(settings).model_fields[name].validation_alias
            if isinstance(alias, AliasChoices):
                if text:  # an empty one would hide MLflow's own credentials file
                    exported[str(alias.choices[0]).upper()] = text
                continue
            exported[f"LAMBDAREC_{name.upper()}"] = text
    return exported


def service_env(service: Service) -> dict[str, str]:
    """The environment a service process starts with: ours, the venv on PATH, its own variables."""
    return {**base_env(), **service.env}
