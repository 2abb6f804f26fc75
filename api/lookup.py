"""/v1/lookup — the hotline screen in one call — and /v1/assets/import.

A caller says "my flat is cold". The dispatcher types the household code or a few words of the
address; the answer is the household's room temperature now and over 24 h, its building's and
station's latest values and state, every open alert on gateway → station → building →
household, recent acknowledgements and notes, and a one-line verdict: a known fault (station
down, leak, cold building) or this household alone.
"""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Any, NamedTuple

from fastapi import APIRouter, HTTPException, Query, Request
from pydantic import BaseModel, Field

from alerting.assets import ImportProblems, decode, parse
from alerting.store import Store
from api.alerts import AlertPublic
from api.auth import Admin, Dispatcher
from api.influx import InfluxReader
from contract.influx import (
    MEASUREMENT_BUILDING,
    MEASUREMENT_HOUSEHOLD,
    MEASUREMENT_STATION,
    MEASUREMENT_STATION_STATUS,
)
from contract.points import QUALITY_SUFFIX

router = APIRouter(prefix="/v1", tags=["hotline"])
MAX_CSV_BYTES = 50 * 1024 * 1024
DAY_MS = 86_400_000


class HouseholdRef(BaseModel):
    code: str
    station: str
    building: str
    unit: str
    room: str
    address: str
    sensor: str | None


class Room(BaseModel):
    now: float | None = Field(description="latest room temperature, °C")
    at: int | None = Field(description="ms of that reading")
    last_24h: list[tuple[int, float]] = Field(description="30-minute means: (ms, °C)")


class Place(BaseModel):
    state: str | None = None
    last_seen: int | None = None
    values: dict[str, float | bool | str]


class Ack(BaseModel):
    alert_id: int
    ts: int
    kind: str
    actor: str | None
    note: str | None
    ticket: str | None


class Lookup(BaseModel):
    candidates: list[HouseholdRef] = Field(description="matches of the text; one match is answered in full")
    household: HouseholdRef | None = None
    verdict: str | None = None
    room: Room | None = None
    building: Place | None = None
    station: Place | None = None
    alerts: list[AlertPublic] = []
    acknowledgements: list[Ack] = []


class ImportResult(BaseModel):
    stations: int
    buildings: int
    households: int
    households_new: int


def _store(request: Request) -> Store:
    s: Store = request.app.state.store
    return s


def _ref(row: dict[str, Any]) -> HouseholdRef:
    return HouseholdRef(code=row["code"], station=row["station"], building=row["building"], unit=row["unit"],
                        room=row["room"], address=row["address"], sensor=row["sensor"])


def _last(series: list[dict[str, Any]]) -> tuple[int | None, dict[str, Any]]:
    if not series or not series[0].get("values"):
        return None, {}
    row = dict(zip(series[0]["columns"], series[0]["values"][0], strict=True))
    values = {k.removeprefix("last_"): v for k, v in row.items()
              if k.startswith("last_") and v is not None and not k.endswith(QUALITY_SUFFIX)}
    return row.get("time"), values


def _half_hour_means(raw: list[tuple[int, float]]) -> list[tuple[int, float]]:
    """30-minute means, clock-aligned (what GROUP BY time(30m) gives), from the raw readings."""
    buckets: dict[int, list[float]] = {}
    for t, v in raw:
        buckets.setdefault(t - t % 1_800_000, []).append(v)
    return [(t, round(sum(vs) / len(vs), 2)) for t, vs in sorted(buckets.items())]


def verdict(alerts: list[dict[str, Any]], household: str | None) -> str:
    """What the dispatcher tells the caller, from the open alerts on the chain."""
    firing = [a for a in alerts if a["state"] == "firing"]
    for rule, say in (("gateway_offline", "known fault: the station's gateway is offline"),
                      ("station_offline", "known fault: the station is offline"),
                      ("makeup_burst", "known fault: a burst at the station (make-up surging)"),
                      ("building_low", "known fault: the whole building is cold (supply or hydraulics)"),
                      ("makeup_rate", "known fault: the station is losing water (leak suspected)")):
        if any(a["rule"] == rule for a in firing):
            return say
    mine = [a for a in alerts if a["household"] == household and a["rule"] == "room_low"]
    if any(a["state"] == "firing" for a in mine):
        return "this household is cold (confirmed by its room sensor)"
    if mine:
        return "this household is cooling (low, not yet for long enough to alert)"
    return "no alert on this household, its building or station: a new case"


