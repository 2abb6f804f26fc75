"""/v1/lookup — the hotline screen in one call — and /v1/assets/import.

A caller says "my flat is cold". The dispatcher types the household code or a few words of the
address; the answer is the household's room temperature now and over 24 h, its building's and
station's latest values and state, every open alert on gateway → station → building →
household, recent acknowledgements and notes, and a one-line verdict: a known fault (station
down, leak, cold building) or this household alone.

Cost per call: the store in one worker-thread hop (the household with its building's and
station's latest values and state, and its room's 24 h, from the alerter's ``latest`` table in
one query, then the chain's open alerts and their acknowledgements); InfluxDB only for a room
whose stored 24 h cannot answer (younger than a day, a gap, not current: ``api/rooms.py``).
Figures in docs/api.md.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Annotated, Any, NamedTuple

import orjson
from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from alerting.address import words
from alerting.assets import ImportProblems, decode, parse
from alerting.rows import AlertEvent, AlertRow, FoundHousehold, HouseholdNow
from alerting.store import Store
from api.alerts import AlertPublic, json_response
from api.deps import Admin, AlertStoreDep, Dispatcher, RegistryDep, RoomsDep
from api.rooms import RoomHistory

router = APIRouter(prefix="/v1", tags=["hotline"])
MAX_CSV_BYTES = 50 * 1024 * 1024
DAY_MS = 86_400_000


class HouseholdRef(BaseModel):
    model_config = ConfigDict(from_attributes=True)  # from alerting.rows.FoundHousehold
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
    last_24h_complete: bool = Field(default=True, description="false when InfluxDB was asked (the store's "
                                    "24 h of the room is younger than a day, had a gap, or is not current) "
                                    "and did not answer in time (or is down): last_24h is what the API "
                                    "had, possibly nothing")


class Place(BaseModel):
    state: str | None = Field(default=None, description="stations: online / degraded / offline from the "
                              "station's status; offline while its gateway is offline")
    last_seen: int | None = Field(default=None, description="ms: sample time of the newest reading with "
                                  "a value")
    values: dict[str, float | bool | str] = Field(description="the latest value of every point")


class Ack(BaseModel):
    model_config = ConfigDict(from_attributes=True)  # from alerting.rows.AlertEvent
    alert_id: int
    ts: int
    kind: str
    actor: str | None
    note: str | None
    ticket: str | None


class Lookup(BaseModel):
    candidates: list[HouseholdRef] = Field(description="matches of the text; one match is answered in full")
    did_you_mean: list[HouseholdRef] = Field(
        default=[], description="when nothing matches: the closest households (at most 5: a name typed "
        "wrong, a unit or room the register does not have), closest first")
    hint: str | None = Field(default=None, description="when nothing matches: the words as searched "
                             "(the address normal form) and what to try")
    household: HouseholdRef | None = None
    verdict: str | None = None
    room: Room | None = None
    building: Place | None = None
    station: Place | None = None
    alerts: list[AlertPublic] = []
    acknowledgements: list[Ack] = []


class ImportResult(BaseModel):
    model_config = ConfigDict(from_attributes=True)  # from alerting.rows.ImportCounts
    stations: int
    buildings: int
    households: int
    households_new: int


def verdict(alerts: Sequence[AlertRow], household: str | None) -> str:
    """What the dispatcher tells the caller, from the open alerts on the chain."""
    firing = [a for a in alerts if a.state == "firing"]
    for rule, say in (("gateway_offline", "known fault: the station's gateway is offline"),
                      ("station_offline", "known fault: the station is offline"),
                      ("makeup_burst", "known fault: a burst at the station (make-up surging)"),
                      ("building_low", "known fault: the whole building is cold (supply or hydraulics)"),
                      ("makeup_rate", "known fault: the station is losing water (leak suspected)")):
        if any(a.rule == rule for a in firing):
            return say
    if any(a.rule == "station_offline" and a.state == "pending" for a in alerts):
        # the gateway says the station's devices stopped answering; held before it pages
        # (offline.status_hold_s): the caller may be the first to notice
        return "the station reports offline, not yet confirmed (its devices stopped answering)"
    mine = [a for a in alerts if a.household == household and a.rule == "room_low"]
    if any(a.state == "firing" for a in mine):
        return "this household is cold (confirmed by its room sensor)"
    if mine:
        return "this household is cooling (low, not yet for long enough to alert)"
    return "no alert on this household, its building or station: a new case"


class _Chain(NamedTuple):
    """What the store knows about one household's chain, read in one worker-thread hop: ``row``
    is ``LatestTable.household``'s (the household, its address and its chain's latest rows)."""
    row: HouseholdNow
    alerts: list[AlertRow]
    acks: list[AlertEvent]


def _chain(store: Store, row: HouseholdNow | None, now: int) -> _Chain | None:
    if row is None:
        return None
    gateway = row.gateway or _gateway_of(store, row.station)
    alerts = store.chain_alerts(row.station, row.building, row.sensor, gateway)
    return _Chain(row, alerts, store.recent_acks([a.id for a in alerts], now - 7 * DAY_MS))


def _gateway_of(store: Store, station: str) -> str | None:
    """The gateway of a station the asset register names none for (the CSV has no gateway
    column, so that is the common case): the open gateway_offline alert whose stations (its
    context, from the gateway's status) include it. Only an open one can be on the chain."""
    for a in store.open_of_rule("gateway_offline"):
        if station in ((a.context or {}).get("stations") or ()):
            return a.gateway
    return None


def _station_state(row: HouseholdNow) -> str | None:
    # a gateway that is gone cannot report its station offline: its last status would say online
    return "offline" if row.gateway_state == "offline" else row.station_state


def _ref(r: FoundHousehold) -> dict[str, Any]:
    """``HouseholdRef`` of a household row (its fields, in its order)."""
    return {"code": r.code, "station": r.station, "building": r.building, "unit": r.unit, "room": r.room,
            "address": r.address, "sensor": r.sensor}


def _float(v: Any) -> Any:
    # a value declared float (| bool | str): pydantic makes an int a float (5 -> 5.0), so do we
    return float(v) if type(v) is int else v


def _values(points: dict[str, Any] | None) -> dict[str, Any]:
    return {k: _float(v) for k, v in (points or {}).items()}


async def _full(rooms: RoomHistory, chain: _Chain) -> bytes:
    """The whole answer for one household, ``Lookup`` as JSON built here from the store's rows
    (``api.alerts.json_response``): building the answer's models and FastAPI validating them
    again cost more than the JSON itself (#20, profiled). Every key and type is the model's;
    tests/unit/test_api_serialised.py compares the bytes with ``Lookup.model_dump_json``."""
    row, alerts, acks = chain
    sensor = row.sensor
    room = None
    if sensor:
        now = _float((row.room_points or {}).get("room_temp"))
        means, complete = await rooms.last_24h(row.station, row.building, sensor, row.room_day,
                                               row.station_gap_at, row.station_written_at)
        room = {"now": now, "at": row.room_ts if now is not None else None, "last_24h": means,
                "last_24h_complete": complete}
    ref = _ref(row)
    return orjson.dumps({
        "candidates": [ref], "did_you_mean": [], "hint": None, "household": ref,
        "verdict": verdict(alerts, sensor), "room": room,
        "building": {"state": None, "last_seen": row.building_ts, "values": _values(row.building_points)},
        "station": {"state": _station_state(row), "last_seen": row.station_ts,
                    "values": _values(row.station_points)},
        "alerts": alerts,  # AlertRow is AlertPublic's fields (api.alerts.alert_list_json)
        "acknowledgements": [{"alert_id": e.alert_id, "ts": e.ts, "kind": e.kind, "actor": e.actor,
                              "note": e.note, "ticket": e.ticket} for e in acks]})


@router.get("/lookup", response_model=Lookup,
            summary="From a household code or address words to the whole picture")
async def lookup(
    store: AlertStoreDep, registry: RegistryDep, rooms: RoomsDep, _p: Dispatcher,
    household: Annotated[str | None, Query(min_length=1, max_length=64, description="household code")] = None,
    q: Annotated[str | None, Query(min_length=1, max_length=200,
                                   description="address words in any order, e.g. '幸福里 3号楼 301'")] = None,
) -> Lookup | Response:
    if (household is None) == (q is None):
        raise HTTPException(422, "give exactly one of household (a code) or q (address words)")
    now = int(time.time() * 1000)
    if household is not None:
        chain = await asyncio.to_thread(lambda: _chain(store, store.latest.household(household), now))
        if chain is None:
            raise HTTPException(404, f"no household with code {household!r}")
        return json_response(await _full(rooms, chain))

    def find() -> tuple[list[FoundHousehold], list[FoundHousehold], _Chain | None]:
        found = registry.find_households(q or "", 20)
        # nothing found: the closest few, not an empty answer (only then: it reads every
        # building's address, 5-12 ms for 100,000 households in 2,000 buildings; docs/api.md)
        near = registry.suggest_households(q or "", 5) if not found else []
        one = store.latest.household(found[0].code) if len(found) == 1 else None
        return found, near, _chain(store, one, now)

    found, near, chain = await asyncio.to_thread(find)  # the store in one worker-thread hop
    if chain is not None:
        return json_response(await _full(rooms, chain))
    hint = None
    if not found:
        searched = " ".join(words(q or ""))
        hint = (f"nothing matches {searched!r}: " + ("did you mean one of these?" if near else
                "check the name, the building and the room, or search by the household code"))
    return Lookup(candidates=[HouseholdRef.model_validate(r) for r in found],
                  did_you_mean=[HouseholdRef.model_validate(r) for r in near], hint=hint)


@router.post("/assets/import", response_model=ImportResult,
             summary="Stations, buildings and households from the company's CSV (all or nothing)",
             openapi_extra={"requestBody": {"content": {"text/csv": {"schema": {"type": "string"}}},
                                            "required": True}})
async def import_assets(request: Request, registry: RegistryDep, p: Admin) -> ImportResult:
    raw = await request.body()
    if len(raw) > MAX_CSV_BYTES:
        raise HTTPException(413, f"the file is larger than {MAX_CSV_BYTES // 1024 // 1024} MB")
    try:
        assets = parse(decode(raw))
    except ImportProblems as exc:
        raise HTTPException(422, {"message": "nothing was imported", "problems": exc.problems}) from None
    counts = await asyncio.to_thread(registry.import_assets, assets, actor=p.name,
                                     now=int(time.time() * 1000))
    return ImportResult.model_validate(counts)
