"""Loading the champion serving answers with: its query tower and the ranker of its run.

Numpy exports only (:mod:`lambdarec.inference`): a serving worker never imports TensorFlow. The
folders come from :func:`lambdarec.champion.champion_dirs` (the registry's champion, or the folder
``LAMBDAREC_SERVING_MODEL_DIR`` pins). A missing or unreadable ranker leaves the pair without one
(serving then ranks by the blend of its sources); it never fails the load of the query tower.

:func:`load_variant_rankers` loads the rankers ``LAMBDAREC_AB_RANKERS`` gives A/B variants, once at
startup; there a missing or unreadable export fails the start: an experiment that would silently
serve the champion in its treatment measures nothing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from lambdarec.inference.item_tower import ItemTower
from lambdarec.inference.query_tower import QueryEncoder
from lambdarec.inference.ranker import EXPORT_DIR, META_FILE, DeepFMRanker
from lambdarec.recommend.types import Models

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

    from lambdarec.config import Settings
    from lambdarec.inference.vocabulary import ItemVocabulary

log = logging.getLogger(__name__)


def _vocabulary(two_tower_dir: Path | None, who: str) -> ItemVocabulary | None:
    """The category vocabulary of a two-tower export's item tower; None, logged (``who`` sees
    new items' category as unknown), when there is no export or it cannot be read."""
    if two_tower_dir is None:
        return None
    try:
        return ItemTower.load(two_tower_dir).vocabulary
    except (OSError, ValueError) as exc:
        log.warning(
            "no category vocabulary in %s (%s): %s new items' category as unknown",
            two_tower_dir,
            exc,
            who,
        )
        return None


def load_ranker(deepfm_dir: Path | None, two_tower_dir: Path | None = None) -> DeepFMRanker | None:
    """The DeepFM exported in a run's ``deepfm/`` folder; None, logged, when there is none or it
    cannot be read. The category vocabulary of the same run's two-tower export (its item
    tower's) places items the ranker never saw by their catalog category; an export without one
    leaves them unknown."""
    if deepfm_dir is None:
        log.warning("the champion's run logged no DeepFM; ranking by the score blend")
        return None
    vocabulary = _vocabulary(two_tower_dir, "the ranker sees")
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


@dataclass(frozen=True)
class VariantRanker:
    """The ranker an A/B variant is served with instead of the champion's."""

    #: What the response and the impression name it: the run folder's name.
    name: str
    ranker: DeepFMRanker


def ranker_name(folder: Path) -> str:
    """The name of the run a DeepFM folder belongs to: ``runs/new/deepfm/serving`` is ``new``."""
    path = folder.resolve()
    for part in (EXPORT_DIR, "deepfm"):
        if path.name == part and path.parent != path:
            path = path.parent
    return path.name or str(folder)


def load_variant_rankers(
    spec: str,
    variants: Sequence[str],
    two_tower_dir: Path | None = None,
    ranked: Sequence[str] | None = None,
) -> dict[str, VariantRanker]:
    """The rankers of ``LAMBDAREC_AB_RANKERS`` (``variant:folder,...``; a folder is a run's
    ``deepfm/`` or its ``serving/`` export), by variant. ``two_tower_dir``'s category vocabulary
    places items a ranker never saw (the champion's). ``ranked``: the variants whose policy
    ranks; a ranker for another is an error. Every problem is a one-line ValueError naming the
    setting and the fix."""
    from lambdarec.config import parse_ab_rankers

    chosen = parse_ab_rankers(spec, variants)
    unranked = sorted(set(chosen) - set(ranked)) if ranked is not None else []
    if unranked:
        raise ValueError(
            f"LAMBDAREC_AB_RANKERS gives variant(s) {unranked} a ranker, but their "
            "LAMBDAREC_AB_POLICIES policy does not rank; give them pipeline or drop the ranker"
        )
    vocabulary = _vocabulary(two_tower_dir, "the variants' rankers see") if chosen else None
    out: dict[str, VariantRanker] = {}
    for variant, folder in chosen.items():
        deepfm_dir = folder.parent if (folder / META_FILE).is_file() else folder
        try:
            ranker = DeepFMRanker.from_model_dir(deepfm_dir, vocabulary)
        except Exception as exc:  # noqa: BLE001 - any unreadable export is the same mistake
            raise ValueError(
                f"LAMBDAREC_AB_RANKERS: the DeepFM export of variant {variant!r} in {folder} "
                f"cannot be read ({type(exc).__name__}: {str(exc)[:120]}); re-export it with "
                "the retraining's train_ranker or drop the variant"
            ) from None
        if ranker is None:
            raise ValueError(
                f"LAMBDAREC_AB_RANKERS: {folder} (variant {variant!r}) holds no "
                f"{EXPORT_DIR}/{META_FILE}; point it at a run's deepfm/ folder or its "
                f"{EXPORT_DIR}/ export"
            )
        out[variant] = VariantRanker(ranker_name(folder), ranker)
        log.info("A/B variant %r is ranked by %s (%s)", variant, out[variant].name, folder)
    return out
