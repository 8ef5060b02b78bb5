"""Liveness, readiness and metrics."""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING

from flask import Blueprint, Response, jsonify
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from serving.apidoc import Response as Described
from serving.apidoc import documented
from serving.schemas import Health, Readiness
from serving.state import state

if TYPE_CHECKING:
    from flask.typing import ResponseReturnValue

bp = Blueprint("health", __name__)

#: Readiness is probed at most this often; a load balancer polling /ready costs nothing.
READY_CACHE_S = 2.0
_ready_lock = threading.Lock()
_ready_cache: dict[int, tuple[float, dict[str, str]]] = {}


@bp.get("/health")
@documented(resp=Described(HTTP_200=(Health, "Alive.")))
def health() -> ResponseReturnValue:
    """Liveness: the process answers."""
    return jsonify({"status": "ok"})


def _probe_all() -> dict[str, str]:
    s = state()
    checks = s.recommender.readiness()
    try:
        s.events.ping()
        checks["kafka"] = "ok"
    except Exception as exc:  # noqa: BLE001 - any failure means not ready
        checks["kafka"] = f"{type(exc).__name__}: {exc}"[:200]
    return checks


@bp.get("/ready")
@documented(
    resp=Described(
        HTTP_200=(Readiness, "Every dependency answers."),
        HTTP_503=(Readiness, "Which dependency is down and why."),
    )
)
def ready() -> ResponseReturnValue:
    """Readiness: Kafka, the online store and the vector index (probed at most every 2 s)."""
    key = id(state())
    now = time.monotonic()
    with _ready_lock:
        hit = _ready_cache.get(key)
    if hit is None or now - hit[0] > READY_CACHE_S:
        hit = (now, _probe_all())
        with _ready_lock:
            _ready_cache[key] = hit
    checks = hit[1]
    down = sorted(name for name, status in checks.items() if status != "ok")
    body = {"ready": not down, "down": down, "checks": checks}
    return jsonify(body), (503 if down else 200)


@bp.get("/metrics")
@documented(resp=Described(HTTP_200=(None, "Prometheus text exposition format.")))
def metrics() -> ResponseReturnValue:
    """Prometheus metrics of this worker."""
    return Response(generate_latest(state().metrics.registry), mimetype=CONTENT_TYPE_LATEST)
