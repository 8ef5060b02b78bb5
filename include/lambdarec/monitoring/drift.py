"""Drift metrics: PSI and KL divergence over bins fixed from a training reference.

Binning (done once, on the reference, and stored in the profile):

* **numeric** features get quantile bins: the interior edges are the distinct reference quantiles
  at ``1/n .. (n-1)/n``, and the outer bins are open, ``(-inf, e1], (e1, e2], ..., (ek, +inf)``, so
  a current value outside the reference range still lands in a bin. A constant reference ``v``
  gives the two bins ``(-inf, v]`` and ``(v, +inf)``.
* **categorical** features keep the ``top_n`` most frequent reference values (ties broken by
  value) plus ``"other"`` for everything else, including values never seen in the reference.
* **missing** values (None/NaN) have a bin of their own, last, in both kinds: a feature that
  starts arriving empty is drift too.

Metrics, with ``p`` the reference and ``q`` the current proportions per bin, after smoothing:

* ``PSI = sum((q - p) * ln(q / p))`` — symmetric; the usual reading is < 0.1 stable,
  0.1-0.25 watch, >= 0.25 act (:data:`WATCH`, :data:`ACT`; configurable in the settings).
* ``KL = sum(q * ln(q / p))`` = KL(current || reference), in nats: how surprising the current
  data is under the reference (``scipy.stats.entropy(q, p)``). ``PSI = KL(q||p) + KL(p||q)``.

Smoothing (empty bins): each proportion vector gets :data:`EPSILON` added to every bin and is
renormalised, ``p' = (p + eps) / (1 + B * eps)``. Identical proportions stay identical (PSI = KL =
0 exactly, whatever the sample sizes), and a bin empty on one side contributes a large but finite
term (about ``q * ln(q / eps)``) instead of infinity.

Edge cases, all finite:

* an **empty sample** (no rows at all, on either side) carries no evidence: PSI = KL = 0 and
  :func:`compare` reports status ``no_data`` (never an alarm);
* a **single bin** always gives PSI = KL = 0 (one bin cannot show a change of shape);
* all-missing values are not empty: they fill the missing bin and are compared like any other.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

__all__ = [
    "ACT",
    "EPSILON",
    "MISSING",
    "OTHER",
    "WATCH",
    "Bins",
    "FeatureDrift",
    "compare",
    "fit_bins",
    "kl_divergence",
    "psi",
    "smooth",
    "status_of",
]

#: Default PSI thresholds (the settings ``drift_psi_watch`` / ``drift_psi_act`` override them).
WATCH = 0.1
ACT = 0.25
#: Pseudo-proportion added to every bin before PSI/KL (see the module docstring).
EPSILON = 1e-4
OTHER = "other"
MISSING = "(missing)"

Kind = Literal["numeric", "categorical"]
Status = Literal["ok", "watch", "act", "no_data"]
_SEVERITY = {"act": 3, "watch": 2, "ok": 1, "no_data": 0}


@dataclass(frozen=True)
class Bins:
    """How a feature's values are counted: fixed once from the reference."""

    kind: Kind
    #: numeric: the interior edges, ascending; right-closed bins with open outer bins
    edges: tuple[float, ...] = ()
    #: categorical: the kept values; everything else counts as ``other``
    categories: tuple[str, ...] = ()

    @property
    def labels(self) -> list[str]:
        """One label per bin, the missing bin last."""
        if self.kind == "numeric":
            bounds = ["-inf", *(f"{e:.4g}" for e in self.edges), "+inf"]
            names = [f"({lo}, {hi}]" for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)]
            names[-1] = names[-1].replace("]", ")")
        else:
            names = [*self.categories, OTHER]
        return [*names, MISSING]

    @property
    def n_bins(self) -> int:
        return len(self.labels)

    def counts(self, values: Iterable[Any] | np.ndarray) -> np.ndarray:
        """Counts per bin (int64, length :attr:`n_bins`) of ``values``."""
        arr = _as_array(values)
        n = self.n_bins
        if arr.size == 0:
            return np.zeros(n, dtype=np.int64)
        missing = _missing_mask(arr)
        out = np.zeros(n, dtype=np.int64)
        out[-1] = int(missing.sum())
        present = arr[~missing]
        if self.kind == "numeric":
            numbers = _to_float(present)
            # side="left": index i means edges[i-1] < x <= edges[i] (right-closed bins)
            idx = np.searchsorted(np.asarray(self.edges, dtype=float), numbers, side="left")
            out[:-1] += np.bincount(idx, minlength=n - 1)[: n - 1]
        else:
            lookup = {c: i for i, c in enumerate(self.categories)}
            other = len(self.categories)
            idx = np.fromiter(
                (lookup.get(_label(v), other) for v in present), dtype=np.int64, count=present.size
            )
            out[:-1] += np.bincount(idx, minlength=n - 1)[: n - 1]
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "edges": list(self.edges), "categories": list(self.categories)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Bins:
        kind = data.get("kind")
        if kind not in ("numeric", "categorical"):
            raise ValueError(f"bins kind must be 'numeric' or 'categorical', got {kind!r}")
        return cls(
            kind,
            tuple(float(e) for e in data.get("edges", ())),
            tuple(str(c) for c in data.get("categories", ())),
        )


