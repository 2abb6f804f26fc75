"""The takeover report's figures, pure: hourly aggregates and alert-store rows in, ``Report`` out.

``report.source`` fetches the inputs (InfluxDB aggregates them per hour and per entity, or reads
the 1-hour rollup's sums per station and sensor, so a company of 500 stations and a season
arrives as thousands of numbers plus the hours that need a closer look, not the hundreds of
millions of samples behind them); everything here is plain Python on what it got.

Definitions (the report's notes repeat them):

- **make-up rate** per station and network: totalizer deltas between consecutive hourly last
  values (a counter going backwards is a roll-over when ``rollover`` is configured and it was
  near it, else a reset or a new meter: dropped and counted, like a step no pipe could carry);
  the rate is the make-up of the hours whose delta spans one hour and whose circulation was
  measured, divided by that circulation (hourly mean flow × 1 h). Hours in a maintenance
  window are not judged. Daily make-up per heated area: all make-up ÷ days covered ÷ area.
- **room pass rate** (室温合格率): sensor-hours (the hourly mean of a sensor's plausible readings;
  bad readings carry no value) inside the heating season, outside days whose company-wide
  outdoor mean was below the design outdoor temperature, and outside the sensor's
  ``sensor_fault`` episodes; passing when the mean is at or above the standard (18 °C, or the
  building's agreed ``room.warning_below``).
- **refund bands**: a run of consecutive counted hours below the standard lasting longer than
  ``refund_after_h``; its shortfall is the standard minus the run's median hourly mean; a
  household's band is the worst of its runs.
- **completeness**: received ÷ expected samples per point (capped at expected), expected from
  the gateway config's poll group interval, or, without a config, from the data's dominant
  interval (the hourly count most often seen of the station's most frequent point).
- **online**: hours with at least one sample of the station's reference point; gaps are runs of
  hours without.
"""

from __future__ import annotations

import datetime as dt
import math
import re
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from alerting.rows import AlertRow, BuildingRow, HouseholdRow, StationRow, TicketEvent
from contract.alerts import AlertRules
from report.model import (
    VALVE_POINT,
    BuildingCoverage,
    BuildingRooms,
    CommandRow,
    Durations,
    Gap,
    Incident,
    InformationPart,
    LowHousehold,
    MakeupPart,
    NetworkMakeup,
    PeriodOut,
    RefundBand,
    RemotePart,
    RemoteProof,
    Report,
    ReportSettings,
    RoomsPart,
    ServicePart,
    StationInfo,
    StationMakeup,
    StationRemote,
    StationRooms,
    StationService,
    TicketAck,
)

HOUR_MS = 3_600_000
DAY_MS = 86_400_000
MAKEUP_RULES = ("makeup_rate", "makeup_daily", "makeup_burst", "makeup_pump")
Range = tuple[int, int]  # ms, [start, end)
Sensor = tuple[str, str, str]  # station, building, household (the sensor's id)
PointKey = tuple[str, str | None, str | None]  # point, building, household (PointMap.key)


# -- periods --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Period:
    label: str
    title: str
    start: int
    end: int
    tz_h: float

    def local_day(self, t_ms: int) -> int:
        """ms of the local midnight that starts the day holding ``t_ms``."""
        off = int(self.tz_h * HOUR_MS)
        return (t_ms + off) // DAY_MS * DAY_MS - off


_MONTH = re.compile(r"^(\d{4})-(\d{2})$")
_RANGE = re.compile(r"^(\d{4}-\d{2}-\d{2})\.\.(\d{4}-\d{2}-\d{2})$")
_SEASON = re.compile(r"^season:(\d{4})$")


def _local_ms(d: dt.date, tz_h: float) -> int:
    return int(dt.datetime(d.year, d.month, d.day, tzinfo=dt.UTC).timestamp() * 1000 - tz_h * HOUR_MS)


def _md(year: int, md: str) -> dt.date:
    m, d = (int(x) for x in md.split("-"))
    if (m, d) == (2, 29) and not (year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)):
        d = 28
    return dt.date(year, m, d)


def season_of(year: int, rules: AlertRules) -> tuple[dt.date, dt.date]:
    """First and last day (inclusive) of the heating season that starts in ``year``."""
    start = _md(year, rules.season.start)
    end = _md(year, rules.season.end)
    if end < start:
        end = _md(year + 1, rules.season.end)
    return start, end


