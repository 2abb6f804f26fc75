"""What the takeover report says (the API's JSON, the spreadsheet's and the PDF's content) and
the company's report settings (``kind: report``, e.g. ``deploy/report.yaml``).

Times are ms since the Unix epoch; durations in minutes or hours as the field names say.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from contract.report import RefundBand, ReportSettings

Part = Literal["makeup", "rooms", "information", "service", "remote_control"]
PARTS: tuple[Part, ...] = ("makeup", "rooms", "information", "service", "remote_control")
__all__ = ["PARTS", "RefundBand", "ReportSettings", "load_settings"]


# -- settings (contract/report.py; re-exported here) -------------------------------------
def load_settings(path: str | Path) -> ReportSettings:
    """Read a ``kind: report`` file; relative paths in it become relative to the file."""
    from contract.config import load_report_settings

    return load_report_settings(path)


# -- the report -----------------------------------------------------------------------------
class PeriodOut(BaseModel):
    label: str = Field(description="as asked: 2026-11, 2026-11-15..2027-03-15, season:2026")
    title: str = Field(description="for headings")
    start: int
    end: int = Field(description="exclusive")
    data_end: int = Field(description="end, or the time of the report when the period is not over")
    timezone_offset_h: float
    season: list[tuple[int, int]] = Field(description="the heating season's part of the period")
    cold_days: list[str] = Field(description="local days below the design outdoor temperature "
                                             "(excluded from the room pass rate)")
    design_outdoor_temp: float


class NetworkMakeup(BaseModel):
    network: str
    makeup_m3: float | None = Field(description="totalizer growth over the period (gaps included)")
    judged_makeup_m3: float = Field(description="make-up of the hours with circulation measured")
    circulation_m3: float = Field(description="circulating volume of those hours")
    judged_hours: int
    rate_pct: float | None = Field(description="judged make-up ÷ circulation × 100")
    limit_pct: float
    passed: bool | None
    margin_pp: float | None = Field(description="rate − limit, percentage points; > 0 fails")
    days: float = Field(description="days the totalizer covers")
    daily_t_per_10k_m2: float | None = Field(description="make-up per heated area, t per 10,000 m² "
                                                         "per day (None: no heated area)")
    meter_events: int = Field(description="totalizer resets, replacements, misreads: not water")
    excluded_m3: float = Field(description="make-up in maintenance windows: not judged")


class Incident(BaseModel):
    alert_id: int
    station: str | None
    rule: str
    network: str | None
    severity: str
    since: int
    resolved_at: int | None
    value: float | None
    kind: str = Field(description="above the limit, leak?, theft?, burst, pump")
    detail: str
    ticket: str | None


class StationMakeup(BaseModel):
    station: str
    name: str
    area_m2: float | None
    networks: list[NetworkMakeup]
    incidents: int


class MakeupPart(BaseModel):
    company: list[NetworkMakeup] = Field(description="every station's water together, per network")
    stations: list[StationMakeup]
    passing: int
    failing: int
    no_data: int
    incidents: list[Incident]


class BuildingRooms(BaseModel):
    building: str
    address: str | None
    standard_c: float
    sensors: int
    hours: int
    passing: int
    rate_pct: float | None
    households_low: int = Field(description="households with any counted hour below the standard")


class StationRooms(BaseModel):
    station: str
    name: str
    hours: int
    passing: int
    rate_pct: float | None
    fault_hours: int = Field(description="sensor-hours left out: a sensor_fault episode")
    buildings: list[BuildingRooms]
    bands: dict[str, int] = Field(description="households per refund band")


class LowHousehold(BaseModel):
    station: str
    building: str
    sensor: str
    code: str | None = Field(description="household code (户号) from the asset register")
    address: str | None
    standard_c: float
    hours_below: int
    longest_h: int
    longest_from: int | None
    coldest_c: float | None
    band: str | None
    refund_pct: float | None


class RoomsPart(BaseModel):
    hours: int
    passing: int
    rate_pct: float | None
    fault_hours: int
    stations: list[StationRooms]
    longest: list[LowHousehold]
    bands: list[RefundBand]
    band_counts: dict[str, int]
    refund_after_h: float


class Gap(BaseModel):
    start: int
    end: int
    hours: int


class BuildingCoverage(BaseModel):
    building: str
    households: int = Field(description="in the asset register")
    sensors_registered: int
    sensors_reporting: int
    coverage_pct: float | None = Field(description="reporting sensors ÷ households × 100")


class StationInfo(BaseModel):
    station: str
    name: str
    source: Literal["config", "data", "none"] = Field(
        description="expected rate from the gateway config's poll groups, or the data's own "
                    "dominant interval (samples per hour most often seen)")
    expected: int
    received: int
    completeness_pct: float | None
    period_hours: int
    online_hours: int
    online_pct: float | None
    gaps: int
    gap_hours: int
    longest_gap_h: int
    gap_list: list[Gap] = Field(description="the longest gaps, at most 10")
    buildings: list[BuildingCoverage]


class InformationPart(BaseModel):
    expected: int
    received: int
    completeness_pct: float | None
    online_pct: float | None
    stations: list[StationInfo]


class Durations(BaseModel):
    n: int
    median_min: float | None
    p90_min: float | None
    mean_min: float | None


class StationService(BaseModel):
    station: str
    raised: int
    by_rule: dict[str, int]
    by_severity: dict[str, int]
    acknowledged: int
    to_acknowledge: Durations
    resolved: int
    to_resolve: Durations
    tickets: int


class TicketAck(BaseModel):
    alert_id: int
    station: str | None
    rule: str
    ts: int
    kind: str
    actor: str | None
    ticket: str
    note: str | None


class ServicePart(BaseModel):
    raised: int
    by_rule: dict[str, int]
    to_acknowledge: Durations
    to_resolve: Durations
    tickets: list[TicketAck]
    stations: list[StationService]


class CommandRow(BaseModel):
    """One remote command of the period, as the commands table (alerting/commands.py) holds it.

    ``outcome``: its state as the API shows it (contract.commands.State) — confirmed, mismatch,
    rejected, failed, expired (the gateway's or the API's last word), awaiting_confirmation,
    requested, sent (under way), unknown (sent, no result by its deadline plus the grace).
    ``origin``: api, or broker (a result for a command this site's API never issued)."""

    id: str
    station: str
    building: str | None = None
    household: str | None = None
    point: str
    outcome: str
    origin: str = "api"
    issued_at: int
    finished_at: int | None = Field(None, description="the gateway's time of its result")
    ticket: str | None = None


VALVE_POINT = "building_valve_setpoint"  # a building's entrance valve opening (DOMAIN.md)


class RemoteProof(BaseModel):
    station: str
    building: str
    command: str = Field(description="the first command of the period to the valve that was confirmed")
    at: int = Field(description="when the gateway read the value back")
    ticket: str | None


class StationRemote(BaseModel):
    station: str
    controllable: list[str] = Field(description="buildings whose entrance valve setpoint is remotely "
                                                "writable")
    source: Literal["announced", "config"] | None = Field(
        description="announced: the writable points in its gateway's status (what the API checks commands "
                    "against); config: the gateway config's map and control block; None: neither known")
    proven: list[str] = Field(description="of those, proven in the period by a confirmed command")
    commands: dict[str, int] = Field(description="commands of the period by outcome")


class RemotePart(BaseModel):
    wired: bool = Field(description="whether the commands table was read")
    controllable: int
    proven: int
    commands: dict[str, int]
    stations: list[StationRemote]
    proofs: list[RemoteProof] = Field(default_factory=list)


class Report(BaseModel):
    company: str
    period: PeriodOut
    generated_at: int
    stations: list[str]
    makeup: MakeupPart
    rooms: RoomsPart
    information: InformationPart
    service: ServicePart
    remote_control: RemotePart
    missing: list[str] = Field(description="figures missing, and for want of what")
    notes: list[str] = Field(description="how figures were obtained")