def _as_array(values: Iterable[Any] | np.ndarray) -> np.ndarray:
    if isinstance(values, np.ndarray):
        return values.ravel()
    if hasattr(values, "to_numpy"):  # pandas Series / Index
        if getattr(getattr(values, "dtype", None), "kind", "O") in "iufb":
            return np.asarray(values.to_numpy(dtype=float, na_value=np.nan)).ravel()
        return np.asarray(values.to_numpy(dtype=object, na_value=None)).ravel()
    return np.asarray(list(values), dtype=object).ravel()


def _label(value: Any) -> str:
    """A categorical value's bin label; 3, 3.0 and np.int64(3) are one category."""
    if isinstance(value, float | np.floating) and float(value).is_integer():
        return str(int(value))
    return str(value)


def _missing_mask(arr: np.ndarray) -> np.ndarray:
    if arr.dtype.kind in "fc":
        return np.isnan(arr)
    if arr.dtype.kind in "iub":
        return np.zeros(arr.shape, dtype=bool)
    return np.fromiter(
        (v is None or (isinstance(v, float) and math.isnan(v)) for v in arr),
        dtype=bool,
        count=arr.size,
    )


def _to_float(arr: np.ndarray) -> np.ndarray:
    try:
        return arr.astype(float)
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"a numeric feature got a non-numeric value ({exc}); declare the feature "
            "categorical or clean its values"
        ) from exc


def infer_kind(values: Iterable[Any] | np.ndarray) -> Kind:
    """``numeric`` for numbers and booleans (missing values ignored), else ``categorical``."""
    arr = _as_array(values)
    if arr.dtype.kind in "iufb":
        return "numeric"
    present = arr[~_missing_mask(arr)]
    if present.size and all(
        isinstance(v, int | float | np.integer | np.floating) and not isinstance(v, bool)
        for v in present
    ):
        return "numeric"
    return "categorical"


def fit_bins(
    values: Iterable[Any] | np.ndarray,
    kind: Kind | None = None,
    *,
    n_bins: int = 10,
    top_n: int = 20,
) -> Bins:
    """Bins for a feature from its reference values (see the module docstring)."""
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    if top_n < 1:
        raise ValueError(f"top_n must be >= 1, got {top_n}")
    arr = _as_array(values)
    kind = kind or infer_kind(arr)
    present = arr[~_missing_mask(arr)]
    if kind == "numeric":
        numbers = _to_float(present)
        if numbers.size == 0 or n_bins == 1:
            return Bins("numeric")
        qs = np.linspace(0.0, 1.0, n_bins + 1)[1:-1]
        edges = np.unique(np.quantile(numbers, qs))  # ties collapse: fewer, wider bins
        return Bins("numeric", edges=tuple(float(e) for e in edges))
    if kind != "categorical":
        raise ValueError(f"kind must be 'numeric' or 'categorical', got {kind!r}")
    if present.size == 0:
        return Bins("categorical")
    labels, counts = np.unique(
        np.array([_label(v) for v in present], dtype=str), return_counts=True
    )
    order = np.lexsort((labels, -counts))  # most frequent first, ties by value
    return Bins("categorical", categories=tuple(str(v) for v in labels[order][:top_n]))


