"""``bench/bench_serving.py``'s pure parts: reading py-spy's collapsed stacks (a ``process`` root
frame whose command line spans lines or holds ``;``), the self-time summary quoted in the JSON
line (waiting threads set apart), a Go CPU profile read without Go's tools, and the CPU total
that leaves the load generator out."""

from __future__ import annotations

import gzip
import importlib.util
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from types import ModuleType

BENCH = Path(__file__).resolve().parents[2] / "bench" / "bench_serving.py"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_serving_under_test", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_stacks_are_read_root_first_with_their_counts(bench: Any) -> None:
    text = (
        "handle (gunicorn/workers/gthread.py:271);recommend (serving/recommender.py:300) 7\n"
        "handle (gunicorn/workers/gthread.py:271) 2\n"
    )
    assert bench.collapsed_stacks(text) == [
        (["handle (gunicorn/workers/gthread.py:271)", "recommend (serving/recommender.py:300)"], 7),
        (["handle (gunicorn/workers/gthread.py:271)"], 2),
    ]


def test_process_frames_are_dropped_even_over_lines_and_semicolons(bench: Any) -> None:
    text = (
        'process 12:"python -c \nx = 5; y = 6\n";<module> (<string>:3);f (<string>:2) 4\n'
        'process 13:"gunicorn serving:create_app()";run (gunicorn/arbiter.py:9) 1\n'
        'process 13:"gunicorn: master";process 14:"gunicorn: worker";handle (g.py:5) 2\n'
    )
    assert bench.collapsed_stacks(text) == [
        (["<module> (<string>:3)", "f (<string>:2)"], 4),
        (["run (gunicorn/arbiter.py:9)"], 1),
        (["handle (g.py:5)"], 2),
    ]


def test_self_time_merges_a_functions_lines_and_ranks_by_share(bench: Any) -> None:
    stacks = [
        (["main (app.py:1)", "loads (json/decoder.py:337)"], 3),
        (["main (app.py:1)", "loads (json/decoder.py:340)"], 3),
        (["main (app.py:1)", "dumps (/v/lib/python3.11/site-packages/orjson/x.py:9)"], 2),
        (["main (app.py:1)", "score (lambdarec/inference/ranker.py:200)"], 1),
        (["main (app.py:1)"], 1),
    ]
    top = bench.top_self(stacks, n=3)
    assert (top["samples"], top["busy_samples"], top["waiting_share"]) == (10, 10, 0.0)
    assert top["functions"] == [
        {"name": "loads (json/decoder.py)", "share": 0.6},
        {"name": "dumps (/v/lib/python3.11/site-packages/orjson/x.py)", "share": 0.2},
        {"name": "main (app.py)", "share": 0.1},
    ]
    assert top["packages"] == [
        {"name": "json", "share": 0.6},
        {"name": "orjson", "share": 0.2},
        {"name": "app", "share": 0.1},
    ]


def test_waiting_threads_are_set_apart_from_the_busy_shares(bench: Any) -> None:
    stacks = [
        (["run (threading.py:1)", "_worker (concurrent/futures/thread.py:89)"], 5),
        (["run (gunicorn/arbiter.py:1)", "EpollSelector.select (selectors.py:468)"], 2),
        (
            ["search (pymilvus/x.py:1)", "_UnaryUnaryMultiCallable._blocking (grpc/_channel.py:1)"],
            1,
        ),
        (["handle (gunicorn/workers/gthread.py:1)", "forward (lambdarec/ranker.py:3)"], 2),
    ]
    top = bench.top_self(stacks)
    assert (top["samples"], top["busy_samples"], top["waiting_share"]) == (10, 2, 0.8)
    assert top["functions"] == [{"name": "forward (lambdarec/ranker.py)", "share": 1.0}]


def test_no_samples_no_shares(bench: Any) -> None:
    assert bench.top_self([]) == {
        "samples": 0,
        "waiting_share": 0.0,
        "busy_samples": 0,
        "functions": [],
        "packages": [],
    }


@pytest.mark.parametrize(
    ("file", "package"),
    [
        ("/usr/lib/python3.11/threading.py", "threading"),
        ("/usr/lib/python3.11/json/decoder.py", "json"),
        ("/w/.venv/lib/python3.11/site-packages/feast/infra/online.py", "feast"),
        ("serving/recommender.py", "serving"),
        ("", "(native)"),
    ],
)
def test_a_frames_package(bench: Any, file: str, package: str) -> None:
    assert bench._package(file) == package


def test_the_cpu_total_leaves_the_load_generator_out(bench: Any) -> None:
    per_request = {"serving": 4.8, "milvus": 3.0, "kafka": 0.4, "bench_client": 0.5}
    assert bench.cpu_total(per_request) == 8.2


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        out.append((value & 0x7F) | (0x80 if value > 0x7F else 0))
        value >>= 7
        if not value:
            return bytes(out)


def _field(number: int, value: int | bytes) -> bytes:
    if isinstance(value, int):
        return _varint(number << 3) + _varint(value)
    return _varint(number << 3 | 2) + _varint(len(value)) + value


def _profile() -> bytes:
    """A Go CPU profile as ``/debug/pprof/profile`` serves it: columns samples/count and
    cpu/nanoseconds; ``scan`` inlined into ``search`` (one location, two lines), ``search``
    called from ``main``."""
    strings = ["", "samples", "count", "cpu", "nanoseconds", "main", "search", "scan"]
    body = b"".join(
        [
            _field(1, _field(1, 1) + _field(2, 2)),
            _field(1, _field(1, 3) + _field(2, 4)),
            # leaf first: 30 ms in the inlined scan, 10 ms in main itself
            _field(
                2, _field(1, _varint(2) + _varint(1)) + _field(2, _varint(3) + _varint(30_000_000))
            ),
            _field(2, _field(1, 1) + _field(2, _varint(1) + _varint(10_000_000))),
            _field(4, _field(1, 1) + _field(4, _field(1, 1))),
            _field(4, _field(1, 2) + _field(4, _field(1, 3)) + _field(4, _field(1, 2))),
            _field(5, _field(1, 1) + _field(2, 5)),
            _field(5, _field(1, 2) + _field(2, 6)),
            _field(5, _field(1, 3) + _field(2, 7)),
            *[_field(6, s.encode()) for s in strings],
        ]
    )
    return gzip.compress(body)


def test_a_go_cpu_profile_is_read_by_self_time(bench: Any) -> None:
    assert bench.pprof_top(_profile()) == {
        "cpu_s": 0.04,
        "functions": [{"name": "scan", "share": 0.75}, {"name": "main", "share": 0.25}],
    }


def test_a_file_that_is_no_protobuf_is_refused(bench: Any) -> None:
    with pytest.raises((ValueError, IndexError)):
        bench.pprof_top(b"\x0f not a profile")


def test_native_code_without_symbols_is_named_so(bench: Any) -> None:
    body = (
        _field(1, _field(1, 1) + _field(2, 2))
        + _field(2, _field(1, _varint(9)) + _field(2, _varint(10_000_000)))
        + _field(4, _field(1, 9) + _field(3, 0x4F00))
        + b"".join(_field(6, s.encode()) for s in ["", "cpu", "nanoseconds"])
    )
    assert bench.pprof_top(body) == {
        "cpu_s": 0.01,
        "functions": [{"name": bench.NO_SYMBOL, "share": 1.0}],
    }
