"""Data-quality settings not (yet) in :class:`lambdarec.config.Settings`, read from
``LAMBDAREC_DQ_*`` environment variables, and the generated folders GX writes to."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from lambdarec.config import REPO_ROOT

if TYPE_CHECKING:
    from pathlib import Path

    from lambdarec.config import Settings

#: The versioned GX project: great_expectations.yml, expectations/, validation_definitions/,
#: checkpoints/. Everything GX generates goes under the state dir instead.
GX_DIR = REPO_ROOT / "great_expectations"


class QualitySettings(BaseSettings):
    """Bands of the data-quality gates."""

    model_config = SettingsConfigDict(
        env_prefix="LAMBDAREC_",
        env_file=str(REPO_ROOT / ".env"),
        env_file_encoding="utf-8",
        extra="ignore",
    )

    #: A partition may have between min_ratio and max_ratio times the previous one's rows.
    dq_row_count_min_ratio: Annotated[float, Field(ge=0)] = 0.5
    dq_row_count_max_ratio: Annotated[float, Field(gt=0)] = 2.0
    #: Prices above this are absurd for the shop (the event contract itself allows 10M).
    dq_max_price: Annotated[float, Field(gt=0)] = 1_000_000.0

    @model_validator(mode="after")
    def _band(self) -> QualitySettings:
        if self.dq_row_count_min_ratio > self.dq_row_count_max_ratio:
            raise ValueError(
                "LAMBDAREC_DQ_ROW_COUNT_MIN_RATIO is above LAMBDAREC_DQ_ROW_COUNT_MAX_RATIO"
            )
        return self


def data_docs_dir(settings: Settings) -> Path:
    """The generated Data Docs site (open index.html)."""
    return settings.state_dir / "data_docs"


def gx_runtime_dir(settings: Settings) -> Path:
    """Validation results GX stores between runs (Data Docs are rebuilt from them)."""
    return settings.state_dir / "gx"
