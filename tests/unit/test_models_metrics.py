"""Hand-computed values of the full-ranking metrics and their edge cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lambdarec.models import metrics as M


def test_top_k_orders_best_first_and_breaks_ties_by_index() -> None:
    s = np.array([[0.1, 0.9, 0.5, 0.9, 0.0]])
    assert M.top_k(s, 3).tolist() == [[1, 3, 2]]
    assert M.top_k(s, 10).tolist() == [[1, 3, 2, 0, 4]]  # k > n: the whole row


def test_single_target_hand_values() -> None:
    topk = np.array([[7, 3, 5, 1], [2, 4, 6, 8], [9, 9, 9, 9]])
    targets = np.array([5, 2, 1])  # rank 3, rank 1, missing
    m = M.ranking_metrics(topk, targets, ks=(1, 2, 4))
    assert m["hr@1"].tolist() == [0, 1, 0]
    assert m["hr@4"].tolist() == [1, 1, 0]
    assert m["recall@4"].tolist() == [1, 1, 0]
    np.testing.assert_allclose(m["mrr@4"], [1 / 3, 1, 0])
    np.testing.assert_allclose(m["mrr@2"], [0, 1, 0])
    np.testing.assert_allclose(m["ndcg@4"], [1 / math.log2(4), 1, 0])
    assert m["ndcg@2"][0] == 0


def test_multiple_targets_recall_and_ndcg() -> None:
    topk = np.array([[1, 2, 3, 4]])
    targets = [[2, 4, 9]]  # hits at ranks 2 and 4, one target never retrieved
    m = M.ranking_metrics(topk, M.as_targets(targets), ks=(4,))
    assert m["recall@4"][0] == pytest.approx(2 / 3)
    assert m["hr@4"][0] == 1
    dcg = 1 / math.log2(3) + 1 / math.log2(5)
    idcg = 1 + 1 / math.log2(3) + 1 / math.log2(4)
    assert m["ndcg@4"][0] == pytest.approx(dcg / idcg)
    assert m["mrr@4"][0] == pytest.approx(0.5)


def test_query_without_target_is_nan_and_dropped_in_summary() -> None:
    topk = np.array([[1, 2], [3, 4]])
    targets = np.array([[1], [-1]])
    m = M.ranking_metrics(topk, targets, ks=(2,))
    assert m["hr@2"][0] == 1 and np.isnan(m["hr@2"][1])
    pct = M.popularity_percentiles(np.arange(5, dtype=float))
    s = M.summarize(m, topk, n_items=5, percentiles=pct, ks=(2,))
    assert s["hr@2"] == 1.0


def test_coverage_and_popularity_bias() -> None:
    topk = np.array([[0, 1], [0, 2]])
    assert M.coverage(topk, 4, 1) == 0.25
    assert M.coverage(topk, 4, 2) == 0.75
    pct = M.popularity_percentiles(np.array([10.0, 0.0, 5.0, 5.0]))
    assert pct.tolist() == [1.0, 0.25, 0.75, 0.75]
    assert M.popularity_bias(topk, pct, 1) == 1.0
    assert M.popularity_bias(topk, pct, 2) == pytest.approx((1 + 0.25 + 1 + 0.75) / 4)


def test_evaluate_scores_batches_match_one_pass() -> None:
    rng = np.random.default_rng(0)
    scores = rng.random((50, 30)).astype(np.float32)
    targets = rng.integers(0, 30, 50)
    per_query, topk = M.evaluate_scores(
        lambda idx: scores[idx],
        50,
        targets,
        n_items=30,
        popularity=np.ones(30),
        ks=(5, 10),
        batch_size=7,
    )
    assert topk.shape == (50, 10)
    ranks = (scores > scores[np.arange(50), targets][:, None]).sum(axis=1)
    np.testing.assert_allclose(per_query["hr@10"], (ranks < 10).astype(float))
    np.testing.assert_allclose(per_query["mrr@10"], np.where(ranks < 10, 1 / (ranks + 1), 0))


def test_empty_inputs() -> None:
    topk = np.zeros((0, 5), dtype=np.int64)
    m = M.ranking_metrics(topk, np.zeros((0, 1), dtype=np.int64), ks=(5,))
    assert m["hr@5"].shape == (0,)
    assert M.coverage(topk, 10, 5) == 0.0
