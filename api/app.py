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
import json
import os
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi_offline import FastAPIOffline
from prometheus_client import CollectorRegistry
from pydantic import BaseModel

from alerting.commands import CommandStore
from alerting.database import Database
from alerting.registry import SiteRegistry
from alerting.store import Store
from api import admin, alerts, commands, lookup
from api import report as report_routes
from api import stations as station_routes
from api.auth import TokenCache
from api.control import Control
from api.deps import AlertStoreDep, Dispatcher, InfluxDep, Services, ServicesDep
from api.influx import InfluxReader
from api.limits import FailedAuth
from api.metrics import ApiMetrics, MetricsMiddleware, multiprocess
from api.metrics import serve as serve_metrics
from api.rooms import RoomHistory
from contract.config import ApiConfig, load_api_config
from contract.errors import (
    Conflict,
    DatabaseUnavailable,
    Forbidden,
    InvalidInput,
    NotFound,
    QueryRejected,
)
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


# the contract's refusals as HTTP answers; any other InvalidInput (an UnknownReference, a value the
# store cannot hold) is the request's fault: 422
STATUS: dict[type[InvalidInput], int] = {NotFound: 404, Conflict: 409, Forbidden: 403}


def status_of(exc: InvalidInput) -> int:
    return next((STATUS[c] for c in type(exc).__mro__ if c in STATUS), 422)


_SHOWN = 5  # problems named in one answer; the rest counted


def _got(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def validation_detail(errors: Sequence[Any]) -> str:
    """FastAPI's validation errors as the one ``detail`` string every other error is: each
    problem's place (``query.limit``, ``body.note``, ``path.alert_id``) and what was expected,
    with what came; e.g. ``query.limit: expected a valid integer, unable to parse string as an
    integer (got "ten")``."""
    parts = []
    for e in errors:
        loc = [str(p) for p in e.get("loc", ())]
        kind, msg = e.get("type", ""), str(e.get("msg", ""))
        if kind == "json_invalid":
            why = str((e.get("ctx") or {}).get("error") or "")
            if len(loc) > 1:  # where the parser stopped
                why = f"{why} at position {loc[1]}".strip()
            parts.append(f"{loc[0] if loc else 'body'}: not valid JSON" + (f" ({why})" if why else ""))
            continue
        if kind == "missing":
            parts.append(f"{'.'.join(loc)}: required")
            continue
        said = ("unknown field" if kind == "extra_forbidden"
                else "expected " + msg.removeprefix("Input should be ") if msg.startswith("Input should be ")
                else msg.removeprefix("Value error, "))
        parts.append(f"{'.'.join(loc)}: {said}" + (f" (got {_got(e['input'])})" if "input" in e else ""))
    more = len(parts) - _SHOWN
    return "; ".join(parts[:_SHOWN]) + (f"; and {more} more" if more > 0 else "")


def _plain_validation_errors(app: FastAPI) -> None:
    """The OpenAPI document's 422 says what the API answers: ``{"detail": "..."}``."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schemas = generate().get("components", {}).get("schemas", {})
            if "HTTPValidationError" in schemas:
                schemas["HTTPValidationError"] = {
                    "title": "HTTPValidationError", "type": "object", "required": ["detail"],
                    "properties": {"detail": {"title": "Detail", "type": "string", "description": (
                        "each problem's place (query.limit, body.note, path.alert_id) and what was "
                        "expected, with what came; several separated by '; '")}}}
                schemas.pop("ValidationError", None)
        return app.openapi_schema or generate()

    app.openapi = openapi  # type: ignore[method-assign]


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
        influx = InfluxReader(settings.influx)
        db = await asyncio.to_thread(Database(settings.store).open)  # one engine for every part
        registry, command_store = SiteRegistry(db), CommandStore(db.engine)
        # remote commands: the gateways' status and the sender
        control = Control(settings.control, command_store) if settings.control is not None else None
        s = app.state.services = Services(
            db=db, store=Store(db), registry=registry, commands=command_store, influx=influx,
            rooms=RoomHistory(influx, incomplete=metrics.history_incomplete.inc if metrics else None,
                              asked=metrics.history_influxdb.inc if metrics else None),
            tokens=TokenCache(registry), failed_auth=FailedAuth(),
            report=report_routes.load(settings), control=control)
        control_task = asyncio.create_task(control.run()) if control is not None else None
        # what start-up built lives as long as the process: keep it out of the collector's
        # generations so a full collection walks only per-request garbage
        gc.freeze()
        yield
        if control_task is not None:
            control_task.cancel()
            await asyncio.gather(control_task, return_exceptions=True)
        await s.influx.close()
        s.db.close()
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

    async def _components(influx: InfluxReader, db: Database) -> Health:
        ok_influx = await influx.ping()
        try:
            await asyncio.to_thread(db.ping)
            ok_store = True
        except Exception:  # any failure of the store is "not ready", named in the answer
            ok_store = False
        return Health(status="ok" if ok_influx and ok_store else "degraded", influxdb=ok_influx,
                      store=ok_store)

    # The contract's errors, mapped once (STYLE.md example 8): the stores raise them, routes let
    # them through. An outage names the store that is away and why, so an operator reading a 503
    # knows where to look; the process keeps serving what does not need it.
    @app.exception_handler(DatabaseUnavailable)
    async def _db_down(_r: Request, exc: DatabaseUnavailable) -> JSONResponse:
        headers = {"Retry-After": str(max(1, round(exc.retry_after)))} if exc.retry_after else None
        return JSONResponse({"detail": f"{exc.store} unavailable: {exc}"}, status_code=503, headers=headers)

    @app.exception_handler(QueryRejected)
    async def _query_rejected(_r: Request, exc: QueryRejected) -> JSONResponse:
        return JSONResponse({"detail": f"the time-series store refused the query: {exc}"}, status_code=422)

    @app.exception_handler(InvalidInput)
    async def _refused(_r: Request, exc: InvalidInput) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=status_of(exc))

    # a request FastAPI could not read (a wrong type, a missing or unknown field, not JSON): one
    # detail string like every answer above, not FastAPI's list of loc/msg/type objects
    @app.exception_handler(RequestValidationError)
    async def _unreadable(_r: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": validation_detail(exc.errors())}, status_code=422)

    _plain_validation_errors(app)

    @app.get("/health", response_model=Health, summary="Liveness, with the state of each dependency")
    async def health(s: ServicesDep) -> Health:
        return await _components(s.influx, s.db)

    @app.get("/ready", response_model=Health, summary="503 unless the store and InfluxDB both answer")
    async def ready(s: ServicesDep) -> Health:
        h = await _components(s.influx, s.db)
        if h.status != "ok":
            down = [n for n, ok in (("InfluxDB", h.influxdb), ("alert store", h.store)) if not ok]
            raise HTTPException(503, f"not ready: {' and '.join(down)} not answering")
        return h

    @app.get("/v1/stations", response_model=StationList)
    async def stations(influx: InfluxDep, store: AlertStoreDep, _p: Dispatcher) -> StationList:
        latest = await influx.query(f'SELECT last(*) FROM "{MEASUREMENT_STATION}" GROUP BY "station"')
        status = await influx.query(
            f'SELECT last("state") AS state FROM "{MEASUREMENT_STATION_STATUS}" GROUP BY "station"')
        newest = await influx.query(
            f'SELECT * FROM "{MEASUREMENT_STATION}" GROUP BY "station" ORDER BY time DESC LIMIT 1')
        state = {s["tags"]["station"]: s["values"][0][1] for s in status if s.get("values")}
        state |= dict.fromkeys(await asyncio.to_thread(store.latest.gateway_offline), "offline")
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
