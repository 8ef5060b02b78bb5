"""The versioned GX project (great_expectations/) and its generator.

:func:`get_context` opens the project read-only in spirit: validation results and Data Docs
go to folders under the state dir, substituted into great_expectations.yml at load time, so a
run never modifies a versioned file. :func:`sync_project` (``lambdarec quality sync``) writes
the suites of :mod:`lambdarec.quality.suites`, one pandas data asset, validation definition and
checkpoint per suite; it only rewrites what changed, so the files diff honestly.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lambdarec.config import get_settings
from lambdarec.quality.paths import GX_DIR
from lambdarec.quality.suites import SUITE_NAMES, build_suite

if TYPE_CHECKING:
    from great_expectations.data_context import FileDataContext

    from lambdarec.config import Settings

DATASOURCE = "lake"
BATCH_DEFINITION = "partition"
DATA_DOCS_SITE = "local_site"
#: Enough failing values to see the pattern; a corrupt day can have millions.
RESULT_FORMAT = {"result_format": "SUMMARY", "partial_unexpected_count": 20}

_NOISY_LOGGERS = ("great_expectations", "posthog", "backoff", "urllib3")


def quiet_gx() -> None:
    """No analytics calls, no progress bars, warnings only (GX logs a lot at INFO)."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    for name in _NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def get_context(settings: Settings | None = None, root: Path = GX_DIR) -> FileDataContext:
    quiet_gx()
    import great_expectations as gx

    settings = settings or get_settings()
    runtime = {
        "LAMBDAREC_GX_RUNTIME_DIR": str(settings.gx_dir.resolve()),
        "LAMBDAREC_DATA_DOCS_DIR": str(settings.data_docs_dir.resolve()),
    }
    return gx.get_context(mode="file", context_root_dir=str(root), runtime_environment=runtime)


def _fingerprint(suite: Any) -> list[dict[str, Any]]:
    return [
        {"type": e.expectation_type, "kwargs": e.configuration.kwargs} for e in suite.expectations
    ]


def sync_project(root: Path = GX_DIR) -> list[str]:
    """Write every suite and its asset, validation definition and checkpoint into ``root``.

    Returns what changed (empty when the files already match the code).
    """
    quiet_gx()
    from great_expectations.checkpoint import UpdateDataDocsAction
    from great_expectations.exceptions import DataContextError

    import great_expectations as gx

    changed: list[str] = []
    with tempfile.TemporaryDirectory() as scratch:
        from lambdarec.config import Settings

        context = get_context(Settings(state_dir=Path(scratch)), root)
        try:
            source = context.data_sources.get(DATASOURCE)
        except (KeyError, ValueError):
            source = context.data_sources.add_pandas(DATASOURCE)
            changed.append(f"datasource {DATASOURCE}")
        for name in SUITE_NAMES:
            try:
                asset = source.get_asset(name)
            except LookupError:
                asset = source.add_dataframe_asset(name)  # type: ignore[attr-defined]  # a PandasDatasource here
                changed.append(f"asset {name}")
            try:
                batch = asset.get_batch_definition(BATCH_DEFINITION)
            except (KeyError, ValueError):
                batch = asset.add_batch_definition_whole_dataframe(BATCH_DEFINITION)
                changed.append(f"batch definition {name}/{BATCH_DEFINITION}")
            built = build_suite(name)
            try:
                suite = context.suites.get(name)
            except DataContextError:
                suite = context.suites.add(built)
                changed.append(f"suite {name} (new)")
            else:
                if _fingerprint(suite) != _fingerprint(built):
                    for old in list(suite.expectations):
                        suite.delete_expectation(old)
                    for expectation in built.expectations:
                        suite.add_expectation(expectation)
                    suite.save()
                    changed.append(f"suite {name} (changed)")
            try:
                definition = context.validation_definitions.get(name)
            except DataContextError:
                definition = context.validation_definitions.add(
                    gx.ValidationDefinition(name=name, data=batch, suite=suite)
                )
                changed.append(f"validation definition {name}")
            try:
                context.checkpoints.get(name)
            except DataContextError:
                context.checkpoints.add(
                    gx.Checkpoint(
                        name=name,
                        validation_definitions=[definition],
                        actions=[
                            UpdateDataDocsAction(
                                name="update_data_docs", site_names=[DATA_DOCS_SITE]
                            )
                        ],
                        result_format=RESULT_FORMAT,
                    )
                )
                changed.append(f"checkpoint {name}")
    return changed
