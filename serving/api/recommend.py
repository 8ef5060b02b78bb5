"""``GET /recommend``: validated query -> the two-stage pipeline -> JSON, plus an impression."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from flask import Blueprint, jsonify, request

from lambdarec.events import format_ts
from serving.state import state
from serving.validation import parse_recommend

if TYPE_CHECKING:
    from flask.typing import ResponseReturnValue

bp = Blueprint("recommend", __name__)

#: Reasons listed per item: the features that contributed most to its score.
TOP_REASONS = 3


@bp.get("/recommend")
def recommend() -> ResponseReturnValue:
    s = state()
    query = parse_recommend(request.args.to_dict(flat=False))
    request_id = uuid.uuid4().hex
    variant = s.variants.assign(query.user_id)
    result = s.recommender.recommend(query)
    items = []
    for position, c in enumerate(result.items):
        reasons = sorted(c.contributions.items(), key=lambda kv: -abs(kv[1]))[:TOP_REASONS]
        items.append(
            {
                "item_id": c.item_id,
                "score": round(c.score, 6),
                "source": c.source,
                "sources": sorted(c.sources),
                "category": c.category,
                "position": position,
                "reasons": [{"feature": f, "contribution": round(v, 6)} for f, v in reasons if v],
            }
        )
    body = {
        "request_id": request_id,
        "user_id": query.user_id,
        "session_id": query.session_id,
        "variant": variant,
        "items": items,
        "degraded": result.degraded,
        "degraded_parts": result.degraded_parts,
        "timings_ms": result.timings_ms,
        "candidates": result.candidates,
    }
    t0 = time.perf_counter()
    s.impressions.emit(
        {
            "request_id": request_id,
            "ts": format_ts(datetime.now(UTC)),
            "user_id": query.user_id,
            "session_id": query.session_id,
            "variant": variant,
            "items": [{k: i[k] for k in ("item_id", "position", "score", "source")} for i in items],
            "degraded_parts": result.degraded_parts,
            "features": result.features,
        }
    )
    s.metrics.stage_seconds.labels("impression").observe(time.perf_counter() - t0)
    response = jsonify(body)
    response.headers["X-Request-Id"] = request_id
    return response
