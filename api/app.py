"""FastAPI application for the dispatch hotline and operators (docs/api.md).

Health (no credential) and readiness; the hotline lookup (``api/lookup.py``); stations with their
latest values and history (``api/stations.py``); alerts, their history, acknowledgement, notes,
manual resolution and silences (``api/alerts.py``) on the alert store the alerter writes;
credentials and the audit trail (``api/admin.py``); remote building control (``api/commands.py``,
``api/control.py``, with a ``control:`` block). Every endpoint but /health and /ready needs
a bearer token; see ``api/auth.py`` for the roles.
"""

from __future__ import annotations

import asyncio
import gc
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from fastapi_offline import FastAPIOffline
from prometheus_client import CollectorRegistry
from pydantic import BaseModel

from alerting.commands import CommandStore
from alerting.store import Store
from api import admin, alerts, commands, lookup
from api import report as report_routes
from api import stations as station_routes
from api.auth import Dispatcher, TokenCache
from api.control import Control
from api.influx import InfluxReader
from api.limits import FailedAuth
from api.metrics import ApiMetrics, MetricsMiddleware, multiprocess
from api.metrics import serve as serve_metrics
from api.rooms import RoomHistory
from contract.config import ApiConfig, load_api_config
from contract.errors import DatabaseUnavailable, QueryRejected
from contract.influx import MEASUREMENT_STATION, MEASUREMENT_STATION_STATUS
from contract.points import QUALITY_SUFFIX


class Health(BaseModel):
    status: str  # "ok" when every dependency answers, else "degraded"
    influxdb: bool
    store: bool


class StationPublic(BaseModel):
    station: str
    state: str | None  # online / degraded / offline, from the gateway's status
    last_seen_ms: int | None
    values: dict[str, float | bool | str]


class StationList(BaseModel):
    data: list[StationPublic]
    count: int


def _reader(request: Request) -> InfluxReader:
    reader: InfluxReader = request.app.state.influx
    return reader


Reader = Annotated[InfluxReader, Depends(_reader)]


API_CONFIG_ENV = "HEATWATCH_API_CONFIG"


def app_from_env() -> FastAPI:
    """The app of one of several uvicorn workers (``workers:`` in the API config); the parent
    passes the config file's path in ``HEATWATCH_API_CONFIG``."""
    return create_app(load_api_config(os.environ[API_CONFIG_ENV]))


def create_app(settings: ApiConfig) -> FastAPI:
    metrics = ApiMetrics(CollectorRegistry(auto_describe=False)) if settings.metrics is not None else None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        metrics_server: Any = None
        if metrics is not None and settings.metrics is not None and not multiprocess():
            # one process: it serves its own; with several workers the supervisor does (api/metrics.py)
            metrics_server = serve_metrics(metrics.registry, settings.metrics.host, settings.metrics.port)
        app.state.influx = InfluxReader(settings.influx)
        app.state.rooms = RoomHistory(app.state.influx)  # the hotline's 24 h, with its cache
        app.state.store = await asyncio.to_thread(Store(settings.store).open)
        app.state.tokens = TokenCache(app.state.store)
        app.state.report = report_routes.load(settings)
        app.state.failed_auth = FailedAuth()
        app.state.commands = CommandStore(app.state.store.engine)
        control_task: asyncio.Task[None] | None = None
        if settings.control is not None:  # remote commands: the gateways' status and the sender
            app.state.control = Control(settings.control, app.state.commands)
            control_task = asyncio.create_task(app.state.control.run())
        # what start-up built lives as long as the process: keep it out of the collector's
        # generations so a full collection walks only per-request garbage
        gc.freeze()
        yield
        if control_task is not None:
            control_task.cancel()
            await asyncio.gather(control_task, return_exceptions=True)
        await app.state.influx.close()
        app.state.store.close()
        if metrics_server is not None:
            metrics_server.shutdown()
            metrics_server.server_close()

    # /docs (Swagger UI) and /redoc load their scripts, styles and icon from this process, not
    # a CDN: a control-room network often has no internet, and the page was blank there.
    # fastapi-offline bundles current Swagger UI 5 and Redoc 2 files and serves them through
    # FastAPI's own get_swagger_ui_html/get_redoc_html; no validator badge (it calls out).
    app = FastAPIOffline(title="heatwatch", version="0.1.0", lifespan=lifespan, static_url="/docs-files",
                         swagger_ui_parameters={"validatorUrl": None})
    if metrics is not None:
        app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.include_router(alerts.router)
    app.include_router(lookup.router)
    app.include_router(station_routes.router)
    app.include_router(admin.router)
    app.include_router(report_routes.router)
    app.include_router(commands.router)

    async def _components(influx: InfluxReader, store: Store) -> Health:
        ok_influx = await influx.ping()
        try:
            await asyncio.to_thread(store.ping)
            ok_store = True
        except Exception:  # any failure of the store is "not ready", named in the answer
            ok_store = False
        return Health(status="ok" if ok_influx and ok_store else "degraded", influxdb=ok_influx,
                      store=ok_store)

    @app.exception_handler(DatabaseUnavailable)
    async def _db_down(_r: Request, exc: DatabaseUnavailable) -> JSONResponse:
        return JSONResponse({"detail": f"time-series store unavailable: {exc}"}, status_code=503)

    @app.exception_handler(QueryRejected)
    async def _query_rejected(_r: Request, exc: QueryRejected) -> JSONResponse:
        return JSONResponse({"detail": f"the time-series store refused the query: {exc}"}, status_code=422)

    @app.get("/health", response_model=Health, summary="Liveness, with the state of each dependency")
    async def health(request: Request, influx: Reader) -> Health:
        return await _components(influx, request.app.state.store)

    @app.get("/ready", response_model=Health, summary="503 unless the store and InfluxDB both answer")
    async def ready(request: Request, influx: Reader) -> Health:
        h = await _components(influx, request.app.state.store)
        if h.status != "ok":
            down = [n for n, ok in (("InfluxDB", h.influxdb), ("alert store", h.store)) if not ok]
            raise HTTPException(503, f"not ready: {' and '.join(down)} not answering")
        return h

    @app.get("/v1/stations", response_model=StationList)
    async def stations(influx: Reader, _p: Dispatcher) -> StationList:
        latest = await influx.query(f'SELECT last(*) FROM "{MEASUREMENT_STATION}" GROUP BY "station"')
        status = await influx.query(
            f'SELECT last("state") AS state FROM "{MEASUREMENT_STATION_STATUS}" GROUP BY "station"')
        newest = await influx.query(
            f'SELECT * FROM "{MEASUREMENT_STATION}" GROUP BY "station" ORDER BY time DESC LIMIT 1')
        state = {s["tags"]["station"]: s["values"][0][1] for s in status if s.get("values")}
        seen = {s["tags"]["station"]: s["values"][0][0] for s in newest if s.get("values")}
        out: list[StationPublic] = []
        for s in latest:
            row = dict(zip(s["columns"], s["values"][0], strict=True))
            values: dict[str, Any] = {}
            for col, v in row.items():
                if col.startswith("last_") and v is not None and not col.endswith(QUALITY_SUFFIX):
                    values[col.removeprefix("last_")] = v
            st = s["tags"]["station"]
            out.append(StationPublic(station=st, state=state.get(st), last_seen_ms=seen.get(st),
                                     values=values))
        out.sort(key=lambda x: x.station)
        return StationList(data=out, count=len(out))

    return app
