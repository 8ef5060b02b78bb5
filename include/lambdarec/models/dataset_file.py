"""The built dataset a retraining run keeps between its steps, as one ``.npz`` without pickle.

The ``build`` step writes it into the run folder (``dataset.npz``) and every later step, each its
own program, reads it back (:mod:`lambdarec.models.retrain`). The run folder sits on a volume that
other processes share, so the file holds plain arrays only: numeric and boolean arrays as they
are, raw ids as fixed-width unicode, sparse matrices as their CSR parts, and the scalars, split
and vocabulary as one JSON member. It is read with ``allow_pickle=False``: a file that would need
unpickling is refused, never executed.
"""

from __future__ import annotations

import json
from dataclasses import fields
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from pathlib import Path

    import scipy.sparse as sp

    from lambdarec.models.data import Dataset, Examples, Interactions

__all__ = ["DATASET_FILE", "read_dataset", "write_dataset"]

#: The file name in a run folder.
DATASET_FILE = "dataset.npz"
#: Bumped when the layout changes: an older file is refused with the step that rewrites it.
FORMAT = 1
_META = "meta"
_EXAMPLES = ("train", "valid", "test")
_INTERACTIONS = ("train_events", "all_events")


def _ids(values: np.ndarray, key: str) -> np.ndarray:
    """Raw ids (an object array of str) as a unicode array."""
    if not all(isinstance(v, str) for v in values.tolist()):
        raise ValueError(f"{key}: ids must all be strings to be saved without pickle")
    return np.asarray(values.tolist(), dtype=str) if len(values) else np.empty(0, dtype="<U1")


def _plain(array: np.ndarray, key: str) -> np.ndarray:
    if array.dtype == object:
        raise ValueError(f"{key}: an object array cannot be saved without pickle")
    return array


def _json_scalar(value: object) -> object:
    """A numpy scalar in the split's report values as its Python value."""
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"split value {value!r} cannot be saved as JSON")


def write_dataset(data: Dataset, path: Path) -> Path:
    """Save ``data`` to ``path`` (see the module doc); returns ``path``."""
    arrays: dict[str, np.ndarray] = {}
    sparse: list[str] = []
    for part in _EXAMPLES:
        ex: Examples = getattr(data, part)
        for f in fields(ex):
            value = getattr(ex, f.name)
            key = f"{part}.{f.name}"
            if f.name == "seen":
                if value is not None:
                    csr = value.tocsr()
                    arrays[f"{key}.data"] = csr.data
                    arrays[f"{key}.indices"] = csr.indices
                    arrays[f"{key}.indptr"] = csr.indptr
                    arrays[f"{key}.shape"] = np.asarray(csr.shape, dtype=np.int64)
                    sparse.append(key)
            else:
                arrays[key] = _plain(value, key)
    for part in _INTERACTIONS:
        events: Interactions = getattr(data, part)
        for f in fields(events):
            arrays[f"{part}.{f.name}"] = _plain(getattr(events, f.name), f"{part}.{f.name}")
    catalog = data.catalog
    arrays["catalog.item_ids"] = _ids(catalog.item_ids, "catalog.item_ids")
    arrays["catalog.category"] = _plain(catalog.category, "catalog.category")
    arrays["catalog.price_bucket"] = _plain(catalog.price_bucket, "catalog.price_bucket")
    arrays["user_ids"] = _ids(data.user_ids, "user_ids")
    if data.before_test is not None:
        arrays["before_test"] = _plain(data.before_test, "before_test")
    meta = {
        "format": FORMAT,
        "name": data.name,
        "n_users": int(data.n_users),
        "has_users": bool(data.has_users),
        "split": data.split,
        "sparse": sparse,
        "catalog": {
            "n_categories": int(catalog.n_categories),
            "n_price_buckets": int(catalog.n_price_buckets),
            "category_vocabulary": catalog.category_vocabulary,
            "price_edges": catalog.price_edges,
        },
    }
    arrays[_META] = np.asarray(json.dumps(meta, default=_json_scalar))
    path.parent.mkdir(parents=True, exist_ok=True)
    # np.savez appends ``.npz`` to a name without it: write through a handle to keep ``path``.
    with path.open("wb") as fh:
        np.savez(fh, allow_pickle=False, **arrays)
    return path


def read_dataset(path: Path) -> Dataset:
    """The dataset :func:`write_dataset` saved at ``path``; a member that would need unpickling
    raises ValueError (numpy's, naming pickle)."""
    from lambdarec.models.data import Catalog, Dataset, Examples, Interactions

    with np.load(path, allow_pickle=False) as npz:
        arrays = {key: npz[key] for key in npz.files}
    if _META not in arrays:
        raise ValueError(f"{path} is not a saved dataset: re-run the 'build' step")
    meta: dict[str, Any] = json.loads(str(arrays[_META][()]))
    if meta.get("format") != FORMAT:
        raise ValueError(
            f"{path} has dataset format {meta.get('format')}, not {FORMAT}: re-run the 'build' step"
        )

    def seen(key: str) -> sp.csr_matrix | None:
        if key not in meta["sparse"]:
            return None
        import scipy.sparse as sp

        shape = tuple(int(n) for n in arrays[f"{key}.shape"])
        parts = (arrays[f"{key}.data"], arrays[f"{key}.indices"], arrays[f"{key}.indptr"])
        return sp.csr_matrix(parts, shape=shape)

    def examples(part: str) -> Examples:
        values: dict[str, Any] = {
            f.name: arrays[f"{part}.{f.name}"] for f in fields(Examples) if f.name != "seen"
        }
        return Examples(**values, seen=seen(f"{part}.seen"))

    def interactions(part: str) -> Interactions:
        return Interactions(**{f.name: arrays[f"{part}.{f.name}"] for f in fields(Interactions)})

    cat = meta["catalog"]
    catalog = Catalog(
        item_ids=arrays["catalog.item_ids"].astype(object),
        category=arrays["catalog.category"],
        price_bucket=arrays["catalog.price_bucket"],
        n_categories=int(cat["n_categories"]),
        n_price_buckets=int(cat["n_price_buckets"]),
        category_vocabulary=cat["category_vocabulary"],
        price_edges=cat["price_edges"],
    )
    return Dataset(
        name=meta["name"],
        catalog=catalog,
        train=examples("train"),
        valid=examples("valid"),
        test=examples("test"),
        train_events=interactions("train_events"),
        all_events=interactions("all_events"),
        n_users=int(meta["n_users"]),
        user_ids=arrays["user_ids"].astype(object),
        has_users=bool(meta["has_users"]),
        split=meta["split"],
        before_test=arrays.get("before_test"),
    )
