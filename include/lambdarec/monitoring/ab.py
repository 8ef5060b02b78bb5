"""The A/B readout's statistics: ratio metrics per variant with user-clustered confidence
intervals, and each variant's test against control. Pure numpy/pandas, no I/O, no Spark.

Input: one row per (day, variant, user) with the counts of :data:`USER_COLUMNS` (the online
metrics Spark job builds them from the lake's ``impressions`` and ``attributed`` tables).

Metrics (each a ratio of two sums over users):

============================  =========================================  ==================
metric                        numerator / denominator                    unit
============================  =========================================  ==================
``ctr_at_k``                  views at positions < k / items shown there  a share
``add_to_cart_rate``          add_to_cart events / lists served          per list
``conversion``                purchases / lists served                   per list
``revenue_per_1000``          1000 * revenue / items shown               per 1,000 items
============================  =========================================  ==================

Why clustered: the unit of randomisation is the user (serving hashes user ids into variants),
but the metrics count lists and shown items. A heavy user contributes many correlated lists, so
treating lists as independent draws (a binomial interval) understates the variance. With users
``i = 1..n``, numerator sums ``N_i`` and denominator sums ``D_i`` per user, and the ratio
``R = ΣN_i / ΣD_i``, the delta method gives::

    var(R) ≈ (s_N² − 2·R·s_ND + R²·s_D²) / (n · mean(D)²)

where ``s_N²``, ``s_D²`` are the sample variances of ``N_i`` and ``D_i`` over users and ``s_ND``
their sample covariance (Deng, Knoblich & Lu, "Applying the Delta Method in Metric Analytics",
KDD 2018). The 95% interval is ``R ± 1.96·sqrt(var(R))``.

A test against control compares ``R_t − R_c`` with ``z = (R_t − R_c) / sqrt(var_t + var_c)`` (the
groups hold different users, so they are independent) and the two-sided p-value
``erfc(|z| / √2)``. The relative lift ``R_t / R_c − 1`` gets its interval on the log scale:
``exp(log(R_t/R_c) ± 1.96·sqrt(var_t/R_t² + var_c/R_c²)) − 1`` (asymmetric, never below −100%).

The control is the **first** variant of ``settings.ab_variants`` (``control:90,b:10`` → control).
A test whose variant or control served fewer than ``min_lists`` lists says ``not enough data``
instead of a verdict (its p-value is still shown, for information).

A whole-period readout sums each user's rows over the days first, so a user is one cluster over
the period, not one per day.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from collections.abc import Sequence

    import pandas as pd

#: Counts per (day, variant, user) the readout needs.
USER_COLUMNS = (
    "impressions",
    "lists",
    "clicks",
    "carts",
    "purchases",
    "revenue",
    "clicks_top_k",
    "shown_top_k",
)
KEY_COLUMNS = ("day", "variant", "user_id")

#: Two-sided normal quantile of a 95% interval.
Z95 = 1.959963984540054
DEFAULT_K = 10
DEFAULT_ALPHA = 0.05
NOT_ENOUGH = "not enough data"


@dataclass(frozen=True)
class Metric:
    name: str
    numerator: str
    denominator: str
    scale: float
    label: str
    #: Which direction is good (all of ours: up).
    higher_is_better: bool = True


METRICS = (
    Metric("ctr_at_k", "clicks_top_k", "shown_top_k", 1.0, "CTR@k"),
    Metric("add_to_cart_rate", "carts", "lists", 1.0, "add-to-cart rate (per list)"),
    Metric("conversion", "purchases", "lists", 1.0, "conversion (purchases per list)"),
    Metric("revenue_per_1000", "revenue", "impressions", 1000.0, "revenue per 1,000 impressions"),
)
METRIC_NAMES = tuple(m.name for m in METRICS)


@dataclass(frozen=True)
class RatioEstimate:
    """A ratio of per-user sums with its delta-method variance (``None`` when undefined)."""

    value: float | None
    variance: float | None
    users: int

    def interval(self, z: float = Z95) -> tuple[float | None, float | None]:
        if self.value is None or self.variance is None:
            return None, None
        half = z * math.sqrt(self.variance)
        return self.value - half, self.value + half


def ratio_estimate(numerator: np.ndarray, denominator: np.ndarray) -> RatioEstimate:
    """``ΣN/ΣD`` over users with the delta-method variance of the module docstring.

    The value is None when ``ΣD`` is 0; the variance is None also when fewer than two users.
    """
    num = np.asarray(numerator, dtype=float)
    den = np.asarray(denominator, dtype=float)
    n = int(num.size)
    total = float(den.sum())
    if n == 0 or total <= 0:
        return RatioEstimate(None, None, n)
    r = float(num.sum()) / total
    if n < 2:
        return RatioEstimate(r, None, n)
    mean_d = total / n
    s_nn = float(np.var(num, ddof=1))
    s_dd = float(np.var(den, ddof=1))
    s_nd = float(np.cov(num, den, ddof=1)[0, 1])
    var = (s_nn - 2 * r * s_nd + r * r * s_dd) / (n * mean_d * mean_d)
    return RatioEstimate(r, max(var, 0.0), n)


def normal_p_value(z: float) -> float:
    """Two-sided p-value of a standard normal statistic."""
    return math.erfc(abs(z) / math.sqrt(2.0))


@dataclass(frozen=True)
class Comparison:
    difference: float | None
    difference_ci: tuple[float | None, float | None]
    z: float | None
    p_value: float | None
    lift: float | None
    lift_ci: tuple[float | None, float | None]


def compare(treatment: RatioEstimate, control: RatioEstimate, z95: float = Z95) -> Comparison:
    """The difference ``treatment − control``, its z and p-value, and the relative lift."""
    none = Comparison(None, (None, None), None, None, None, (None, None))
    if (
        treatment.value is None
        or control.value is None
        or treatment.variance is None
        or control.variance is None
    ):
        return none
    diff = treatment.value - control.value
    var = treatment.variance + control.variance
    if var <= 0:
        # Both groups constant: a difference is certain, no difference is no evidence.
        z = 0.0 if diff == 0 else math.copysign(math.inf, diff)
        p = 1.0 if diff == 0 else 0.0
        half = 0.0
    else:
        se = math.sqrt(var)
        z, p, half = diff / se, normal_p_value(diff / se), z95 * se
    lift: float | None = None
    lift_ci: tuple[float | None, float | None] = (None, None)
    if control.value > 0:
        lift = treatment.value / control.value - 1.0
        if treatment.value > 0:
            log_se = math.sqrt(
                treatment.variance / treatment.value**2 + control.variance / control.value**2
            )
            log_ratio = math.log(treatment.value / control.value)
            lift_ci = (
                math.exp(log_ratio - z95 * log_se) - 1.0,
                math.exp(log_ratio + z95 * log_se) - 1.0,
            )
    return Comparison(diff, (diff - half, diff + half), z, p, lift, lift_ci)


def control_variant(spec: str) -> str:
    """The control of an A/B spec ``name:weight,...``: its first variant."""
    first = next((p.strip() for p in spec.split(",") if p.strip()), "")
    name = first.partition(":")[0].strip()
    if not name:
        raise ValueError(f"A/B spec {spec!r} names no variant; set it like 'control:90,b:10'")
    return name


# -- the readout -----------------------------------------------------------------------------
def check_user_rows(rows: pd.DataFrame) -> None:
    """One-line errors for a frame that is not one row per (day, variant, user) with counts."""
    missing = [c for c in (*KEY_COLUMNS, *USER_COLUMNS) if c not in rows.columns]
    if missing:
        raise ValueError(
            f"per-user rows lack column(s) {missing}; build them with online_metrics.py "
            f"(columns: {', '.join((*KEY_COLUMNS, *USER_COLUMNS))})"
        )
    if rows[list(KEY_COLUMNS)].isna().any().any():
        raise ValueError(
            "per-user rows hold a null day, variant or user_id; every impression and attributed "
            "row needs all three (drop or repair those rows upstream)"
        )
    counts = rows[list(USER_COLUMNS)]
    if counts.isna().any().any():
        raise ValueError("per-user rows hold nulls in their counts; fill missing counts with 0")
    if (counts < 0).any().any():
        raise ValueError("per-user rows hold negative counts; counts and revenue must be >= 0")
    if rows.duplicated(list(KEY_COLUMNS)).any():
        raise ValueError("per-user rows repeat a (day, variant, user); aggregate them first")


def _group_summary(users: pd.DataFrame) -> dict[str, Any]:
    """Totals and every metric with its interval, over one group's per-user rows."""
    out: dict[str, Any] = {
        "users": int(len(users)),
        "impressions": int(users["impressions"].sum()),
        "lists": int(users["lists"].sum()),
        "clicks": int(users["clicks"].sum()),
        "carts": int(users["carts"].sum()),
        "purchases": int(users["purchases"].sum()),
        "revenue": float(users["revenue"].sum()),
        "metrics": {},
    }
    for m in METRICS:
        est = ratio_estimate(users[m.numerator].to_numpy(), users[m.denominator].to_numpy())
        low, high = est.interval()
        out["metrics"][m.name] = {
            "value": None if est.value is None else est.value * m.scale,
            "ci_low": None if low is None else low * m.scale,
            "ci_high": None if high is None else high * m.scale,
            "std_error": None if est.variance is None else math.sqrt(est.variance) * m.scale,
        }
    return out


