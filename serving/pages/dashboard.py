"""The operator dashboard (``/dashboard``) and its figures (``GET /dashboard/data``).

The page polls ``/dashboard/data`` every few seconds; each call takes a reading (at most one a
second per worker, shared by every viewer) and answers the figures over the readings this worker
kept (the last ``HISTORY`` of them, for the charts):

* events in per second (the events topic's growth), the speed layer's consumer lag and the
  dead letters (:func:`lambdarec.monitoring.operations.kafka_figures`);
* feature freshness p50/p99 (the feature pusher's heartbeat: a live event's time to its session
  row in the online store);
* serving latency p50/p99 and the degraded rate of ``/recommend`` over the last minute, from this
  worker's Prometheus histogram and counters (:mod:`serving.metrics`; the whole life of the worker
  when the minute saw no request);
* the champion's version and offline metrics (MLflow) and the last runs of each DAG (Airflow's
  REST API), read at most every ``SLOW_EVERY_S``: a source that does not answer is shown as a
  one-line note, the rest of the page stands.

Under gunicorn each worker keeps its own readings and serving figures (like ``/metrics``).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from flask import Blueprint, current_app, jsonify, render_template, request

from serving.access import EXTENSION as ACCESS
from serving.metrics import BUCKETS
from serving.pages.params import int_param, query_params
from serving.state import state

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from flask.typing import ResponseReturnValue

    from lambdarec.config import Settings
    from serving.metrics import Metrics

bp = Blueprint("dashboard", __name__)

#: Readings kept per worker (one a second at most: 10 minutes while someone watches).
HISTORY = 600
#: Readings closer together than this share one (many viewers cost one reading a second).
MIN_READING_S = 1.0
#: Serving latency and the degraded rate are taken over this window.
SERVING_WINDOW_S = 60.0
#: Events in per second are taken over this window (the newest readings).
EVENTS_WINDOW_S = 10.0
#: MLflow and Airflow are asked at most this often.
SLOW_EVERY_S = 15.0
#: How often the page polls (seconds), given to it by the template.
REFRESH_S = 2
ENDPOINT = "/recommend"


@dataclass
class Reading:
    t: float
    kafka: dict[str, Any]
    pusher: dict[str, Any]
    #: Cumulative /recommend counts per latency bucket (``BUCKETS`` then +Inf), degraded answers.
    buckets: list[float]
    degraded: float


@dataclass
class Readings:
    """The readings of one app, and the slow sources' last answers."""

    history: deque[Reading] = field(default_factory=lambda: deque(maxlen=HISTORY))
    slow: dict[str, Any] = field(default_factory=dict)
    slow_at: float = -float("inf")
    lock: threading.Lock = field(default_factory=threading.Lock)


