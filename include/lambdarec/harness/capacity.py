"""Capacity searches for benchmarks: the highest steady rate a trial holds, and the CPU each
process of the path spent per event meanwhile.

:func:`highest_rate` doubles a rate from ``start`` while the trial holds, then bisects between the
last held and the first failed rate; :class:`ProcessCpu` reads each named process's CPU seconds
(user + system, its descendants included: the Flink job is a Python driver and its JVM; a named
process started by another one counts in its own name only) before and after a step.
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
    floor: float | None = None,
    bisect_steps: int = 3,
    resolution: float = 0.05,
) -> float | None:
    """The highest rate ``trial`` held: doubling from ``start`` (never past ``ceiling``) while it
    holds, or halving while it fails (never below ``floor``, default ``start``), then up to
    ``bisect_steps`` halvings of the gap between the highest held rate and the lowest failed one
    (stopping once the gap is within ``resolution`` of the held rate). None when no rate held.
    Rates are rounded to 100 (events/s) but never below ``floor``."""
    floor = start if floor is None else floor
    held: float | None = None
    failed: float | None = None
    rate = start
    while True:
        if trial(rate):
            held = rate
            if failed is not None or rate >= ceiling:
                break
            rate = min(rate * 2, ceiling)
        else:
            failed = rate
            if held is not None or rate / 2 < floor:
                break
            rate = rate / 2
    if held is None or failed is None:
        return held
    for _ in range(bisect_steps):
        if failed - held <= resolution * held:
            break
        rate = max(round((held + failed) / 2, -2), floor)
        if rate in (held, failed):
            break
        if trial(rate):
            held = rate
        else:
            failed = rate
    return held


def _owners(roots: Mapping[str, int]) -> dict[int, tuple[str, psutil.Process]]:
    """Each live process of the roots' trees, with the name of its nearest named ancestor (or
    itself): a root started by another root (the bench starts the job and the broker) counts
    only in its own name."""
    trees: list[tuple[str, list[psutil.Process]]] = []
    for name, pid in roots.items():
        try:
            proc = psutil.Process(pid)
            trees.append((name, [proc, *proc.children(recursive=True)]))
        except psutil.NoSuchProcess:
            continue
    owners: dict[int, tuple[str, psutil.Process]] = {}
    # The largest tree first: a smaller tree inside it takes its processes back.
    for name, procs in sorted(trees, key=lambda tree: -len(tree[1])):
        for proc in procs:
            owners[proc.pid] = (name, proc)
    return owners


def _cpu_s(roots: Mapping[str, int]) -> dict[str, float]:
    """CPU seconds (user + system) of each named process tree (0 for one that is gone)."""
    used = dict.fromkeys(roots, 0.0)
    for name, proc in _owners(roots).values():
        try:
            t = proc.cpu_times()
        except psutil.NoSuchProcess:
            continue
        used[name] += t.user + t.system
    return used


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
        self._began = _cpu_s(self.roots)
        self._machine = self._machine_busy_s()

    def stop(self) -> dict[str, float]:
        """CPU seconds of each process since :meth:`start`; ``machine`` is every process's."""
        now = _cpu_s(self.roots)
        used = {name: now[name] - self._began[name] for name in self.roots}
        used["machine"] = self._machine_busy_s() - self._machine
        return used
