"""Prometheus metrics of the API: requests by route template, method and status, and their
latency, recorded by an ASGI middleware around the whole app (``metrics:`` in the API config,
off by default; docs/operations.md).

The route is the template FastAPI matched (``/v1/commands/{command_id}``), never the raw path:
one series per endpoint, not one per station or id. A request no route matched (a 404 for a
path the API does not have, the static files of /docs) counts under ``<unmatched>``.

Workers: with one process (``workers: 1``) the app serves ``metrics.port`` itself from a
thread. With several, each uvicorn worker is a process of its own that sees only its share of
the requests, so the API runs in prometheus_client's multiprocess mode: ``heatwatch api`` points
``PROMETHEUS_MULTIPROC_DIR`` at a fresh folder before it starts the workers, each worker's
counters live in memory-mapped files there, and the supervisor process serves ``metrics.port``,
summing every worker's files at each scrape (a restarted worker's counts are kept). One
endpoint per API, whatever the number of workers.

prometheus_client's counters take a lock per update (~1–2 µs): nothing beside a request's own
100 µs or more at 5–10k requests/s (LIMITS.md).
"""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.multiprocess import MultiProcessCollector

P = "heatwatch_api_"
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"  # prometheus_client's name for the folder
# seconds: a hotline lookup answers in ~1 ms, p99 11–21 ms at 64 connections (LIMITS.md); a
# report or a long history query takes seconds
LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
UNMATCHED = "<unmatched>"

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class ApiMetrics:
    """The API's series, in ``registry`` (one per app: tests build many apps in one process)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.requests = Counter(P + "requests", "HTTP requests answered, by route template, method "
                                "and status", ["route", "method", "status"], registry=registry)
        self.latency = Histogram(P + "request_seconds", "seconds from a request's arrival to the "
                                 "end of its answer, by route template", ["route"],
                                 buckets=LATENCY_BUCKETS_S, registry=registry)
        # the hotline's 24 h left out because InfluxDB was slower than the lookup waits, away, or
        # already answering api/rooms.py's max_running queries: InfluxDB holding the hotline back
        self.history_incomplete = Counter(P + "lookup_history_incomplete", "hotline lookups answered "
                                          "without the room's complete 24 h (InfluxDB slow or away)",
                                          registry=registry)
        # the alerter's 24 h of the room (alerting.latest.RoomDay, day_means) could not answer
        self.history_influxdb = Counter(P + "lookup_history_influxdb", "hotline lookups whose room's "
                                        "24 h was asked of InfluxDB (the alert store's is younger than "
                                        "a day, had a gap, or its row is not current)", registry=registry)


class MetricsMiddleware:
    """Pure ASGI (no BaseHTTPMiddleware: it would copy every streamed answer through a queue).
    Records after the answer has gone out; an exception no handler caught is a 500."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route = scope.get("route")  # set by the router on the scope it was given
            template = getattr(route, "path", None) or UNMATCHED
            m = self.metrics
            m.requests.labels(template, scope.get("method", ""), str(status)).inc()
            m.latency.labels(template).observe(time.perf_counter() - t0)


def multiprocess() -> bool:
    """True in a worker of a multi-process API (the supervisor serves the metrics)."""
    return bool(os.environ.get(MULTIPROC_ENV))


def serve(registry: CollectorRegistry, host: str, port: int) -> Any:
    """Serve ``registry`` on host:port from a daemon thread; return the server (``shutdown()``)."""
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return server


def serve_workers(folder: str, host: str, port: int) -> Any:
    """The supervisor's endpoint: every worker's series from their files in ``folder``."""
    registry = CollectorRegistry(auto_describe=False)
    MultiProcessCollector(registry, path=folder)  # type: ignore[no-untyped-call]
    return serve(registry, host, port)
