"""The two-tower's training side: the config's checks and defaults, and the loss with uniform
catalog negatives, recomputed in numpy from the same embeddings: the logQ correction of the
in-batch + uniform mixture, accidental hits (the target drawn again) removed, the temperature.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from lambdarec.models.two_tower import TwoTowerConfig  # noqa: E402


def test_config_names_what_it_cannot_build() -> None:
    with pytest.raises(ValueError, match="query_encoder 'rnn'"):
        TwoTowerConfig(query_encoder="rnn")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="divide dim 64 into heads"):
        TwoTowerConfig(query_encoder="transformer", heads=3)
    with pytest.raises(ValueError, match="readout 'last'"):
        TwoTowerConfig(query_encoder="transformer", readout="last")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="negatives must be >= 0"):
        TwoTowerConfig(negatives=-1)
    # both encoders keep the in-batch loss unless asked (what validation chose)
    assert TwoTowerConfig().uniform_negatives == 0
    assert TwoTowerConfig(query_encoder="transformer").uniform_negatives == 0
    assert TwoTowerConfig(negatives=256).uniform_negatives == 256


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=1, keepdims=True))


@pytest.mark.parametrize("encoder", ["pooling", "transformer"])
def test_the_loss_with_uniform_negatives_is_the_corrected_sampled_softmax(encoder: str) -> None:
    import tensorflow as tf

    from lambdarec.models.two_tower import (
        TwoTower,
        _CatalogTables,
        item_features,
    )

    rng = np.random.default_rng(0)
    n_items, b, n_neg, temperature = 30, 6, 5, 0.1
    config = TwoTowerConfig(
        dim=8,
        hidden=16,
        temperature=temperature,
        query_encoder=encoder,  # type: ignore[arg-type]
        negatives=n_neg,
        positions=4,
        heads=2,
        id_dropout=0.0,
    )
    model = TwoTower(n_items=n_items, n_users=3, n_categories=4, n_price=3, config=config)

    class Catalog:
        category = rng.integers(0, 4, n_items)
        price_bucket = rng.integers(0, 3, n_items)

    idx_map = np.where(np.arange(n_items) % 7 == 0, 1, np.arange(n_items) + 2)  # some OOV
    share = rng.dirichlet(np.ones(n_items)).astype(np.float32)
    model.sample_from(
        _CatalogTables(idx_map, Catalog.category, Catalog.price_bucket, target_share=share)
    )
    target = np.array([3, 8, 3, 11, 20, 5])  # item 3 twice: an in-batch accidental hit
    features: dict[str, Any] = {
        "user": rng.integers(0, 3, b),
        "hist": np.array(
            [[4, 2, 0, 0], [9, 0, 0, 0], [0, 0, 0, 0], [1, 5, 6, 7]] + [[2, 3, 0, 0]] * 2
        ),
        "session_category": rng.integers(0, 4, b),
        "counts": rng.normal(size=(b, 2)).astype(np.float32),
        **item_features(Catalog, target, idx_map),  # type: ignore[arg-type]
        "weight": np.array([1.0, 2.0, 1.0, 3.0, 1.0, 1.0], np.float32),
        "prob": share[target],
    }
    tensors = {k: tf.constant(v) for k, v in features.items()}
    negatives = np.array([8, 17, 3, 17, 29])  # row 1's target and row 0/2's: accidental hits
    model.draw_negatives = lambda: tf.constant(negatives)  # type: ignore[method-assign]
    loss = float(model.compute_loss(tensors, training=False))

    q = model.query(tensors).numpy()
    cands = np.concatenate([target, negatives])
    c = model.candidate(
        {k: tf.constant(v) for k, v in item_features(Catalog, cands, idx_map).items()}  # type: ignore[arg-type]
    ).numpy()
    mixture = (b * share[cands] + n_neg / n_items) / (b + n_neg)
    logits = (q @ c.T) / temperature - np.log(mixture)
    hit = (target[:, None] == cands[None, :]) & ~np.eye(b, len(cands), dtype=bool)
    assert hit.sum() == 5  # rows 0 and 2 see each other's item 3 and negative 3; row 1 its 8
    logits[hit] = -np.inf
    want = -(features["weight"] * np.diag(_log_softmax(logits))).sum()
    assert loss == pytest.approx(want, rel=1e-4)
    # without the correction and the removal the loss differs (the checks above have teeth)
    raw = (q @ c.T) / temperature
    assert -(features["weight"] * np.diag(_log_softmax(raw))).sum() != pytest.approx(loss, rel=1e-3)
