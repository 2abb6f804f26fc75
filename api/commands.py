"""/v1/commands: remote building control (docs/control.md).

POST /v1/commands (engineer+) checks the command against the writable points its gateway
announced (the latest retained gateway status this API process received), the present value
(the latest reading, for the step) and the point's last command (its minimum interval); a 422
names the bound that was hit. A station-wide setpoint waits for a second engineer
(POST /v1/commands/{id}/confirm); a building valve opening goes at once. The command is
committed, then published by the API's sender (api/control.py); the alerter records the
gateway's result. GET shows the lifecycle; ``unknown`` is computed at read time for a command
with no result by its deadline plus ``control.unknown_grace_s``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, HTTPException, Path, Query
from pydantic import BaseModel, ConfigDict, Field, StrictBool, field_validator

from alerting.commands import NewCommand
from alerting.rows import CommandRecord
from api.deps import CommandsDep, ControlDep, Dispatcher, Engineer, InfluxDep, MaybeControl
from api.influx import InfluxReader
from contract.commands import Bounds, State, Ticket, bounds_problem, shown_state
from contract.config import ApiControl
from contract.errors import DatabaseUnavailable
from contract.influx import MEASUREMENT_BUILDING, MEASUREMENT_HOUSEHOLD, MEASUREMENT_STATION
from contract.points import check_name
from contract.topics import Ident

router = APIRouter(prefix="/v1/commands", tags=["commands"])
CommandId = Annotated[str, Path(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
Value = StrictBool | Annotated[float, Field(allow_inf_nan=False)]


class CommandIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    station: Ident
    device: Ident
    point: str = Field(description="a writable point of that device, as its gateway announces it")
    building: Ident | None = None
    household: Ident | None = None
    value: Value
    reason: str = Field(min_length=1, max_length=500, description="why, for the audit trail")
    ticket: Ticket = Field(description="the hotline ticket")
    deadline_s: float | None = Field(default=None, ge=10, le=86400,
                                     description="never executed after this many seconds "
                                                 "(default control.default_deadline_s)")

    @field_validator("point")
    @classmethod
    def _point(cls, v: str) -> str:
        check_name(v)
        return v


class ResultPublic(BaseModel):
    state: str
    reason: str | None
    detail: str | None
    code: int | None = Field(description="the Modbus exception code of a failure")
    old_value: float | bool | None = Field(description="read by the gateway just before the write")
    read_back: float | bool | None
    at: int | None = Field(description="ms: when the gateway decided")


class CommandPublic(BaseModel):
    id: str
    origin: str = Field(description="api, or broker: a result for a command this API never issued")
    state: State = Field(description="requested → (awaiting_confirmation) → sent → confirmed | mismatch "
                                     "| rejected | failed | expired; unknown: no result by deadline + grace")
    station: str
    device: str | None
    point: str | None
    building: str | None
    household: str | None
    value: float | bool | None
    old_value: float | bool | None = Field(description="the latest reading when it was requested")
    needs_confirmation: bool
    issuer: str | None
    confirmed_by: str | None
    confirmed_at: int | None
    reason: str | None
    ticket: str | None
    created_at: int
    deadline: int
    sent_at: int | None
    result: ResultPublic | None


class CommandEvent(BaseModel):
    model_config = ConfigDict(from_attributes=True)  # from alerting.rows.CommandEvent
    ts: int
    kind: str
    state: str
    actor: str | None
    detail: dict[str, Any]


class CommandDetail(CommandPublic):
    events: list[CommandEvent]


class CommandList(BaseModel):
    data: list[CommandPublic]
    count: int


class WritableList(BaseModel):
    station: str
    gateway: str
    gateway_state: str
    data: list[dict[str, Any]]


View = TypeVar("View", CommandPublic, CommandDetail)


def _view(row: CommandRecord, cfg: ApiControl | None, now: int, model: type[View]) -> View:
    """A stored command as the API shows it: ``unknown`` computed, the gateway's result nested."""
    grace = cfg.unknown_grace_s if cfg is not None else 60.0
    result = None if row.result_state is None else ResultPublic(
        state=row.result_state, reason=row.result_reason, detail=row.result_detail, code=row.result_code,
        old_value=row.gateway_old_value, read_back=row.read_back, at=row.result_at)
    same = {k: getattr(row, k) for k in model.model_fields if k not in ("state", "result")}
    return model(**same, state=shown_state(State(row.state), row.deadline, now, grace), result=result)


def _now() -> int:
    return int(time.time() * 1000)


async def _latest(influx: InfluxReader, body: CommandIn) -> float | bool | None:
    """The point's latest reading (for the step and the audit), None when there is none."""
    bind: dict[str, str | int | float] = {"station": body.station}
    where = '"station" = $station'
    measurement = MEASUREMENT_STATION
    if body.building is not None:
        bind["building"] = body.building
        where += ' AND "building" = $building'
        measurement = MEASUREMENT_BUILDING
    if body.household is not None:
        bind["household"] = body.household
        where += ' AND "household" = $household'
        measurement = MEASUREMENT_HOUSEHOLD
    try:  # the point name passed check_name: lower-case letters, digits and _ only
        series = await influx.query(f'SELECT last("{body.point}") FROM "{measurement}" WHERE {where} '
                                    "AND time > now() - 1d", bind)
    except DatabaseUnavailable:
        return None
    if not series or not series[0].get("values"):
        return None
    v = series[0]["values"][0][1]
    return v if isinstance(v, (bool, float, int)) else None