def parse_period(text: str, rules: AlertRules) -> Period:
    """``2026-11`` (a month), ``2026-11-15..2027-03-15`` (days, inclusive) or ``season:2026``
    (the heating season starting in 2026, as the rule file sets it), in the rules' local time.
    ValueError says what is wrong."""
    tz = rules.timezone_offset_h
    t = text.strip()
    try:
        if m := _MONTH.fullmatch(t):
            y, mo = int(m.group(1)), int(m.group(2))
            first = dt.date(y, mo, 1)
            nxt = dt.date(y + (mo == 12), mo % 12 + 1, 1)
            return Period(t, f"{first:%Y-%m}", _local_ms(first, tz), _local_ms(nxt, tz), tz)
        if m := _RANGE.fullmatch(t):
            a, b = dt.date.fromisoformat(m.group(1)), dt.date.fromisoformat(m.group(2))
            if b < a:
                raise ValueError("the last day is before the first")
            return Period(t, f"{a} – {b}", _local_ms(a, tz), _local_ms(b + dt.timedelta(days=1), tz), tz)
        if m := _SEASON.fullmatch(t):
            a, b = season_of(int(m.group(1)), rules)
            return Period(t, f"heating season {a.year}/{b.year % 100:02d} ({a} – {b})", _local_ms(a, tz),
                          _local_ms(b + dt.timedelta(days=1), tz), tz)
    except ValueError as exc:
        raise ValueError(f"period {text!r}: {exc}") from None
    raise ValueError(f"period {text!r}: use a month (2026-11), days (2026-11-15..2027-03-15) "
                     "or a heating season (season:2026)")


def season_ranges(period: Period, rules: AlertRules) -> list[Range]:
    """The heating season's part of the period (GB/T 33833 holds only in the season)."""
    out: list[Range] = []
    y0 = dt.datetime.fromtimestamp(period.start / 1000, dt.UTC).year - 1
    y1 = dt.datetime.fromtimestamp(period.end / 1000, dt.UTC).year
    for y in range(y0, y1 + 1):
        a, b = season_of(y, rules)
        s = max(period.start, _local_ms(a, period.tz_h))
        e = min(period.end, _local_ms(b + dt.timedelta(days=1), period.tz_h))
        if s < e:
            out.append((s, e))
    return out


def cold_days(daily_outdoor: Mapping[int, float], design: float) -> list[int]:
    """Local days (ms of their midnight) whose outdoor mean was below the design temperature."""
    return sorted(d for d, v in daily_outdoor.items() if v < design)


def subtract(ranges: Sequence[Range], holes: Iterable[Range]) -> list[Range]:
    """``ranges`` without ``holes`` (both [start, end) in ms)."""
    out = list(ranges)
    for hs, he in sorted(holes):
        nxt: list[Range] = []
        for s, e in out:
            if he <= s or hs >= e:
                nxt.append((s, e))
                continue
            if s < hs:
                nxt.append((s, hs))
            if he < e:
                nxt.append((he, e))
        out = nxt
    return out


def analysis_ranges(period: Period, rules: AlertRules, daily_outdoor: Mapping[int, float],
                    data_end: int) -> list[Range]:
    """Where rooms are judged: the season's part of the period up to ``data_end``, without the
    days colder than the design outdoor temperature, in whole hours."""
    season = [(s, min(e, data_end)) for s, e in season_ranges(period, rules) if s < data_end]
    cold = [(d, d + DAY_MS) for d in cold_days(daily_outdoor, rules.design_outdoor_temp)]
    return [(hour_floor(s), hour_ceil(e)) for s, e in subtract(season, cold) if hour_ceil(e) > hour_floor(s)]


def hour_floor(t: int) -> int:
    return t // HOUR_MS * HOUR_MS


def hour_ceil(t: int) -> int:
    return -(-t // HOUR_MS) * HOUR_MS


def merge(ranges: Iterable[Range]) -> list[Range]:
    out: list[Range] = []
    for s, e in sorted(ranges):
        if out and s <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], e))
        else:
            out.append((s, e))
    return out


def fault_windows(alerts: Iterable[AlertRow], analysis: Sequence[Range],
                  data_end: int) -> dict[Sensor, list[Range]]:
    """Each sensor's ``sensor_fault`` episodes as whole hours inside the analysed ranges (an
    hour any part of which the sensor was faulty is left out)."""
    raw: dict[Sensor, list[Range]] = defaultdict(list)
    for a in alerts:
        if a.rule != "sensor_fault" or not (a.station and a.building and a.household):
            continue
        end = a.resolved_at if a.resolved_at is not None else data_end
        raw[(a.station, a.building, a.household)].append(
            (hour_floor(a.since), hour_ceil(max(end, a.since + 1))))
    out: dict[Sensor, list[Range]] = {}
    for k, ws in raw.items():
        cut = [(max(s, rs), min(e, re_)) for s, e in merge(ws) for rs, re_ in analysis
               if s < re_ and e > rs]
        if cut:
            out[k] = merge(cut)
    return out


