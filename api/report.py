"""/v1/report: the takeover report (issue #17) for a period — whole, by part, as a spreadsheet
or as a printable PDF.

Engineer or above: the report is the takeover working group's, not the hotline's, and it lists
every household below the standard with its code and address across the whole company, where a
dispatcher's lookup shows one household a call. A report is computed from InfluxDB and the
alert store (about a second for a few stations; for 500 stations and a season seconds from the
1-hour rollup, minutes from raw data: bench/report_bench.py); the period is ``2026-11``,
``2026-11-15..2027-03-15`` or ``season:2026``. A period's report is kept
``CACHE_S`` (5 min) per API process, so its parts, spreadsheet and PDF asked in a row cost one
computation; ``generated_at`` says when it was made.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query
from fastapi.responses import Response

from api.control import Control
from api.deps import AlertStoreDep, Engineer, ServicesDep
from api.influx import InfluxReader
from contract.config import ApiConfig, InfluxSettings
from report import compute, source
from report.model import InformationPart, MakeupPart, RemotePart, Report, RoomsPart, ServicePart

router = APIRouter(prefix="/v1/report", tags=["report"])
PeriodQ = Annotated[str, Query(min_length=7, max_length=30,
                               description="2026-11, 2026-11-15..2027-03-15 or season:2026 "
                                           "(in the rules' local time)")]
XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"


# a season of a large company without the 1-hour rollup takes InfluxDB minutes (bench/report_bench.py); the
# hotline's reader gives up after influx.timeout_s (10 s), so reports get their own
REPORT_TIMEOUT_S = 900.0


CACHE_S = 300.0  # the parts, the spreadsheet and the PDF of one period, asked in a row, cost one report


@dataclass
class ReportState:
    ctx: source.Context
    influx: InfluxSettings
    cache: dict[str, tuple[float, Report]] = field(default_factory=dict)
    locks: dict[str, asyncio.Lock] = field(default_factory=dict)


def load(settings: ApiConfig) -> ReportState:
    """At start-up: the report settings the API config names (a config error stops the start)."""
    ctx = source.load_context(settings.report)
    if settings.control is not None:
        ctx.unknown_grace_s = settings.control.unknown_grace_s
    return ReportState(ctx, settings.influx.model_copy(
        update={"timeout_s": max(settings.influx.timeout_s, REPORT_TIMEOUT_S)}))


def announced(control: Control | None) -> dict[str, set[str]] | None:
    """The valve buildings each station's gateway announces writable, from the gateway statuses
    this process's remote control holds (None without ``control:``: the configs answer)."""
    return source.announced_valves(control.gateways.values()) if control is not None else None


async def _report(_p: Engineer, s: ServicesDep, store: AlertStoreDep, period: PeriodQ) -> Report:
    """The period's report (the ``period`` query parameter), computed or from the cache; an
    engineer's only (checked first: nobody else makes the API compute one)."""
    state = s.report
    try:
        compute.parse_period(period, state.ctx.rules)
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from None
    # one computation per period at a time; a second caller waits for it and takes its answer
    async with state.locks.setdefault(period, asyncio.Lock()):
        hit = state.cache.get(period)
        if hit is not None and time.monotonic() - hit[0] < CACHE_S:
            return hit[1]
        influx = InfluxReader(state.influx)  # its own session: a report is rare and long
        try:
            rep = await source.report(influx.query_many, store, state.ctx, period, int(time.time() * 1000),
                                      announced(s.control), database=influx.db)
        finally:
            await influx.close()
        if len(state.cache) > 50:
            state.cache.clear()
        state.cache[period] = (time.monotonic(), rep)
        return rep


PeriodReport = Annotated[Report, Depends(_report)]


def _filename(rep: Report, suffix: str) -> dict[str, str]:
    name = f"heatwatch-report-{rep.period.label.replace(':', '-')}.{suffix}"
    return {"Content-Disposition": f'attachment; filename="{name}"'}


@router.get("", response_model=Report, summary="The whole takeover report for a period")
async def whole(_p: Engineer, rep: PeriodReport) -> Report:
    return rep


@router.get("/makeup", response_model=MakeupPart, summary="Make-up water: rate against the limit, per area")
async def makeup(_p: Engineer, rep: PeriodReport) -> MakeupPart:
    return rep.makeup


@router.get("/rooms", response_model=RoomsPart, summary="Room pass rate, longest below 18 °C, refund bands")
async def rooms(_p: Engineer, rep: PeriodReport) -> RoomsPart:
    return rep.rooms


@router.get("/information", response_model=InformationPart,
            summary="Data completeness, online time, gaps, sensor coverage")
async def information(_p: Engineer, rep: PeriodReport) -> InformationPart:
    return rep.information


@router.get("/service", response_model=ServicePart, summary="Alerts by kind, time to acknowledge and resolve")
async def service(_p: Engineer, rep: PeriodReport) -> ServicePart:
    return rep.service


@router.get("/remote-control", response_model=RemotePart,
            summary="Controllable and proven buildings, commands by outcome")
async def remote_control(_p: Engineer, rep: PeriodReport) -> RemotePart:
    return rep.remote_control


@router.get(".xlsx", summary="The report as a spreadsheet, one sheet per part",
            responses={200: {"content": {XLSX: {}}}})
async def spreadsheet(_p: Engineer, rep: PeriodReport) -> Response:
    from report.xlsx import workbook

    body = await asyncio.to_thread(workbook, rep)
    return Response(body, media_type=XLSX, headers=_filename(rep, "xlsx"))


@router.get(".pdf", summary="The report as a printable PDF with charts",
            responses={200: {"content": {"application/pdf": {}}}})
async def printable(_p: Engineer, rep: PeriodReport) -> Response:
    from report.pdf import document

    body = await asyncio.to_thread(document, rep)
    return Response(body, media_type="application/pdf", headers=_filename(rep, "pdf"))
