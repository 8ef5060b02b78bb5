"""The DeepFM ranker's feature rows: ONE function for training, evaluation and serving.

A row describes one (query, candidate) pair. Training builds rows for the retriever's candidates
of its validation queries (:func:`lambdarec.models.deepfm.candidate_features`), serving for the
candidates of one request (:class:`lambdarec.inference.ranker.DeepFMRanker`); both call
:func:`ranker_rows` with the same :class:`ItemTable` (training builds it from its dataset, serving
loads the copy the export holds), so the two cannot drift apart.

Fields (``SPARSE`` then ``DENSE``; the model's field order is ``lambdarec.models.deepfm.
field_names``):

* ``position``: where the candidate was shown in a logged impression, as an embedding index:
  :data:`NEUTRAL_POSITION` for a row that is not from an impression (every row serving builds: the
  position is a training-only feature, :func:`position_index`);
* ``cand_item`` / ``last_item``: embedding indices of the candidate and of the session's last item
  (0 no item, 1 an item unknown to the table);
* ``cand_category``, ``cand_price``: the candidate's category index and price bucket;
  ``session_category``: the category of the session's last item (0 when unknown);
* dense: per candidate source of the pipeline, its score (0 when it did not propose the
  candidate), the log of the candidate's place in its list (:data:`ABSENT_RANK` when absent),
  and the score against the query's other candidates from that source: ``rel`` (the score over
  the largest absolute score) and ``gap`` (how far below the best, on the same scale), both 0
  when absent (a source's raw scores differ in scale from query to query: session-kNN sums
  similarities over however many neighbours the session has); then ``cooc``
  (``sum_j decay**j * M[hist_j, candidate]`` over the training co-occurrence matrix),
  ``log_pop`` (training interactions), ``log_session_len``, ``log_user_events``,
  ``same_category`` (candidate and session share a known category), ``in_history``
  (``sum_j HISTORY_DECAY**j`` over the history places that hold the candidate: a return to an
  item) and ``n_sources`` (how many sources proposed it): :func:`dense_names`.

Queries come as catalog positions: a history entry is a position, :data:`PAD` (no item) or
:data:`UNKNOWN` (an item the table does not know: serving meets items newer than the model);
a candidate is a position or :data:`UNKNOWN` (its category may then come from the caller, see
``cand_category``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from lambdarec.inference.nn import NO_ITEM, OOV_ITEM

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence

SPARSE = (
    "cand_item",
    "last_item",
    "cand_category",
    "cand_price",
    "session_category",
    "position",
)
#: The ``position`` of a row not from an impression, and of every row serving scores: the ranker
#: learns the click bias of a shown place from impressions and is asked without it.
NEUTRAL_POSITION = 0
#: Shown places with an embedding of their own (0-based places 0..N-2); later ones share the last.
N_POSITIONS = 21
#: The dense features every row has after the per-source ones.
BASE_DENSE = (
    "cooc",
    "log_pop",
    "log_session_len",
    "log_user_events",
    "same_category",
    "in_history",
    "n_sources",
)
#: What each source contributes to a row, in order (see the module doc).
PER_SOURCE = ("score", "log_rank", "rel", "gap")
#: Weight of the history's j-th newest place in ``in_history``: ``HISTORY_DECAY ** j``.
HISTORY_DECAY = 0.7
#: A source's place for a candidate it did not propose (beyond any list's length).
ABSENT_RANK = 1000.0
#: A history position with no item (padding).
PAD = -1
#: An item the table does not know (a history item or a candidate newer than the model).
UNKNOWN = -2
#: The session's event counts serving reads (the session's length so far).
SESSION_COUNTS = ("n_views", "n_carts", "n_removes", "n_purchases")


def position_index(position: np.ndarray) -> np.ndarray:
    """The ``position`` field of shown places (0-based; negative: not shown, neutral)."""
    position = np.asarray(position, dtype=np.int64)
    return np.where(position < 0, NEUTRAL_POSITION, 1 + np.minimum(position, N_POSITIONS - 2))


def dense_names(sources: Sequence[str]) -> list[str]:
    """The dense features of a ranker over ``sources``, in the rows' order."""
    per_source = [f"{s}_{what}" for s in sources for what in PER_SOURCE]
    return [*per_source, *BASE_DENSE]