# -- inputs ---------------------------------------------------------------------------------
@dataclass
class StationPlan:
    """What a station's gateway config says: samples per hour of each point, writable valves."""

    station: str
    per_hour: dict[PointKey, float]
    # buildings whose building_valve_setpoint the map makes writable under a control: block (what
    # the gateway announces in its status)
    controllable: set[str]


@dataclass
class RoomTotal:
    hours: int = 0
    passing: dict[float, int] = field(default_factory=dict)  # standard °C → hours at or above it


@dataclass
class Inputs:
    period: Period
    rules: AlertRules
    settings: ReportSettings
    data_end: int
    generated_at: int
    daily_outdoor: dict[int, float]  # local day → company outdoor mean
    analysis: list[Range]  # season minus cold days, whole hours
    plans: dict[str, StationPlan] = field(default_factory=dict)
    station_register: dict[str, StationRow] = field(default_factory=dict)  # name, heated_area_m2
    building_register: dict[tuple[str, str], BuildingRow] = field(default_factory=dict)
    households: list[HouseholdRow] = field(default_factory=list)  # code, station, building, sensor
    makeup: dict[tuple[str, str], MakeupTally] = field(default_factory=dict)  # (station, network)
    room_totals: dict[Sensor, RoomTotal] = field(default_factory=dict)
    room_low: dict[Sensor, list[tuple[int, float]]] = field(default_factory=dict)  # hours below max standard
    room_fault_hours: dict[Sensor, list[tuple[int, float]]] = field(default_factory=dict)
    counts: dict[str, dict[PointKey, int]] = field(default_factory=dict)  # received samples
    ref_point: dict[str, str] = field(default_factory=dict)
    presence: dict[str, Presence] = field(default_factory=dict)  # of each station's reference point
    alerts: list[AlertRow] = field(default_factory=list)
    ticket_events: list[TicketEvent] = field(default_factory=list)  # with the alert's station, rule
    commands: list[CommandRow] | None = None  # issued in the period (the commands table)
    announced: dict[str, set[str]] | None = None  # station → valve buildings its gateway announced writable
    notes: list[str] = field(default_factory=list)


def standards(rules: AlertRules, sensors: Iterable[Sensor]) -> set[float]:
    return {rules.room_for(s, b).warning_below for s, b, _ in sensors} | {rules.room.warning_below}


def all_stations(i: Inputs) -> list[str]:
    names: set[str] = set(i.plans) | set(i.station_register) | set(i.counts) | set(i.presence)
    names |= {s for s, _ in i.makeup} | {s for s, _, _ in i.room_totals}
    names |= {a.station for a in i.alerts if a.station}
    names |= {b[0] for b in i.building_register}
    return sorted(names)


def _name(i: Inputs, station: str) -> str:
    st = i.station_register.get(station)
    return st.name if st is not None else ""


def _address(i: Inputs, station: str, building: str) -> str | None:
    b = i.building_register.get((station, building))
    return b.address if b is not None else None


def _pct(num: float, den: float) -> float | None:
    return round(100.0 * num / den, 3) if den > 0 else None


# -- make-up --------------------------------------------------------------------------------
def station_area(i: Inputs, station: str) -> float | None:
    """The station's heated area: as registered, else the sum of its buildings' when every
    registered building has one."""
    st = i.station_register.get(station)
    if st is not None and st.heated_area_m2:
        return float(st.heated_area_m2)
    areas = [b.heated_area_m2 for (s, _), b in i.building_register.items() if s == station]
    if areas and all(areas):
        return float(sum(float(a) for a in areas if a))
    return None


def _in_maintenance(rules: AlertRules, station: str, hour: int) -> bool:
    for w in rules.maintenance:
        if w.station == station and w.building is None:
            s, e = int(w.start.timestamp() * 1000), int(w.end.timestamp() * 1000)
            if hour < e and hour + HOUR_MS > s:
                return True
    return False


HourRow = tuple[int, float | None, float | None]  # hour, last totalizer value, mean circulation flow


@dataclass
class MakeupTally:
    """A station network's make-up over the period, what ``network_makeup`` judges: from hourly
    rows (``tally``), or summed by InfluxDB from the 1-hour rollup (report.rollup) for a network
    whose hours hold no exception (no gap, reset, replacement, missing circulation or maintenance
    hour), where the sums come to the same."""

    volume: float = 0.0  # every accepted delta
    judged: float = 0.0  # deltas of hours that span one hour with circulation measured
    circulation: float = 0.0  # those hours' mean flow × 1 h
    hours: int = 0  # judged hours
    events: int = 0  # resets, new meters, steps no pipe could carry: dropped
    excluded: float = 0.0  # deltas of maintenance hours
    first: int | None = None  # the first and last hour with a totalizer value
    last: int | None = None


