"""What the model programs (``include/models/*.py``) share: a quiet TensorFlow on a CPU machine
and one error line instead of a traceback.

Each program calls :func:`prepare_tensorflow` before anything imports TensorFlow, and runs its
typer app through :func:`run`.
"""

from __future__ import annotations

import os
import sys
from enum import StrEnum
from typing import Annotated

import typer


def prepare_tensorflow() -> None:
    """Environment TensorFlow reads when it loads: tf.keras 2 (TFRS needs it), no C++ info lines,
    and no CUDA probing on a machine without a GPU."""
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if not os.path.exists("/dev/nvidia0"):
        os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")


def import_tensorflow_quietly() -> None:
    """Import TensorFlow with stderr muted on a machine without a GPU: its CUDA probe and the
    lines it writes before its logging is set up are noise there, and no setting turns them
    off."""
    if os.environ.get("CUDA_VISIBLE_DEVICES") != "":
        return
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        import tensorflow as tf

        tf.config.list_logical_devices("CPU")  # the CUDA probe happens here, once
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


class QueryEncoder(StrEnum):
    """The two-tower's query encoders (``TwoTowerConfig.query_encoder``), as a program option."""

    pooling = "pooling"
    transformer = "transformer"


#: The ``--query-encoder`` option of the programs that train a two-tower.
QueryEncoderOption = Annotated[
    QueryEncoder | None,
    typer.Option(
        help="The two-tower's query encoder: pooling | transformer (default: TwoTowerConfig's)",
        show_default=False,
    ),
]


def encoder_options(encoder: QueryEncoder | None) -> dict[str, str]:
    """``TwoTowerConfig`` keyword arguments of a ``--query-encoder`` option (none: the default)."""
    return {} if encoder is None else {"query_encoder": encoder.value}


def run(app: typer.Typer) -> None:
    """The program: an expected error (a bad option, data that cannot be loaded or split) is one
    ``error:`` line on stderr and exit code 1 (2 for a bad option), not a traceback."""
    import typer

    from lambdarec.data.loaders import LoadError
    from lambdarec.models.data import DatasetError

    try:
        code = app(standalone_mode=False)
    except typer.TyperException as exc:  # typer's click errors: usage, bad parameter
        die(exc.format_message(), exc.exit_code)
    except (LoadError, DatasetError, FileNotFoundError) as exc:
        die(str(exc), 1)
    if isinstance(code, int) and code:
        raise SystemExit(code)


def die(message: str, code: int) -> None:
    line = "; ".join(part.strip() for part in message.splitlines() if part.strip())
    print(f"error: {line}", file=sys.stderr)
    raise SystemExit(code)
