"""Prometheus metrics of one app instance (its own registry, so tests can build many apps).

Under gunicorn each worker has its own registry: ``/metrics`` shows the worker that answered.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Histogram

#: Seconds; dense below 20 ms, where the serving target lives.
BUCKETS = (
    0.0005,
    0.001,
    0.002,
    0.003,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.02,
    0.03,
    0.05,
    0.075,
    0.1,
    0.2,
    0.5,
    1.0,
    2.5,
)


@dataclass
class Metrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.request_seconds = Histogram(
            "lambdarec_serving_request_seconds",
            "Request latency by endpoint.",
            ["endpoint"],
            buckets=BUCKETS,
            registry=r,
        )
        self.stage_seconds = Histogram(
            "lambdarec_serving_stage_seconds",
            "Latency of each /recommend stage (features, candidates, filter, rank, rules).",
            ["stage"],
            buckets=BUCKETS,
            registry=r,
        )
        self.requests = Counter(
            "lambdarec_serving_requests_total",
            "Responses by endpoint and status.",
            ["endpoint", "status"],
            registry=r,
        )
        self.fallbacks = Counter(
            "lambdarec_serving_fallbacks_total",
            "Recommendations served degraded, by the part that failed.",
            ["part"],
            registry=r,
        )
        self.errors = Counter(
            "lambdarec_serving_errors_total",
            "Unexpected errors (answered 500).",
            ["endpoint"],
            registry=r,
        )
        self.events = Counter(
            "lambdarec_serving_events_total",
            "Events received by outcome.",
            ["outcome"],
            registry=r,
        )
        self.impressions = Counter(
            "lambdarec_serving_impressions_total",
            "Impression records by outcome.",
            ["outcome"],
            registry=r,
        )