def _tests(
    per_user: pd.DataFrame, variants: Sequence[str], control: str, min_lists: int, alpha: float
) -> dict[str, Any]:
    groups = {v: per_user[per_user["variant"] == v] for v in variants}
    out: dict[str, Any] = {}
    base = groups.get(control)
    for variant in variants:
        if variant == control:
            continue
        users = groups[variant]
        lists_t = int(users["lists"].sum())
        lists_c = 0 if base is None else int(base["lists"].sum())
        enough = lists_t >= min_lists and lists_c >= min_lists
        tests: dict[str, Any] = {}
        for m in METRICS:
            t = ratio_estimate(users[m.numerator].to_numpy(), users[m.denominator].to_numpy())
            c = (
                RatioEstimate(None, None, 0)
                if base is None
                else ratio_estimate(base[m.numerator].to_numpy(), base[m.denominator].to_numpy())
            )
            cmp = compare(t, c)
            if cmp.p_value is None or not enough:
                verdict = NOT_ENOUGH
            elif cmp.p_value < alpha:
                up = (cmp.difference or 0.0) > 0
                verdict = "better" if up == m.higher_is_better else "worse"
            else:
                verdict = "no significant difference"
            scale = m.scale
            tests[m.name] = {
                "difference": None if cmp.difference is None else cmp.difference * scale,
                "difference_ci": [None if v is None else v * scale for v in cmp.difference_ci],
                "z": None if cmp.z is None or math.isinf(cmp.z) else cmp.z,
                "p_value": cmp.p_value,
                "lift": cmp.lift,
                "lift_ci": list(cmp.lift_ci),
                "verdict": verdict,
            }
        out[variant] = {
            "control": control,
            "lists": lists_t,
            "control_lists": lists_c,
            "min_lists": min_lists,
            "enough_data": enough,
            "metrics": tests,
        }
    return out


