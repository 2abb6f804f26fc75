"""The alert model and the rule file: what the alerter's rule engine raises and how it judges.

An alert is identified by a stable key, ``rule:entity``, e.g. ``room_low:st001/b01/b01-0301`` or
``makeup_rate:st001/secondary``; the engine emits a ``Transition`` whenever an alert changes
state or severity, and the store, InfluxDB (measurement ``alerts``), the MQTT topic
``heatwatch/v1/alert/{station}`` and webhooks all take the same transition.

States follow Prometheus: ``pending`` (condition true, not yet for long enough) → ``firing`` →
``resolved`` (condition false for ``clear_hold``, which damps flapping). A transition is *paged*
(MQTT alert topic, webhooks) only when it is not ``quiet``: raised from replayed backfill,
silenced for planned works, or inhibited by a bigger alert above it in the topology
(gateway → station → building → household).

The rule file (YAML, ``kind: rules``) carries thresholds and durations with defaults from
DOMAIN.md (GB/T 33833 for rooms, make-up limits as a share of circulating flow), overrides per
station and per building, the heating season and maintenance windows.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

import msgspec
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from contract.errors import ConfigError, PayloadError
from contract.topics import Ident


class Severity(StrEnum):
    INFO = "info"  # sensor faults: for the maintenance list, never a page at night
    WARNING = "warning"
    MAJOR = "major"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        """0 (info) … 3 (critical): the one ranking every part of heatwatch sorts and filters by."""
        return _RANK[self]


SEVERITIES = (Severity.INFO, Severity.WARNING, Severity.MAJOR, Severity.CRITICAL)  # lowest first
_RANK = {s: i for i, s in enumerate(SEVERITIES)}


def severity_rank(s: str) -> int:
    """The rank of a severity given as text (a stored row, a JSON page): higher is worse."""
    return _RANK[Severity(s)]


def escalate(s: Severity) -> Severity:
    return SEVERITIES[min(len(SEVERITIES) - 1, s.rank + 1)]


class State(StrEnum):
    PENDING = "pending"
    FIRING = "firing"
    RESOLVED = "resolved"


class Quiet(StrEnum):
    """Why a transition is stored but not paged ("" = it pages)."""

    NONE = ""
    BACKFILL = "backfill"  # judged on replayed data: the past never pages
    SILENCED = "silenced"  # a maintenance window or a silence covers it
    INHIBITED = "inhibited"  # a bigger alert above it in the topology holds it
    SEASON = "season"  # the heating season ended
    EXEMPT = "exempt"  # a room alert on a day colder than the design outdoor temperature (GB/T 33833)


@dataclass(frozen=True, slots=True)
class Silence:
    """Planned works: nothing under ``station`` (or one of its buildings) pages in [start, end)."""

    station: str
    building: str | None
    start: int  # ms
    end: int
    reason: str


class Rule(StrEnum):
    ROOM_LOW = "room_low"  # one household sensor's median below the standard
    BUILDING_LOW = "building_low"  # ≥ 30 % (min 2) of a building's sensors low: supply or hydraulics
    SENSOR_FAULT = "sensor_fault"  # stale, implausible, flat-lined or jumping room sensor
    MAKEUP_RATE = "makeup_rate"  # hourly make-up ÷ circulation above the limit for hours
    MAKEUP_DAILY = "makeup_daily"  # a day's make-up far above the station's own baseline
    MAKEUP_BURST = "makeup_burst"  # make-up surging while pressure falls, or the tank emptying
    MAKEUP_PUMP = "makeup_pump"  # make-up pump starts / run time far above baseline
    STATION_OFFLINE = "station_offline"
    GATEWAY_OFFLINE = "gateway_offline"
    DEVICE_OFFLINE = "device_offline"  # one PLC / meter / concentrator of a station not answering
    CIRC_PUMP_TRIP = "circ_pump_trip"  # no circulation: every pump stopped or the flow collapsed
    CLOCK_SKEW = "clock_skew"  # a gateway's clock is off: a data-quality fault, its data kept


class Transition(msgspec.Struct, frozen=True, kw_only=True):
    """One change of one alert, as every consumer receives it (JSON on MQTT and webhooks)."""

    key: str
    rule: str
    state: str
    severity: str
    station: str | None = None
    building: str | None = None
    household: str | None = None
    gateway: str | None = None
    subject: str | None = None  # network, device name
    ts: int  # ms: data time of the change (sample time, or now for time-driven rules)
    since: int  # ms: when the condition started (first seen of this episode)
    value: float | None = None
    summary: str = ""
    context: dict[str, Any] = {}
    quiet: Quiet = Quiet.NONE  # why it is not paged
    page: bool = False  # goes to the pager (MQTT alert topic, webhooks)


_TRANSITION = msgspec.json.Decoder(Transition)


def parse_transition(raw: bytes) -> Transition:
    """One transition as the alert topic carries it; PayloadError saying why it is not one."""
    try:
        return _TRANSITION.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise PayloadError(f"not an alert transition: {str(exc)[:200]}", "bad_alert") from None


def alert_key(rule: str, station: str | None = None, building: str | None = None,
              household: str | None = None, subject: str | None = None,
              gateway: str | None = None) -> str:
    parts = [p for p in (gateway, station, building, household, subject) if p is not None]
    return f"{rule}:{'/'.join(parts)}"


# -- the rule file -------------------------------------------------------------------------------
_MD_RE = re.compile(r"^(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RoomRules(_Strict):
    """GB/T 33833-2017 §5.1: bedrooms and living rooms ≥ 18 °C."""

    warning_below: float = 18.0
    major_below: float = 16.0
    critical_below: float = 12.0
    window_min: float = Field(60.0, gt=0, description="median over this many minutes")
    hold_min: float = Field(120.0, ge=0, description="low for this long before firing")
    clear_above_by: float = Field(0.5, ge=0, description="hysteresis: clear at warning_below + this")
    clear_hold_min: float = Field(30.0, ge=0, description="cleared for this long before resolved")
    compliant_clear_min: float = Field(120.0, ge=0,
                                       description="meeting the standard (≥ warning_below) inside the "
                                                   "hysteresis band this long also resolves; the band "
                                                   "never pages or escalates")
    recovery_max_h: float = Field(6.0, gt=0,
                                  description="an incident (building, outage) holds its flats still below "
                                              "the standard this long after its cause is gone")
    escalate_after_h: float = Field(24.0, gt=0)
    building_share: float = Field(0.3, gt=0, le=1)
    building_min: int = Field(2, ge=1)
    building_hold_min: float = Field(60.0, ge=0)

    @model_validator(mode="after")
    def _ordered(self) -> RoomRules:
        if not self.critical_below < self.major_below < self.warning_below:
            raise ValueError("need critical_below < major_below < warning_below")
        return self


class SensorRules(_Strict):
    interval_s: float = Field(1200.0, gt=0, description="expected report interval until learned")
    stale_factor: float = Field(3.0, ge=1)
    plausible_min: float = 5.0
    plausible_max: float = 35.0
    implausible_hold_min: float = Field(30.0, ge=0)
    flat_band: float = Field(0.05, ge=0, description="± this for flat_hours = flat-lined")
    flat_hours: float = Field(24.0, gt=0)
    jump_k: float = Field(4.0, gt=0, description="a step this big that the neighbours did not see")
    intermittent_bad: int = Field(3, ge=1, description="this many bad reports (quality bad or implausible) …")
    intermittent_of: int = Field(12, ge=2, le=60, description="… among its last this many is a fault")
    mass_stale_share: float = Field(0.5, gt=0, le=1,
                                    description="this share of a station's sensors stale at once is "
                                                "a concentrator or link fault, not sensor faults")


class NetworkRules(_Strict):
    """One hydraulic network of a station: its make-up totalizer and circulating flow."""

    makeup_total: str = "makeup_total"
    makeup_flow: str | None = Field("makeup_flow", description="its make-up flow meter, if any (surges)")
    circulation_flow: str = "secondary_flow"
    rate_limit_pct: float = Field(2.0, gt=0, description="hourly make-up ÷ circulation, %")
    rollover: float | None = Field(None, gt=0, description="totalizer wraps at this value, if known")


class MakeupRules(_Strict):
    networks: dict[str, NetworkRules] = Field(default_factory=lambda: {"secondary": NetworkRules()})
    rate_hold_h: float = Field(2.0, ge=0)
    baseline_days: int = Field(7, ge=2)
    baseline_min_days: int = Field(3, ge=1)
    day_min_coverage: float = Field(0.9, gt=0, le=1,
                                    description="a day enters the baselines only when its readings span "
                                                "this share of it (a day cut by an outage or a restart "
                                                "is not a day)")
    daily_mad_k: float = Field(5.0, gt=0)
    daily_min_excess_pct: float = Field(50.0, ge=0, description="and at least this much above the median")
    burst_min_flow: float = Field(5.0, ge=0, description="m³/h make-up flow that counts as surging")
    burst_pressure_drop: float = Field(0.05, gt=0, description="MPa fall of secondary return pressure")
    burst_window_min: float = Field(10.0, gt=0)
    tank_drop_m: float = Field(0.3, gt=0, description="tank level falling this far within the window")
    pump_factor: float = Field(3.0, gt=1, description="starts or run time this many times the baseline")
    pump_min_starts: int = Field(20, ge=1)
    ramp_k: float = Field(10.0, gt=0, description="a supply temperature change this big within an hour "
                                                  "is thermal expansion: that hour is not judged")
    leak_min_m3_h: float = Field(0.1, gt=0, description="the CUSUM's unit Δ is the station's night "
                                                        "minimum, at least this")
    cusum_k: float = Field(0.5, gt=0, description="allowance per hour, in Δ: half the step to detect")
    cusum_h: float = Field(1.0, gt=0, description="raised at this many Δ·h above the baseline")
    leak_clear_h: float = Field(1.0, ge=0, description="makeup_daily resolves after this long clear")
    burst_factor: float = Field(5.0, gt=1, description="make-up flow this many times the network's own "
                                                       "peak is a surge (makeup_daily, critical), "
                                                       "whatever the pressure does …")
    burst_min_excess: float = Field(2.0, gt=0, description="… and this many m³/h above it …")
    burst_confirm_min: float = Field(3.0, ge=0, description="… for this long")
    refill_tail_h: float = Field(2.0, ge=0, description="a works window (any building of the station) "
                                                        "covers the station's make-up this long after "
                                                        "it ends: refilling what the works drained")
    max_plausible_flow: float = Field(100.0, gt=0, description="m³/h: a bigger make-up totalizer step "
                                                               "is a meter replacement, not water")


class CirculationRules(_Strict):
    """The secondary circulation: no circulation is a pump trip (heat stops), not a leak."""

    flow: str = Field("secondary_flow", description="the circulation flow point")
    pumps: list[str] = Field(default_factory=lambda: ["circ_pump_running", "circ_pump_running_2"],
                             description="pump running bits: a trip is none of them running")
    faults: list[str] = Field(default_factory=lambda: ["circ_pump_fault", "circ_pump_fault_2"])
    flow_share: float = Field(0.2, gt=0, lt=1, description="a flow below this share of its normal is "
                                                            "a trip whatever the pump bits say")
    learn_min: float = Field(30.0, gt=0, description="normal flow learned over this much data first")
    hold_min: float = Field(2.0, ge=0)
    clear_min: float = Field(5.0, ge=0)


class ClockRules(_Strict):
    skew_s: float = Field(60.0, gt=0, description="a gateway clock this far off (its stamps ahead of "
                                                  "their receipt, or re-stamped on receipt) "
                                                  "is a clock_skew")
    hold_min: float = Field(10.0, ge=0)
    clear_min: float = Field(10.0, ge=0)


class OfflineRules(_Strict):
    station_after_s: float = Field(300.0, gt=0, description="no telemetry for this long")
    status_hold_s: float = Field(60.0, ge=0,
                                 description="the gateway says every device of the station is "
                                             "offline for this long (a poll or two lost to a busy "
                                             "PLC or a noisy bus, retried a second later, is not "
                                             "an outage)")
    device_hold_s: float = Field(300.0, ge=0)
    gateway_wait_s: float = Field(60.0, ge=0,
                                  description="a silent station waits this long past station_after_s "
                                              "for its gateway's will (1.5 × the gateway's MQTT "
                                              "keepalive_s after it died): a gateway outage pages once")


class Overrides(_Strict):
    room: dict[str, float] = Field(default_factory=dict)
    makeup: dict[str, float] = Field(default_factory=dict)

    @field_validator("room")
    @classmethod
    def _room_keys(cls, v: dict[str, float]) -> dict[str, float]:
        bad = sorted(set(v) - set(RoomRules.model_fields))
        if bad:
            raise ValueError(f"unknown room rule(s) {bad}; known: {sorted(RoomRules.model_fields)}")
        return v

    @field_validator("makeup")
    @classmethod
    def _makeup_keys(cls, v: dict[str, float]) -> dict[str, float]:
        allowed = {"rate_limit_pct", "burst_min_flow", "burst_pressure_drop", "tank_drop_m"}
        bad = sorted(set(v) - allowed)
        if bad:
            raise ValueError(f"unknown make-up override(s) {bad}; allowed: {sorted(allowed)}")
        return v


class Season(_Strict):
    start: str = Field("11-15", description="MM-DD, inclusive")
    end: str = Field("03-15", description="MM-DD, inclusive; before start = next year")
    start_grace_days: float = Field(3.0, ge=0, description="filling and commissioning: make-up not judged")

    @field_validator("start", "end")
    @classmethod
    def _md(cls, v: str) -> str:
        if not _MD_RE.fullmatch(v):
            raise ValueError(f"{v!r} must be MM-DD")
        return v


class Window(_Strict):
    """A maintenance window: filling, pressure test, repair. Nothing under it pages."""

    station: Ident
    building: Ident | None = None
    start: dt.datetime
    end: dt.datetime
    reason: str = Field(min_length=1)

    @model_validator(mode="after")
    def _order(self) -> Window:
        if self.end <= self.start:
            raise ValueError("end must be after start")
        if self.start.tzinfo is None or self.end.tzinfo is None:
            raise ValueError("start and end need a timezone, e.g. 2026-12-01T08:00+08:00")
        return self


class ColdDay(_Strict):
    """GB/T 33833 §5.1 holds only while the outdoor daily mean is not below the design outdoor
    temperature: which mean decides, and how room alerts page on colder days."""

    mean: Literal["previous_day", "official"] = Field(
        "previous_day", description="previous_day: the station's own completed previous local day; "
                                    "official: the official/forecast mean of the day (below), the "
                                    "previous day where it has none")
    official: dict[dt.date, float] = Field(default_factory=dict,
                                           description="local date → official or forecast daily mean °C")
    paging: Literal["quiet", "info", "page"] = Field(
        "info", description="room_low and building_low on such a day: quiet (stored, not paged), "
                            "info (paged at severity info, below the usual webhook minimum), page "
                            "(as any day, tagged)")


class AlertRules(_Strict):
    kind: Literal["rules"] = "rules"
    timezone_offset_h: float = Field(8.0, ge=-12, le=14, description="local time for days and seasons")
    season: Season = Season()
    design_outdoor_temp: float = Field(-7.6, description="GB 50736 Appendix A (Beijing −7.6 °C)")
    cold_day: ColdDay = ColdDay()
    room: RoomRules = RoomRules()
    sensor: SensorRules = SensorRules()
    makeup: MakeupRules = MakeupRules()
    offline: OfflineRules = OfflineRules()
    circulation: CirculationRules = CirculationRules()
    clock: ClockRules = ClockRules()
    stations: dict[str, Overrides] = Field(default_factory=dict, description="overrides by station id")
    buildings: dict[str, Overrides] = Field(default_factory=dict,
                                            description="overrides by 'station/building'")
    maintenance: list[Window] = Field(default_factory=list)
    inventory: dict[Ident, list[Ident]] = Field(
        default_factory=dict,
        description="gateway → the stations behind it, as the asset register and the gateways' configs "
                    "say they exist: offline is judged against this list too (a station or gateway "
                    "never heard from is flagged station_after_s after the rules start)")

    @field_validator("inventory")
    @classmethod
    def _once(cls, v: dict[str, list[str]]) -> dict[str, list[str]]:
        seen: dict[str, str] = {}
        for gw, stations in v.items():
            for st in stations:
                if st in seen:
                    raise ValueError(f"station {st} is listed under {seen[st]} and {gw}")
                seen[st] = gw
        return v

    @field_validator("buildings")
    @classmethod
    def _building_keys(cls, v: dict[str, Overrides]) -> dict[str, Overrides]:
        for k in v:
            if k.count("/") != 1:
                raise ValueError(f"building override key {k!r} must be 'station/building'")
        return v

    def room_for(self, station: str, building: str | None) -> RoomRules:
        """The room rules with station then building overrides applied."""
        upd: dict[str, float] = {}
        if station in self.stations:
            upd.update(self.stations[station].room)
        if building is not None and f"{station}/{building}" in self.buildings:
            upd.update(self.buildings[f"{station}/{building}"].room)
        return self.room.model_copy(update=upd) if upd else self.room

    def network_for(self, station: str, network: str) -> NetworkRules:
        base = self.makeup.networks[network]
        upd = {k: v for k, v in self.stations[station].makeup.items()
               if k in NetworkRules.model_fields} if station in self.stations else {}
        return base.model_copy(update=upd) if upd else base

    def makeup_for(self, station: str) -> MakeupRules:
        upd = {k: v for k, v in self.stations[station].makeup.items()
               if k in MakeupRules.model_fields} if station in self.stations else {}
        return self.makeup.model_copy(update=upd) if upd else self.makeup


def load_rules(path: str | Path) -> AlertRules:
    """Read and validate a rule file; ConfigError names the file and the dotted key."""
    from contract.config import read_yaml, render_errors

    data = read_yaml(Path(path))
    try:
        return AlertRules.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(str(path), render_errors(exc, data)) from None
