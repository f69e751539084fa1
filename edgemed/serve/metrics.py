"""Prometheus metrics of one service instance (its own registry, so that several apps
in one process, as in tests, never share counters)."""

from __future__ import annotations

import time
from typing import Any

from edgemed.result import STAGES

__all__ = ["Metrics", "MetricsMiddleware"]

_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    """Requests by route, status and error code; latency per route and per stage;
    queue depth, in-flight jobs, bodies arriving, micro-batch sizes; model and backend
    info."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "edgemed_requests",
            "HTTP requests answered, by route, status and error code",
            ["route", "status", "code"],
            registry=r,
        )
        self.latency = Histogram(
            "edgemed_request_seconds",
            "HTTP request latency",
            ["route"],
            buckets=_BUCKETS,
            registry=r,
        )
        self.stage = Histogram(
            "edgemed_stage_seconds",
            "Time per inference stage (queue wait, read, preprocess, infer, postprocess, total)",
            ["stage"],
            buckets=_BUCKETS,
            registry=r,
        )
        self.batch = Histogram(
            "edgemed_batch_inputs",
            "Inputs sharing one backend call (micro-batching)",
            buckets=(1, 2, 3, 4, 6, 8, 16, 32),
            registry=r,
        )
        self.queue_depth = Gauge("edgemed_queue_depth", "Jobs waiting for a worker", registry=r)
        self.in_flight = Gauge("edgemed_in_flight", "Jobs being run by a worker", registry=r)
        self.receiving = Gauge(
            "edgemed_receiving", "Admitted requests whose bodies are still arriving", registry=r
        )
        self.ready = Gauge("edgemed_ready", "1 when /readyz answers 200", registry=r)
        self.model = Info("edgemed_model", "The model and backend this service runs", registry=r)

    def bind(self, pool: Any) -> None:
        """Read the gauges from the worker pool when scraped."""
        self.queue_depth.set_function(lambda: pool.depth)
        self.in_flight.set_function(lambda: pool.in_flight)
        self.receiving.set_function(lambda: pool.receiving)

    def observe_stage(self, stage: str, seconds: float) -> None:
        self.stage.labels(stage).observe(seconds)

    async def observe_timings(self, timings_ms: dict[str, float]) -> None:
        """A result's stage times (``Result.timings``, ms). A coroutine: the route runs
        it as a background task once its answer is out, and Starlette would run a
        plain function in a thread."""
        for stage in STAGES:
            self.stage.labels(stage).observe(timings_ms[stage] / 1e3)

    def render(self) -> tuple[bytes, str]:
        """The text exposition and its content type."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class MetricsMiddleware:
    """Counts every answer by route template (never the raw path: ids and probes would
    explode the label set), status and error code, and times it."""

    def __init__(self, app: Any, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_status(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            code = scope.get("edgemed.error_code", "")
            self.metrics.requests.labels(route, str(status), code).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - start)
