"""Integrity of exported models: a manifest of every file and the check before any load.

Registration (:meth:`lambdarec.registry.ModelRegistry.log_run`) records, beside the model folder,
``manifest.json``: every file of the folder by its path relative to it, with its sha256 and size
(:func:`build_manifest`, written canonically by :func:`manifest_bytes`). The sha256 of those bytes
is kept in the tracking store (a run tag, copied to the model version's tag at
:meth:`~lambdarec.registry.ModelRegistry.register`), so a manifest rewritten in the artifact store
to match a changed file no longer matches its tag.

Every consumer of a registered model (serving, the cold-start embedding) checks the downloaded
folder first (:func:`verify_folder`): a changed, missing or extra file, or a manifest that does not
match its tag, refuses the load with a one-line :class:`IntegrityError` naming the file and the fix.
This module only hashes and compares; it reads nothing from MLflow.
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pathlib import Path

__all__ = [
    "FIX",
    "MANIFEST_FILE",
    "IntegrityError",
    "build_manifest",
    "file_sha256",
    "manifest_bytes",
    "sha256_bytes",
    "verify_folder",
]

#: The run artifact listing the files of the run's ``model/`` folder.
MANIFEST_FILE = "manifest.json"
#: What the refusals tell the operator to do.
FIX = (
    "re-export the model and register it again (the retraining's evaluate step), "
    "or roll the champion back to an intact version"
)
_CHUNK = 1 << 20

Manifest = dict[str, dict[str, Any]]


class IntegrityError(RuntimeError):
    """A model folder does not match what was registered; the message is one line and names the
    file and the fix."""


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _files(folder: Path) -> dict[str, Path]:
    """Every file under ``folder`` by its POSIX path relative to it."""
    return {
        path.relative_to(folder).as_posix(): path
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def build_manifest(folder: Path) -> Manifest:
    """{relative path: {"sha256", "size"}} of every file under ``folder``."""
    return {
        name: {"sha256": file_sha256(path), "size": path.stat().st_size}
        for name, path in _files(folder).items()
    }


def manifest_bytes(manifest: Manifest) -> bytes:
    """The canonical bytes of a manifest (sorted keys): its sha256 is what the tag holds."""
    return (json.dumps(manifest, sort_keys=True, indent=1) + "\n").encode("utf-8")


def _parse(raw: bytes, what: str) -> Manifest:
    try:
        manifest = json.loads(raw.decode("utf-8"))
    except ValueError:
        manifest = None
    if not isinstance(manifest, dict) or not all(
        isinstance(entry, dict) and isinstance(entry.get("sha256"), str)
        for entry in manifest.values()
    ):
        raise IntegrityError(f"{what}: {MANIFEST_FILE} is not a manifest of files; {FIX}")
    return manifest


def verify_folder(
    folder: Path, manifest_raw: bytes | None, expected_sha256: str | None, *, what: str
) -> None:
    """Check ``folder`` against its manifest and the manifest against the registered sha256;
    raise :class:`IntegrityError` on the first difference (``what`` names the model version)."""
    if manifest_raw is None or not expected_sha256:
        missing = f"no {MANIFEST_FILE}" if manifest_raw is None else "no manifest tag"
        raise IntegrityError(
            f"{what} has {missing} (registered before manifests, or it was removed); {FIX}"
        )
    actual_sha = sha256_bytes(manifest_raw)
    if actual_sha != expected_sha256:
        raise IntegrityError(
            f"{what}: {MANIFEST_FILE} does not match the sha256 registered for it "
            f"({actual_sha[:12]} != {expected_sha256[:12]}): it was replaced after registration; "
            f"{FIX}"
        )
    manifest = _parse(manifest_raw, what)
    files = _files(folder)
    problems: list[str] = []
    for name in sorted(manifest.keys() - files.keys()):
        problems.append(f"{name} is missing (listed in {MANIFEST_FILE})")
    for name in sorted(files.keys() - manifest.keys()):
        problems.append(f"{name} is not in {MANIFEST_FILE} (added after registration)")
    for name in sorted(files.keys() & manifest.keys()):
        want = manifest[name]
        path = files[name]
        if path.stat().st_size != want.get("size") or file_sha256(path) != want["sha256"]:
            problems.append(f"{name} changed after registration (its sha256 differs)")
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise IntegrityError(f"{what}: {problems[0]}{more}; {FIX}")