@dataclass(frozen=True)
class ItemTable:
    """What the ranker knows of each catalog item, by catalog position, and the co-occurrence
    matrix as sorted ``row * n_items + column`` keys (one binary search finds any pair)."""

    #: The item's embedding index (``two_tower.item_index``: 1 out of vocabulary).
    index: np.ndarray
    category: np.ndarray
    price_bucket: np.ndarray
    #: Training interaction counts.
    popularity: np.ndarray
    cooc_keys: np.ndarray
    cooc_values: np.ndarray
    #: Weight of the history's j-th newest item in ``cooc``: ``decay ** j``.
    decay: float

    @property
    def n_items(self) -> int:
        return len(self.index)

    @classmethod
    def from_csr(
        cls,
        *,
        index: np.ndarray,
        category: np.ndarray,
        price_bucket: np.ndarray,
        popularity: np.ndarray,
        indptr: np.ndarray,
        indices: np.ndarray,
        data: np.ndarray,
        decay: float,
    ) -> ItemTable:
        """From the co-occurrence matrix's CSR arrays (each row's columns sorted)."""
        n = len(index)
        per_row = np.diff(np.asarray(indptr, dtype=np.int64)).astype(np.int64)
        rows = np.repeat(np.arange(n, dtype=np.int64), per_row)
        keys = rows * n + np.asarray(indices, dtype=np.int64)
        if len(keys) > 1 and not (np.diff(keys) > 0).all():
            order = np.argsort(keys, kind="stable")
            keys, data = keys[order], np.asarray(data)[order]
        return cls(
            index=np.asarray(index, dtype=np.int64),
            category=np.asarray(category, dtype=np.int64),
            price_bucket=np.asarray(price_bucket, dtype=np.int64),
            popularity=np.asarray(popularity, dtype=np.float64),
            cooc_keys=keys,
            cooc_values=np.asarray(data, dtype=np.float32),
            decay=float(decay),
        )

    def cooc(self, hist: np.ndarray, cand: np.ndarray) -> np.ndarray:
        """``sum_j decay**j * M[hist[q, j], cand[q, c]]`` per pair (n, c); unknown or padding
        positions contribute nothing."""
        out = np.zeros(cand.shape, dtype=np.float64)
        keys, values = self.cooc_keys, self.cooc_values
        if not len(keys):
            return out
        n_items = self.n_items
        for j in range(hist.shape[1]):
            h = hist[:, j]
            rows = np.flatnonzero(h >= 0)
            if not len(rows):
                continue
            c = cand[rows]
            want = h[rows, None] * n_items + np.maximum(c, 0)
            at = np.minimum(np.searchsorted(keys, want), len(keys) - 1)
            found = (keys[at] == want) & (c >= 0)
            out[rows] += np.where(found, np.float32(self.decay**j) * values[at], 0.0)
        return out


