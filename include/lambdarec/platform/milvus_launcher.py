"""Start the Milvus 2.3 standalone server of PyPI's ``milvus`` wheel on exactly the ports asked for.

Run by the platform with the Milvus virtualenv's interpreter (``.venv-milvus/bin/python``, where
this file's only imports, the standard library and ``milvus``, exist); the arguments are the
``milvus-server`` command's (``--data``, ``--proxy-port``, ``--etcd-port``, ...).

Why not ``milvus-server`` itself: its wrapper checks whether a port is free by binding it without
``SO_REUSEADDR``, and when that fails it silently takes the next free port. A server stopped a
moment ago leaves its accepted connections in TIME_WAIT on its ports for a minute, so a restart
within that minute came up with its proxy on 19532 and its health endpoint on 9092: the platform's
health check and every client waited on 19530 and 9091 for minutes (the serving fault test). The
Go server binds with ``SO_REUSEADDR`` (Go's default), so TIME_WAIT does not stop it. Here the
wrapper's check binds the way the server will, and a port the clients need (the proxy, the health
endpoint, embedded etcd) that is really taken stops the start with an error naming it instead of
moving it.
"""

from __future__ import annotations

import socket
import sys

#: The health endpoint the wrapper resolves from (it is not configurable).
METRICS_PORT = 9091


def try_bind_port(self: object, port: int) -> socket.socket | None:
    """The wrapper's port check, binding as the Go server does (``SO_REUSEADDR``)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(("127.0.0.1", port))
        sock.listen()
    except (OSError, OverflowError, ValueError):
        sock.close()
        return None
    return sock


def fixed_ports(argv: list[str]) -> set[int]:
    """The ports clients connect to: ``--proxy-port``, ``--etcd-port`` and the health endpoint
    (the wrapper's defaults when not given)."""
    ports = {METRICS_PORT}
    for flag, default in (("--proxy-port", 19530), ("--etcd-port", 2379)):
        value = str(default)
        for n, arg in enumerate(argv):
            if arg.startswith(flag + "="):
                value = arg.split("=", 1)[1]
            elif arg == flag and n + 1 < len(argv):
                value = argv[n + 1]
        ports.add(int(value))
    return ports


def patch(config_class: type, fixed: set[int]) -> None:
    """Bind like the server, and never move a port of ``fixed``."""
    resolve_port = getattr(config_class, "resolve_port")  # noqa: B009 - a class of the wheel

    def strict_resolve_port(self: object, port_start: int) -> tuple[int | None, object]:
        port, sock = resolve_port(self, port_start)
        if port_start in fixed and port != port_start:
            if sock is not None:
                sock.close()
            raise SystemExit(
                f"milvus: port {port_start} is in use by another process; stop it (one Milvus "
                f"server per host: `lambdarec platform down milvus`, or `ss -ltnp | grep "
                f":{port_start}` to find the holder)"
            )
        return port, sock

    setattr(config_class, "try_bind_port", try_bind_port)  # noqa: B010
    setattr(config_class, "resolve_port", strict_resolve_port)  # noqa: B010


def main() -> None:
    import milvus

    patch(milvus.MilvusServerConfig, fixed_ports(sys.argv[1:]))
    milvus.main()


if __name__ == "__main__":
    main()
