"""How the vector index builds its Milvus client: a server gets a short gRPC reconnect back-off
(else serving keeps failing for up to two minutes against a restarted server); Milvus Lite, a
local file, gets none."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from pathlib import Path


class _Client:
    made: list[tuple[str, dict[str, Any]]] = []

    def __init__(self, uri: str, **kwargs: Any) -> None:
        self.made.append((uri, kwargs))


@pytest.fixture
def made(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, dict[str, Any]]]:
    import pymilvus

    _Client.made = []
    monkeypatch.setattr(pymilvus, "MilvusClient", _Client)
    return _Client.made


def test_a_server_client_caps_the_reconnect_back_off(made: list[Any]) -> None:
    from lambdarec.retrieval.index import IndexConfig, VectorIndex

    VectorIndex(IndexConfig(uri="http://127.0.0.1:19530")).client  # noqa: B018
    assert made == [
        ("http://127.0.0.1:19530", {"grpc_options": {"grpc.max_reconnect_backoff_ms": 1000}})
    ]


def test_a_milvus_lite_client_sends_no_idle_keepalive_pings(
    made: list[Any], tmp_path: Path
) -> None:
    """Lite's in-process gRPC server closes a channel that pings while idle ('Too many pings')."""
    from lambdarec.retrieval.index import IndexConfig, VectorIndex

    uri = str(tmp_path / "milvus" / "items.db")
    VectorIndex(IndexConfig(uri=uri)).client  # noqa: B018
    assert made == [
        (
            uri,
            {
                "grpc_options": {
                    "grpc.keepalive_permit_without_calls": 0,
                    "grpc.keepalive_time_ms": 600_000,
                }
            },
        )
    ]
    assert (tmp_path / "milvus").is_dir()
