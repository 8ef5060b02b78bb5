"""In-memory stand-ins for the live stores, so offline evaluation runs the served pipeline.

:class:`ExactIndex` answers like the vector index (exact inner-product top-k in numpy: what an
HNSW index approximates); :class:`MemoryFeatures` answers like the online feature store, from
rows the caller put in (e.g. the features an evaluation query had at its time).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence


class ExactIndex:
    """Brute-force inner-product search over ``matrix`` (rows are ``item_ids``' vectors)."""

    connected = True

    def __init__(self, item_ids: Sequence[str], matrix: np.ndarray) -> None:
        self.item_ids = [str(i) for i in item_ids]
        self.matrix = np.asarray(matrix, dtype=np.float32)
        if self.matrix.ndim != 2 or len(self.matrix) != len(self.item_ids):
            raise ValueError(
                f"ExactIndex: {len(self.item_ids)} ids for a matrix of shape {self.matrix.shape}"
            )

    def search(
        self, vectors: np.ndarray, k: int, timeout_s: float | None = None
    ) -> list[list[tuple[str, float]]]:
        from lambdarec.retrieval.index import exact_search

        return exact_search(self.matrix, self.item_ids, np.atleast_2d(vectors), k)


class MemoryFeatures:
    """Online features from memory: a request context per (user, session) and entity rows per
    feature view (``{view: {entity_key: {feature: value}}}``, keyed by the view's one entity)."""

    def __init__(
        self,
        contexts: Mapping[tuple[str, str], Mapping[str, Any]] | None = None,
        views: Mapping[str, Mapping[str, Mapping[str, Any]]] | None = None,
    ) -> None:
        self.contexts = dict(contexts or {})
        self.views = {name: dict(rows) for name, rows in (views or {}).items()}

    def context(self, user_id: str, session_id: str | None) -> dict[str, Any]:
        return dict(self.contexts.get((user_id, session_id or ""), {}))

    def read(self, refs: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> dict[str, list[Any]]:
        out: dict[str, list[Any]] = {}
        for ref in refs:
            view, _, feature = ref.partition(":")
            table = self.views.get(view, {})
            column = []
            for row in rows:
                key = str(next(iter(row.values()))) if row else ""
                column.append(table.get(key, {}).get(feature))
            out[f"{view}__{feature}"] = column
        return out
