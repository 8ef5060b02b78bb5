"""Cold start: catalog items the serving champion never saw, embedded and added to the index.

Items enter the catalog any day while the two-tower retrains weekly. The champion's item tower
(:mod:`lambdarec.inference.item_tower`, numpy: no TensorFlow in the Airflow worker) places a new
item by its category and price; :func:`add_new_items` is the daily task's body
(``daily_feature_pipeline``'s ``embed_new_items``): the lake catalog's items absent from the
champion's ``item_embeddings.npz`` are embedded and upserted into the collection behind the
serving alias. ``retrain.export_embeddings`` adds the same items to each new version it publishes,
so a retraining never drops the items added since.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lambdarec.champion import champion_two_tower
from lambdarec.inference.item_tower import (
    EXPORT_DIR,
    META_FILE,
    trained_items,
    unseen_catalog_items,
)
from lambdarec.inference.nn import export_dir
from lambdarec.retrieval.index import VectorIndex

if TYPE_CHECKING:
    from lambdarec.config import Settings

log = logging.getLogger(__name__)

#: Known items whose index vectors are compared with the champion's before new items are added.
CONSISTENCY_PROBE = 5


def add_new_items(
    settings: Settings | None = None, model_dir: Path | None = None
) -> dict[str, Any]:
    """Embed the lake catalog's items the serving champion has no vector for and upsert them into
    the collection behind the serving alias; returns what was done (or why nothing was).

    Runs daily (``daily_feature_pipeline``, after ``materialize``): items enter the catalog any day
    while the two-tower retrains weekly, and the numpy tower needs no TensorFlow in the worker.
    Nothing is written when the serving index does not hold the champion's vectors (compared on a
    few trained items): new vectors must live beside the ones the query tower was trained with.
    Idempotent: a re-run upserts the same vectors.
    """
    from lambdarec.config import get_settings
    from lambdarec.data.lake import read_catalog
    from lambdarec.tables import catalog_path

    s = settings if settings is not None else get_settings()

    def skip(reason: str) -> dict[str, Any]:
        log.info("new items: nothing embedded: %s", reason)
        return {"embedded": 0, "reason": reason}

    if not catalog_path(s.lake_dir).exists():
        return skip(f"no catalog at {catalog_path(s.lake_dir)}")
    with VectorIndex.from_settings(s) as index:
        if index.config.is_lite and not Path(index.config.uri).exists():
            return skip(f"no vector index at {index.config.uri} yet")
        try:
            version = index.serving_version()
        except Exception as error:
            if not (index.config.is_lite and "Open local milvus failed" in str(error)):
                raise
            # Milvus Lite admits one process per file: serving holds it while it runs.
            return skip(
                f"the Milvus Lite file {index.config.uri} is held by another process (serving?); "
                "the new items go in with the next weekly publish, or use a Milvus server "
                "(LAMBDAREC_MILVUS_URI) to add them daily"
            )
        if version is None:
            return skip(f"alias {index.config.alias} is not set: no model published yet")
        folder = model_dir if model_dir is not None else champion_two_tower(s)
        if folder is None:
            return skip("no champion two-tower in the registry")
        if not (export_dir(folder) / EXPORT_DIR / META_FILE).exists():
            return skip(f"the champion's export {folder} has no item tower (retrain to add one)")
        ids, matrix = trained_items(folder)
        probe = ids[:: max(1, len(ids) // CONSISTENCY_PROBE)][:CONSISTENCY_PROBE]
        stored = index.vectors(probe)
        want = {i: matrix[n] for n, i in enumerate(ids) if i in stored}
        if len(want) != len(probe) or any(
            not np.allclose(stored[i], v, atol=1e-4) for i, v in want.items()
        ):
            return skip(
                f"the serving index ({index.collection_name(version)}) does not hold the "
                f"champion's vectors of {probe}; publish the champion first"
            )
        new = unseen_catalog_items(folder, read_catalog(s.lake_dir))
        if not len(new):
            return skip("every catalog item has a trained embedding")
        index.upsert(new.ids, new.embeddings, [str(c) for c in new.category_index])
        collection = index.collection_name(version)
    log.info(
        "new items: embedded %d catalog item(s) unseen by the champion (%d with an unknown "
        "category) into %s",
        len(new),
        new.unknown_category,
        collection,
    )
    return {
        "embedded": len(new),
        "unknown_category": new.unknown_category,
        "collection": collection,
        "model_dir": str(folder),
    }
