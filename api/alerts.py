"""/v1/alerts and /v1/silences: list, read, acknowledge, note, resolve, silence.

Every write names its actor (the token's name) and lands in the audit table in the same
transaction. Lists are paged (``limit`` ≤ 500) and filtered only through bound parameters. The
store's refusals are the contract's errors (NotFound 404, Conflict 409, UnknownReference 422) and
its outages DatabaseUnavailable (503), answered by the app's handlers (``api/app.py``).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, HTTPException, Path, Query
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from alerting.rows import AlertRow
from api.deps import AlertStoreDep, Dispatcher, Engineer
from contract.alerts import Rule, Severity, State
from contract.topics import Ident

router = APIRouter(prefix="/v1", tags=["alerts"])
# the rules a person may close: verdicts given once an hour or day, where waiting for the next
# one would leave a handled alert open; the engine reopens nothing it still sees
MANUAL_RESOLVE = frozenset({Rule.MAKEUP_DAILY, Rule.MAKEUP_PUMP})
Ticket = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:/-]*$")]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AlertPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)  # from alerting.rows.AlertRow
    id: int
    key: str
    rule: str
    state: State
    severity: Severity
    station: str | None
    building: str | None
    household: str | None
    gateway: str | None
    subject: str | None
    since: int = Field(description="ms: first seen (the condition started)")
    last_ts: int = Field(description="ms: last seen — the latest verdict that found the condition "
                                     "(written every alerts.seen_s) or change; a closed one's resolution")
    fired_at: int | None
    resolved_at: int | None
    value: float | None
    summary: str
    context: dict[str, Any]
    quiet: str
    paged: bool
    ack_by: str | None
    ack_at: int | None
    ack_note: str | None
    ack_ticket: str | None = Field(description="the latest ticket an acknowledgement gave; an "
                                               "acknowledgement without one keeps it")
    tickets: list[str] = Field(default_factory=list, description="every hotline ticket given with "
                                                                 "an acknowledgement or note, oldest first")
    resolved_by: str | None


class AlertEvent(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    ts: int
    kind: str
    state: str
    severity: str
    value: float | None
    actor: str | None
    note: str | None
    ticket: str | None


class AlertDetail(AlertPublic):
    events: list[AlertEvent]


class AlertList(BaseModel):
    data: list[AlertPublic]
    count: int = Field(description="all matching alerts, not only this page")


def json_response(body: bytes) -> Response:
    """An answer serialised here: FastAPI sends a ``Response`` as it is, without validating it
    against the route's ``response_model`` (fastapi/routing.py, ``get_request_handler``), which
    stays declared for the OpenAPI document. tests/unit/test_api_serialised.py holds each such
    body to its model: the bytes are what the model's own ``model_dump_json`` gives."""
    return Response(body, media_type="application/json")


def alert_list_json(rows: list[AlertRow], total: int) -> bytes:
    """``AlertList`` as JSON, from the store's rows as they are: ``AlertRow``'s fields are
    ``AlertPublic``'s, in its order, with the types it declares (orjson writes a dataclass's
    fields in order and floats as pydantic does). Validating 50 rows into models cost 160 µs of
    a list's ~1.5 ms of API CPU (#20, profiled)."""
    return orjson.dumps({"data": rows, "count": total})


class AckIn(_In):
    note: str | None = Field(default=None, max_length=2000)
    ticket: Ticket | None = None


class NoteIn(_In):
    note: str = Field(min_length=1, max_length=2000)
    ticket: Ticket | None = None


class ResolveIn(_In):
    note: str = Field(min_length=1, max_length=2000, description="what was done")


class SilenceIn(_In):
    station: Ident
    building: Ident | None = None
    start: dt.datetime
    end: dt.datetime
    reason: str = Field(min_length=1, max_length=500)

    @field_validator("start", "end")
    @classmethod
    def _tz(cls, v: dt.datetime) -> dt.datetime:
        if v.tzinfo is None:
            raise ValueError("needs a timezone, e.g. 2026-12-01T08:00:00+08:00")
        return v

    @model_validator(mode="after")
    def _order(self) -> SilenceIn:
        if self.end <= self.start:
            raise ValueError("end must be after start")
        if self.end - self.start > dt.timedelta(days=31):
            raise ValueError("a silence may last at most 31 days")
        return self


class SilenceOut(BaseModel):
    id: int


class SilencePublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    station: str
    building: str | None
    start: int = Field(description="ms", validation_alias="start_ms")
    end: int = Field(description="ms", validation_alias="end_ms")
    reason: str
    state: Literal["future", "active", "ended", "cancelled"]
    created_by: str
    created_at: int
    cancelled_by: str | None
    cancelled_at: int | None


class SilenceList(BaseModel):
    data: list[SilencePublic]
    count: int = Field(description="all matching silences, not only this page")