def tally(rules: AlertRules, station: str, network: str, rows: Sequence[HourRow]) -> MakeupTally:
    """Totalizer deltas between consecutive hourly last values (see the module's docstring)."""
    nr = rules.network_for(station, network)
    max_flow = rules.makeup_for(station).max_plausible_flow
    out = MakeupTally()
    prev: tuple[int, float] | None = None
    for t, total, flow in sorted(rows):
        if total is None:
            continue
        out.first = t if out.first is None else out.first
        out.last = t
        if prev is None:
            prev = (t, total)
            continue
        pt, pv = prev
        prev = (t, total)
        d = total - pv
        if d < 0:
            if nr.rollover is not None and 0.5 * nr.rollover < pv <= nr.rollover and total < nr.rollover:
                d += nr.rollover
            else:
                out.events += 1  # reset or a new meter: not water
                continue
        if d > max_flow * (t - pt) / HOUR_MS:
            out.events += 1  # a step no pipe could carry: replacement or misread
            continue
        out.volume += d
        if t - pt != HOUR_MS or flow is None:
            continue  # spans a gap, or no circulation measured: counted, not judged
        if _in_maintenance(rules, station, t):
            out.excluded += d
            continue
        out.judged += d
        out.circulation += flow  # mean m³/h over the hour × 1 h
        out.hours += 1
    return out


def network_makeup(rules: AlertRules, station: str, network: str, got: MakeupTally | Sequence[HourRow],
                   area: float | None) -> NetworkMakeup:
    t = got if isinstance(got, MakeupTally) else tally(rules, station, network, got)
    nr = rules.network_for(station, network)
    seen = t.first is not None and t.last is not None
    days = ((t.last - t.first) / DAY_MS + 1 / 24) if t.first is not None and t.last is not None else 0.0
    rate = 100.0 * t.judged / t.circulation if t.circulation > 0 else None
    daily = (t.volume / days / area * 10_000) if (area and days > 0 and seen) else None
    return NetworkMakeup(
        network=network, makeup_m3=round(t.volume, 3) if seen else None,
        judged_makeup_m3=round(t.judged, 3), circulation_m3=round(t.circulation, 1), judged_hours=t.hours,
        rate_pct=round(rate, 4) if rate is not None else None, limit_pct=nr.rate_limit_pct,
        passed=None if rate is None else rate <= nr.rate_limit_pct,
        margin_pp=round(rate - nr.rate_limit_pct, 4) if rate is not None else None,
        days=round(days, 3), daily_t_per_10k_m2=round(daily, 4) if daily is not None else None,
        meter_events=t.events, excluded_m3=round(t.excluded, 3))


def _incident(a: AlertRow) -> Incident:
    ctx = a.context or {}
    pattern = str(ctx.get("pattern") or ctx.get("why") or "")
    # only the daily verdict tells a flat day (leak) from an evening peak (theft); an hour above
    # the limit says no more than that
    kind = {"makeup_burst": "burst", "makeup_pump": "pump", "makeup_rate": "above the limit"}.get(
        a.rule) or ("theft?" if "theft" in pattern else "leak?")
    detail = pattern or (f"{ctx['rate_pct']} % against {ctx['limit_pct']} %" if "rate_pct" in ctx else "")
    return Incident(alert_id=a.id, station=a.station, rule=a.rule, network=a.subject,
                    severity=a.severity, since=a.since, resolved_at=a.resolved_at, value=a.value,
                    kind=kind, detail=detail, ticket=a.ack_ticket)


def overlaps(a: AlertRow, start: int, end: int) -> bool:
    return bool(a.since < end and (a.resolved_at is None or a.resolved_at >= start))


