"""Drift metrics: PSI and KL against hand-computed values and scipy, bins fixed from a reference,
the documented edge cases (identical, empty, single bin), profiles, the retraining guard."""

from __future__ import annotations

import json
import math
from datetime import date
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from lambdarec.config import Settings
from lambdarec.monitoring.drift import (
    EPSILON,
    MISSING,
    OTHER,
    Bins,
    compare,
    fit_bins,
    kl_divergence,
    psi,
    smooth,
    status_of,
)
from lambdarec.monitoring.profile import ReferenceProfile, build_profile
from lambdarec.monitoring.skew import values_match
from lambdarec.monitoring.sources import event_features, popularity_percentile

if TYPE_CHECKING:
    from pathlib import Path

REF = [50, 30, 20]
CUR = [30, 30, 40]


# -- PSI and KL against hand computation and scipy ----------------------------------------------


def test_psi_and_kl_match_hand_computed_values() -> None:
    # p = (.5, .3, .2), q = (.3, .3, .4)
    hand_psi = (0.3 - 0.5) * math.log(0.3 / 0.5) + 0.0 + (0.4 - 0.2) * math.log(0.4 / 0.2)
    hand_kl = 0.3 * math.log(0.3 / 0.5) + 0.0 + 0.4 * math.log(0.4 / 0.2)
    assert hand_psi == pytest.approx(0.2407945, abs=1e-6)
    assert psi(REF, CUR, eps=0.0) == pytest.approx(hand_psi, rel=1e-12)
    assert kl_divergence(REF, CUR, eps=0.0) == pytest.approx(hand_kl, rel=1e-12)
    # The default smoothing moves non-empty bins only a little.
    assert psi(REF, CUR) == pytest.approx(hand_psi, abs=1e-3)
    assert kl_divergence(REF, CUR) == pytest.approx(hand_kl, abs=1e-3)


def test_kl_is_scipy_entropy_and_psi_is_the_symmetrised_kl() -> None:
    rng = np.random.default_rng(3)
    for _ in range(20):
        ref = rng.integers(1, 1000, size=12)
        cur = rng.integers(1, 1000, size=12)
        p, q = ref / ref.sum(), cur / cur.sum()
        assert kl_divergence(ref, cur, eps=0.0) == pytest.approx(stats.entropy(q, p), rel=1e-10)
        assert psi(ref, cur, eps=0.0) == pytest.approx(
            stats.entropy(q, p) + stats.entropy(p, q), rel=1e-10
        )
        # With smoothing: scipy on the smoothed proportions.
        ps, qs = smooth(ref), smooth(cur)
        assert kl_divergence(ref, cur) == pytest.approx(stats.entropy(qs, ps), rel=1e-10)


def test_psi_of_a_known_mean_shift_matches_the_analytic_value() -> None:
    """N(0,1) reference, N(0.5,1) current, 10 decile bins: PSI from the exact bin masses."""
    rng = np.random.default_rng(0)
    ref = rng.normal(0.0, 1.0, 200_000)
    cur = rng.normal(0.5, 1.0, 200_000)
    bins = fit_bins(ref, n_bins=10)
    got = psi(bins.counts(ref), bins.counts(cur))
    deciles = stats.norm.ppf(np.linspace(0, 1, 11)[1:-1])
    cdf = np.r_[0.0, stats.norm.cdf(deciles - 0.5), 1.0]
    q = np.diff(cdf)
    p = np.full(10, 0.1)
    exact = float(np.sum((q - p) * np.log(q / p)))
    assert exact == pytest.approx(0.2377, abs=1e-4)
    # binning can only lose information: below the unbinned J-divergence, delta^2 = 0.25
    assert exact < 0.25
    assert got == pytest.approx(exact, abs=0.005)
    assert status_of(got) == "watch"


# -- the documented edge cases ------------------------------------------------------------------


def test_identical_distributions_give_exactly_zero_whatever_the_sample_sizes() -> None:
    assert psi(REF, REF) == 0.0
    assert kl_divergence(REF, REF) == 0.0
    assert psi([1, 2, 3, 0], [10, 20, 30, 0]) == 0.0
    assert kl_divergence([1, 2, 3, 0], [10, 20, 30, 0]) == 0.0
    values = np.random.default_rng(1).lognormal(3, 1, 5000)
    bins = fit_bins(values)
    drift = compare("price", bins, bins.counts(values), values)
    assert (drift.psi, drift.kl, drift.status) == (0.0, 0.0, "ok")


def test_empty_bins_are_smoothed_to_a_finite_documented_value() -> None:
    value = psi([10, 0], [0, 10])
    # p' = (1 + e, e) / (1 + 2e), q' = (e, 1 + e) / (1 + 2e): two symmetric terms
    e = EPSILON
    hi, lo = (1 + e) / (1 + 2 * e), e / (1 + 2 * e)
    expected = 2 * (hi - lo) * math.log(hi / lo)
    assert math.isfinite(value) and value == pytest.approx(expected, rel=1e-12)
    assert value == pytest.approx(18.42, abs=0.01)
    assert math.isfinite(kl_divergence([10, 0], [0, 10]))


