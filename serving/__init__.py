"""The lambdarec serving app: ``create_app()`` builds it (``gunicorn 'serving:create_app()'``).

Blueprints: ``api.recommend`` (GET and POST /recommend), ``api.events`` (POST /events),
``api.health`` (/health, /ready, /metrics), ``api.docs`` (/openapi.json built from the views,
Swagger UI at /docs). /recommend and /events need an
API key with their scope when ``LAMBDAREC_API_KEYS`` is set, and are rate limited per key (per
client IP without keys) in each worker (:mod:`serving.access`). Every error is JSON
``{"error": {"field", "message"}}``; an unexpected one is logged with its traceback and answered
500 with the request id only, never the traceback.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import TYPE_CHECKING, Any

from flask import Flask, g, jsonify, request
from werkzeug.exceptions import HTTPException

from serving.validation import MAX_BODY_BYTES, RequestError

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from flask.typing import ResponseReturnValue

    from lambdarec.config import Settings
    from serving.ab import LiveVariants, Variants
    from serving.recommender import Recommender
    from serving.sinks import EventSink, ImpressionSink

log = logging.getLogger(__name__)

__all__ = ["create_app"]


def create_app(
    settings: Settings | None = None,
    recommender: Recommender | None = None,
    *,
    variants: Variants | LiveVariants | str | None = None,
    impressions: ImpressionSink | None = None,
    events: EventSink | None = None,
    load_model: bool = True,
    clock: Callable[[], float] | None = None,
) -> Flask:
    """The app for ``settings`` (default: the process settings).

    ``recommender`` defaults to :meth:`Recommender.from_settings` (lake snapshot, Feast, the
    vector index, the champion query tower loading in the background). ``variants`` is an A/B
    spec such as ``"control:90,b:10"`` (default: ``settings.ab_variants`` when the settings have
    it, else everyone in ``control``); a spec runs ``settings.ab_policies``, and the variants
    ``settings.ab_rankers`` lists are ranked by their own DeepFM, loaded here. ``clock`` is the
    rate limiter's (default: monotonic time).

    Raises RuntimeError when ``settings.require_api_keys`` is set and no key is configured, and
    a one-line ValueError when a variant's ranker cannot be loaded.
    """
    from lambdarec.config import get_settings
    from lambdarec.recommend.policies import POLICIES
    from serving import pages
    from serving.ab import DEFAULT_SALT, DEFAULT_VARIANTS, LiveVariants, Variants
    from serving.access import EXTENSION as ACCESS
    from serving.access import Access
    from serving.api import docs, health, recommend
    from serving.api import events as events_api
    from serving.metrics import Metrics
    from serving.recommender import Recommender
    from serving.sessions import SessionOwners
    from serving.sinks import EventSink, ImpressionSink
    from serving.state import EXTENSION, ServingState

    settings = settings or get_settings()
    metrics = recommender.metrics if recommender is not None and recommender.metrics else Metrics()
    access = Access(settings, metrics, clock=clock or time.monotonic)
    if access.open:
        if settings.require_api_keys:
            raise RuntimeError(
                "LAMBDAREC_REQUIRE_API_KEYS is true but LAMBDAREC_API_KEYS is empty; mint a key "
                "with `lambdarec api-key new --name NAME --scopes events,recommend` and set it"
            )
        log.warning(
            "the API is open: LAMBDAREC_API_KEYS is empty, so /events and /recommend take no "
            "key; in a deployment set it and LAMBDAREC_REQUIRE_API_KEYS=true"
        )
    if recommender is None:
        recommender = Recommender.from_settings(settings, metrics, load_model=load_model)
    elif recommender.metrics is None:
        recommender.metrics = metrics
    recommender.purchases.limit(settings.purchase_memory_bytes)
    metrics.watch_purchases(recommender.purchases)
    if not isinstance(variants, Variants | LiveVariants):
        variants = Variants.parse(
            variants or str(getattr(settings, "ab_variants", "") or DEFAULT_VARIANTS),
            salt=str(getattr(settings, "ab_salt", "") or DEFAULT_SALT),
            policies=str(getattr(settings, "ab_policies", "") or ""),
        )
    from serving.champion import load_variant_rankers

    rankers = load_variant_rankers(
        str(getattr(settings, "ab_rankers", "") or ""),
        variants.names,
        _champion_two_tower(settings),
        ranked=[n for n in variants.names if POLICIES[variants.policy(n)].ranked],
    )
    override = getattr(settings, "ab_override_path", None)
    if isinstance(variants, Variants) and override is not None:
        # The guardrail's switch: re-read when the file changes, no restart.
        variants = LiveVariants(variants, override)

    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.extensions[EXTENSION] = ServingState(
        settings=settings,
        recommender=recommender,
        metrics=metrics,
        variants=variants,
        impressions=impressions or ImpressionSink(settings, metrics),
        events=events or EventSink(settings, metrics),
        sessions=SessionOwners(settings.session_bind_max),
        rankers=rankers,
    )
    app.extensions[ACCESS] = access
    app.register_blueprint(recommend.bp)
    app.register_blueprint(events_api.bp)
    app.register_blueprint(health.bp)
    app.register_blueprint(pages.bp)
    app.register_blueprint(docs.bp)
    _install_errors(app, metrics)
    _install_timing(app, metrics)
    return app


def _champion_two_tower(settings: Settings) -> Path | None:
    """The pinned two-tower export, whose category vocabulary the variants' rankers use (no
    registry call at startup: without a pinned folder they place new items as unknown)."""
    from pathlib import Path

    pinned = str(getattr(settings, "serving_model_dir", "") or "")
    return Path(pinned) if pinned else None


def _error(field: str, message: str, status: int, **extra: Any) -> ResponseReturnValue:
    return jsonify({"error": {"field": field, "message": message, **extra}}), status


def _install_errors(app: Flask, metrics: Any) -> None:
    @app.errorhandler(RequestError)
    def request_error(exc: RequestError) -> ResponseReturnValue:
        return jsonify(exc.body()), exc.status, getattr(exc, "headers", {})

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> ResponseReturnValue:
        status = exc.code or 500
        message = {404: "no such endpoint; see /docs", 413: f"body above {MAX_BODY_BYTES} bytes"}
        return _error("$", message.get(status, exc.description or exc.name), status)

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> ResponseReturnValue:
        request_id = uuid.uuid4().hex
        log.exception(
            "unexpected error on %s %s (error id %s)", request.method, request.path, request_id
        )
        metrics.errors.labels(_endpoint()).inc()
        return _error(
            "$", "internal error; the server log has the details", 500, error_id=request_id
        )


def _endpoint() -> str:
    rule = request.url_rule
    return rule.rule if rule is not None else "unmatched"


def _install_timing(app: Flask, metrics: Any) -> None:
    @app.before_request
    def start() -> None:
        g.t0 = time.perf_counter()

    @app.after_request
    def stop(response: Any) -> Any:
        t0 = g.get("t0")
        endpoint = _endpoint()
        if t0 is not None:
            metrics.request_seconds.labels(endpoint).observe(time.perf_counter() - t0)
        metrics.requests.labels(endpoint, str(response.status_code)).inc()
        return response