@router.post("", response_model=CommandDetail, status_code=201,
             summary="Send a command to a writable point (engineer); a station-wide setpoint waits "
                     "for a second engineer")
async def create(control: ControlDep, store: CommandsDep, influx: InfluxDep, body: CommandIn,
                 p: Engineer) -> CommandDetail:
    cfg = control.cfg
    writable = control.writable(body.station)
    if writable is None:
        raise HTTPException(409, f"no gateway status received for station {body.station}: its writable "
                                 "points are unknown, so nothing can be checked or sent")
    wp = next((w for w in writable if (w.device, w.point, w.building, w.household)
               == (body.device, body.point, body.building, body.household)), None)
    if wp is None:
        where = body.point + (f" of building {body.building}" if body.building else "") + \
            (f" household {body.household}" if body.household else "")
        have = ", ".join(sorted({f"{w.device}.{w.point}" + (f"@{w.building}" if w.building else "")
                                 for w in writable})) or "none"
        raise HTTPException(422, f"station {body.station} has no writable point {where} on device "
                                 f"{body.device} (writable: {have})")
    deadline_s = body.deadline_s if body.deadline_s is not None else cfg.default_deadline_s
    if deadline_s > cfg.max_deadline_s:
        raise HTTPException(422, f"deadline_s {deadline_s:g} above control.max_deadline_s "
                                 f"{cfg.max_deadline_s:g}")
    old, last = await asyncio.gather(
        _latest(influx, body),
        asyncio.to_thread(store.last_write_at, body.station, body.device, body.point, body.building,
                          body.household))
    now = _now()
    problem = bounds_problem(body.point, body.value, Bounds(min=wp.min, max=wp.max, max_step=wp.max_step,
                                                            min_interval_s=wp.min_interval_s),
                             is_bool=wp.kind == "bool", current=old, last_write_ms=last, now_ms=now)
    if problem is not None:
        raise HTTPException(422, problem[1])
    value: float | bool = body.value if isinstance(body.value, bool) else float(body.value)
    new = NewCommand(
        id=uuid.uuid4().hex, station=body.station, device=body.device, point=body.point,
        building=body.building, household=body.household, value=value,
        old_value=old if not isinstance(old, int) or isinstance(old, bool) else float(old),
        needs_confirmation=wp.station_wide, issuer=p.name, reason=body.reason, ticket=body.ticket,
        created_at=now, deadline=now + int(deadline_s * 1000))
    if not new.needs_confirmation:  # signed now, published right after the commit
        new = dataclasses.replace(new, payload=control.sign_row(new))
    row = await asyncio.to_thread(store.create, new)
    if row.payload is not None:
        await control.publish_now(row)
    return _view(row, cfg, now, CommandDetail)


@router.post("/{command_id}/confirm", response_model=CommandDetail,
             summary="Confirm a station-wide setpoint (an engineer other than its issuer)")
async def confirm(control: ControlDep, store: CommandsDep, command_id: CommandId,
                  p: Engineer) -> CommandDetail:
    row = await asyncio.to_thread(store.confirm, command_id, actor=p.name, now=_now(), sign=control.sign_row)
    await control.publish_now(row)
    return _view(row, control.cfg, _now(), CommandDetail)


@router.get("/writable/{station}", response_model=WritableList,
            summary="The points a station's gateway takes commands for, with their bounds")
async def writable(control: ControlDep, station: Annotated[Ident, Path()], _p: Dispatcher) -> WritableList:
    st = control.status(station)
    if st is None:
        raise HTTPException(404, f"no gateway status received for station {station}")
    return WritableList(station=station, gateway=st.gateway, gateway_state=st.state,
                        data=[w.model_dump() for w in st.writable])


@router.get("/{command_id}", response_model=CommandDetail, summary="One command and its lifecycle")
async def get(store: CommandsDep, control: MaybeControl, command_id: CommandId,
              _p: Dispatcher) -> CommandDetail:
    row = await asyncio.to_thread(store.get, command_id)
    return _view(row, control.cfg if control else None, _now(), CommandDetail)


@router.get("", response_model=CommandList, summary="Commands of a station or building, newest first")
async def list_commands(
    store: CommandsDep, control: MaybeControl, _p: Dispatcher,
    station: Annotated[Ident | None, Query()] = None,
    building: Annotated[Ident | None, Query()] = None,
    state: Annotated[list[State] | None, Query(description="stored states (unknown is computed)")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> CommandList:
    page = await asyncio.to_thread(store.query, station=station, building=building,
                                   state=[s.value for s in state] if state else None, limit=limit,
                                   offset=offset)
    now = _now()
    cfg = control.cfg if control else None
    return CommandList(data=[_view(r, cfg, now, CommandPublic) for r in page.rows], count=page.total)
