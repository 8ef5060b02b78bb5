"""The capacity search of the benchmarks: doubling, halving and bisecting to the highest rate a
trial holds."""

from __future__ import annotations

import os

import pytest

from lambdarec.harness.capacity import ProcessCpu, highest_rate


@pytest.mark.parametrize(
    ("capacity", "best", "tried"),
    [
        (23_000, 22_000, [1000, 2000, 4000, 8000, 16000, 32000, 24000, 20000, 22000]),
        (700, 700, [1000, 500, 800, 600, 700]),
        (100_000, 64_000, [1000, 2000, 4000, 8000, 16000, 32000, 64000]),
        (100, None, [1000, 500, 250]),
    ],
)
def test_highest_rate_doubles_or_halves_then_bisects(
    capacity: float, best: float | None, tried: list[float]
) -> None:
    seen: list[float] = []

    def trial(rate: float) -> bool:
        seen.append(rate)
        return rate <= capacity

    assert highest_rate(trial, 1000, 64_000, floor=250, bisect_steps=3) == best
    assert seen == tried


def test_process_cpu_counts_each_named_process_once() -> None:
    cpu = ProcessCpu({"me": os.getpid(), "parent": os.getppid()})
    cpu.start()
    sum(i * i for i in range(200_000))
    used = cpu.stop()
    assert set(used) == {"me", "parent", "machine"}
    assert used["me"] > 0 and used["machine"] >= used["me"] * 0.5