def _now() -> int:
    return int(time.time() * 1000)


AlertId = Annotated[int, Path(ge=1, le=2**31 - 1)]


@router.get("/alerts", response_model=AlertList, summary="List and filter alerts, newest first")
async def list_alerts(
    store: AlertStoreDep, _p: Dispatcher,
    state: Annotated[list[State] | None, Query()] = None,
    severity: Annotated[list[Severity] | None, Query()] = None,
    rule: Annotated[list[Rule] | None, Query()] = None,
    station: Annotated[Ident | None, Query()] = None,
    building: Annotated[Ident | None, Query()] = None,
    household: Annotated[Ident | None, Query()] = None,
    open: Annotated[bool, Query(description="only alerts not yet resolved")] = False,
    since: Annotated[int | None, Query(ge=0, le=2**53, description="last seen at or after (ms)")] = None,
    until: Annotated[int | None, Query(ge=0, le=2**53, description="first seen at or before (ms)")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> Response:
    page = await asyncio.to_thread(store.alerts, state=state, severity=severity, rule=rule,
                                   station=station, building=building, household=household, open_only=open,
                                   since=since, until=until, limit=limit, offset=offset)
    return json_response(alert_list_json(page.rows, page.total))


@router.get("/alerts/{alert_id}", response_model=AlertDetail, summary="One alert with its history")
async def get_alert(store: AlertStoreDep, alert_id: AlertId, _p: Dispatcher) -> AlertDetail:
    return AlertDetail.model_validate(await asyncio.to_thread(store.alert, alert_id))


@router.post("/alerts/{alert_id}/ack", response_model=AlertDetail,
             summary="Acknowledge: who, when, a note and the hotline ticket")
async def acknowledge(store: AlertStoreDep, alert_id: AlertId, body: AckIn, p: Dispatcher) -> AlertDetail:
    return AlertDetail.model_validate(await asyncio.to_thread(
        store.acknowledge, alert_id, actor=p.name, now=_now(), note=body.note, ticket=body.ticket))


@router.post("/alerts/{alert_id}/notes", response_model=AlertDetail, summary="Add a note")
async def add_note(store: AlertStoreDep, alert_id: AlertId, body: NoteIn, p: Dispatcher) -> AlertDetail:
    return AlertDetail.model_validate(await asyncio.to_thread(
        store.add_note, alert_id, actor=p.name, now=_now(), note=body.note, ticket=body.ticket))


@router.post("/alerts/{alert_id}/resolve", response_model=AlertDetail,
             summary=f"Resolve by hand (only {', '.join(sorted(MANUAL_RESOLVE))})")
async def resolve(store: AlertStoreDep, alert_id: AlertId, body: ResolveIn, p: Engineer) -> AlertDetail:
    alert = await asyncio.to_thread(store.alert, alert_id)
    if alert.rule not in MANUAL_RESOLVE:
        raise HTTPException(409, f"{alert.rule} resolves itself when its condition clears; "
                                 f"only {', '.join(sorted(MANUAL_RESOLVE))} may be resolved by hand")
    return AlertDetail.model_validate(await asyncio.to_thread(
        store.resolve, alert_id, actor=p.name, now=_now(), note=body.note))


@router.post("/silences", response_model=SilenceOut, status_code=201,
             summary="Silence a station or building for planned works (a known one: docs/api.md)")
async def add_silence(store: AlertStoreDep, body: SilenceIn, p: Engineer) -> SilenceOut:
    sid = await asyncio.to_thread(store.add_silence, station=body.station, building=body.building,
                                  start=int(body.start.timestamp() * 1000),
                                  end=int(body.end.timestamp() * 1000), reason=body.reason, actor=p.name,
                                  now=_now())
    return SilenceOut(id=sid)


SilenceId = Annotated[int, Path(ge=1, le=2**31 - 1)]


@router.get("/silences", response_model=SilenceList,
            summary="Silences running or still to come, latest start first (all=true: past ones too)")
async def list_silences(
    store: AlertStoreDep, _p: Dispatcher,
    past: Annotated[bool, Query(alias="all", description="also ended and cancelled silences")] = False,
    station: Annotated[Ident | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> SilenceList:
    page = await asyncio.to_thread(store.silences, now=_now(), past=past, station=station, limit=limit,
                                   offset=offset)
    return SilenceList(data=[SilencePublic.model_validate(r) for r in page.rows], count=page.total)


@router.delete("/silences/{silence_id}", response_model=SilencePublic,
               summary="Cancel a silence now; the alerter stops honouring it within alerts.silences_s")
async def cancel_silence(store: AlertStoreDep, silence_id: SilenceId, p: Engineer) -> SilencePublic:
    return SilencePublic.model_validate(await asyncio.to_thread(store.cancel_silence, silence_id,
                                                                actor=p.name, now=_now()))
