"""Capacity searches for benchmarks: the highest steady rate a trial holds, and the CPU each
process of the path spent per event meanwhile.

:func:`highest_rate` doubles a rate from ``start`` while the trial holds, then bisects between the
last held and the first failed rate; :class:`ProcessCpu` reads each named process's CPU seconds
(user + system, its descendants included: the Flink job is a Python driver and its JVM) before
and after a step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import psutil

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping


def highest_rate(
    trial: Callable[[float], bool],
    start: float,
    ceiling: float,
    *,
    bisect_steps: int = 3,
    resolution: float = 0.05,
) -> float | None:
    """The highest rate ``trial`` held: doubling from ``start`` (never past ``ceiling``) while it
    holds, then up to ``bisect_steps`` halvings of the gap between the last held rate and the
    first failed one (stopping once the gap is within ``resolution`` of the held rate). None when
    ``start`` itself fails. Rates are rounded to 100 (events/s)."""
    held: float | None = None
    failed: float | None = None
    rate = start
    while True:
        if trial(rate):
            held = rate
            if rate >= ceiling:
                return held
            rate = min(rate * 2, ceiling)
        else:
            failed = rate
            break
    if held is None:
        return None
    for _ in range(bisect_steps):
        if failed - held <= resolution * held:
            break
        rate = round((held + failed) / 2, -2)
        if rate in (held, failed):
            break
        if trial(rate):
            held = rate
        else:
            failed = rate
    return held


def _tree_cpu_s(root: int) -> float:
    """CPU seconds (user + system) of ``root`` and its live descendants (0 when it is gone)."""
    try:
        proc = psutil.Process(root)
        procs = [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += t.user + t.system
    return total


@dataclass
class ProcessCpu:
    """CPU seconds per named process tree between :meth:`start` and :meth:`stop`, and the whole
    machine's busy seconds (what the other processes of a shared machine took is the rest)."""

    roots: Mapping[str, int]
    _began: dict[str, float] = field(default_factory=dict)
    _machine: float = 0.0

    @staticmethod
    def _machine_busy_s() -> float:
        t = psutil.cpu_times()
        return float(t.user + t.nice + t.system + t.irq + t.softirq + getattr(t, "steal", 0.0))

    def start(self) -> None:
        self._began = {name: _tree_cpu_s(pid) for name, pid in self.roots.items()}
        self._machine = self._machine_busy_s()

    def stop(self) -> dict[str, float]:
        """CPU seconds of each process since :meth:`start`; ``machine`` is every process's."""
        used = {name: _tree_cpu_s(pid) - self._began[name] for name, pid in self.roots.items()}
        used["machine"] = self._machine_busy_s() - self._machine
        return used
