"""/v1/stations/{station}: one station's latest values and open alerts, and the history of any
point over a time range, downsampled to at most ``max_points`` buckets by InfluxDB."""

from __future__ import annotations

import asyncio
import math
import time
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Query
from pydantic import BaseModel, Field

from api.alerts import AlertPublic
from api.deps import AlertStoreDep, Dispatcher, InfluxDep, RegistryDep
from contract.errors import QueryRejected
from contract.influx import (
    MEASUREMENT_BUILDING,
    MEASUREMENT_HOUSEHOLD,
    MEASUREMENT_STATION,
    MEASUREMENT_STATION_STATUS,
)
from contract.points import QUALITY_SUFFIX, Kind, Level, check_name
from contract.topics import Ident

router = APIRouter(prefix="/v1/stations", tags=["stations"])
MIN_BUCKET_S = 10
MAX_RANGE_MS = 400 * 86_400_000
_NEEDS = {Level.STATION: "neither building nor household", Level.BUILDING: "a building",
          Level.HOUSEHOLD: "a building and a household"}


class StationDetail(BaseModel):
    station: str
    state: str | None
    last_seen: int | None
    values: dict[str, float | bool | str]
    alerts: list[AlertPublic]


class BuildingState(BaseModel):
    building: str
    address: str | None = Field(description="from the asset import")
    last_seen: int | None
    values: dict[str, float | bool | str]


class BuildingList(BaseModel):
    data: list[BuildingState]
    count: int


class History(BaseModel):
    point: str
    station: str
    building: str | None
    household: str | None
    bucket_s: int = Field(description="each value is the mean (numbers) or last value of a bucket")
    values: list[tuple[int, float | bool | str]]


@router.get("/{station}", response_model=StationDetail, summary="One station's latest values and alerts")
async def station(influx: InfluxDep, store: AlertStoreDep, station: Annotated[Ident, Path()],
                  _p: Dispatcher) -> StationDetail:
    bind: dict[str, str | int | float] = {"station": station}
    last, status, newest = await asyncio.gather(
        influx.query(f'SELECT last(*) FROM "{MEASUREMENT_STATION}" WHERE "station" = $station', bind),
        influx.query(f'SELECT last("state") AS state FROM "{MEASUREMENT_STATION_STATUS}" '
                     'WHERE "station" = $station', bind),
        influx.query(f'SELECT * FROM "{MEASUREMENT_STATION}" WHERE "station" = $station '
                     "ORDER BY time DESC LIMIT 1", bind))
    if not last:
        raise HTTPException(404, f"no data from station {station!r}")
    row = dict(zip(last[0]["columns"], last[0]["values"][0], strict=True))
    values = {k.removeprefix("last_"): v for k, v in row.items()
              if k.startswith("last_") and v is not None and not k.endswith(QUALITY_SUFFIX)}
    page = await asyncio.to_thread(store.alerts, station=station, open_only=True, limit=500)
    gateway_down = station in await asyncio.to_thread(store.latest.gateway_offline)
    return StationDetail(
        station=station, state="offline" if gateway_down else status[0]["values"][0][1] if status else None,
        last_seen=newest[0]["values"][0][0] if newest else None, values=values,
        alerts=[AlertPublic.model_validate(a) for a in page.rows])


@router.get("/{station}/buildings", response_model=BuildingList,
            summary="A station's buildings: address and latest entrance values")
async def buildings(influx: InfluxDep, registry: RegistryDep, station: Annotated[Ident, Path()],
                    _p: Dispatcher) -> BuildingList:
    series, addresses = await asyncio.gather(
        influx.query(f'SELECT last(*) FROM "{MEASUREMENT_BUILDING}" WHERE "station" = $station '
                               'GROUP BY "building"', {"station": station}),
        asyncio.to_thread(registry.building_addresses, station))
    out: dict[str, BuildingState] = {
        b: BuildingState(building=b, address=a, last_seen=None, values={}) for b, a in addresses.items()}
    for s in series:
        b = s["tags"]["building"]
        row = dict(zip(s["columns"], s["values"][0], strict=True))
        values = {k.removeprefix("last_"): v for k, v in row.items()
                  if k.startswith("last_") and v is not None and not k.endswith(QUALITY_SUFFIX)}
        out[b] = BuildingState(building=b, address=addresses.get(b), last_seen=row.get("time"),
                               values=values)
    data = [out[b] for b in sorted(out)]
    return BuildingList(data=data, count=len(data))


@router.get("/{station}/history", response_model=History, summary="A point over a time range, downsampled")
async def history(
    influx: InfluxDep, station: Annotated[Ident, Path()], _p: Dispatcher,
    point: Annotated[str, Query(min_length=1, max_length=63, description="canonical or x_ point name")],
    building: Annotated[Ident | None, Query()] = None,
    household: Annotated[Ident | None, Query()] = None,
    start: Annotated[int | None, Query(ge=0, le=2**47, description="ms; default 24 h before end")] = None,
    end: Annotated[int | None, Query(ge=0, le=2**47, description="ms; default now")] = None,
    max_points: Annotated[int, Query(ge=10, le=5000)] = 500,
) -> History:
    try:
        d = check_name(point)  # a name that passes is safe as a quoted InfluxQL identifier
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from None
    if household is not None and building is None:
        raise HTTPException(422, "a household needs its building")
    level = Level.HOUSEHOLD if household else Level.BUILDING if building else Level.STATION
    if d is not None and d.level is not level:
        raise HTTPException(422, f"{point} is a {d.level} point: give {_NEEDS[d.level]}")
    end_ms = end if end is not None else int(time.time() * 1000)
    start_ms = start if start is not None else end_ms - 86_400_000
    if not 0 < end_ms - start_ms <= MAX_RANGE_MS:
        raise HTTPException(422, "need start < end, at most 400 days apart")
    bucket_s = max(MIN_BUCKET_S, math.ceil((end_ms - start_ms) / 1000 / max_points))
    measurement = {Level.STATION: MEASUREMENT_STATION, Level.BUILDING: MEASUREMENT_BUILDING,
                   Level.HOUSEHOLD: MEASUREMENT_HOUSEHOLD}[level]
    agg = "mean" if d is None or d.kind is Kind.NUMBER else "last"
    where = '"station" = $station' + (' AND "building" = $building' if building else "") + (
        ' AND "household" = $household' if household else "")
    bind: dict[str, Any] = {"station": station, "start": start_ms * 1_000_000, "end": end_ms * 1_000_000}
    if building:
        bind["building"] = building
    if household:
        bind["household"] = household
    try:
        series = await influx.query(
            f'SELECT {agg}("{point}") FROM "{measurement}" WHERE {where} AND time >= $start AND time < $end '
            f"GROUP BY time({bucket_s}s) fill(none)", bind)
    except QueryRejected as exc:
        if agg == "mean" and "iterator type" in str(exc):  # a custom point that holds text or on/off
            raise HTTPException(422, f"{point} is not numeric, so its history cannot be averaged "
                                     f"(InfluxDB: {exc})") from None
        raise
    values = [(int(t), v) for t, v in (series[0]["values"] if series else []) if v is not None]
    return History(point=point, station=station, building=building, household=household,
                   bucket_s=bucket_s, values=values)
