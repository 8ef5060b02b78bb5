"""The manifest of a model folder: what registration records and every load checks."""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING

import pytest

from lambdarec.integrity import (
    IntegrityError,
    build_manifest,
    manifest_bytes,
    verify_folder,
)

if TYPE_CHECKING:
    from pathlib import Path


def _model(root: Path) -> Path:
    (root / "query_tower_numpy").mkdir(parents=True)
    (root / "query_tower_numpy" / "weights.npz").write_bytes(b"\x00weights" * 100)
    (root / "item_index.npy").write_bytes(b"index bytes")
    (root / "two_tower_config.json").write_text('{"dim": 8}')
    return root


def _registered(root: Path) -> tuple[bytes, str]:
    """(manifest.json's bytes, the tag registration stores: their sha256)."""
    raw = manifest_bytes(build_manifest(root))
    return raw, hashlib.sha256(raw).hexdigest()


def test_the_manifest_lists_every_file_with_its_sha256_and_size(tmp_path: Path) -> None:
    folder = _model(tmp_path / "m")
    manifest = build_manifest(folder)
    assert sorted(manifest) == [
        "item_index.npy",
        "query_tower_numpy/weights.npz",
        "two_tower_config.json",
    ]
    entry = manifest["item_index.npy"]
    assert entry == {"sha256": hashlib.sha256(b"index bytes").hexdigest(), "size": 11}
    # Canonical: the same folder always gives the same bytes (the tag is their hash).
    assert manifest_bytes(build_manifest(folder)) == manifest_bytes(manifest)
    assert json.loads(manifest_bytes(manifest)) == manifest


def test_an_intact_model_passes(tmp_path: Path) -> None:
    folder = _model(tmp_path / "m")
    raw, tag = _registered(folder)
    verify_folder(folder, raw, tag, what="two_tower v1")


def test_one_changed_byte_is_refused_naming_the_file(tmp_path: Path) -> None:
    folder = _model(tmp_path / "m")
    raw, tag = _registered(folder)
    weights = folder / "query_tower_numpy" / "weights.npz"
    data = bytearray(weights.read_bytes())
    data[3] ^= 0x01  # same size, one byte different
    weights.write_bytes(bytes(data))
    with pytest.raises(IntegrityError) as error:
        verify_folder(folder, raw, tag, what="two_tower v1")
    message = str(error.value)
    assert "\n" not in message
    assert "two_tower v1" in message and "query_tower_numpy/weights.npz" in message
    assert "re-export" in message


def test_a_missing_file_is_refused(tmp_path: Path) -> None:
    folder = _model(tmp_path / "m")
    raw, tag = _registered(folder)
    (folder / "item_index.npy").unlink()
    with pytest.raises(IntegrityError, match=r"item_index\.npy is missing"):
        verify_folder(folder, raw, tag, what="two_tower v1")


def test_an_extra_file_is_refused(tmp_path: Path) -> None:
    folder = _model(tmp_path / "m")
    raw, tag = _registered(folder)
    (folder / "query_tower_numpy" / "extra.npy").write_bytes(b"planted")
    with pytest.raises(IntegrityError, match=r"query_tower_numpy/extra\.npy is not in"):
        verify_folder(folder, raw, tag, what="two_tower v1")


def test_a_swapped_manifest_is_refused(tmp_path: Path) -> None:
    """A tampered file with a manifest rewritten to match it: the tag no longer matches."""
    folder = _model(tmp_path / "m")
    raw, tag = _registered(folder)
    (folder / "two_tower_config.json").write_text('{"dim": 9}')
    forged, _ = _registered(folder)
    verify_folder(folder, forged, hashlib.sha256(forged).hexdigest(), what="x")  # self-consistent
    with pytest.raises(IntegrityError, match=r"manifest\.json does not match"):
        verify_folder(folder, forged, tag, what="two_tower v1")


def test_a_version_without_a_manifest_tag_is_refused(tmp_path: Path) -> None:
    folder = _model(tmp_path / "m")
    raw, _ = _registered(folder)
    with pytest.raises(IntegrityError, match="no manifest"):
        verify_folder(folder, raw, None, what="two_tower v1")
    with pytest.raises(IntegrityError, match="no manifest"):
        verify_folder(folder, None, "0" * 64, what="two_tower v1")


def test_a_manifest_that_is_not_a_file_listing_is_refused(tmp_path: Path) -> None:
    folder = _model(tmp_path / "m")
    raw = b'["not", "a", "manifest"]'
    with pytest.raises(IntegrityError, match="not a manifest"):
        verify_folder(folder, raw, hashlib.sha256(raw).hexdigest(), what="two_tower v1")
