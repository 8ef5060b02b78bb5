"""Feature-store settings that :class:`lambdarec.config.Settings` does not hold (yet).

Read from ``LAMBDAREC_*`` environment variables like the main settings. Paths are derived from
the main settings' ``state_dir`` and ``lake_dir`` so one ``LAMBDAREC_STATE_DIR`` moves everything.
The feature repo's modules ask :func:`lake_dir` for the lake; :func:`pinned_lake_dir` lets
:func:`lambdarec.features.store.load_definitions` build the definitions for another settings
object than the process-wide one (a test's tmp state dir, say).
"""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Literal

from pydantic_settings import BaseSettings, SettingsConfigDict

from lambdarec.config import REPO_ROOT, get_settings

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from lambdarec.config import Settings

#: The versioned Feast repository (entities, sources, views, services).
FEATURE_REPO_DIR = REPO_ROOT / "feature_repo"


class FeatureStoreSettings(BaseSettings):
    """``LAMBDAREC_ONLINE_STORE`` (sqlite|redis), ``LAMBDAREC_FEAST_PROJECT``, ``LAMBDAREC_REDIS_DB``."""

    model_config = SettingsConfigDict(
        env_prefix="LAMBDAREC_",
        env_file=str(REPO_ROOT / ".env"),
        env_file_encoding="utf-8",
        extra="ignore",
    )

    online_store: Literal["sqlite", "redis"] = "sqlite"
    feast_project: str = "lambdarec"
    redis_db: int = 0


@lru_cache(maxsize=1)
def get_feature_store_settings() -> FeatureStoreSettings:
    """The process-wide feature-store settings (``cache_clear()`` it in tests that change env)."""
    return FeatureStoreSettings()


@dataclass(frozen=True)
class FeastPaths:
    """Where the rendered store lives: everything generated, under the state dir."""

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
    return FeastPaths(root=settings.state_dir / "feast")


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