def ranker_rows(
    table: ItemTable,
    hist: np.ndarray,
    session_len: np.ndarray,
    user_events: np.ndarray,
    cand: np.ndarray,
    source_scores: np.ndarray,
    source_ranks: np.ndarray,
    cand_category: np.ndarray | None = None,
    shown_position: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """The feature rows of ``n`` queries x ``c`` candidates, flattened query-major.

    ``hist`` (n, L): catalog positions, newest first (:data:`PAD`, :data:`UNKNOWN`);
    ``session_len`` and ``user_events`` (n,): the session's interactions so far and the user's
    before it; ``cand`` (n, c): catalog positions or :data:`UNKNOWN`; ``source_scores`` and
    ``source_ranks`` (n, c, S): each source's score of each candidate and its place in the
    source's list, NaN where the source did not propose it; ``cand_category`` (n, c): the
    category index of candidates the table does not know (ignored for known ones; unknown
    without it); ``shown_position`` (n, c): where an impression showed the candidate (0-based,
    -1 not shown), for training rows only: None (serving) gives every row the neutral position.
    """
    hist = np.asarray(hist, dtype=np.int64)
    cand = np.asarray(cand, dtype=np.int64)
    n, c = cand.shape
    scores = np.asarray(source_scores, dtype=np.float64).reshape(n, c, -1)
    ranks = np.asarray(source_ranks, dtype=np.float64).reshape(n, c, -1)
    known = cand >= 0
    safe = np.maximum(cand, 0)
    category = np.where(known, table.category[safe], 0)
    if cand_category is not None:
        category = np.where(known, category, np.asarray(cand_category, dtype=np.int64))
    first = hist[:, 0] if hist.shape[1] else np.full(n, PAD, dtype=np.int64)
    last = np.where(
        first >= 0, table.index[np.maximum(first, 0)], np.where(first == PAD, NO_ITEM, OOV_ITEM)
    )
    session_category = np.where(first >= 0, table.category[np.maximum(first, 0)], 0)
    same = (category == session_category[:, None]) & (session_category[:, None] > 0)
    present = ~np.isnan(scores)
    raw = np.where(present, scores, 0.0)
    scale = np.maximum(np.abs(raw).max(axis=1, keepdims=True, initial=0.0), 1e-9)  # (n, 1, S)
    best = np.where(present, scores, -np.inf).max(axis=1, keepdims=True, initial=-np.inf)
    per_source = np.stack(
        [
            raw,
            np.log1p(np.where(np.isnan(ranks), ABSENT_RANK, ranks)),
            raw / scale,
            np.where(present, best - raw, 0.0) / scale,
        ],
        axis=-1,
    ).reshape(n, c, -1)  # (n, c, 4S): PER_SOURCE per source
    in_history = np.zeros((n, c))
    for j in range(hist.shape[1]):
        in_history += HISTORY_DECAY**j * ((hist[:, j, None] == cand) & known)
    base = np.stack(
        [
            table.cooc(hist, cand),
            np.log1p(np.where(known, table.popularity[safe], 0.0)),
            np.broadcast_to(np.log1p(np.asarray(session_len, np.float64))[:, None], (n, c)),
            np.broadcast_to(np.log1p(np.asarray(user_events, np.float64))[:, None], (n, c)),
            same,
            in_history,
            present.sum(axis=-1),
        ],
        axis=-1,
    )
    dense = np.concatenate([per_source, base], axis=-1).astype(np.float32)
    return {
        "cand_item": np.where(known, table.index[safe], OOV_ITEM).ravel(),
        "last_item": np.repeat(last, c),
        "cand_category": category.ravel(),
        "cand_price": np.where(known, table.price_bucket[safe], 0).ravel(),
        "session_category": np.repeat(session_category, c),
        "position": (
            np.full(n * c, NEUTRAL_POSITION, dtype=np.int64)
            if shown_position is None
            else position_index(np.asarray(shown_position).reshape(n, c)).ravel()
        ),
        "dense": dense.reshape(n * c, dense.shape[-1]),
    }


def online_history(
    recent: Iterable[object], position: Mapping[str, int], max_history: int
) -> np.ndarray:
    """A request's history row (1, ``max_history``) from the speed layer's recent items (newest
    first): consecutive repeats collapsed as training collapses them, items unknown to the table
    :data:`UNKNOWN`, padded with :data:`PAD`."""
    out = np.full((1, max_history), PAD, dtype=np.int64)
    previous: object = None
    j = 0
    for item in recent:
        if item is None or item == previous:
            continue
        previous = item
        out[0, j] = position.get(str(item), UNKNOWN)
        j += 1
        if j == max_history:
            break
    return out


def online_counts(features: Mapping[str, Any]) -> tuple[int, int]:
    """(session length, user events) of a request's online features: the session's events so
    far, and the user's 30-day events (up to the last daily run) plus this session's."""
    session_len = sum(
        int(features.get(f"session_features__{name}") or 0) for name in SESSION_COUNTS
    )
    user = int(features.get("user_history_30d__n_events_30d") or 0)
    return session_len, user + session_len
