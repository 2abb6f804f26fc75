"""What the takeover report says (the API's JSON, the spreadsheet's and the PDF's content) and
the company's report settings (``kind: report``, e.g. ``deploy/report.yaml``).

Times are ms since the Unix epoch; durations in minutes or hours as the field names say.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from contract.errors import ConfigError

Part = Literal["makeup", "rooms", "information", "service", "remote_control"]
PARTS: tuple[Part, ...] = ("makeup", "rooms", "information", "service", "remote_control")


# -- settings -------------------------------------------------------------------------------
class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RefundBand(_Strict):
    """Households whose room stayed this far below the standard for longer than
    ``refund_after_h`` (Tianjin: ≤ 2 K 10 %, 2–6 K 50 %, > 6 K 100 %)."""

    name: str = Field(min_length=1, max_length=40)
    above_k: float = Field(ge=0, description="shortfall greater than this (K below the standard)")
    up_to_k: float | None = Field(None, gt=0, description="and at most this; None: no upper bound")
    refund_pct: float = Field(ge=0, le=100)

    @model_validator(mode="after")
    def _order(self) -> RefundBand:
        if self.up_to_k is not None and self.up_to_k <= self.above_k:
            raise ValueError("up_to_k must be above above_k")
        return self


class ReportSettings(_Strict):
    kind: Literal["report"] = "report"
    company: str = Field("heatwatch", min_length=1, max_length=200, description="the PDF's heading")
    rules: str | None = Field(None, description="the collector's rule file: season, design outdoor "
                                                "temperature, make-up limits; relative to this file")
    gateways: list[str] = Field(default_factory=list,
                                description="gateway configs (globs, relative to this file): expected "
                                            "sample rates and remotely controllable building valves")
    refund_bands: list[RefundBand] = Field(default_factory=list)
    refund_after_h: float = Field(24.0, gt=0, description="a low room counts for refunds after this long")
    longest_n: int = Field(20, ge=1, le=500, description="households below the standard longest: how many")

    @model_validator(mode="after")
    def _bands(self) -> ReportSettings:
        bands = sorted(self.refund_bands, key=lambda b: b.above_k)
        for a, b in itertools.pairwise(bands):
            if a.up_to_k is None or a.up_to_k > b.above_k:
                raise ValueError(f"refund_bands: {a.name!r} overlaps {b.name!r}")
        return self


def load_settings(path: str | Path) -> ReportSettings:
    """Read a ``kind: report`` file; relative paths in it become relative to the file."""
    from contract.config import read_yaml, render_errors

    p = Path(path)
    data = read_yaml(p)
    if isinstance(data.get("rules"), str):
        data["rules"] = str(p.parent / data["rules"])
    if isinstance(data.get("gateways"), list):
        data["gateways"] = [str(p.parent / g) if isinstance(g, str) else g for g in data["gateways"]]
    try:
        return ReportSettings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(str(p), render_errors(exc, data)) from None


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
    kind: str = Field(description="leak?, theft?, burst, pump")
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
    """One remote command as the report needs it (the seam to H4's ``commands`` table: the lead
    maps its columns onto these). ``outcome``: confirmed | failed | expired | refused | pending."""

    id: str
    station: str
    building: str | None = None
    point: str
    outcome: str
    issued_at: int
    finished_at: int | None = None


class StationRemote(BaseModel):
    station: str
    controllable: list[str] = Field(description="buildings whose entrance valve is remotely writable")
    proven: list[str] = Field(description="of those, proven in the period by a confirmed command")
    commands: dict[str, int] = Field(description="commands of the period by outcome")


class RemotePart(BaseModel):
    wired: bool = Field(description="whether command rows were given (False: not yet wired)")
    controllable: int
    proven: int
    commands: dict[str, int]
    stations: list[StationRemote]


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
