"""``/recommend``: validated query -> the two-stage pipeline -> JSON, plus an impression.

The user's A/B variant picks the pipeline's policy (:mod:`serving.ab`) and, when
``LAMBDAREC_AB_RANKERS`` lists it, its own ranker; the variant, the policy and the ranker are
named in the response and the impression.

``GET`` takes the query string; ``POST`` the same fields as a JSON object, for an ``exclude`` list
longer than a request line holds. A session already bound to another user is refused (409)
before any feature of it is read.
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import orjson
from flask import Blueprint, jsonify, request

from lambdarec.events import format_ts
from lambdarec.recommend.policies import POLICIES
from serving.access import guarded
from serving.apidoc import KEYED, documented, refusals
from serving.apidoc import Response as Described
from serving.schemas import Error, Recommendation, RecommendBody, RecommendQuery
from serving.state import state
from serving.validation import (
    MAX_BODY_BYTES,
    RequestError,
    parse_recommend,
    parse_recommend_body,
)

if TYPE_CHECKING:
    from flask.typing import ResponseReturnValue

    from lambdarec.recommend.types import Query

bp = Blueprint("recommend", __name__)

#: What the response names the champion's ranker (a variant's own is named by its run folder).
CHAMPION = "champion"
#: Reasons listed per item: the features that contributed most to its score.
TOP_REASONS = 3


@bp.get("/recommend")
@documented(
    query=RecommendQuery,
    security=KEYED,
    resp=Described(
        HTTP_200=(Recommendation, "The list; `degraded` says whether a dependency was skipped."),
        HTTP_400=(Error, "An invalid, repeated or unknown query parameter."),
        **refusals("recommend"),
    ),
)
@guarded("recommend")
def recommend_get() -> ResponseReturnValue:
    """Top-k items for a user (and session), with why each was chosen.

    `exclude` in a query string is cut by the request line near 62 ids; POST the query to send
    more.
    """
    return _answer(parse_recommend(request.args.to_dict(flat=False)))


@bp.post("/recommend")
@documented(
    json=RecommendBody,
    security=KEYED,
    resp=Described(
        HTTP_200=(Recommendation, "The list, as GET answers it."),
        HTTP_400=(Error, "Malformed JSON, an invalid or unknown field, or a query string."),
        **refusals("recommend"),
        HTTP_413=(Error, f"Body above {MAX_BODY_BYTES} bytes."),
        HTTP_415=(Error, "Not application/json."),
    ),
)
@guarded("recommend")
def recommend_post() -> ResponseReturnValue:
    """The same as GET, the query as a JSON object: for long exclusions."""
    if request.mimetype != "application/json":
        raise RequestError("$", "send the query as application/json", status=415)
    if request.args:
        raise RequestError("$", "send every field in the JSON body, none in the query string")
    try:
        payload = orjson.loads(request.get_data(cache=False))
    except orjson.JSONDecodeError as exc:
        raise RequestError("$", f"malformed JSON: {exc}"[:300]) from None
    return _answer(parse_recommend_body(payload))


def _answer(query: Query) -> ResponseReturnValue:
    s = state()
    if query.session_id is not None and s.sessions.claim(
        [(query.session_id, query.user_id)], s.recommender.session_owners
    ):
        s.metrics.session_conflicts.inc()
        raise RequestError(
            "session_id",
            "belongs to another user; start a new session id for this user",
            status=409,
        )
    request_id = uuid.uuid4().hex
    variant = s.variants.assign(query.user_id)
    policy = s.variants.policy(variant)
    own = s.rankers.get(variant)
    result = s.recommender.recommend(query, policy, own.ranker if own is not None else None)
    ranker = None if not POLICIES[policy].ranked else own.name if own is not None else CHAMPION
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
        "policy": policy,
        "ranker": ranker,
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
            "policy": policy,
            "ranker": ranker,
            "items": [{k: i[k] for k in ("item_id", "position", "score", "source")} for i in items],
            "degraded_parts": result.degraded_parts,
            "features": result.features,
        }
    )
    s.metrics.stage_seconds.labels("impression").observe(time.perf_counter() - t0)
    response = jsonify(body)
    response.headers["X-Request-Id"] = request_id
    return response
