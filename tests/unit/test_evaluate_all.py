"""make evaluate-all's line per dataset: the headline metric of the protocol, the served row
against the best row that is not the served pipeline or a neural model."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

PROGRAM = Path(__file__).resolve().parents[2] / "include" / "models" / "evaluate_all.py"


@pytest.fixture(scope="module")
def evaluate_all():  # noqa: ANN201 - the program's module
    spec = importlib.util.spec_from_file_location("evaluate_all", PROGRAM)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _row(ndcg: float, mrr: float, hr: float) -> dict[str, float]:
    return {"ndcg@10": ndcg, "mrr@20": mrr, "hr@20": hr}


def test_loo_headline_is_ndcg_against_the_best_baseline(evaluate_all) -> None:  # noqa: ANN001
    payload = {
        "split": {"kind": "loo", "protocol": "loo"},
        "n_test": 5000,
        "models": {
            "cooccurrence": _row(0.030, 0.02, 0.062),  # the best baseline by HR@20
            "source:session_knn": _row(0.040, 0.03, 0.06),
            "two_tower": _row(0.050, 0.04, 0.07),  # a neural model: never the baseline
            "source:vector": _row(0.045, 0.04, 0.07),
            "served": _row(0.044, 0.035, 0.065),
        },
    }
    line = evaluate_all.headline("amazon-toys", payload)
    assert line["metric"] == "ndcg@10"
    assert line["best_baseline_name"] == "source:session_knn"
    assert line["served"] == 0.044 and line["best_baseline"] == 0.040
    assert line["ratio"] == pytest.approx(1.1)
    assert line["hr20"] == 0.065
    assert (line["best_baseline_hr20_name"], line["best_baseline_hr20"]) == ("cooccurrence", 0.062)
    assert line["hr20_ratio"] == pytest.approx(0.065 / 0.062, abs=1e-4)
    assert line["published"] == 0.0480


def test_session_headline_is_mrr(evaluate_all) -> None:  # noqa: ANN001
    payload = {
        "split": {"kind": "srgnn", "protocol": "session"},
        "models": {"cooccurrence": _row(0.1, 0.2, 0.4), "served": _row(0.1, 0.19, 0.5)},
    }
    line = evaluate_all.headline("diginetica", payload)
    assert (line["metric"], line["protocol"], line["published"]) == ("mrr@20", "session", 0.1759)
    assert line["ratio"] == pytest.approx(0.95)
