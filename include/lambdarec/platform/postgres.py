"""A PostgreSQL instance owned by the project: Airflow's and MLflow's metadata off SQLite.

The deployment runs the ``postgres`` image (docker-compose.yml: one role and one database each
for ``airflow`` and ``mlflow``, docker/postgres/init-databases.sh); ``make rehearse-cluster``
runs the distribution's own server (``make system-deps`` installs Debian's ``postgresql``)
through :class:`PostgresServer`: ``initdb`` into a folder, ``postgres`` on 127.0.0.1 and a free
port with its unix socket inside that folder, the same roles and databases with passwords, then a
fast shutdown. Run as root, ``initdb`` and ``postgres`` run as the ``postgres`` system user (they
refuse root) and the folder is handed to it.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from lambdarec.platform.base import PlatformError

#: Where Debian's ``postgresql-<major>`` packages put the server's programs.
DEBIAN_BIN_GLOB = "/usr/lib/postgresql/*/bin"
#: The system user the server runs as when we are root (Debian's package creates it).
SYSTEM_USER = "postgres"
#: What every database URL of the project names as its driver (Airflow's and MLflow's alike).
DRIVER = "postgresql+psycopg2"


def postgres_bin_dir() -> Path:
    """The newest installed major version's ``bin`` folder (``initdb``, ``postgres``)."""
    found = sorted(
        (p for p in Path("/").glob(DEBIAN_BIN_GLOB.lstrip("/")) if (p / "initdb").is_file()),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    if not found:
        raise PlatformError(
            f"PostgreSQL binaries not found under {DEBIAN_BIN_GLOB}: run `make setup` "
            "(make system-deps installs Debian's postgresql)"
        )
    return found[-1]


def database_url(user: str, password: str, host: str, port: int, database: str) -> str:
    """``postgresql+psycopg2://user:password@host:port/database``, the password URL-quoted."""
    return f"{DRIVER}://{user}:{quote(password, safe='')}@{host}:{port}/{database}"


@dataclass
class PostgresServer:
    """One server: its data under ``folder / "data"``, socket and log in ``folder``."""

    folder: Path
    port: int
    host: str = "127.0.0.1"
    #: Kept small: two metadata databases on a shared machine.
    shared_buffers: str = "32MB"
    max_connections: int = 100
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def data_dir(self) -> Path:
        return self.folder / "data"

    @property
    def socket_dir(self) -> Path:
        return self.folder / "socket"

    @property
    def log_file(self) -> Path:
        return self.folder / "postgres.log"

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    # -- running as the postgres user ------------------------------------------------------------

    def _owner(self) -> tuple[int | None, int | None]:
        """(uid, gid) of the ``postgres`` user to run the server's programs as when we are
        root; (None, None) otherwise (they run as we do)."""
        if os.geteuid() != 0:
            return None, None
        try:
            user = pwd.getpwnam(SYSTEM_USER)
        except KeyError:
            raise PlatformError(
                f"running as root, and no `{SYSTEM_USER}` system user to run PostgreSQL as: run "
                "`make setup` (Debian's postgresql creates it)"
            ) from None
        return user.pw_uid, user.pw_gid

    def _hand_over(self) -> None:
        """As root: give the folder to the ``postgres`` user, after checking it can reach it."""
        uid, gid = self._owner()
        if uid is None or gid is None:
            return
        for parent in self.folder.resolve().parents:
            if not parent.stat().st_mode & 0o001:
                raise PlatformError(
                    f"the `{SYSTEM_USER}` user cannot reach {self.folder}: {parent} is not "
                    f"traversable by others (chmod o+x {parent}, or use a folder under /tmp)"
                )
        for path in (self.folder, self.socket_dir):
            os.chown(path, uid, gid)

    def _run(self, command: list[str], what: str) -> str:
        uid, gid = self._owner()
        done = subprocess.run(  # noqa: S603 - the distribution's own programs
            command,
            capture_output=True,
            text=True,
            check=False,
            timeout=300,
            cwd=self.folder,
            user=uid,
            group=gid,
            extra_groups=None if uid is None else [],
        )
        if done.returncode != 0:
            tail = " | ".join((done.stdout + done.stderr).strip().splitlines()[-5:])
            raise PlatformError(f"{what} failed (exit {done.returncode}): {tail}")
        return done.stdout

    # -- lifecycle ---------------------------------------------------------------------------------

    def version(self) -> str:
        """``postgres --version``'s number, e.g. ``15.14``."""
        out = self._run([str(postgres_bin_dir() / "postgres"), "--version"], "postgres --version")
        found = re.search(r"(\d+(?:\.\d+)+)", out)
        return found.group(1) if found else out.strip()

    def init(self) -> None:
        """``initdb`` into ``data_dir``: local (socket) connections trusted, TCP ones by
        password (scram-sha-256). A folder already initialised is kept."""
        bin_dir = postgres_bin_dir()
        self.folder.mkdir(parents=True, exist_ok=True)
        self.socket_dir.mkdir(exist_ok=True)
        self._hand_over()
        if (self.data_dir / "PG_VERSION").is_file():
            return
        self._run(
            [
                str(bin_dir / "initdb"),
                "-D",
                str(self.data_dir),
                "-U",
                SYSTEM_USER,
                "-E",
                "UTF8",
                "--locale=C",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
            ],
            "initdb",
        )

    def start(self, timeout_s: float = 60.0) -> None:
        """Start ``postgres`` on ``host:port`` (socket in ``socket_dir``); wait until it accepts
        connections. Raises :class:`PlatformError` with the log's tail if it does not."""
        if self.alive:
            return
        command = [
            str(postgres_bin_dir() / "postgres"),
            "-D",
            str(self.data_dir),
            "-c",
            f"listen_addresses={self.host}",
            "-c",
            f"port={self.port}",
            "-c",
            f"unix_socket_directories={self.socket_dir}",
            "-c",
            f"shared_buffers={self.shared_buffers}",
            "-c",
            f"max_connections={self.max_connections}",
        ]
        uid, gid = self._owner()
        log = self.log_file.open("ab")
        try:
            self.process = subprocess.Popen(  # noqa: S603 - the distribution's own program
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.folder,
                start_new_session=True,
                user=uid,
                group=gid,
                extra_groups=None if uid is None else [],
            )
        finally:
            log.close()
        deadline = time.monotonic() + timeout_s
        while not self._ready():
            if not self.alive or time.monotonic() > deadline:
                self.stop()
                tail = " | ".join(self.log_file.read_text(errors="replace").splitlines()[-5:])
                raise PlatformError(
                    f"PostgreSQL did not accept connections on {self.host}:{self.port} within "
                    f"{timeout_s:g} s (port taken? see {self.log_file}): {tail}"
                )
            time.sleep(0.2)

    def _connect(self, database: str = "postgres") -> Any:  # a psycopg2 connection
        import psycopg2

        return psycopg2.connect(
            host=str(self.socket_dir),
            port=self.port,
            user=SYSTEM_USER,
            dbname=database,
            connect_timeout=2,
        )

    def _ready(self) -> bool:
        import psycopg2

        try:
            connection = self._connect()
        except psycopg2.OperationalError:
            return False
        connection.close()
        return True

    def create_database(self, name: str, password: str) -> str:
        """A login role ``name`` with ``password`` owning a database ``name`` (the deployment's
        init-databases.sh does the same); returns its URL over TCP. An existing role gets the
        new password; an existing database is kept."""
        from psycopg2 import sql

        connection = self._connect()
        try:
            connection.autocommit = True  # CREATE DATABASE
            with connection.cursor() as cursor:
                cursor.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,))
                verb = "ALTER" if cursor.fetchone() else "CREATE"
                cursor.execute(
                    sql.SQL(verb + " ROLE {} LOGIN PASSWORD %s").format(sql.Identifier(name)),
                    (password,),
                )
                cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
                if cursor.fetchone() is None:
                    cursor.execute(
                        sql.SQL("CREATE DATABASE {} OWNER {}").format(
                            sql.Identifier(name), sql.Identifier(name)
                        )
                    )
        finally:
            connection.close()
        return database_url(name, password, self.host, self.port, name)

    def query(
        self, database: str, statement: str, params: tuple[object, ...] = ()
    ) -> list[tuple[Any, ...]]:
        """Rows of one read-only ``statement`` in ``database`` (as the superuser, over the socket)."""
        connection = self._connect(database)
        try:
            with connection.cursor() as cursor:
                cursor.execute(statement, params)
                return list(cursor.fetchall())
        finally:
            connection.close()

    def stop(self, timeout_s: float = 30.0) -> None:
        """Fast shutdown (SIGINT: running transactions roll back); SIGKILL after ``timeout_s``."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