def _guarded(name: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """``fn()``'s figures with ``ok``; a source that does not answer gives its one-line note."""
    from lambdarec.monitoring.operations import Unavailable

    try:
        return {"ok": True, **fn()}
    except Unavailable as exc:
        return {"ok": False, "note": str(exc)}
    except Exception as exc:  # noqa: BLE001 - one source must never take the page down
        current_app.logger.warning("dashboard: %s failed: %s", name, exc)
        return {"ok": False, "note": f"{name}: {type(exc).__name__}: {exc}"[:300]}


def serving_counts(metrics: Metrics) -> tuple[list[float], float]:
    """/recommend's cumulative bucket counts (``BUCKETS`` then +Inf) and its degraded answers."""
    registry = metrics.registry
    counts = [
        registry.get_sample_value(
            "lambdarec_serving_request_seconds_bucket", {"endpoint": ENDPOINT, "le": le}
        )
        or 0.0
        for le in [*(repr(float(b)) for b in BUCKETS), "+Inf"]
    ]
    return counts, registry.get_sample_value("lambdarec_serving_degraded_total") or 0.0


def quantile(q: float, cumulative: Sequence[float], bounds: Sequence[float] = BUCKETS) -> float:
    """The ``q`` quantile (seconds) of a histogram's cumulative bucket counts (``bounds`` then
    +Inf), interpolated linearly inside its bucket as Prometheus' ``histogram_quantile`` does;
    a quantile in the +Inf bucket is the largest finite bound."""
    total = cumulative[-1]
    if total <= 0:
        raise ValueError("no observations")
    rank = q * total
    below, lower = 0.0, 0.0
    for bound, count in zip(bounds, cumulative, strict=False):
        if count >= rank:
            inside = count - below
            return lower + (bound - lower) * ((rank - below) / inside if inside else 1.0)
        below, lower = count, bound
    return float(bounds[-1])


def _before(history: Sequence[Reading], now: float, window_s: float) -> Reading | None:
    """The newest reading at least ``window_s`` old, else the oldest (None with one reading)."""
    if len(history) < 2:
        return None
    older = [r for r in history if r.t <= now - window_s]
    return older[-1] if older else history[0]


def serving_figures(history: Sequence[Reading]) -> dict[str, Any]:
    """Latency p50/p99 (ms) and the degraded rate of /recommend over the last minute (the
    worker's whole life when the minute saw none)."""
    last = history[-1]
    base = _before(history, last.t, SERVING_WINDOW_S)
    window: float | None = None
    counts, degraded = last.buckets, last.degraded
    if base is not None and last.buckets[-1] > base.buckets[-1]:
        counts = [a - b for a, b in zip(last.buckets, base.buckets, strict=True)]
        degraded = last.degraded - base.degraded
        window = round(last.t - base.t, 1)
    requests = counts[-1]
    out: dict[str, Any] = {"requests": int(requests), "window_s": window}
    if requests > 0:
        out["p50_ms"] = round(quantile(0.5, counts) * 1000, 2)
        out["p99_ms"] = round(quantile(0.99, counts) * 1000, 2)
        out["degraded_rate"] = round(degraded / requests, 4)
    return out


def events_rate(history: Sequence[Reading]) -> float | None:
    """Events produced to the events topic per second over the newest readings."""
    last = history[-1]
    base = _before(history, last.t, EVENTS_WINDOW_S)
    if base is None or "events_offset" not in last.kafka or "events_offset" not in base.kafka:
        return None
    return round((last.kafka["events_offset"] - base.kafka["events_offset"]) / (last.t - base.t), 2)


def _series(history: Sequence[Reading], points: int) -> dict[str, list[Any]]:
    """Per reading (the newest ``points``): events in per second since the previous one, the
    consumer lag, /recommend's p99 since the previous one and the freshness p99."""
    rows: dict[str, list[Any]] = {
        "t": [],
        "events_per_s": [],
        "lag": [],
        "p99_ms": [],
        "fresh_p99_ms": [],
    }
    readings = list(history)[-(points + 1) :]
    for prev, cur in zip(readings, readings[1:], strict=False):
        rows["t"].append(round(cur.t, 1))
        a, b = prev.kafka.get("events_offset"), cur.kafka.get("events_offset")
        rows["events_per_s"].append(
            None if a is None or b is None else round((b - a) / (cur.t - prev.t), 2)
        )
        rows["lag"].append(cur.kafka.get("lag"))
        delta = [x - y for x, y in zip(cur.buckets, prev.buckets, strict=True)]
        rows["p99_ms"].append(round(quantile(0.99, delta) * 1000, 2) if delta[-1] > 0 else None)
        rows["fresh_p99_ms"].append(cur.pusher.get("fresh_ms_p99"))
    return rows


def airflow_password(settings: Settings) -> str | None:
    """``LAMBDAREC_AIRFLOW_PASSWORD``, else the password the local platform's Airflow generated."""
    if settings.airflow_password.get_secret_value():
        return settings.airflow_password.get_secret_value()
    from lambdarec.platform.airflow import airflow_password as generated

    return generated(settings, settings.airflow_username)


def _slow_sources(settings: Settings) -> dict[str, Any]:
    from lambdarec.monitoring.operations import champion_figures, dag_runs

    return {
        "champion": _guarded("MLflow", lambda: champion_figures(settings)),
        "dags": _guarded(
            "Airflow",
            lambda: {
                "url": settings.airflow_api_url,
                "dags": dag_runs(
                    settings.airflow_api_url,
                    settings.airflow_username,
                    airflow_password(settings),
                ),
            },
        ),
    }


def readings() -> Readings:
    app = current_app
    found = app.extensions.get("lambdarec.dashboard")
    if found is None:
        found = app.extensions.setdefault("lambdarec.dashboard", Readings())
    return found  # type: ignore[no-any-return]


def take_reading(now: float | None = None) -> Readings:
    """Add a reading unless the newest is under ``MIN_READING_S`` old; refresh the slow sources
    when they are ``SLOW_EVERY_S`` old."""
    from lambdarec.monitoring.operations import kafka_figures, pusher_figures

    s, kept = state(), readings()
    now = time.time() if now is None else now
    with kept.lock:
        if not kept.history or now - kept.history[-1].t >= MIN_READING_S:
            buckets, degraded = serving_counts(s.metrics)
            kept.history.append(
                Reading(
                    t=now,
                    kafka=_guarded("Kafka", lambda: kafka_figures(s.settings)),
                    pusher=_guarded("feature pusher", lambda: pusher_figures(s.settings)),
                    buckets=buckets,
                    degraded=degraded,
                )
            )
        if now - kept.slow_at >= SLOW_EVERY_S:
            kept.slow = _slow_sources(s.settings)
            kept.slow_at = now
    return kept


@bp.get("/dashboard")
def page() -> ResponseReturnValue:
    return render_template(
        "dashboard.html",
        refresh_s=REFRESH_S,
        keys_required=not current_app.extensions[ACCESS].open,
    )


@bp.get("/dashboard/data")
def data() -> ResponseReturnValue:
    access = current_app.extensions[ACCESS]
    if not access.open:
        access.check("dashboard")
    params = query_params(request.args.to_dict(flat=False), ("points",))
    points = int_param(params, "points", 120, 1, HISTORY - 1)
    s, kept = state(), take_reading()
    with kept.lock:
        history = list(kept.history)
        slow = dict(kept.slow)
    last = history[-1]
    models = s.recommender.models
    return jsonify(
        {
            "at": datetime.fromtimestamp(last.t, UTC).isoformat(timespec="seconds"),
            "events": {**last.kafka, "per_s": events_rate(history)},
            "freshness": last.pusher,
            "serving": {
                **serving_figures(history),
                "model_version": models.version,
                "variants": [{"name": n, "policy": s.variants.policy(n)} for n in s.variants.names],
            },
            **slow,
            "history": _series(history, points),
        }
    )