def test_empty_samples_are_no_data_not_an_alarm() -> None:
    bins = fit_bins([1.0, 2.0, 3.0, 4.0], n_bins=2)
    drift = compare("price", bins, bins.counts([1.0, 2.0, 3.0, 4.0]), [])
    assert (drift.psi, drift.kl, drift.status, drift.n_current) == (0.0, 0.0, "no_data", 0)
    empty_ref = fit_bins([], "numeric")
    drift = compare("price", empty_ref, empty_ref.counts([]), [1.0, 2.0])
    assert drift.status == "no_data" and drift.psi == 0.0
    # smooth() of all-zero counts is uniform (finite), for callers that do not special-case it
    assert smooth([0, 0, 0, 0]) == pytest.approx([0.25] * 4)


def test_a_single_bin_gives_zero() -> None:
    assert psi([5], [7]) == 0.0 and kl_divergence([5], [7]) == 0.0
    assert psi([0], [7]) == 0.0


def test_mismatched_bins_and_bad_counts_are_rejected_with_the_fix() -> None:
    with pytest.raises(ValueError, match="same Bins"):
        psi([1, 2], [1, 2, 3])
    with pytest.raises(ValueError, match=">= 0"):
        psi([1, -2], [1, 2])
    bins = fit_bins([1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="rebuild the reference profile"):
        compare("x", bins, [1, 2], [1.0])


# -- bins fixed from the reference ----------------------------------------------------------------


def test_numeric_bins_are_reference_quantiles_with_open_ends_and_a_missing_bin() -> None:
    ref = np.arange(100, dtype=float)
    bins = fit_bins(ref, n_bins=4)
    assert bins.kind == "numeric"
    assert bins.edges == pytest.approx((24.75, 49.5, 74.25))
    assert bins.counts(ref).tolist() == [25, 25, 25, 25, 0]
    # values outside the reference range land in the outer bins; None/NaN in the missing bin
    assert bins.counts([-1e9, 1e9, None, float("nan"), 49.5]).tolist() == [1, 1, 0, 1, 2]
    assert bins.labels[-1] == MISSING and bins.labels[0].startswith("(-inf")


def test_a_constant_reference_still_detects_a_change() -> None:
    bins = fit_bins([3.0] * 100)
    assert bins.edges == (3.0,)
    assert bins.counts([3.0, 3.0, 5.0]).tolist() == [2, 1, 0]
    assert compare("c", bins, bins.counts([3.0] * 100), [5.0] * 50).status == "act"


def test_categorical_bins_keep_the_top_n_plus_other() -> None:
    values = ["a"] * 50 + ["b"] * 30 + ["c"] * 15 + ["d"] * 5 + [None] * 2
    bins = fit_bins(values, top_n=2)
    assert bins.kind == "categorical" and bins.categories == ("a", "b")
    assert bins.labels == ["a", "b", OTHER, MISSING]
    assert bins.counts(values).tolist() == [50, 30, 20, 2]
    assert bins.counts(["zzz", "a"]).tolist() == [1, 0, 1, 0]  # unseen values are "other"
    assert fit_bins(["b", "a", "b", "a"], top_n=1).categories == ("a",)  # ties by value
    codes = fit_bins([1, 2, 2], "categorical")  # numeric codes binned by value
    assert codes.counts(pd.Series([2.0, 1.0, 7.0])).tolist() == [1, 1, 1, 0]


def test_bins_round_trip_and_reject_unknown_kinds() -> None:
    bins = fit_bins(np.arange(10.0), n_bins=3)
    assert Bins.from_dict(json.loads(json.dumps(bins.to_dict()))) == bins
    with pytest.raises(ValueError, match="numeric' or 'categorical"):
        Bins.from_dict({"kind": "text"})
    with pytest.raises(ValueError, match="declare the feature categorical"):
        fit_bins(["x", "y"], "numeric")


def test_thresholds_and_their_settings() -> None:
    assert [status_of(v) for v in (0.0, 0.099, 0.1, 0.2499, 0.25, 3.0)] == [
        "ok",
        "ok",
        "watch",
        "watch",
        "act",
        "act",
    ]
    assert status_of(0.15, watch=0.2, act=0.3) == "ok"
    s = Settings(_env_file=None)
    assert (s.drift_psi_watch, s.drift_psi_act) == (0.1, 0.25)
    with pytest.raises(ValueError, match="LAMBDAREC_DRIFT_PSI_WATCH"):
        Settings(_env_file=None, drift_psi_watch=0.5, drift_psi_act=0.2)


# -- profiles -------------------------------------------------------------------------------------


def _events(n: int, seed: int, price_scale: float = 1.0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "price": rng.lognormal(3, 0.8, n) * price_scale,
            "category": rng.choice(["a", "b", "c", "d"], n, p=[0.4, 0.3, 0.2, 0.1]),
            "event_type": rng.choice(["view", "add_to_cart"], n, p=[0.9, 0.1]),
            "ts": pd.Timestamp("2024-01-01", tz="UTC")
            + pd.to_timedelta(rng.integers(0, 86_400, n), "s"),
        }
    )


