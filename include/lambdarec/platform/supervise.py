"""Keep one command running: restart it with exponential back-off whenever it exits on its own.

The local platform runs the speed layer under this supervisor (``python -m
lambdarec.platform.supervise --name speed-layer -- <command>``): a PyFlink mini-cluster lives in
one process, so a crash of its JVM or driver (out of memory, a killed process) would otherwise stop
the stream until someone notices. The job resumes from its newest checkpoint on every start, so a
restart loses nothing; Flink's own restart strategy handles task failures inside a running
mini-cluster, this handles the process.

The supervisor is its service's session leader (the platform spawns each service with
``setsid``), and the child stays in that process group, so ``lambdarec platform down`` signals both.
On SIGTERM or SIGINT the supervisor forwards the signal to the child, waits for it and exits
without restarting. Before each restart, whatever the dead child left in the group (the JVM of a
killed Python driver) is killed, so the new child never meets an old one's ports.

Back-off: ``--first-delay-s`` (1 s) doubling to ``--max-delay-s`` (60 s); a child that ran for
``--reset-after-s`` (300 s) counts as healthy and the delay starts over. There is no cap on the
number of restarts: the log says each one, with the exit code and the delay.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from types import FrameType

log = logging.getLogger("lambdarec.supervise")


class Supervisor:
    def __init__(
        self,
        name: str,
        command: list[str],
        *,
        first_delay_s: float = 1.0,
        max_delay_s: float = 60.0,
        reset_after_s: float = 300.0,
    ) -> None:
        if not command:
            raise ValueError("nothing to supervise: give the command after `--`")
        if not 0 < first_delay_s <= max_delay_s:
            raise ValueError(
                f"delays must satisfy 0 < first ({first_delay_s}) <= max ({max_delay_s}); fix "
                "--first-delay-s / --max-delay-s"
            )
        self.name = name
        self.command = command
        self.first_delay_s = first_delay_s
        self.max_delay_s = max_delay_s
        self.reset_after_s = reset_after_s
        self.restarts = 0
        self._stop = threading.Event()
        self._child: subprocess.Popen[bytes] | None = None

    def stop(self, signum: int = signal.SIGTERM) -> None:
        """Stop supervising; the child gets ``signum`` (and the caller waits for it)."""
        self._stop.set()
        child = self._child
        if child is not None and child.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(signum)

    def run(self) -> int:
        """Run and restart the command until stopped (then returns 0)."""
        delay = self.first_delay_s
        while not self._stop.is_set():
            began = time.monotonic()
            self._child = subprocess.Popen(self.command)  # noqa: S603 - the service's own command
            log.info("%s: started pid %d", self.name, self._child.pid)
            code = self._child.wait()
            if self._stop.is_set():
                return 0
            ran_s = time.monotonic() - began
            if ran_s >= self.reset_after_s:
                delay = self.first_delay_s
            self._kill_leftovers()
            self.restarts += 1
            log.warning(
                "%s: exited with code %s after %.0f s; restart #%d in %.0f s",
                self.name,
                code,
                ran_s,
                self.restarts,
                delay,
            )
            if self._stop.wait(delay):
                break
            delay = min(delay * 2, self.max_delay_s)
        return 0

    def _kill_leftovers(self) -> None:
        """SIGKILL the rest of our process group (what the dead child spawned), never ourselves.

        Only when the supervisor leads its group (as the platform starts it): a supervisor run
        inside another process's group (a test, a shell without job control) would otherwise kill
        its parents and siblings."""
        from lambdarec.platform.processes import kill_group_except

        me = os.getpid()
        if os.getpgid(me) != me:
            log.warning(
                "%s: not a process-group leader, leftovers of the old child are not cleaned up "
                "(start the supervisor with setsid, as the platform does)",
                self.name,
            )
            return
        killed = kill_group_except(me, keep=me)
        if killed:
            log.info("%s: killed %d leftover process(es) of the old child", self.name, killed)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lambdarec.platform.supervise",
        description="Run a command and restart it with exponential back-off when it exits.",
    )
    parser.add_argument("--name", default="service", help="name used in the log lines")
    parser.add_argument("--first-delay-s", type=float, default=1.0)
    parser.add_argument("--max-delay-s", type=float, default=60.0)
    parser.add_argument("--reset-after-s", type=float, default=300.0)
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- the command and its options")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s supervise: %(message)s"
    )
    try:
        supervisor = Supervisor(
            args.name,
            command,
            first_delay_s=args.first_delay_s,
            max_delay_s=args.max_delay_s,
            reset_after_s=args.reset_after_s,
        )
    except ValueError as error:
        print(f"supervise: {error}", file=sys.stderr)
        return 2

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        supervisor.stop(signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return supervisor.run()


if __name__ == "__main__":
    sys.exit(main())