def makeup_part(i: Inputs, stations: Sequence[str]) -> MakeupPart:
    nets = list(i.rules.makeup.networks)
    incidents = [_incident(a) for a in sorted(i.alerts, key=lambda a: (a.since, a.id))
                 if a.rule in MAKEUP_RULES and overlaps(a, i.period.start, i.period.end)]
    per_station = Counter(x.station for x in incidents)
    out: list[StationMakeup] = []
    sums: dict[str, list[float]] = {n: [0.0, 0.0, 0.0, 0.0, 0.0] for n in nets}  # judged, circ, vol/day, area
    passing = failing = no_data = 0
    for s in stations:
        area = station_area(i, s)
        nm = [network_makeup(i.rules, s, n, i.makeup.get((s, n), MakeupTally()), area) for n in nets]
        judged = [x for x in nm if x.passed is not None]
        if not judged:
            no_data += 1
        elif all(x.passed for x in judged):
            passing += 1
        else:
            failing += 1
        for x in nm:
            acc = sums[x.network]
            acc[0] += x.judged_makeup_m3
            acc[1] += x.circulation_m3
            acc[4] += x.judged_hours
            if x.daily_t_per_10k_m2 is not None and area and x.makeup_m3 is not None and x.days > 0:
                acc[2] += x.makeup_m3 / x.days
                acc[3] += area
        out.append(StationMakeup(station=s, name=_name(i, s),
                                 area_m2=area, networks=nm, incidents=per_station.get(s, 0)))
    company: list[NetworkMakeup] = []
    for n in nets:
        j, c, per_day, area, hours = sums[n]
        limit = i.rules.makeup.networks[n].rate_limit_pct
        rate = 100.0 * j / c if c > 0 else None
        company.append(NetworkMakeup(
            network=n, makeup_m3=None, judged_makeup_m3=round(j, 3), circulation_m3=round(c, 1),
            judged_hours=int(hours), rate_pct=round(rate, 4) if rate is not None else None, limit_pct=limit,
            passed=None if rate is None else rate <= limit,
            margin_pp=round(rate - limit, 4) if rate is not None else None, days=0.0,
            daily_t_per_10k_m2=round(per_day / area * 10_000, 4) if area else None, meter_events=0,
            excluded_m3=0.0))
    return MakeupPart(company=company, stations=out, passing=passing, failing=failing, no_data=no_data,
                      incidents=incidents)


# -- rooms ----------------------------------------------------------------------------------
def runs(hours: Sequence[tuple[int, float]]) -> list[list[tuple[int, float]]]:
    """Consecutive hours (each one hour after the one before) as runs."""
    out: list[list[tuple[int, float]]] = []
    for t, v in sorted(hours):
        if out and t - out[-1][-1][0] == HOUR_MS:
            out[-1].append((t, v))
        else:
            out.append([(t, v)])
    return out


def band_of(shortfall: float, bands: Sequence[RefundBand]) -> RefundBand | None:
    for b in bands:
        if shortfall > b.above_k and (b.up_to_k is None or shortfall <= b.up_to_k):
            return b
    return None


@dataclass
class _Room:
    sensor: Sensor
    standard: float
    hours: int
    passing: int
    fault_hours: int
    low: list[tuple[int, float]]
    band: RefundBand | None
    longest: list[tuple[int, float]]


def _room(i: Inputs, k: Sensor) -> _Room:
    st, b, _ = k
    standard = i.rules.room_for(st, b).warning_below
    total = i.room_totals.get(k, RoomTotal())
    fault = i.room_fault_hours.get(k, [])
    fault_t = {t for t, _ in fault}
    hours = total.hours - len(fault)
    passing = total.passing.get(standard, 0) - sum(1 for _, v in fault if v >= standard)
    low = [(t, v) for t, v in i.room_low.get(k, []) if v < standard and t not in fault_t]
    rs = runs(low)
    band: RefundBand | None = None
    bands = i.settings.refund_bands
    for r in rs:
        if len(r) > i.settings.refund_after_h:
            got = band_of(standard - statistics.median(v for _, v in r), bands)
            if got is not None and (band is None or got.refund_pct > band.refund_pct):
                band = got
    longest = max(rs, key=len) if rs else []
    return _Room(k, standard, hours, passing, len(fault), low, band, longest)


