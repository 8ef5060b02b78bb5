"""The storefront (``/shop``): pick a shopper, browse a category, see the recommendations change.

The page (``templates/shop.html``, ``static/shop.js``) asks the public ``/recommend`` for its list
and posts every click to the public ``/events`` with the list's ``request_id`` and the item's
``position`` in the event's context (the event contract's fields), so its clicks take the path
of any client's: Kafka, the speed layer, the feature pusher, the online store, the next list.
Its own endpoints only describe the shop:

* ``GET /shop/catalog[?category=C&limit=N]``: the categories (largest first), a few shoppers (the
  most active users of the lake's newest day) and, with ``category``, its items, most popular
  first (the serving snapshot's popularity);
* ``GET /shop/status``: the model version serving answers with, the A/B variants, whether the
  API wants a key.
"""

from __future__ import annotations

import threading
from collections import Counter
from typing import TYPE_CHECKING, Any

from flask import Blueprint, current_app, jsonify, render_template, request

from serving.access import EXTENSION as ACCESS
from serving.pages.params import int_param, query_params
from serving.state import state
from serving.validation import RequestError

if TYPE_CHECKING:
    from flask.typing import ResponseReturnValue

    from lambdarec.config import Settings

bp = Blueprint("shop", __name__)

#: Shoppers offered in the picker: the most active users of the lake's newest day.
SHOPPERS = 30
#: Categories listed (the largest first) and items shown of one by default / at most.
CATEGORIES = 60
ITEMS_DEFAULT = 24
ITEMS_MAX = 100
MAX_CATEGORY_LEN = 200

_shoppers_lock = threading.Lock()
_shoppers: dict[str, list[str]] = {}


def shoppers(settings: Settings, n: int = SHOPPERS) -> list[str]:
    """The ``n`` most active users of the lake's newest day, read once per process (a day's
    ``user_id`` column; the picker needs a few real users, not the whole history)."""
    from lambdarec.data import lake

    key = str(settings.lake_dir)
    with _shoppers_lock:
        if key not in _shoppers:
            dates = lake.list_dates(settings.lake_dir)
            users: list[str] = []
            if dates:
                frame = lake.read_events(
                    settings.lake_dir, dates[-1], dates[-1], columns=["user_id"]
                )
                users = [str(u) for u in frame["user_id"].value_counts().index[:n]]
            _shoppers[key] = users
        return _shoppers[key]


@bp.get("/shop")
def page() -> ResponseReturnValue:
    return render_template("shop.html", keys_required=not current_app.extensions[ACCESS].open)


@bp.get("/shop/catalog")
def catalog() -> ResponseReturnValue:
    params = query_params(request.args.to_dict(flat=False), ("category", "limit"))
    limit = int_param(params, "limit", ITEMS_DEFAULT, 1, ITEMS_MAX)
    snapshot = state().recommender.snapshot
    sizes = Counter(c for c in snapshot.categories.values() if c)
    body: dict[str, Any] = {
        "categories": [{"name": c, "items": n} for c, n in sizes.most_common(CATEGORIES)],
        "shoppers": shoppers(state().settings),
    }
    category = params.get("category")
    if category is not None:
        if not category or len(category) > MAX_CATEGORY_LEN:
            raise RequestError("category", f"must be 1 to {MAX_CATEGORY_LEN} characters")
        if category not in sizes:
            raise RequestError(
                "category", "no such category in the catalog; pick one of `categories`", 404
            )
        popular = [i for i, _ in snapshot.popular if snapshot.categories.get(i) == category]
        rest = sorted(
            i for i, c in snapshot.categories.items() if c == category and i not in set(popular)
        )
        body["category"] = category
        body["items"] = [
            {"item_id": i, "category": category, "popular_rank": n if n < len(popular) else None}
            for n, i in enumerate([*popular, *rest][:limit])
        ]
    return jsonify(body)


@bp.get("/shop/status")
def status() -> ResponseReturnValue:
    query_params(request.args.to_dict(flat=False), ())
    s = state()
    models = s.recommender.models
    off: frozenset[str] = getattr(s.variants, "disabled", frozenset())
    return jsonify(
        {
            "model_version": models.version,
            "ranker": models.ranker is not None,
            "variants": [
                {"name": n, "policy": s.variants.policy(n), "switched_off": n in off}
                for n in s.variants.names
            ],
            "keys_required": not current_app.extensions[ACCESS].open,
        }
    )
