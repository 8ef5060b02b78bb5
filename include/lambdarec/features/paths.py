"""Where the feature store's files are: the versioned repo, the rendered store, the lake.

No settings here: everything configurable is on :class:`lambdarec.config.Settings`
(``online_store``, ``feast_project``, ``redis_db``, ``feast_dir``, ``lake_dir``), so one
``LAMBDAREC_STATE_DIR`` moves everything. The feature repo's modules ask :func:`lake_dir` for the
lake; :func:`pinned_lake_dir` lets :func:`lambdarec.features.store.load_definitions` build the
definitions for another settings object than the process-wide one (a test's tmp state dir, say).
"""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING

from lambdarec.config import REPO_ROOT, get_settings

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from lambdarec.config import Settings

#: The versioned Feast repository (entities, sources, views, services).
FEATURE_REPO_DIR = REPO_ROOT / "feature_repo"


@dataclass(frozen=True)
class FeastPaths:
    """Where the rendered store lives: everything generated, under ``settings.feast_dir``."""

    root: Path

    @property
    def yaml(self) -> Path:
        return self.root / "feature_store.yaml"

    @property
    def registry(self) -> Path:
        return self.root / "registry.db"

    @property
    def online_db(self) -> Path:
        return self.root / "online_store.db"


def feast_paths(settings: Settings) -> FeastPaths:
    return FeastPaths(root=settings.feast_dir)


_PINNED_LAKE: ContextVar[Path | None] = ContextVar("lambdarec_pinned_lake", default=None)


def lake_dir() -> Path:
    """The lake the feature repo's file sources point at (absolute)."""
    pinned = _PINNED_LAKE.get()
    return (pinned or get_settings().lake_dir).resolve()


@contextmanager
def pinned_lake_dir(path: Path) -> Iterator[None]:
    token = _PINNED_LAKE.set(path)
    try:
        yield
    finally:
        _PINNED_LAKE.reset(token)
