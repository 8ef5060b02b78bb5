"""A process that has used gRPC (pymilvus) must still start subprocesses.

With gRPC's fork handlers on (grpcio's default since 1.81), a Popen child whose parent has live
gRPC channels died before exec now and then (grpc/grpc#43055): measured here 17 of 1,000, and once
spark-submit's Java gateway in the tests. Importing lambdarec turns the handlers off.

600 subprocesses: at that rate the chance that none dies with the handlers on is 0.983^600, about
3 in 100,000, at 2/5 of the time of the 1,500 this test started more.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

CHILD = textwrap.dedent(
    """
    import signal, subprocess, threading, time
    import lambdarec  # noqa: F401 - must come before grpc
    import grpc

    stop = False

    def hammer():
        call = grpc.insecure_channel("127.0.0.1:1").unary_unary("/lambdarec.Probe/Call")
        while not stop:
            try:
                call(b"", timeout=0.05)
            except grpc.RpcError:
                pass

    for _ in range(2):
        threading.Thread(target=hammer, daemon=True).start()
    time.sleep(0.3)
    failed = 0
    for _ in range(SUBPROCESSES):
        # As pyspark starts its gateway: a preexec_fn, so a real fork, and stdin piped.
        child = subprocess.Popen(
            ["/bin/true"], stdin=subprocess.PIPE,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
        )
        child.stdin.close()
        failed += child.wait() != 0
    stop = True
    print(failed)
    """
)
SUBPROCESSES = 600


def _without_the_setting() -> dict[str, str]:
    """This environment minus GRPC_ENABLE_FORK_SUPPORT (make and conftest set it)."""
    return {k: v for k, v in os.environ.items() if k != "GRPC_ENABLE_FORK_SUPPORT"}


def test_importing_lambdarec_turns_grpc_fork_handlers_off() -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import os, lambdarec; print(os.environ['GRPC_ENABLE_FORK_SUPPORT'])",
        ],
        env=_without_the_setting(),
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert out.stdout.strip() == "false"


def test_subprocesses_start_while_grpc_calls_are_in_flight() -> None:
    out = subprocess.run(
        [sys.executable, "-c", CHILD.replace("SUBPROCESSES", str(SUBPROCESSES))],
        env=_without_the_setting(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "0", (
        f"{out.stdout.strip()} of {SUBPROCESSES} subprocesses died before exec:\n{out.stderr[-2000:]}"
    )