class _Chain(NamedTuple):
    """What the store knows about one household's chain, read in one worker-thread hop."""
    row: dict[str, Any]
    alerts: list[dict[str, Any]]
    acks: list[dict[str, Any]]


def _chain(store: Store, row: dict[str, Any] | None, now: int) -> _Chain | None:
    if row is None:
        return None
    alerts = store.chain_alerts(row["station"], row["building"], row["sensor"], row.get("gateway"))
    return _Chain(row, alerts, store.recent_acks([a["id"] for a in alerts], now - 7 * DAY_MS))


async def _full(influx: InfluxReader, chain: _Chain) -> Lookup:
    row, alerts, acks = chain
    st, b, sensor = row["station"], row["building"], row["sensor"]
    bind: dict[str, str | int | float] = {"station": st, "building": b}
    statements = [
        f'SELECT last(*) FROM "{MEASUREMENT_STATION}" WHERE "station" = $station',
        f'SELECT last("state") AS state FROM "{MEASUREMENT_STATION_STATUS}" WHERE "station" = $station',
        f'SELECT last(*) FROM "{MEASUREMENT_BUILDING}" WHERE "station" = $station AND "building" = $building']
    if sensor:
        bind["household"] = sensor
        statements.append(f'SELECT "room_temp" FROM "{MEASUREMENT_HOUSEHOLD}" WHERE "station" = $station '
                          'AND "building" = $building AND "household" = $household AND time > now() - 24h')
    results = await influx.query_many(statements, bind)  # one round trip for the whole screen
    seen, station_values = _last(results[0])
    status = results[1][0]["values"][0][1] if results[1] and results[1][0].get("values") else None
    b_seen, b_values = _last(results[2])
    room = None
    if sensor:
        raw = [(int(t), float(v)) for t, v in (results[3][0]["values"] if results[3] else [])
               if v is not None]
        room = Room(now=raw[-1][1] if raw else None, at=raw[-1][0] if raw else None,
                    last_24h=_half_hour_means(raw))
    return Lookup(
        candidates=[_ref(row)], household=_ref(row), verdict=verdict(alerts, sensor), room=room,
        building=Place(last_seen=b_seen, values=b_values),
        station=Place(state=status, last_seen=seen, values=station_values),
        alerts=[AlertPublic.model_validate(a) for a in alerts],
        acknowledgements=[Ack(alert_id=e["alert_id"], ts=e["ts"], kind=e["kind"], actor=e["actor"],
                              note=e["note"], ticket=e["ticket"]) for e in acks])


@router.get("/lookup", response_model=Lookup,
            summary="From a household code or address words to the whole picture")
async def lookup(
    request: Request, _p: Dispatcher,
    household: Annotated[str | None, Query(min_length=1, max_length=64, description="household code")] = None,
    q: Annotated[str | None, Query(min_length=1, max_length=200,
                                   description="address words in any order, e.g. '幸福里 3号楼 301'")] = None,
) -> Lookup:
    if (household is None) == (q is None):
        raise HTTPException(422, "give exactly one of household (a code) or q (address words)")
    store, now = _store(request), int(time.time() * 1000)
    if household is not None:
        chain = await asyncio.to_thread(lambda: _chain(store, store.household(household), now))
        if chain is None:
            raise HTTPException(404, f"no household with code {household!r}")
        return await _full(request.app.state.influx, chain)

    def find() -> tuple[list[dict[str, Any]], _Chain | None]:
        found = store.find_households(q or "", 20)
        return found, _chain(store, store.household(found[0]["code"]), now) if len(found) == 1 else None

    found, chain = await asyncio.to_thread(find)  # the store in one worker-thread hop
    if chain is not None:
        return await _full(request.app.state.influx, chain)
    return Lookup(candidates=[_ref(r) for r in found])


@router.post("/assets/import", response_model=ImportResult,
             summary="Stations, buildings and households from the company's CSV (all or nothing)",
             openapi_extra={"requestBody": {"content": {"text/csv": {"schema": {"type": "string"}}},
                                            "required": True}})
async def import_assets(request: Request, p: Admin) -> ImportResult:
    raw = await request.body()
    if len(raw) > MAX_CSV_BYTES:
        raise HTTPException(413, f"the file is larger than {MAX_CSV_BYTES // 1024 // 1024} MB")
    try:
        assets = parse(decode(raw))
    except ImportProblems as exc:
        raise HTTPException(422, {"message": "nothing was imported", "problems": exc.problems}) from None
    counts = await asyncio.to_thread(_store(request).import_assets, assets, actor=p.name,
                                     now=int(time.time() * 1000))
    return ImportResult(**counts)