def rooms_part(i: Inputs, stations: Sequence[str]) -> RoomsPart:
    sensors = sorted(set(i.room_totals) | set(i.room_low))
    rooms = [_room(i, k) for k in sensors]
    by_station: dict[str, list[_Room]] = defaultdict(list)
    for r in rooms:
        by_station[r.sensor[0]].append(r)
    band_names = [b.name for b in i.settings.refund_bands]
    out: list[StationRooms] = []
    for s in stations:
        rs = by_station.get(s, [])
        by_b: dict[str, list[_Room]] = defaultdict(list)
        for r in rs:
            by_b[r.sensor[1]].append(r)
        blds = []
        for b in sorted(by_b):
            x = by_b[b]
            h, p = sum(r.hours for r in x), sum(r.passing for r in x)
            blds.append(BuildingRooms(
                building=b, address=_address(i, s, b),
                standard_c=x[0].standard, sensors=len(x), hours=h, passing=p, rate_pct=_pct(p, h),
                households_low=sum(1 for r in x if r.low)))
        h, p = sum(r.hours for r in rs), sum(r.passing for r in rs)
        counts = Counter(r.band.name for r in rs if r.band is not None)
        out.append(StationRooms(station=s, name=_name(i, s),
                                hours=h, passing=p, rate_pct=_pct(p, h),
                                fault_hours=sum(r.fault_hours for r in rs), buildings=blds,
                                bands={n: counts.get(n, 0) for n in band_names}))
    codes = {(h.station, h.building, h.sensor): h for h in i.households if h.sensor}
    low = sorted((r for r in rooms if r.low), key=lambda r: (-len(r.low), -len(r.longest), r.sensor))
    longest = []
    for r in low[: i.settings.longest_n]:
        reg = codes.get(r.sensor)
        addr = _address(i, r.sensor[0], r.sensor[1])
        if reg is not None and addr:
            addr = f"{addr} {reg.unit or ''}-{reg.room or ''}".rstrip("-").strip()
        longest.append(LowHousehold(
            station=r.sensor[0], building=r.sensor[1], sensor=r.sensor[2],
            code=reg.code if reg is not None else None, address=addr, standard_c=r.standard,
            hours_below=len(r.low), longest_h=len(r.longest),
            longest_from=r.longest[0][0] if r.longest else None,
            coldest_c=round(min(v for _, v in r.low), 2) if r.low else None,
            band=r.band.name if r.band else None, refund_pct=r.band.refund_pct if r.band else None))
    total_h, total_p = sum(r.hours for r in rooms), sum(r.passing for r in rooms)
    all_counts = Counter(r.band.name for r in rooms if r.band is not None)
    return RoomsPart(hours=total_h, passing=total_p, rate_pct=_pct(total_p, total_h),
                     fault_hours=sum(r.fault_hours for r in rooms), stations=out, longest=longest,
                     bands=list(i.settings.refund_bands),
                     band_counts={n: all_counts.get(n, 0) for n in band_names},
                     refund_after_h=i.settings.refund_after_h)


