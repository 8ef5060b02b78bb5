"""The pages a person opens in a browser: the storefront (``/shop``) and the operator dashboard
(``/dashboard``), plain HTML, CSS and JavaScript served from this package (no CDN: they work
offline).

Neither page holds any authority of its own. The storefront's script calls the public API
(``/recommend``, ``/events``) exactly as any client does, on the same origin, with the API key the
person gives it when the API wants one: the server never hands a key to the page and forwards
nothing on its behalf, so the page opens no way around the keys, scopes and rate limits of
:mod:`serving.access`. The dashboard's figures (``/dashboard/data``) need a key with the
``dashboard`` scope when keys are configured; without keys (the local platform) they are open,
like ``/metrics``.
"""

from __future__ import annotations

from flask import Blueprint

from serving.pages import dashboard, shop

bp = Blueprint(
    "pages",
    __name__,
    template_folder="templates",
    static_folder="static",
    static_url_path="/pages/static",
)
bp.register_blueprint(shop.bp)
bp.register_blueprint(dashboard.bp)

__all__ = ["bp"]
