"""The built dataset a retraining run keeps between its steps: saved without pickle."""

from __future__ import annotations

import pickle
import zipfile
from dataclasses import fields, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
import scipy.sparse as sp

from lambdarec.data.generator import GeneratorConfig, generate_events
from lambdarec.models.data import Catalog, Dataset, Examples, Interactions, build_from_events
from lambdarec.models.dataset_file import DATASET_FILE, read_dataset, write_dataset

if TYPE_CHECKING:
    from pathlib import Path


@pytest.fixture(scope="module")
def dataset() -> Dataset:
    config = GeneratorConfig(
        n_users=200, n_items=300, n_categories=8, days=5, n_events=5_000, seed=3
    )
    events = generate_events(config)
    return build_from_events(events, name="synthetic", protocol="temporal", mask_seen=True)


def _same(a: Any, b: Any, where: str) -> None:
    if isinstance(a, Examples | Interactions | Catalog | Dataset):
        assert type(a) is type(b), where
        for f in fields(a):
            _same(getattr(a, f.name), getattr(b, f.name), f"{where}.{f.name}")
    elif isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray) and a.dtype == b.dtype and a.shape == b.shape, where
        assert a.tolist() == b.tolist(), where
    elif sp.issparse(a):
        assert sp.issparse(b) and a.shape == b.shape and a.dtype == b.dtype, where
        assert (a != b).nnz == 0, where
    else:
        assert a == b and type(a) is type(b), where


def test_a_dataset_round_trips_field_by_field(dataset: Dataset, tmp_path: Path) -> None:
    assert dataset.valid.seen is not None and dataset.before_test is not None
    assert dataset.catalog.category_vocabulary and dataset.catalog.price_edges
    path = write_dataset(dataset, tmp_path / DATASET_FILE)
    assert path.name == "dataset.npz"
    _same(dataset, read_dataset(path), "dataset")
    # Every member is a plain array: it loads with pickle refused.
    with np.load(path, allow_pickle=False) as data:
        for key in data.files:
            assert data[key].dtype != object, key


def test_optional_parts_round_trip_as_none(dataset: Dataset, tmp_path: Path) -> None:
    plain = replace(
        dataset,
        valid=replace(dataset.valid, seen=None),
        test=replace(dataset.test, seen=None),
        before_test=None,
        catalog=replace(dataset.catalog, category_vocabulary=None, price_edges=None),
    )
    _same(plain, read_dataset(write_dataset(plain, tmp_path / DATASET_FILE)), "dataset")


def test_the_file_holds_no_pickle(dataset: Dataset, tmp_path: Path) -> None:
    """No member of the archive is a pickle: nothing in it runs code when it is read."""
    path = write_dataset(dataset, tmp_path / DATASET_FILE)
    with zipfile.ZipFile(path) as archive:
        for name in archive.namelist():
            head = archive.read(name)[:2]
            assert head != b"\x80" + bytes([pickle.HIGHEST_PROTOCOL]), name
            assert name.endswith(".npy"), name


def test_a_pickle_in_place_of_the_dataset_is_refused(tmp_path: Path) -> None:
    """An object array (what np.save writes with pickle) is never unpickled."""
    path = tmp_path / DATASET_FILE
    np.savez(path, meta=np.array([{"x": 1}], dtype=object))
    with pytest.raises(ValueError, match="pickle"):
        read_dataset(path)


def test_ids_that_are_not_strings_are_refused_at_write(dataset: Dataset, tmp_path: Path) -> None:
    odd = replace(dataset, user_ids=np.array([1, "b"], dtype=object))
    with pytest.raises(ValueError, match="user_ids"):
        write_dataset(odd, tmp_path / DATASET_FILE)