def _order(found: Sequence[str], configured: Sequence[str]) -> list[str]:
    """Configured variants first in their order, then any other seen in the data."""
    return [v for v in configured if v in found] + sorted(v for v in found if v not in configured)


def readout(
    rows: pd.DataFrame,
    *,
    control: str,
    variants: Sequence[str] = (),
    min_lists: int = 1000,
    alpha: float = DEFAULT_ALPHA,
    k: int = DEFAULT_K,
) -> dict[str, Any]:
    """Per day and for the whole period: each variant's totals and metrics with 95% intervals,
    and each non-control variant's tests against ``control`` (JSON-ready).

    ``variants`` (the configured ones, control first) fixes the order; a variant seen only in
    the data is appended, a configured one absent from the data is left out. Every variant
    seen in the period is listed on every day (with zero users on a day it has no rows).
    """
    import pandas as pd

    check_user_rows(rows)
    if min_lists < 1:
        raise ValueError(f"min_lists is {min_lists}; it must be at least 1")
    seen = sorted({str(v) for v in rows["variant"].unique()})
    order = _order(seen, [control, *[v for v in variants if v != control]])
    rows = rows.assign(day=rows["day"].astype(str))

    def section(per_user: pd.DataFrame) -> dict[str, Any]:
        summary = {}
        for v in order:
            users = per_user[per_user["variant"] == v]
            summary[v] = _group_summary(users)
        return {
            "variants": summary,
            "tests": _tests(per_user, order, control, min_lists, alpha),
        }

    days = {}
    for day in sorted(rows["day"].unique()):
        days[day] = section(rows[rows["day"] == day])
    period_users = (
        rows.groupby(["variant", "user_id"], as_index=False)[list(USER_COLUMNS)].sum()
        if len(rows)
        else pd.DataFrame(columns=["variant", "user_id", *USER_COLUMNS])
    )
    return {
        "control": control,
        "variants": order,
        "k": k,
        "alpha": alpha,
        "min_lists": min_lists,
        "metrics": {
            m.name: {"label": m.label.replace("@k", f"@{k}"), "scale": m.scale} for m in METRICS
        },
        "days": days,
        "period": {
            "first_day": min(days) if days else None,
            "last_day": max(days) if days else None,
            **section(period_users),
        },
    }