# -- information management -----------------------------------------------------------------
def gaps(hours_present: Iterable[int], start: int, end: int) -> list[Gap]:
    """Runs of whole hours in [start, end) without a sample."""
    have = sorted(h for h in set(hours_present) if start <= h < end)
    out: list[Gap] = []
    cur = hour_floor(start)
    for h in [*have, hour_ceil(end)]:
        if h > cur:
            out.append(Gap(start=cur, end=h, hours=(h - cur) // HOUR_MS))
        cur = max(cur, h + HOUR_MS)
    return out


def dominant(counts: Iterable[int]) -> int | None:
    """The hourly sample count seen most often (ties: the larger): a station's own rate."""
    c = Counter(n for n in counts if n > 0)
    if not c:
        return None
    return max(c.items(), key=lambda kv: (kv[1], kv[0]))[0]


@dataclass
class Presence:
    """A station's reference point over [start, end): hours with a sample, the runs of hours
    without one, and its own rate (``dominant`` of its hourly counts)."""

    online: int
    gaps: list[Gap]
    rate: int | None


def presence(hourly: Iterable[tuple[int, int]], start: int, end: int) -> Presence:
    """From (hour, samples) pairs: what InfluxDB counted per hour of the reference point."""
    rows = [(h, n) for h, n in hourly if n > 0]
    present = [h for h, _ in rows]
    return Presence(online=sum(1 for h in present if start <= h < end), gaps=gaps(present, start, end),
                    rate=dominant(n for _, n in rows))


def information_part(i: Inputs, stations: Sequence[str]) -> InformationPart:
    start, end = i.period.start, i.data_end
    period_h = max(0, (hour_ceil(end) - hour_floor(start)) // HOUR_MS)
    per_b: dict[tuple[str, str], list[HouseholdRow]] = defaultdict(list)
    for h in i.households:
        per_b[(h.station, h.building)].append(h)
    out: list[StationInfo] = []
    tot_exp = tot_recv = tot_online = tot_hours = 0
    for s in stations:
        counts = i.counts.get(s, {})
        plan = i.plans.get(s)
        expected = received = 0
        source: Literal["config", "data", "none"] = "none"
        if plan is not None:
            source = "config"
            for key, per_hour in plan.per_hour.items():
                e = int(per_hour * period_h)
                expected += e
                received += min(e, counts.get(key, 0))
        pres = i.presence.get(s) or presence([], start, end)
        if plan is None and s in i.ref_point and pres.rate is not None:
            source = "data"
            expected = pres.rate * period_h
            received = min(expected, counts.get((i.ref_point[s], None, None), 0))
        online, gs = pres.online, pres.gaps
        seen: dict[str, set[str]] = defaultdict(set)
        for (p, bld, hh), n in counts.items():
            if p == "room_temp" and bld and hh and n > 0:
                seen[bld].add(hh)
        blds = []
        for b in sorted({b for (st, b) in per_b if st == s} | set(seen)):
            reg = per_b.get((s, b), [])
            reporting = len(seen.get(b, set()))
            blds.append(BuildingCoverage(
                building=b, households=len(reg), sensors_registered=sum(1 for x in reg if x.sensor),
                sensors_reporting=reporting, coverage_pct=_pct(reporting, len(reg)) if reg else None))
        tot_exp += expected
        tot_recv += received
        tot_online += online
        tot_hours += period_h
        out.append(StationInfo(
            station=s, name=_name(i, s), source=source,
            expected=expected, received=received, completeness_pct=_pct(received, expected),
            period_hours=period_h, online_hours=online, online_pct=_pct(online, period_h), gaps=len(gs),
            gap_hours=sum(g.hours for g in gs), longest_gap_h=max((g.hours for g in gs), default=0),
            gap_list=sorted(gs, key=lambda g: (-g.hours, g.start))[:10], buildings=blds))
    return InformationPart(expected=tot_exp, received=tot_recv, completeness_pct=_pct(tot_recv, tot_exp),
                           online_pct=_pct(tot_online, tot_hours), stations=out)


# -- service --------------------------------------------------------------------------------
def durations(minutes: Sequence[float]) -> Durations:
    if not minutes:
        return Durations(n=0, median_min=None, p90_min=None, mean_min=None)
    xs = sorted(minutes)
    p90 = xs[max(0, math.ceil(0.9 * len(xs)) - 1)]  # nearest rank
    return Durations(n=len(xs), median_min=round(statistics.median(xs), 2), p90_min=round(p90, 2),
                     mean_min=round(statistics.fmean(xs), 2))


def service_part(i: Inputs, stations: Sequence[str]) -> ServicePart:
    start, end = i.period.start, i.period.end
    raised = [a for a in i.alerts if start <= a.since < end]
    tickets = sorted((TicketAck(alert_id=e.alert_id, station=e.station, rule=e.rule, ts=e.ts, kind=e.kind,
                                actor=e.actor, ticket=e.ticket, note=e.note)
                      for e in i.ticket_events if e.ticket and start <= e.ts < end),
                     key=lambda x: (x.ts, x.alert_id))

    def to_ack(xs: Iterable[AlertRow]) -> list[float]:
        """Minutes from firing (or first seen) to the acknowledgement, of those acknowledged."""
        return [max(0.0, float(a.ack_at - (a.fired_at or a.since)) / 60_000) for a in xs
                if a.ack_at is not None]

    def to_res(xs: Iterable[AlertRow]) -> list[float]:
        """Minutes from first seen to resolution, of those resolved."""
        return [max(0.0, float(a.resolved_at - a.since) / 60_000) for a in xs if a.resolved_at is not None]

    out = []
    for s in stations:
        xs = [a for a in raised if a.station == s]
        acked, res = to_ack(xs), to_res(xs)
        out.append(StationService(
            station=s, raised=len(xs), by_rule=dict(sorted(Counter(a.rule for a in xs).items())),
            by_severity=dict(sorted(Counter(a.severity for a in xs).items())), acknowledged=len(acked),
            to_acknowledge=durations(acked), resolved=len(res), to_resolve=durations(res),
            tickets=sum(1 for t in tickets if t.station == s)))
    return ServicePart(raised=len(raised), by_rule=dict(sorted(Counter(a.rule for a in raised).items())),
                       to_acknowledge=durations(to_ack(raised)), to_resolve=durations(to_res(raised)),
                       tickets=tickets, stations=out)


# -- remote control ------------------------------------------------------------------------
def controllable_valves(plans: Mapping[str, StationPlan], announced: Mapping[str, set[str]] | None
                        ) -> dict[str, tuple[set[str], Literal["announced", "config"]]]:
    """Each station's buildings whose entrance valve setpoint is remotely writable: what its
    gateway announced (``announced``: the writable points of the gateway statuses the API holds),
    else what its gateway config gives (a ``write:`` block under a gateway with ``control:``)."""
    out: dict[str, tuple[set[str], Literal["announced", "config"]]] = {
        s: (set(p.controllable), "config") for s, p in plans.items()}
    for s, bs in (announced or {}).items():
        out[s] = (set(bs), "announced")
    return out


def remote_part(controllable: Mapping[str, set[str]], commands: Sequence[CommandRow] | None,
                start: int, end: int, stations: Sequence[str],
                sources: Mapping[str, Literal["announced", "config"]] | None = None) -> RemotePart:
    """Buildings whose entrance valve is remotely writable, those proven in [start, end) by a
    confirmed command to their valve (written and read back equal: ``mismatch`` proves nothing),
    and the commands issued in the period by outcome. ``commands`` None: the commands were not
    read (the section says so rather than claim zero)."""
    rows = sorted((c for c in commands or () if start <= c.issued_at < end),
                  key=lambda c: (c.finished_at or c.issued_at, c.id))
    proofs: dict[tuple[str, str], RemoteProof] = {}
    by_station: dict[str, Counter[str]] = defaultdict(Counter)
    for c in rows:
        by_station[c.station][c.outcome] += 1
        if (c.outcome == "confirmed" and c.point == VALVE_POINT and c.building is not None
                and c.household is None and c.building in controllable.get(c.station, set())):
            proofs.setdefault((c.station, c.building), RemoteProof(
                station=c.station, building=c.building, command=c.id, at=c.finished_at or c.issued_at,
                ticket=c.ticket))
    names = sorted(set(stations) | set(controllable) | set(by_station))
    src = sources or {}
    out = [StationRemote(station=s, controllable=sorted(controllable.get(s, set())), source=src.get(s),
                         proven=sorted(b for st, b in proofs if st == s),
                         commands=dict(sorted(by_station[s].items()))) for s in names]
    total: Counter[str] = Counter()
    for per in by_station.values():
        total.update(per)
    return RemotePart(wired=commands is not None, controllable=sum(len(v) for v in controllable.values()),
                      proven=len(proofs), commands=dict(sorted(total.items())), stations=out,
                      proofs=sorted(proofs.values(), key=lambda p: (p.station, p.building)))


# -- the whole ------------------------------------------------------------------------------
def _missing(i: Inputs, stations: Sequence[str], mk: MakeupPart) -> list[str]:
    out = []
    no_area = [s.station for s in mk.stations if s.area_m2 is None]
    if no_area:
        out.append(f"daily make-up per heated area (t/10,000 m²/day): no heated area for {len(no_area)} "
                   f"station(s): {', '.join(no_area[:30])}{' …' if len(no_area) > 30 else ''} — import "
                   "building_area_m2 or station_area_m2 with the asset register")
    b_missing = sum(1 for b in i.building_register.values() if not b.heated_area_m2)
    if b_missing:
        out.append(f"heated area of {b_missing} of {len(i.building_register)} registered buildings")
    no_data = [s.station for s in mk.stations if all(n.passed is None for n in s.networks)]
    if no_data:
        out.append(f"make-up rate: no make-up totalizer or circulation data from {', '.join(no_data[:30])}")
    no_plan = [s for s in stations if s not in i.plans]
    announced = i.announced or {}
    if no_plan and i.plans:
        out.append(f"gateway config for {len(no_plan)} station(s) ({', '.join(no_plan[:30])}): their "
                   "expected rate is the data's own")
    if not i.plans:
        out.append("gateway configs: none given, so expected sample rates come from the data")
    unknown = [s for s in stations if s not in i.plans and s not in announced]
    if unknown:
        out.append(f"remotely controllable valves of {len(unknown)} station(s) ({', '.join(unknown[:30])}"
                   f"{' …' if len(unknown) > 30 else ''}): neither a gateway status with its writable points "
                   "(the API's control: block) nor a gateway config in the report settings")
    if not i.settings.refund_bands:
        out.append("refund bands: the company has configured none")
    if i.commands is None:
        out.append("remote control: the commands table was not read")
    if not i.building_register:
        out.append("asset register: empty; names, addresses, household codes and sensor coverage are missing")
    return out


def build(i: Inputs) -> Report:
    stations = all_stations(i)
    mk = makeup_part(i, stations)
    season = season_ranges(i.period, i.rules)
    cold = [d for d in cold_days(i.daily_outdoor, i.rules.design_outdoor_temp)
            if any(s <= d < e for s, e in season)]
    period = PeriodOut(
        label=i.period.label, title=i.period.title, start=i.period.start, end=i.period.end,
        data_end=i.data_end, timezone_offset_h=i.period.tz_h, season=season,
        cold_days=[dt.datetime.fromtimestamp((d + i.period.tz_h * HOUR_MS) / 1000, dt.UTC).date().isoformat()
                   for d in cold],
        design_outdoor_temp=i.rules.design_outdoor_temp)
    valves = controllable_valves(i.plans, i.announced)
    controllable = {s: bs for s, (bs, _) in valves.items() if bs}
    return Report(
        company=i.settings.company, period=period, generated_at=i.generated_at, stations=stations, makeup=mk,
        rooms=rooms_part(i, stations), information=information_part(i, stations),
        service=service_part(i, stations),
        remote_control=remote_part(controllable, i.commands, i.period.start, i.period.end, stations,
                                   {s: src for s, (_, src) in valves.items()}),
        missing=_missing(i, stations, mk), notes=list(i.notes))
