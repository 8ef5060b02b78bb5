"""The A/B statistics on synthetic per-user data whose truth is known: A/A tests reject at their
nominal rate, a real lift is found, intervals cover the true ratio, and user clustering widens
them compared with a naive binomial interval."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from lambdarec.monitoring.ab import (
    NOT_ENOUGH,
    USER_COLUMNS,
    compare,
    control_variant,
    normal_p_value,
    ratio_estimate,
    readout,
)

SIMULATIONS = 200


def _users(
    rng: np.random.Generator, n: int, rate: float, *, heavy: bool = False, spread: float = 20.0
) -> tuple[np.ndarray, np.ndarray]:
    """Per-user (purchases, lists): lists vary per user, each user has an own purchase
    propensity drawn around ``rate`` (Beta with mean ``rate``), independent of their lists, so
    the true ratio sum(purchases)/sum(lists) tends to ``rate``."""
    lists = 1 + (rng.pareto(1.5, n) * 20).astype(int) if heavy else 1 + rng.poisson(4, n)
    lists = np.minimum(lists, 2_000)
    propensity = rng.beta(rate * spread, (1 - rate) * spread, n)
    purchases = rng.binomial(lists, propensity)
    return purchases, lists


def _frame(
    groups: dict[str, tuple[np.ndarray, np.ndarray]], day: str = "2024-05-01"
) -> pd.DataFrame:
    parts = []
    for variant, (purchases, lists) in groups.items():
        n = len(lists)
        parts.append(
            pd.DataFrame(
                {
                    "day": day,
                    "variant": variant,
                    "user_id": [f"{variant}-{i}" for i in range(n)],
                    "impressions": lists * 10,
                    "lists": lists,
                    "clicks": purchases * 3,
                    "carts": purchases * 2,
                    "purchases": purchases,
                    "revenue": purchases * 25.0,
                    "clicks_top_k": purchases * 3,
                    "shown_top_k": lists * 10,
                }
            )
        )
    return pd.concat(parts, ignore_index=True)


def test_ratio_estimate_matches_the_delta_formula_by_hand() -> None:
    num = np.array([1.0, 0.0, 3.0, 2.0])
    den = np.array([2.0, 1.0, 5.0, 4.0])
    est = ratio_estimate(num, den)
    r = 6 / 12
    s_n, s_d = np.var(num, ddof=1), np.var(den, ddof=1)
    s_nd = np.cov(num, den, ddof=1)[0, 1]
    expected = (s_n - 2 * r * s_nd + r * r * s_d) / (4 * 3.0**2)
    assert est.value == pytest.approx(r)
    assert est.variance == pytest.approx(expected)
    low, high = est.interval()
    assert (low, high) == pytest.approx(
        (r - 1.959964 * math.sqrt(expected), r + 1.959964 * math.sqrt(expected))
    )


def test_ratio_estimate_without_denominator_or_users_is_undefined() -> None:
    assert ratio_estimate(np.array([]), np.array([])).value is None
    assert ratio_estimate(np.array([0.0, 0.0]), np.array([0.0, 0.0])).value is None
    one = ratio_estimate(np.array([1.0]), np.array([2.0]))
    assert one.value == 0.5 and one.variance is None and one.interval() == (None, None)


def test_normal_p_value_matches_known_quantiles() -> None:
    assert normal_p_value(0.0) == pytest.approx(1.0)
    assert normal_p_value(1.959964) == pytest.approx(0.05, abs=1e-6)
    assert normal_p_value(-2.575829) == pytest.approx(0.01, abs=1e-6)


def test_control_is_the_first_configured_variant() -> None:
    assert control_variant("control:90,b:10") == "control"
    assert control_variant(" base:1 , x:1") == "base"
    with pytest.raises(ValueError, match="names no variant"):
        control_variant(" , ")


def test_a_a_comparisons_reject_at_about_the_nominal_rate() -> None:
    rng = np.random.default_rng(2024)
    p_values = []
    for _ in range(SIMULATIONS):
        a = ratio_estimate(*_users(rng, 800, 0.05))
        b = ratio_estimate(*_users(rng, 800, 0.05))
        p = compare(b, a).p_value
        assert p is not None
        p_values.append(p)
    ps = np.array(p_values)
    rejected = int((ps < 0.05).sum())
    # Binomial(200, 0.05): mean 10, sd 3.1; [2, 20] holds ~99.8% of the mass.
    assert 2 <= rejected <= 20, f"{rejected} of {SIMULATIONS} A/A tests rejected at 0.05"
    # Roughly uniform: each fifth of [0, 1] holds 40 +- ~17 of them.
    counts, _ = np.histogram(ps, bins=5, range=(0, 1))
    assert counts.min() >= 23 and counts.max() <= 57, f"p-value fifths: {counts.tolist()}"


def test_intervals_cover_the_true_ratio_about_95_percent_of_the_time() -> None:
    rng = np.random.default_rng(7)
    true_rate = 0.08
    covered = 0
    for _ in range(SIMULATIONS):
        est = ratio_estimate(*_users(rng, 3_000, true_rate, heavy=True))
        low, high = est.interval()
        assert low is not None and high is not None
        covered += low <= true_rate <= high
    # Binomial(200, 0.95): mean 190, sd 3.1.
    assert 181 <= covered <= 199, f"{covered} of {SIMULATIONS} intervals covered the truth"


def test_a_real_lift_is_detected_with_enough_users() -> None:
    rng = np.random.default_rng(11)
    frame = _frame({"control": _users(rng, 20_000, 0.05), "b": _users(rng, 20_000, 0.06)})
    out = readout(frame, control="control", variants=["control", "b"], min_lists=1000)
    test = out["period"]["tests"]["b"]["metrics"]["conversion"]
    assert test["verdict"] == "better"
    assert test["p_value"] < 1e-4
    low, high = test["lift_ci"]
    assert low < 0.2 < high, f"true lift 20% outside the lift CI [{low:.3f}, {high:.3f}]"
    worse = readout(
        _frame({"control": _users(rng, 20_000, 0.06), "b": _users(rng, 20_000, 0.05)}),
        control="control",
        min_lists=1000,
    )
    assert worse["period"]["tests"]["b"]["metrics"]["conversion"]["verdict"] == "worse"


def test_clustering_widens_the_interval_over_the_naive_binomial_one() -> None:
    rng = np.random.default_rng(5)
    purchases, lists = _users(rng, 2_000, 0.1, heavy=True, spread=4.0)
    est = ratio_estimate(purchases, lists)
    assert est.value is not None and est.variance is not None
    n_lists = lists.sum()
    naive_se = math.sqrt(est.value * (1 - est.value) / n_lists)
    # Heavy users with their own propensity: the clustered error is several times the naive one.
    assert math.sqrt(est.variance) > 2 * naive_se


def test_too_few_lists_says_not_enough_data_instead_of_a_verdict() -> None:
    rng = np.random.default_rng(3)
    frame = _frame({"control": _users(rng, 100, 0.05), "b": _users(rng, 100, 0.2)})
    out = readout(frame, control="control", min_lists=1000)
    tests = out["period"]["tests"]["b"]
    assert tests["enough_data"] is False
    assert {t["verdict"] for t in tests["metrics"].values()} == {NOT_ENOUGH}
    assert tests["metrics"]["conversion"]["p_value"] is not None


def test_readout_per_day_and_period_with_totals() -> None:
    rng = np.random.default_rng(1)
    day1 = _frame({"control": _users(rng, 50, 0.1), "b": _users(rng, 40, 0.1)}, "2024-05-01")
    day2 = _frame({"control": _users(rng, 50, 0.1)}, "2024-05-02")
    out = readout(pd.concat([day1, day2]), control="control", variants=["control", "b", "c"])
    assert out["variants"] == ["control", "b"]
    assert sorted(out["days"]) == ["2024-05-01", "2024-05-02"]
    period = out["period"]["variants"]["control"]
    # Day 2 reuses the user ids of day 1: the period counts each user once.
    assert period["users"] == 50
    assert period["lists"] == int(
        day1[day1.variant == "control"]["lists"].sum() + day2["lists"].sum()
    )
    conv = period["metrics"]["conversion"]
    both = pd.concat([day1[day1.variant == "control"], day2])
    assert conv["value"] == pytest.approx(both["purchases"].sum() / both["lists"].sum())
    assert conv["ci_low"] < conv["value"] < conv["ci_high"]
    rev = period["metrics"]["revenue_per_1000"]
    assert rev["value"] == pytest.approx(1000 * both["revenue"].sum() / both["impressions"].sum())
    absent = out["days"]["2024-05-02"]["variants"]["b"]
    assert absent["users"] == 0 and absent["metrics"]["conversion"]["value"] is None
    assert out["days"]["2024-05-02"]["tests"]["b"]["metrics"]["conversion"]["verdict"] == NOT_ENOUGH
    assert out["metrics"]["ctr_at_k"]["label"] == "CTR@10"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda f: f.drop(columns=["lists"]), "lack column"),
        (lambda f: f.assign(lists=-1), "negative"),
        (lambda f: f.assign(revenue=np.nan), "nulls"),
        (lambda f: pd.concat([f, f.head(1)]), "repeat"),
        (lambda f: f.assign(variant=None), "null day, variant or user_id"),
    ],
)
def test_bad_rows_are_refused_with_one_line(change, message: str) -> None:
    frame = _frame({"control": (np.array([1, 0]), np.array([2, 3]))})
    with pytest.raises(ValueError, match=message) as info:
        readout(change(frame), control="control")
    assert "\n" not in str(info.value)


def test_user_columns_are_the_documented_ones() -> None:
    assert set(USER_COLUMNS) == {
        "impressions",
        "lists",
        "clicks",
        "carts",
        "purchases",
        "revenue",
        "clicks_top_k",
        "shown_top_k",
    }
