"""Where the serving champion's exports are: the registry's champion, or a pinned folder.

Serving loads the champion two-tower's export (query tower, item index, embeddings) and the
DeepFM of the same training run, the only ranker it pairs with (``retrain.train_ranker`` trains
it on that retriever's candidates and scores). The daily cold-start step embeds new items with
the same export's item tower. Both find the folders here: the one ``LAMBDAREC_SERVING_MODEL_DIR``
pins (and its sibling ``deepfm/``, the run folder's layout), else the MLflow champion's
artifacts, downloaded, and the ``deepfm`` model logged from the same run folder. Registry folders
are checked against their registered manifest first (:meth:`ModelRegistry.download_verified`): a
changed, missing or extra file refuses the two-tower's load (:class:`IntegrityError`), or leaves
the pair without its ranker. A pinned folder is the operator's own and is not checked. A registry
version can be asked for by number too (serving loads the tower whose vectors the index holds).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from lambdarec.inference.query_tower import EXPORT_DIR as QUERY_TOWER_DIR
from lambdarec.integrity import FIX, IntegrityError

if TYPE_CHECKING:
    from lambdarec.config import Settings
    from lambdarec.registry import ModelRegistry

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ChampionDirs:
    """The champion's model folders on local disk."""

    #: The two-tower export (``export_two_tower``: query tower, item index, embeddings).
    two_tower: Path
    #: The ``deepfm/`` folder of the same training run; None when that run logged none.
    deepfm: Path | None
    #: The two-tower's registry version (None: a pinned folder outside a run folder).
    version: str | None = None


def pinned_dirs(settings: Settings) -> ChampionDirs | None:
    """The folders ``LAMBDAREC_SERVING_MODEL_DIR`` pins; None when it is empty."""
    if not settings.serving_model_dir:
        return None
    pinned = Path(settings.serving_model_dir)
    if not (pinned / QUERY_TOWER_DIR).is_dir():
        raise FileNotFoundError(
            f"LAMBDAREC_SERVING_MODEL_DIR={pinned} holds no {QUERY_TOWER_DIR}/: point it at a "
            "export_two_tower folder or leave it empty to serve the registry's champion"
        )
    sibling = pinned.parent / "deepfm"
    return ChampionDirs(pinned, sibling if sibling.is_dir() else None, run_folder_version(pinned))


def run_folder_version(two_tower_dir: Path) -> str | None:
    """The registry version a retraining run gave the two-tower in ``two_tower_dir`` (its run
    folder's ``decision.json``), or None outside a run folder."""
    try:
        decision = json.loads((two_tower_dir.parent / "decision.json").read_text(encoding="utf-8"))
        version = decision["decisions"]["two_tower"]["version"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return None if version is None else str(version)


def champion_two_tower(settings: Settings) -> Path | None:
    """The two-tower export serving uses: the pinned folder, else the MLflow champion's
    (downloaded); None without one."""
    if settings.serving_model_dir:
        return Path(settings.serving_model_dir)
    dirs = champion_dirs(settings, with_ranker=False)
    return None if dirs is None else dirs.two_tower


def champion_dirs(
    settings: Settings, *, with_ranker: bool = True, version: str | None = None
) -> ChampionDirs | None:
    """The champion two-tower's export and the DeepFM of its run (see the module doc), or those
    of the registered ``version``; None when the registry has no champion. A pinned folder is
    returned whatever ``version`` asks (its own version says whether it matches)."""
    pinned = pinned_dirs(settings)
    if pinned is not None:
        return pinned
    from lambdarec.registry import DEEPFM, TWO_TOWER, ModelRegistry

    registry = ModelRegistry.from_settings(settings, TWO_TOWER)
    champion = registry.get_champion() if version is None else registry.get_version(version)
    if champion is None:
        return None
    # A folder that differs from its manifest raises here: the caller keeps what it had.
    local = registry.download_verified(champion)
    deepfm = None
    if with_ranker:
        try:
            deepfm = same_run_deepfm(ModelRegistry.from_settings(settings, DEEPFM), champion.run_id)
        except IntegrityError as error:  # a refused ranker degrades the ranking, as a missing one
            log.error(
                "the DeepFM of the champion's run is refused; ranking by the blend: %s", error
            )
        except Exception:  # noqa: BLE001 - no ranker is a degraded part, not a failed load
            log.exception("cannot fetch the DeepFM of the champion's run; ranking by the blend")
    return ChampionDirs(local, deepfm, champion.version)


def same_run_deepfm(registry: ModelRegistry, two_tower_run_id: str) -> Path | None:
    """The model folder of the newest ``deepfm`` run logged with the same ``run_dir`` as the
    two-tower's run (``retrain.evaluate`` logs and registers both from one run folder),
    downloaded and checked against the manifest of the version registered from it."""
    client = registry.client
    run_dir = client.get_run(two_tower_run_id).data.params.get("run_dir")
    experiment = client.get_experiment_by_name(registry.experiment)
    if not run_dir or experiment is None:
        return None
    quote = '"' if "'" in run_dir else "'"
    runs = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"params.run_dir = {quote}{run_dir}{quote}",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if not runs:
        return None
    version = registry.version_of_run(runs[0].info.run_id)
    if version is None:
        raise IntegrityError(
            f"{registry.model_name} run {runs[0].info.run_id} was never registered: its files "
            f"have no registered manifest to be checked against; {FIX}"
        )
    return registry.download_verified(version)
