"""A/B variants, deterministic per user.

Variants come from configuration as ``name:weight`` pairs, e.g. ``control:90,deepfm_v2:10``. A user
lands in the same variant on every request and every worker: the bucket is a hash of the
experiment salt and the user id, never random. Each served list names its variant in the
impression record (:class:`serving.sinks.ImpressionSink`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

DEFAULT_VARIANTS = "control:100"
BUCKETS = 10_000


@dataclass(frozen=True)
class Variants:
    names: tuple[str, ...]
    #: Cumulative upper bounds in [0, BUCKETS), one per name.
    bounds: tuple[int, ...]
    salt: str = "lambdarec-ab-1"

    @classmethod
    def parse(cls, spec: str, salt: str = "lambdarec-ab-1") -> Variants:
        """``name:weight[,name:weight...]`` with positive weights (relative, any total)."""
        pairs: list[tuple[str, float]] = []
        for part in filter(None, (p.strip() for p in spec.split(","))):
            name, sep, weight = part.partition(":")
            try:
                value = float(weight) if sep else 1.0
            except ValueError:
                value = -1.0
            if not name.strip() or not value > 0:
                raise ValueError(f"A/B variant {part!r} is not name:positive-weight")
            pairs.append((name.strip(), value))
        if not pairs:
            raise ValueError("no A/B variants configured")
        total = sum(w for _, w in pairs)
        bounds, acc = [], 0.0
        for _, w in pairs:
            acc += w
            bounds.append(round(acc / total * BUCKETS))
        return cls(tuple(n for n, _ in pairs), tuple(bounds), salt)

    def assign(self, user_id: str) -> str:
        digest = hashlib.sha256(f"{self.salt}\x00{user_id}".encode()).digest()
        bucket = int.from_bytes(digest[:8], "big") % BUCKETS
        for name, bound in zip(self.names, self.bounds, strict=True):
            if bucket < bound:
                return name
        return self.names[-1]
