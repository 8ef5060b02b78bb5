"""The nginx configuration of the proxy in front of serving: one template, two renderings."""

from __future__ import annotations

import subprocess
from typing import TYPE_CHECKING

import pytest

from lambdarec.deploy import compose_settings, generate_secrets, load_compose
from lambdarec.harness.platform import private_settings
from lambdarec.platform.proxy import (
    COMPOSE_CONF,
    compose_conf,
    local_conf,
    nginx_bin,
    nginx_command,
    prepare_proxy,
    render,
)

if TYPE_CHECKING:
    from pathlib import Path


def test_the_compose_file_is_the_rendered_template() -> None:
    assert COMPOSE_CONF.read_text() == compose_conf(compose_settings({})), (
        "docker/nginx/nginx.conf is stale: run `python -m lambdarec.platform.proxy`"
    )


def test_the_local_rendering_stays_in_the_state_folder_and_on_loopback(tmp_path: Path) -> None:
    settings = private_settings(tmp_path / "state", proxy_conns_per_ip=7, proxy_max_body_kb=99)
    conf = local_conf(settings)
    assert f"listen 127.0.0.1:{settings.proxy_port};" in conf
    assert f"server 127.0.0.1:{settings.serving_port};" in conf
    assert "daemon off;" in conf
    assert "limit_conn per_ip 7;" in conf and "client_max_body_size 99k;" in conf
    for line in conf.splitlines():
        if line.strip().startswith(("pid ", "access_log ")) or "_temp_path " in line:
            assert str(settings.state_dir) in line, line


def test_nginx_accepts_the_local_rendering(tmp_path: Path) -> None:
    if not nginx_bin().exists():
        pytest.fail("nginx is not installed: run `make system-deps` (apt-get install nginx-light)")
    settings = private_settings(tmp_path / "state")
    prepare_proxy(settings)
    checked = subprocess.run(  # noqa: S603 - our own command line
        nginx_command(settings, "-t"),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert checked.returncode == 0, checked.stderr
    assert "syntax is ok" in checked.stderr


def test_a_missing_value_is_an_error() -> None:
    with pytest.raises(ValueError, match="LISTEN"):
        render({"USER": "", "WORKERS": "1"})


def test_compose_publishes_serving_only_through_the_proxy() -> None:
    services = load_compose(generate_secrets())["services"]
    assert "ports" not in services["serving"], "gunicorn is reached through the proxy only"
    proxy = services["proxy"]
    assert proxy["ports"] == ["127.0.0.1:8000:8000"]  # .env.example's values
    assert "./docker/nginx/nginx.conf:/etc/nginx/lambdarec/nginx.conf:ro" in proxy["volumes"]
    assert proxy["depends_on"]["serving"] == {"condition": "service_healthy"}
