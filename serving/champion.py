"""Loading the champion serving answers with: its query tower and the ranker of its run.

Numpy exports only (:mod:`lambdarec.inference`): a serving worker never imports TensorFlow. The
folders come from :func:`lambdarec.champion.champion_dirs` (the registry's champion, or the folder
``LAMBDAREC_SERVING_MODEL_DIR`` pins). A missing or unreadable ranker leaves the pair without one
(serving then ranks by the blend of its sources); it never fails the load of the query tower.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from lambdarec.inference.item_tower import ItemTower
from lambdarec.inference.query_tower import QueryEncoder
from lambdarec.inference.ranker import DeepFMRanker
from lambdarec.recommend.types import Models

if TYPE_CHECKING:
    from pathlib import Path

    from lambdarec.config import Settings

log = logging.getLogger(__name__)


def load_ranker(deepfm_dir: Path | None, two_tower_dir: Path | None = None) -> DeepFMRanker | None:
    """The DeepFM exported in a run's ``deepfm/`` folder; None, logged, when there is none or it
    cannot be read. The category vocabulary of the same run's two-tower export (its item
    tower's) places items the ranker never saw by their catalog category; an export without one
    leaves them unknown."""
    if deepfm_dir is None:
        log.warning("the champion's run logged no DeepFM; ranking by the score blend")
        return None
    vocabulary = None
    if two_tower_dir is not None:
        try:
            vocabulary = ItemTower.load(two_tower_dir).vocabulary
        except (OSError, ValueError) as exc:
            log.warning(
                "no category vocabulary in %s (%s): the ranker sees new items' category as unknown",
                two_tower_dir,
                exc,
            )
    try:
        ranker = DeepFMRanker.from_model_dir(deepfm_dir, vocabulary)
    except Exception:  # noqa: BLE001 - a broken ranker must not take the query tower with it
        log.exception("the DeepFM export in %s cannot be loaded; ranking by the blend", deepfm_dir)
        return None
    if ranker is None:
        log.warning(
            "%s holds no serving export (a run from before it); ranking by the blend", deepfm_dir
        )
    return ranker


def load_champion(settings: Settings, version: str | None = None) -> Models | None:
    """The champion's query tower (or registry ``version``'s) and, beside it, the DeepFM of the
    same run, with the two-tower's registry version (None when there is no champion)."""
    from lambdarec.champion import champion_dirs

    dirs = champion_dirs(settings, version=version)
    if dirs is None:
        return None
    return Models(
        QueryEncoder.load(dirs.two_tower),
        load_ranker(dirs.deepfm, dirs.two_tower),
        dirs.version,
    )
