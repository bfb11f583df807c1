"""Prometheus metrics of one app instance (own ``CollectorRegistry``, so several apps in one process don't collide).

Exposed at ``GET /metrics``:

- ``ctphase_http_requests_total{route, method, status}`` and ``ctphase_http_request_seconds{route, method}``
  (route templates, not raw paths, to bound cardinality);
- ``ctphase_series_read_total{outcome}`` (ok / error), ``ctphase_slices_decoded_total``;
- ``ctphase_predictions_total{source}`` (model / prior / error) and
  ``ctphase_series_predict_seconds`` (resolve + read + network, per series);
- ``ctphase_errors_total{kind}`` (the ``kind`` of :mod:`backend.errors` classes, or the exception type);
- ``ctphase_model_version_info{project, model_version}`` = 1 for the version last served per project.
"""

from __future__ import annotations

import threading

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["CONTENT_TYPE_LATEST", "ServiceMetrics"]

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class ServiceMetrics:
    """The metric families of one app, registered on a private registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "ctphase_http_requests",
            "HTTP requests by route template, method and status code",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "ctphase_http_request_seconds",
            "HTTP request latency by route template",
            ["route", "method"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.series_read = Counter(
            "ctphase_series_read", "Series headers read, by outcome", ["outcome"], registry=self.registry
        )
        self.slices_decoded = Counter(
            "ctphase_slices_decoded", "Slices decoded and classified by the network", registry=self.registry
        )
        self.predictions = Counter(
            "ctphase_predictions", "Task predictions answered, by source", ["source"], registry=self.registry
        )
        self.series_seconds = Histogram(
            "ctphase_series_predict_seconds",
            "Seconds per series from resolution to vote",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.errors = Counter("ctphase_errors", "Errors by kind", ["kind"], registry=self.registry)
        self.model_version = Gauge(
            "ctphase_model_version_info",
            "1 for the model version that served the latest prediction of a project",
            ["project", "model_version"],
            registry=self.registry,
        )
        self._served: dict[str, str] = {}
        self._lock = threading.Lock()

    def served(self, *, project: str, model_version: str) -> None:
        """Record that ``model_version`` serves ``project`` (the previous version's series is removed)."""
        with self._lock:
            previous = self._served.get(project)
            if previous == model_version:
                return
            if previous is not None:
                self.model_version.remove(project, previous)
            self.model_version.labels(project=project, model_version=model_version).set(1)
            self._served[project] = model_version

    def render(self) -> bytes:
        """The text exposition of every metric."""
        return generate_latest(self.registry)
