"""A/B variants, deterministic per user.

Variants come from configuration as ``name:weight`` pairs, e.g. ``control:90,deepfm_v2:10``. A user
lands in the same variant on every request and every worker: the bucket is a hash of the
experiment salt and the user id, never random. Each served list names its variant in the
impression record (:class:`serving.sinks.ImpressionSink`).

:class:`LiveVariants` adds the guardrail's override file (``settings.ab_override_path``, written
by :mod:`lambdarec.monitoring.guardrail`): a variant set to weight 0 there is switched off, its
users are served the control (the first variant) while everyone else keeps their variant. The
file's mtime is checked at most once a second, so a change takes effect without a restart.

Each variant runs a policy of the pipeline (:mod:`lambdarec.recommend.policies`, from
``settings.ab_policies``, e.g. ``baseline:popular``): a variant not listed runs ``pipeline``, the
full served pipeline. The policy goes with the variant the user is served under, so a switched-off
variant's users get the control's policy too.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from lambdarec.config import parse_ab_policies
from lambdarec.monitoring.guardrail import disabled_variants, read_override
from lambdarec.recommend.policies import PIPELINE

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

log = logging.getLogger(__name__)

DEFAULT_VARIANTS = "control:100"
#: The assignment salt when none is set (``LAMBDAREC_AB_SALT``).
DEFAULT_SALT = "lambdarec-ab-1"
BUCKETS = 10_000


@dataclass(frozen=True)
class Variants:
    names: tuple[str, ...]
    #: Cumulative upper bounds in [0, BUCKETS), one per name.
    bounds: tuple[int, ...]
    salt: str = DEFAULT_SALT
    #: (variant, policy) of the variants that do not run the full pipeline.
    policies: tuple[tuple[str, str], ...] = ()

    @classmethod
    def parse(cls, spec: str, salt: str = DEFAULT_SALT, policies: str = "") -> Variants:
        """``name:weight[,name:weight...]`` with positive weights (relative, any total);
        ``policies`` is ``variant:policy,...`` naming only those variants (a ValueError names an
        unknown policy or variant)."""
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
        names = tuple(n for n, _ in pairs)
        chosen = parse_ab_policies(policies, names)
        return cls(names, tuple(bounds), salt, tuple(chosen.items()))

    def policy(self, variant: str) -> str:
        """The policy ``variant`` runs (``pipeline`` unless configured)."""
        return dict(self.policies).get(variant, PIPELINE)

    def assign(self, user_id: str) -> str:
        digest = hashlib.sha256(f"{self.salt}\x00{user_id}".encode()).digest()
        bucket = int.from_bytes(digest[:8], "big") % BUCKETS
        for name, bound in zip(self.names, self.bounds, strict=True):
            if bucket < bound:
                return name
        return self.names[-1]


class LiveVariants:
    """:class:`Variants` with the guardrail's override file applied and re-read on change.

    ``assign`` returns the configured variant, or the control when the override sets that
    variant's weight to 0. The file is stat'ed at most once per ``check_s`` (default 1 s, on
    the ``clock``); when its mtime, size or inode changed it is re-read, the change logged. A malformed
    file is logged once and the last good override kept; a deleted file clears the override.
    """

    def __init__(
        self,
        base: Variants,
        path: Path,
        *,
        check_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.base = base
        self.path = path
        self.check_s = check_s
        self._clock = clock
        self._lock = threading.Lock()
        self._next_check = -float("inf")
        self._stamp: tuple[int, int, int] | None = None
        self._disabled: frozenset[str] = frozenset()
        self._refresh()

    @property
    def names(self) -> tuple[str, ...]:
        return self.base.names

    @property
    def control(self) -> str:
        return self.base.names[0]

    @property
    def disabled(self) -> frozenset[str]:
        """The variants switched off now (after a check of the file if one is due)."""
        self._maybe_refresh()
        return self._disabled

    def assign(self, user_id: str) -> str:
        name = self.base.assign(user_id)
        return self.control if name in self.disabled else name

    def policy(self, variant: str) -> str:
        return self.base.policy(variant)

    def _maybe_refresh(self) -> None:
        now = self._clock()
        if now < self._next_check:
            return
        with self._lock:
            if now < self._next_check:
                return
            self._next_check = now + self.check_s
            self._refresh()

    def _refresh(self) -> None:
        try:
            st = self.path.stat()
            # The inode too: the guardrail replaces the file, so even a same-size rewrite
            # within the filesystem's mtime granularity is seen.
            stamp: tuple[int, int, int] | None = (st.st_mtime_ns, st.st_size, st.st_ino)
        except FileNotFoundError:
            stamp = None
        if stamp == self._stamp:
            return
        self._stamp = stamp
        try:
            disabled = disabled_variants(read_override(self.path))
        except (OSError, ValueError) as exc:
            log.error("A/B override not applied, keeping the previous one: %s", exc)
            return
        if self.control in disabled:
            log.error(
                "A/B override %s sets the control %r to weight 0; ignoring that entry (the "
                "control is where switched-off users go)",
                self.path,
                self.control,
            )
            disabled = disabled - {self.control}
        unknown = sorted(disabled - set(self.base.names))
        if unknown:
            log.warning("A/B override %s names unknown variant(s) %s", self.path, unknown)
        disabled = disabled & set(self.base.names)
        if disabled != self._disabled:
            log.warning(
                "A/B variants switched off now: %s (was %s); their users get %r (from %s)",
                sorted(disabled) or "none",
                sorted(self._disabled) or "none",
                self.control,
                self.path,
            )
        self._disabled = frozenset(disabled)
