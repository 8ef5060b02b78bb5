"""Prometheus metrics of one app instance (its own registry, so tests can build many apps).

Under gunicorn each worker has its own registry: ``/metrics`` shows the worker that answered.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

if TYPE_CHECKING:
    from collections.abc import Iterator

    from prometheus_client.core import Metric

    from serving.purchases import PurchaseMemory

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
        self.degraded = Counter(
            "lambdarec_serving_degraded_total",
            "/recommend answers served degraded (one or more parts fell back).",
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
        self.rate_limited = Counter(
            "lambdarec_serving_rate_limited_total",
            "Requests refused with 429 (over a key's or client IP's rate, in this worker).",
            registry=r,
        )
        self.session_conflicts = Counter(
            "lambdarec_serving_session_conflicts_total",
            "Requests refused with 409 (a session id already bound to another user).",
            registry=r,
        )
        self._purchases: PurchaseMemory | None = None

    def watch_purchases(self, memory: PurchaseMemory) -> None:
        """Expose ``memory``'s size and evictions, read at each scrape (one memory per app)."""
        if self._purchases is None:
            self.registry.register(_PurchaseCollector(self))
        self._purchases = memory


class _PurchaseCollector:
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        memory = self.metrics._purchases  # noqa: SLF001 - the collector is part of Metrics
        if memory is None:
            return
        yield GaugeMetricFamily(
            "lambdarec_serving_purchase_memory_bytes",
            "Estimated bytes of this worker's purchase memory (users' recent purchases).",
            value=memory.bytes,
        )
        yield CounterMetricFamily(
            "lambdarec_serving_purchase_memory_evictions",
            "Users forgotten by this worker's purchase memory to stay within its byte budget.",
            value=memory.evictions,
        )
