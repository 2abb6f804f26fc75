"""FastAPI application: health, and stations with their latest values (first version)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from api.influx import InfluxReader
from contract.config import ApiConfig
from contract.errors import DatabaseUnavailable
from contract.influx import MEASUREMENT_STATION
from contract.points import QUALITY_SUFFIX


class Health(BaseModel):
    status: str
    influxdb: bool


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


def create_app(settings: ApiConfig) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.influx = InfluxReader(settings.influx)
        yield
        await app.state.influx.close()

    app = FastAPI(title="heatwatch", version="0.1.0", lifespan=lifespan)

    @app.exception_handler(DatabaseUnavailable)
    async def _db_down(_r: Request, exc: DatabaseUnavailable) -> JSONResponse:
        return JSONResponse({"detail": f"time-series store unavailable: {exc}"}, status_code=503)

    @app.get("/health", response_model=Health)
    async def health(influx: Reader) -> Health:
        ok = await influx.ping()
        if not ok:
            raise HTTPException(503, "InfluxDB does not answer")
        return Health(status="ok", influxdb=ok)

    @app.get("/v1/stations", response_model=StationList)
    async def stations(influx: Reader) -> StationList:
        latest = await influx.query(f'SELECT last(*) FROM "{MEASUREMENT_STATION}" GROUP BY "station"')
        status = await influx.query('SELECT last("state") AS state FROM "station_status" GROUP BY "station"')
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
