"""The reverse proxy in front of serving: Debian's nginx, from one template, on the local platform
and in docker-compose.

gunicorn's threads read each request themselves, so clients that send their header or body
slowly hold them; nginx reads requests in full (event-driven, with timeouts and size limits) and
hands gunicorn only complete ones. On the local platform ``proxy`` (opt-in, like ``serving``,
which it starts first) listens on loopback at ``proxy_port``, the public serving URL; gunicorn
stays on ``serving_port`` behind it. :func:`compose_conf` renders the same template for the
``proxy`` service of ``docker-compose.yml`` (``docker/nginx/nginx.conf``, rewritten by
``python -m lambdarec.platform.proxy`` after a template change).
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from lambdarec.config import REPO_ROOT
from lambdarec.platform.base import CONF_DIR, PlatformError, Service, http_ok

if TYPE_CHECKING:
    from collections.abc import Mapping

    from lambdarec.config import Settings

TEMPLATE = CONF_DIR / "nginx.conf.template"
#: The docker-compose rendering, committed (the nginx image mounts it; a test keeps it current).
COMPOSE_CONF = REPO_ROOT / "docker" / "nginx" / "nginx.conf"
#: Where Debian's nginx package puts the binary (``/usr/sbin`` is not on every user's PATH).
DEBIAN_NGINX = Path("/usr/sbin/nginx")


def render(values: Mapping[str, str]) -> str:
    """The template with each ``@NAME@`` replaced by ``values[NAME]``; all must be given."""
    text = TEMPLATE.read_text()
    for name, value in values.items():
        text = text.replace(f"@{name}@", value)
    missing = sorted(set(re.findall(r"@([A-Z_]+)@", text)))
    if missing:
        raise ValueError(f"nginx template values missing: {', '.join(missing)}")
    return text


def _limits(settings: Settings) -> dict[str, str]:
    return {
        "CLIENT_TIMEOUT": str(settings.proxy_client_timeout_s),
        "MAX_BODY": str(settings.proxy_max_body_kb),
        "READ_TIMEOUT": str(settings.proxy_read_timeout_s),
        "CONNS_PER_IP": str(settings.proxy_conns_per_ip),
    }


def proxy_dir(settings: Settings) -> Path:
    """The proxy's folder in the state folder: its nginx.conf, pid file and temporary files."""
    return settings.state_dir / "proxy"


def _user_line() -> str:
    # nginx switches its workers to `user` (default nobody) only when started as root; they
    # must stay the current user to write the temporary folders under the state folder.
    if os.geteuid() != 0:
        return "# no user directive: nginx runs as the user who starts it"
    user = pwd.getpwuid(os.geteuid()).pw_name
    group = grp.getgrgid(os.getegid()).gr_name
    return f"user {user} {group};"


def local_conf(settings: Settings) -> str:
    """nginx.conf of the local platform: loopback, everything it writes in the state folder."""
    folder = proxy_dir(settings)
    return render(
        {
            "USER": _user_line(),
            # One event loop is plenty for loopback traffic on a small machine.
            "WORKERS": "1",
            "PID": str(folder / "nginx.pid"),
            "ACCESS_LOG": str(settings.log_dir / "proxy-access.log"),
            "TEMP": str(folder / "tmp"),
            "LISTEN": f"{settings.bind_host}:{settings.proxy_port}",
            "UPSTREAM": f"{settings.bind_host}:{settings.serving_port}",
            **_limits(settings),
        }
    )


def compose_conf(settings: Settings) -> str:
    """nginx.conf of the compose ``proxy`` service (the official nginx image, serving:8000)."""
    generated = (
        "# Rendered from include/lambdarec/platform/conf/nginx.conf.template by\n"
        "# `python -m lambdarec.platform.proxy`: edit the template, not this file.\n"
    )
    return generated + render(
        {
            "USER": "user nginx;",
            "WORKERS": "auto",
            "PID": "/var/run/nginx.pid",
            "ACCESS_LOG": "/dev/stdout",
            "TEMP": "/var/cache/nginx",
            "LISTEN": "8000",
            "UPSTREAM": "serving:8000",
            **_limits(settings),
        }
    )


def nginx_command(settings: Settings, *extra: str) -> list[str]:
    """nginx on the rendered config in the state folder (``extra``: e.g. ``-t`` to check it).
    ``-e stderr``: errors go to the service log from the first line, before the config is read."""
    folder = proxy_dir(settings)
    conf = str(folder / "nginx.conf")
    return [str(nginx_bin()), *extra, "-c", conf, "-p", str(folder), "-e", "stderr"]


def nginx_bin() -> Path:
    """The nginx binary: on PATH, else Debian's ``/usr/sbin/nginx`` (``make system-deps``)."""
    found = shutil.which("nginx")
    return Path(found) if found else DEBIAN_NGINX


def prepare_proxy(settings: Settings) -> None:
    """Check nginx is installed and write the proxy's folders and nginx.conf."""
    binary = nginx_bin()
    if not os.access(binary, os.X_OK):
        raise PlatformError(
            "proxy: nginx is not installed; run `make system-deps` "
            "(apt-get install nginx-light) and retry"
        )
    folder = proxy_dir(settings)
    (folder / "tmp").mkdir(parents=True, exist_ok=True)
    settings.log_dir.mkdir(parents=True, exist_ok=True)
    conf = folder / "nginx.conf"
    conf.write_text(local_conf(settings))


def proxy(settings: Settings) -> Service:
    """nginx on loopback in front of serving's gunicorn (opt-in: ``lambdarec platform up
    proxy`` starts serving, then the proxy)."""
    host, port = settings.bind_host, settings.proxy_port
    url = f"http://{host}:{port}"
    return Service(
        name="proxy",
        title="nginx in front of serving: the public serving URL (opt-in)",
        ports={port: "proxy_port"},
        url=url,
        health=lambda: http_ok(f"{url}/health"),
        command=nginx_command(settings),
        requires=("serving",),
        prepare=lambda: prepare_proxy(settings),
        stop_timeout_s=10.0,
        details=lambda: f"to gunicorn on :{settings.serving_port}; docs {url}/docs",
        default=False,
    )


def write_compose_conf() -> Path:
    """(Re)write ``docker/nginx/nginx.conf`` from the template and the settings' defaults."""
    from lambdarec.deploy import compose_settings

    COMPOSE_CONF.parent.mkdir(parents=True, exist_ok=True)
    COMPOSE_CONF.write_text(compose_conf(compose_settings({})))
    return COMPOSE_CONF


if __name__ == "__main__":
    print(f"wrote {write_compose_conf()}")