def test_a_profile_round_trips_and_flags_only_the_shifted_feature() -> None:
    ref = event_features(_events(20_000, 1))
    served = pd.DataFrame(
        {
            "user_history_30d__top_category_30d": ["a", "b"] * 500,
            "user_history_30d__n_events_30d": np.arange(1000),
            "session_features__last_viewed_items": [["i1"]] * 1000,
        }
    )
    profile = build_profile(
        {"events": ref, "served": served},
        scores=np.linspace(0, 1, 500),
        popularity=np.linspace(0, 1, 500),
        meta={"data": "unit"},
    )
    assert "session_features__last_viewed_items" not in profile.features  # lists are skipped
    assert {"price", "category", "event_type", "hour", "score", "popularity"} <= set(
        profile.features
    )
    again = ReferenceProfile.from_json(profile.to_json())
    assert again.features == profile.features and again.meta["data"] == "unit"

    current = {
        "events": event_features(_events(5_000, 2, price_scale=1.8)),
        "served": served,
        "model": pd.DataFrame(
            {"score": np.linspace(0, 1, 300), "popularity": np.linspace(0, 1, 300)}
        ),
    }
    drifts = again.compare(current)
    alarms = [d.feature for d in drifts if d.status == "act"]
    assert alarms == ["price"]
    assert drifts[0].feature == "price"  # most severe first
    assert all(d.status == "ok" for d in drifts if d.feature != "price"), drifts


def test_a_missing_group_is_no_data_and_bad_input_names_the_fix() -> None:
    profile = build_profile({"events": event_features(_events(1000, 1))})
    drifts = profile.compare({"events": None})  # type: ignore[dict-item]
    assert {d.status for d in drifts} == {"no_data"}
    with pytest.raises(ValueError, match="unknown feature group"):
        build_profile({"training": pd.DataFrame({"x": [1]})})
    with pytest.raises(ValueError, match="lacks column"):
        build_profile({"events": pd.DataFrame({"x": [1]})}, columns={"events": ["price"]})
    with pytest.raises(ValueError, match="canonical event table"):
        event_features(pd.DataFrame({"price": [1.0]}))


def test_popularity_percentile() -> None:
    events = pd.DataFrame({"item_id": ["a"] * 5 + ["b"] * 3 + ["c"]})
    got = popularity_percentile(["a", "b", "c", "zzz"], events)
    assert got.tolist() == pytest.approx([1.0, 2 / 3, 1 / 3, 0.0])


# -- skew equality -----------------------------------------------------------------------------


def test_skew_value_equality() -> None:
    assert values_match(None, float("nan")) and values_match(None, None)
    assert values_match(3, np.int64(3)) and values_match(0.1 + 0.2, 0.3)
    assert not values_match(3, 4) and not values_match(None, 0)
    assert values_match(["a", "b"], np.array(["a", "b"])) and not values_match(["a"], ["b"])
    assert values_match("x", "x") and not values_match("x", "y")


# -- the retraining guard ----------------------------------------------------------------------


class _Ti:
    def __init__(self, active: int) -> None:
        self.active = active
        self.asked: list[tuple[str, list[str] | None]] = []

    def get_dr_count(self, dag_id: str, states: list[str] | None = None) -> int:
        self.asked.append((dag_id, states))
        return self.active


def test_guard_cooldown_and_active_runs(tmp_path: Path) -> None:
    from lambdarec.monitoring.drift import FeatureDrift
    from lambdarec.monitoring.run import decide, record_trigger, retraining_guard

    s = Settings(_env_file=None, state_dir=tmp_path, drift_retrain_cooldown_days=7)
    alarm = [FeatureDrift("price", "events", "numeric", 0.4, 0.3, "act", 10, 10)]
    calm = [FeatureDrift("price", "events", "numeric", 0.05, 0.03, "ok", 10, 10)]
    assert decide(calm, s, date(2024, 1, 8))["decision"] == "none"
    first = decide(alarm, s, date(2024, 1, 8))
    assert first["decision"] == "trigger" and "price" in first["reason"]
    summary = {"day": "2024-01-08", "alarms": ["price"], "retraining": first}
    assert retraining_guard(summary, _Ti(active=1), s) is False  # a retraining run is active
    ti = _Ti(active=0)
    assert retraining_guard(summary, ti, s) is True
    assert ti.asked == [("weekly_model_retraining", ["queued", "running"])]
    record_trigger(summary, "drift__2024-01-08", s)
    # the same day again, and the next days within the cooldown: no trigger
    for d in (date(2024, 1, 8), date(2024, 1, 9), date(2024, 1, 14)):
        again = decide(alarm, s, d)
        assert again["decision"] == "skip" and "cooldown" in again["reason"], d
    assert retraining_guard(summary, _Ti(active=0), s) is False
    # after the cooldown the monitor may ask again
    assert decide(alarm, s, date(2024, 1, 15))["decision"] == "trigger"