def smooth(counts: Sequence[float] | np.ndarray, eps: float = EPSILON) -> np.ndarray:
    """Proportions of ``counts`` with ``eps`` added per bin and renormalised (sums to 1).

    All-zero counts (an empty sample) give the uniform distribution; callers that want to treat
    an empty sample specially (as :func:`compare` does) check the total first.
    """
    c = np.asarray(counts, dtype=float)
    if c.ndim != 1 or c.size == 0:
        raise ValueError("counts must be a non-empty 1-d sequence")
    if (c < 0).any() or not np.isfinite(c).all():
        raise ValueError("counts must be finite and >= 0")
    total = c.sum()
    p = c / total if total > 0 else np.full(c.size, 1.0 / c.size)
    return (p + eps) / (1.0 + c.size * eps)


def _pair(
    reference: Sequence[float] | np.ndarray, current: Sequence[float] | np.ndarray, eps: float
) -> tuple[np.ndarray, np.ndarray]:
    r, c = np.asarray(reference, dtype=float), np.asarray(current, dtype=float)
    if r.shape != c.shape:
        raise ValueError(
            f"reference and current have {r.size} and {c.size} bins; count both with the "
            "same Bins (the reference profile's)"
        )
    return smooth(r, eps), smooth(c, eps)


def psi(
    reference: Sequence[float] | np.ndarray,
    current: Sequence[float] | np.ndarray,
    eps: float = EPSILON,
) -> float:
    """Population stability index of two count (or proportion) vectors over the same bins."""
    p, q = _pair(reference, current, eps)
    return max(0.0, float(np.sum((q - p) * np.log(q / p))))


def kl_divergence(
    reference: Sequence[float] | np.ndarray,
    current: Sequence[float] | np.ndarray,
    eps: float = EPSILON,
) -> float:
    """KL(current || reference) in nats, over the same bins."""
    p, q = _pair(reference, current, eps)
    return max(0.0, float(np.sum(q * np.log(q / p))))


def status_of(value: float, watch: float = WATCH, act: float = ACT) -> Status:
    if value >= act:
        return "act"
    if value >= watch:
        return "watch"
    return "ok"


@dataclass
class FeatureDrift:
    """One feature's comparison: the numbers the report and the alarm use."""

    feature: str
    group: str
    kind: Kind
    psi: float
    kl: float
    status: Status
    n_reference: int
    n_current: int
    labels: list[str] = field(default_factory=list)
    reference: list[float] = field(default_factory=list)  # proportions per bin (unsmoothed)
    current: list[float] = field(default_factory=list)

    @property
    def severity(self) -> int:
        return _SEVERITY[self.status]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _proportions(counts: np.ndarray) -> list[float]:
    total = counts.sum()
    return [float(x) for x in (counts / total if total else np.zeros(counts.size))]


def compare(
    feature: str,
    bins: Bins,
    reference_counts: Sequence[int] | np.ndarray,
    current_values: Iterable[Any] | np.ndarray,
    *,
    group: str = "",
    watch: float = WATCH,
    act: float = ACT,
) -> FeatureDrift:
    """PSI, KL and status of ``current_values`` against the reference counts in ``bins``."""
    ref = np.asarray(reference_counts, dtype=np.int64)
    if ref.size != bins.n_bins:
        raise ValueError(
            f"{feature}: the reference has {ref.size} counts for {bins.n_bins} bins; "
            "rebuild the reference profile"
        )
    cur = bins.counts(current_values)
    if ref.sum() == 0 or cur.sum() == 0:
        value_psi = value_kl = 0.0
        status: Status = "no_data"
    else:
        value_psi, value_kl = psi(ref, cur), kl_divergence(ref, cur)
        status = status_of(value_psi, watch, act)
    return FeatureDrift(
        feature=feature,
        group=group,
        kind=bins.kind,
        psi=value_psi,
        kl=value_kl,
        status=status,
        n_reference=int(ref.sum()),
        n_current=int(cur.sum()),
        labels=bins.labels,
        reference=_proportions(ref),
        current=_proportions(cur),
    )


def by_severity(drifts: Iterable[FeatureDrift]) -> list[FeatureDrift]:
    """Most severe first (act, watch, ok, no data), then by PSI descending."""
    return sorted(drifts, key=lambda d: (-d.severity, -d.psi, d.feature))
