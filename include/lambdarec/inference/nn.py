"""The numpy building blocks the exported models share: activations, index checks, L2 norm,
layer norm and softmax.

Also the index conventions every model uses: embedding row 0 is "no item" (padding), row 1 the
out-of-vocabulary item (an item the model never saw, placed by its side features); category 0 is
the unknown category.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

#: Embedding index of "no item" (history padding).
NO_ITEM = 0
#: Embedding index of an item the model never saw (``two_tower.item_index``).
OOV_ITEM = 1
#: The category index of a missing or unknown category (``data.Catalog``).
UNKNOWN_CATEGORY = 0

#: The Dense activations the numpy towers and the numpy DeepFM implement, by Keras name.
ACTIVATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "relu": lambda h: np.maximum(h, 0.0),
    "linear": lambda h: h,
}


def check_index_range(name: str, idx: np.ndarray, rows: int, hint: str = "") -> None:
    """A ValueError naming ``name``, the valid range and the offending index when ``idx`` has
    an entry outside ``0..rows-1`` (an embedding lookup would fail or wrap around)."""
    if idx.size and (idx.min() < 0 or idx.max() >= rows):
        bad = idx.min() if idx.min() < 0 else idx.max()
        raise ValueError(f"{name} index out of range 0..{rows - 1}: {bad}{hint}")


def l2_normalize(h: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length as ``tf.math.l2_normalize`` does: x / sqrt(max(sum(x^2),
    1e-12)), float32."""
    norm = np.sqrt(np.maximum((h * h).sum(axis=1, keepdims=True), np.float32(1e-12)))
    return (h / norm).astype(np.float32, copy=False)


def layer_norm(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, epsilon: float) -> np.ndarray:
    """Keras' ``LayerNormalization`` over the last axis: (x - mean) / sqrt(var + epsilon) *
    gamma + beta, the population variance, float32."""
    mean = x.mean(axis=-1, keepdims=True)
    centred = x - mean
    var = (centred * centred).mean(axis=-1, keepdims=True)
    return centred / np.sqrt(var + np.float32(epsilon)) * gamma + beta


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """``tf.nn.softmax``: exp(x - max) normalised along ``axis``."""
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def check_activations(names: list[str] | tuple[str, ...], model: str) -> None:
    unknown = [a for a in names if a not in ACTIVATIONS]
    if unknown:
        raise ValueError(f"{model} activation(s) {unknown} not supported in numpy")


def export_dir(model_dir: Path) -> Path:
    """The two-tower export folder: ``model_dir`` itself or its ``two_tower/`` (a run folder)."""
    return model_dir / "two_tower" if (model_dir / "two_tower").is_dir() else model_dir


def read_export(
    folder: Path,
    meta_file: str,
    weights_file: str,
    expected_format: int | tuple[int, ...],
    what: str,
    missing: str,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """An export's metadata and weights; a missing export is a FileNotFoundError ending in
    ``missing`` (what to do), a format this code does not read a ValueError naming both."""
    if not (folder / meta_file).is_file():
        raise FileNotFoundError(f"{folder} holds no {what} export ({meta_file}): {missing}")
    meta: dict[str, Any] = json.loads((folder / meta_file).read_text(encoding="utf-8"))
    formats = expected_format if isinstance(expected_format, tuple) else (expected_format,)
    if meta.get("format") not in formats:
        expected = " or ".join(str(f) for f in formats)
        raise ValueError(f"{folder}: {what} format {meta.get('format')}, expected {expected}")
    with np.load(folder / weights_file) as data:
        weights = {k: data[k] for k in data.files}
    return meta, weights
