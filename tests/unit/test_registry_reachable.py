"""A tracking server that is down fails in one line at once, instead of MLflow's minutes of
retries (``dag.test`` of the drift DAG with the platform stopped seemed to hang)."""

from __future__ import annotations

import socket
import time
from typing import TYPE_CHECKING

import pytest

from lambdarec.harness.platform import free_ports
from lambdarec.registry import ModelRegistry, TrackingServerDownError, ensure_reachable

if TYPE_CHECKING:
    from pathlib import Path


def test_a_refused_server_fails_in_one_line_naming_the_fix() -> None:
    (port,) = free_ports(1)
    uri = f"http://127.0.0.1:{port}"
    began = time.monotonic()
    with pytest.raises(TrackingServerDownError) as caught:
        ModelRegistry(uri, "two_tower").experiment_id()
    assert time.monotonic() - began < 10
    message = str(caught.value)
    assert "\n" not in message
    assert uri in message and "make platform-up" in message
    assert "LAMBDAREC_MLFLOW_TRACKING_URI" in message


def test_a_listening_server_and_serverless_uris_pass(tmp_path: Path) -> None:
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        ensure_reachable(f"http://127.0.0.1:{listening.getsockname()[1]}")
    ensure_reachable(f"sqlite:///{tmp_path / 'mlflow.db'}")
    ensure_reachable(tmp_path.as_uri())
