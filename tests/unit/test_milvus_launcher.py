"""The Milvus launcher keeps the ports clients use (include/lambdarec/platform/milvus_launcher.py).

Run with the Milvus virtualenv's interpreter, against the real wrapper of PyPI's ``milvus`` wheel:
a port whose only sockets are in TIME_WAIT (a server stopped a moment ago) is free for the server,
and a port another process listens on stops the start with an error naming it, where the
wrapper alone moved the proxy to another port without a word.
"""

from __future__ import annotations

import socket
import subprocess
import textwrap
import time
from pathlib import Path

import pytest

from lambdarec.config import get_settings
from lambdarec.platform.stores import milvus_server_bin

LAUNCHER = Path(__file__).resolve().parents[2] / "include/lambdarec/platform/milvus_launcher.py"


def _python() -> Path:
    python = milvus_server_bin(get_settings()).with_name("python")
    if not python.is_file():
        pytest.fail("no .venv-milvus: run `make setup` (it builds the Milvus server virtualenv)")
    return python


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - our own interpreter and code
        [str(_python()), "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _time_wait_port() -> int:
    """A loopback port left with a server-side connection in TIME_WAIT (its listener closed), as
    a stopped Go server leaves its ports (Go listens with SO_REUSEADDR)."""
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    accepted, _ = server.accept()
    accepted.close()  # the server side closes first: TIME_WAIT stays on the server's port
    client.recv(1)
    client.close()
    server.close()
    time.sleep(0.2)  # FIN_WAIT_2 -> TIME_WAIT
    return port


def test_fixed_ports_from_the_command_line() -> None:
    result = _run(f"""
        import runpy
        ns = runpy.run_path({str(LAUNCHER)!r})
        print(sorted(ns["fixed_ports"](["--data", "/x", "--proxy-port", "19600", "--etcd-port=2400"])))
        print(sorted(ns["fixed_ports"]([])))
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:2] == ["[2400, 9091, 19600]", "[2379, 9091, 19530]"]


def test_a_port_in_time_wait_is_free_for_the_server() -> None:
    port = _time_wait_port()
    result = _run(f"""
        import runpy
        import milvus
        config = milvus.MilvusServerConfig()
        print("wrapper", config.resolve_port({port})[0])
        ns = runpy.run_path({str(LAUNCHER)!r})
        ns["patch"](milvus.MilvusServerConfig, {{{port}}})
        port, sock = config.resolve_port({port})
        print("launcher", port)
    """)
    assert result.returncode == 0, result.stderr
    lines = dict(line.split() for line in result.stdout.splitlines() if line.strip())
    # The wrapper alone moves it (the bug); the launcher keeps it.
    assert int(lines["wrapper"]) != port
    assert int(lines["launcher"]) == port


def test_a_port_in_use_stops_the_start_naming_it() -> None:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    try:
        result = _run(f"""
            import runpy
            import milvus
            ns = runpy.run_path({str(LAUNCHER)!r})
            ns["patch"](milvus.MilvusServerConfig, {{{port}}})
            milvus.MilvusServerConfig().resolve_port({port})
            print("moved")
        """)
    finally:
        holder.close()
    assert result.returncode != 0
    assert "moved" not in result.stdout
    assert f"port {port} is in use by another process" in result.stderr
