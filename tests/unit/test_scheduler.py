"""The test scheduler's units (tests/conftest.py): a renamed module must not fall silently out of
the pool, and the demo's modules stay one unit on one worker."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import DEMO_UNIT, POOL, _order, _unit

ROOT = Path(__file__).resolve().parents[2]


def test_every_pooled_module_exists() -> None:
    missing = [path for path in POOL if not (ROOT / path).is_file()]
    assert missing == []
    assert (ROOT / DEMO_UNIT[0]).is_file() and (ROOT / DEMO_UNIT[2]).is_file()
    assert list((ROOT / "tests" / "e2e").glob("test_pages_*.py")), "the browser tests moved"


def test_units_and_their_order() -> None:
    demo = [
        "tests/e2e/test_demo.py::t",
        "tests/e2e/test_pages_shop.py::t",
        "tests/e2e/test_perimeter.py::t",
    ]
    assert {_unit(n) for n in demo} == {"demo"}
    serial = ["tests/integration/test_vector_index.py::t", "tests/e2e/test_serving_freshness.py::t"]
    assert {_unit(n) for n in serial} == {"first"}
    assert _unit("tests/unit/test_lake.py::t[a]") == "tests/unit/test_lake.py"
    units = ["tests/unit/test_lake.py", POOL[1], "demo", POOL[0], "first"]
    assert sorted(units, key=_order) == [
        "first",
        "demo",
        POOL[0],
        POOL[1],
        "tests/unit/test_lake.py",
    ]
