"""The takeover report's I/O: InfluxQL with server-side aggregation, and alert-store reads.

InfluxDB does the heavy part: every statement aggregates per hour and per entity (``GROUP BY
time(1h), "station"`` …) or to one number per entity, so what crosses the wire is hourly per
station and, for rooms, only counts per sensor plus the hours below the standard — a company
of 500 stations and a season is a few hundred thousand numbers (bench/report_bench.py). The
5-minute / 1-hour rollups of the site issue (H5) are not used yet: these statements read the
raw measurements.

``collect()`` takes a ``query_many(statements, bind)`` coroutine (the API's InfluxReader has
one; the command line makes one) and the alert store (the asset register is read through the
site registry on the same database), and returns ``report.compute.Inputs``.
"""

from __future__ import annotations

import asyncio
import glob
import re
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alerting.registry import SiteRegistry
from alerting.rows import AlertRow, Register, TicketEvent
from alerting.store import Store
from contract.alerts import AlertRules, load_rules
from contract.config import GatewayConfig, load_gateway_config
from contract.errors import ConfigError
from contract.influx import MEASUREMENT_BUILDING, MEASUREMENT_HOUSEHOLD, MEASUREMENT_STATION
from contract.points import POINT_NAME_RE, QUALITY_SUFFIX
from contract.topics import IDENT_PATTERN
from report import compute
from report.compute import Inputs, Period, RoomTotal, Sensor, StationPlan
from report.model import CommandRow, Report, ReportSettings, load_settings

QueryMany = Callable[[list[str], dict[str, str | int | float] | None], Awaitable[list[list[dict[str, Any]]]]]
_IDENT = re.compile(IDENT_PATTERN)
_BATCH = 200  # statements per round trip (fault windows): one URL stays well under 1 MB


@dataclass
class Context:
    """What a report needs besides the data, loaded once (API start-up, the command line)."""

    settings: ReportSettings = field(default_factory=ReportSettings)
    rules: AlertRules = field(default_factory=AlertRules)
    plans: dict[str, StationPlan] = field(default_factory=dict)


def plans_from(configs: Sequence[GatewayConfig]) -> dict[str, StationPlan]:
    """Samples per hour of each point (its poll group's interval; a report-by-exception group
    at least its heartbeat) and the buildings whose entrance valve the map makes writable."""
    out: dict[str, StationPlan] = {}
    for cfg in configs:
        plan = out.setdefault(cfg.station, StationPlan(cfg.station, {}, set()))
        for dev in cfg.resolved:
            for p in dev.points:
                g = cfg.poll_groups[p.group]
                every = g.max_silence_s if g.by_exception else g.interval_s
                plan.per_hour[p.key] = plan.per_hour.get(p.key, 0.0) + 3600.0 / every
                if p.point.startswith("building_valve_setpoint") and p.writable and p.building:
                    plan.controllable.add(p.building)
    return out


def load_context(path: str | Path | None) -> Context:
    """The report settings file (``kind: report``) with the rule file and gateway configs it names."""
    if path is None:
        return Context()
    settings = load_settings(path)
    rules = load_rules(settings.rules) if settings.rules else AlertRules()
    files: list[str] = []
    for g in settings.gateways:
        found = sorted(glob.glob(g))
        if not found:
            raise ConfigError(str(path), [f"gateways: {g!r} matches no file"])
        files += found
    return Context(settings, rules, plans_from([load_gateway_config(f) for f in files]))


# -- the alert store ------------------------------------------------------------------------
@dataclass
class StoreRows:
    alerts: list[AlertRow]  # overlapping the period
    events: list[TicketEvent]  # acknowledgements and notes with a hotline ticket, in the period
    register: Register


def store_rows(store: Store, start: int, end: int) -> StoreRows:
    """What the report reads from the site's database, read-only."""
    return StoreRows(store.between(start, end), store.ticket_events(start, end),
                     SiteRegistry(store.db).register())


# -- InfluxQL -------------------------------------------------------------------------------
def _field(name: str, where: str) -> str:
    """A point name from a rule file, checked before it becomes a quoted InfluxQL identifier."""
    if not POINT_NAME_RE.fullmatch(name):
        raise ConfigError("rules", [f"{where}: {name!r} is not a point name"])
    return name


def _t(start: int, end: int) -> str:
    return f"time >= {int(start)}ms AND time < {int(end)}ms"


def _offset(tz_h: float) -> str:
    """GROUP BY time(1d, offset) so InfluxDB's days are local days."""
    return f"{round(-tz_h * 60) % 1440}m"


def _rows(series: list[dict[str, Any]]) -> list[tuple[dict[str, str], dict[str, Any]]]:
    out = []
    for s in series:
        tags = s.get("tags") or {}
        for v in s.get("values") or []:
            out.append((tags, dict(zip(s["columns"], v, strict=True))))
    return out


def _rooms_inner(start: int, end: int, lo: float, hi: float, stds: Sequence[float] = (),
                 where: str = "") -> str:
    # the hourly mean of each sensor's plausible readings: bad readings carry no value, an
    # implausible (uncertain) one is outside [lo, hi] and left out here. With ``stds``, a column
    # f<j> per standard: floor((m − standard) / 1000) is −1 for an hour below it and 0 at or above
    # (|m − standard| < 1000), so one pass over the readings counts hours and failures together —
    # InfluxDB evaluates a subquery once per statement, and a statement per standard cost as much
    # again (bench/report_bench.py --profile)
    fails = "".join(f', floor((mean("room_temp") - {std!r}) / 1000) AS f{j}' for j, std in enumerate(stds))
    return (f'SELECT mean("room_temp") AS m{fails} FROM "{MEASUREMENT_HOUSEHOLD}" '
            f'WHERE {_t(start, end)}{where} AND "room_temp" >= {lo!r} AND "room_temp" <= {hi!r} '
            'GROUP BY time(1h), "station", "building", "household" fill(none)')


_BY_SENSOR = ' GROUP BY "station", "building", "household"'
_ROOM = '"room_temp"'


def _ident(v: str) -> str:
    """A tag value InfluxDB gave back, checked before it is written into a statement."""
    if not _IDENT.fullmatch(v):
        raise ValueError(f"unexpected identifier {v!r} in InfluxDB's answer")
    return v


def _rules_standards(rules: AlertRules) -> list[float]:
    """Every room standard the rules can give a sensor (the default and each override)."""
    out = {rules.room.warning_below}
    for o in [*rules.stations.values(), *rules.buildings.values()]:
        if "warning_below" in o.room:
            out.add(o.room["warning_below"])
    return sorted(out)


class _Rooms:
    """The room statements: over raw readings (an hourly-mean subquery) or, with
    ``settings.rooms_hourly``, over hourly means already stored (plain filters, no GROUP BY time)."""

    def __init__(self, ctx: Context) -> None:
        r = ctx.settings.rooms_hourly
        self.lo, self.hi = ctx.rules.sensor.plausible_min, ctx.rules.sensor.plausible_max
        self.rollup = r
        if r is not None:
            fld = _field(r.field, "rooms_hourly.field")
            self.f = f'"{fld}"'
            self.src = (f'"{r.retention_policy}"."{r.measurement}"' if r.retention_policy
                        else f'"{r.measurement}"')

    def _plausible(self, col: str) -> str:
        return f"{col} >= {self.lo!r} AND {col} <= {self.hi!r}"

    def totals(self, s: int, e: int, stds: Sequence[float]) -> str:
        if self.rollup is None:
            sums = "".join(f", sum(f{j}) AS f{j}" for j in range(len(stds)))
            inner = _rooms_inner(s, e, self.lo, self.hi, stds)
            return f"SELECT count(m) AS n{sums} FROM ({inner}){_BY_SENSOR}"
        return (f"SELECT count({self.f}) AS n FROM {self.src} WHERE {_t(s, e)} AND {self._plausible(self.f)}"
                f"{_BY_SENSOR}")

    def passing(self, s: int, e: int, std: float) -> str:  # rollup only
        return (f"SELECT count({self.f}) AS n FROM {self.src} WHERE {_t(s, e)} AND {self._plausible(self.f)} "
                f"AND {self.f} >= {std!r}{_BY_SENSOR}")

    def low(self, s: int, e: int, below: float, where: str = "") -> str:
        if self.rollup is None:
            inner = _rooms_inner(s, e, self.lo, self.hi, where=where)
            return f"SELECT m FROM ({inner}) WHERE m < {below!r}{_BY_SENSOR}"
        return (f"SELECT {self.f} AS m FROM {self.src} WHERE {_t(s, e)}{where} AND {self._plausible(self.f)} "
                f"AND {self.f} < {below!r}{_BY_SENSOR}")

    def hours(self, s: int, e: int, n: int) -> str:
        """One sensor's hourly means in [s, e) (its station, building, household bound as $s<n> …)."""
        one = f'"station" = $s{n} AND "building" = $b{n} AND "household" = $h{n}'
        if self.rollup is None:
            return (f'SELECT mean("room_temp") AS m FROM "{MEASUREMENT_HOUSEHOLD}" WHERE {one} '
                    f'AND {_t(s, e)} AND {self._plausible(_ROOM)} GROUP BY time(1h) fill(none)')
        return (f"SELECT {self.f} AS m FROM {self.src} WHERE {one} AND {_t(s, e)} "
                f"AND {self._plausible(self.f)}")


async def collect(query: QueryMany, store: Store, ctx: Context, period: Period, now_ms: int,
                  commands: list[CommandRow] | None = None) -> Inputs:
    """Every input of the report. Independent chains of statements run concurrently (InfluxDB
    answers concurrent requests on every core; one request's statements run one after another)."""
    rules = ctx.rules
    data_end = min(period.end, max(period.start, now_ms))
    t = _t(period.start, data_end)
    nets = {n: (_field(nr.makeup_total, f"makeup.networks.{n}.makeup_total"),
                _field(nr.circulation_flow, f"makeup.networks.{n}.circulation_flow"))
            for n, nr in rules.makeup.networks.items()}
    pairs = sorted(set(nets.values()))
    rows, outdoor = await asyncio.gather(
        asyncio.to_thread(store_rows, store, period.start, period.end),
        query([f'SELECT mean("outdoor_temp") AS m FROM "{MEASUREMENT_STATION}" WHERE {t} '
               f"GROUP BY time(1d, {_offset(period.tz_h)}) fill(none)"], None))
    i = Inputs(period=period, rules=rules, settings=ctx.settings, data_end=data_end, generated_at=now_ms,
               daily_outdoor={}, analysis=[], plans=ctx.plans, commands=commands)
    for _, row in _rows(outdoor[0]):
        if row.get("m") is not None:
            i.daily_outdoor[int(row["time"])] = float(row["m"])
    i.analysis = compute.analysis_ranges(period, rules, i.daily_outdoor, data_end)
    rooms = _Rooms(ctx)
    stds = _rules_standards(rules)

    async def counts_and_presence() -> None:
        res = await query([
            f'SELECT count(*) FROM "{MEASUREMENT_STATION}" WHERE {t} GROUP BY "station"',
            f'SELECT count(*) FROM "{MEASUREMENT_BUILDING}" WHERE {t} GROUP BY "station", "building"',
            f'SELECT count(*) FROM "{MEASUREMENT_HOUSEHOLD}" WHERE {t}{_BY_SENSOR}'], None)
        for level, series in zip(("station", "building", "household"), res, strict=True):
            for tags, row in _rows(series):
                c = i.counts.setdefault(tags["station"], {})
                b, h = tags.get("building"), tags.get("household")
                for col, n in row.items():
                    if col.startswith("count_") and n and not col.endswith(QUALITY_SUFFIX):
                        c[(col.removeprefix("count_"), b if level != "station" else None,
                           h if level == "household" else None)] = int(n)
        # the reference point of each station's presence: with a config, a station point of its
        # fastest poll group; without, the station's most frequent point
        for st, counts in i.counts.items():
            plan = ctx.plans.get(st)
            cands: dict[tuple[str, str | None, str | None], float] = (
                {k: v for k, v in plan.per_hour.items() if k[1] is None} if plan is not None
                else {k: float(v) for k, v in counts.items() if k[1] is None})
            if cands:
                i.ref_point[st] = max(sorted(cands), key=lambda k: cands[k])[0]
        refs = sorted(set(i.ref_point.values()))
        if not refs:
            return
        res = await query([f'SELECT count("{r}") AS n FROM "{MEASUREMENT_STATION}" WHERE {t} '
                           'GROUP BY time(1h), "station" fill(none)' for r in refs], None)
        for r, series in zip(refs, res, strict=True):
            for tags, row in _rows(series):
                st = tags["station"]
                if i.ref_point.get(st) == r and row.get("n"):
                    i.presence.setdefault(st, {})[int(row["time"])] = int(row["n"])

    async def makeup() -> None:
        res = await query([f'SELECT last("{tot}") AS total, mean("{circ}") AS circ '
                           f'FROM "{MEASUREMENT_STATION}" WHERE {t} GROUP BY time(1h), "station" fill(none)'
                           for tot, circ in pairs], None)
        for pair, series in zip(pairs, res, strict=True):
            got: dict[str, list[tuple[int, float | None, float | None]]] = defaultdict(list)
            for tags, row in _rows(series):
                got[tags["station"]].append((int(row["time"]), row.get("total"), row.get("circ")))
            for n, p in nets.items():
                if p == pair:
                    for st, hrs in got.items():
                        i.makeup_hours[(st, n)] = hrs

    async def room_totals() -> None:
        if not i.analysis:
            return
        stmts = []
        for s, e in i.analysis:
            stmts.append(rooms.totals(s, e, stds))
            if rooms.rollup is not None:
                stmts += [rooms.passing(s, e, std) for std in stds]
        res = await query(stmts, None)
        per = 1 if rooms.rollup is None else 1 + len(stds)
        for r in range(len(i.analysis)):
            for tags, row in _rows(res[r * per]):
                k: Sensor = (tags["station"], tags["building"], tags["household"])
                tot = i.room_totals.setdefault(k, RoomTotal())
                n = int(row["n"] or 0)
                tot.hours += n
                for j, std in enumerate(stds):
                    if rooms.rollup is None:
                        ok = n + int(row.get(f"f{j}") or 0)
                        tot.passing[std] = tot.passing.get(std, 0) + ok
            for j, std in enumerate(stds if rooms.rollup is not None else ()):
                for tags, row in _rows(res[r * per + 1 + j]):
                    tot = i.room_totals.setdefault((tags["station"], tags["building"], tags["household"]),
                                                   RoomTotal())
                    tot.passing[std] = tot.passing.get(std, 0) + int(row["n"] or 0)
        # the hours below the standard, of the sensors that had any: a second pass over only
        # their series (most sensors pass every hour; their readings are not read again)
        top = max(stds)
        low = sorted(k for k, x in i.room_totals.items() if x.passing.get(top, 0) < x.hours)
        by_station: dict[str, list[str]] = defaultdict(list)
        for st, _, h in low:
            by_station[st].append(h)
        stmts = []
        for st, hs in sorted(by_station.items()):
            where = (f" AND \"station\" = '{_ident(st)}' AND \"household\" =~ "
                     f"/^({'|'.join(_ident(h).replace('.', chr(92) + '.') for h in sorted(set(hs)))})$/")
            stmts += [rooms.low(s, e, top, where) for s, e in i.analysis]
        for j in range(0, len(stmts), _BATCH):
            for series in await query(stmts[j:j + _BATCH], None):
                for tags, row in _rows(series):
                    k = (tags["station"], tags["building"], tags["household"])
                    i.room_low.setdefault(k, []).append((int(row["time"]), float(row["m"])))

    async def fault_hours() -> None:
        # the hours of each sensor_fault episode: left out of the pass rate
        windows = compute.fault_windows(rows.alerts, i.analysis, data_end)
        jobs = [(k, s, e) for k, ws in sorted(windows.items()) for s, e in ws]
        for j in range(0, len(jobs), _BATCH):
            chunk = jobs[j:j + _BATCH]
            bind: dict[str, str | int | float] = {}
            stmts = []
            for n, ((st, b, h), s, e) in enumerate(chunk):
                bind |= {f"s{n}": st, f"b{n}": b, f"h{n}": h}
                stmts.append(rooms.hours(s, e, n))
            answers = await query(stmts, bind)
            for (k, _, _), series in zip(chunk, answers, strict=True):
                for _, row in _rows(series):
                    if row.get("m") is not None:
                        i.room_fault_hours.setdefault(k, []).append((int(row["time"]), float(row["m"])))

    await asyncio.gather(counts_and_presence(), makeup(), room_totals(), fault_hours())
    lo, hi = rooms.lo, rooms.hi
    i.station_register = {r.station: r for r in rows.register.stations}
    i.building_register = {(r.station, r.building): r for r in rows.register.buildings}
    i.households = rows.register.households
    i.alerts = rows.alerts
    i.ticket_events = rows.events
    i.notes = [
        ("InfluxDB aggregates per hour and per entity on the raw measurements (GROUP BY time(1h)); "
         "the 5-minute/1-hour rollups are not used yet." if rooms.rollup is None else
         f"Room sensor-hours read from the stored hourly means in {rooms.src}; the rest aggregated per hour "
         "by InfluxDB on the raw measurements."),
        "Make-up: totalizer deltas between consecutive hourly last values; the rate counts hours whose "
        "delta spans one hour and whose circulation was measured (mean flow × 1 h); resets, meter "
        "replacements and steps above max_plausible_flow are dropped and counted.",
        f"Rooms: sensor-hour = the hourly mean of a sensor's readings within {lo:g}–{hi:g} °C (bad "
        "readings carry no value); counted inside the heating season, outside days whose outdoor mean "
        f"(all stations) was below {rules.design_outdoor_temp:g} °C and outside the sensor's "
        "sensor_fault episodes; passing at or above the standard (room.warning_below, 18 °C unless agreed).",
        f"Refund bands: a run of consecutive low sensor-hours longer than {ctx.settings.refund_after_h:g} h, "
        "judged by the standard minus the run's median; a household's band is its worst run.",
        "Completeness: received ÷ expected samples per point, capped at expected; expected from the gateway "
        "config's poll-group interval (source config) or the data's dominant hourly count of the station's "
        "most frequent point (source data). Online: hours with a sample of the reference point.",
        "Service: alerts raised in the period; time to acknowledge from firing (or first seen); time to "
        "resolve from first seen.",
    ]
    return i


async def report(query: QueryMany, store: Store, ctx: Context, period_text: str, now_ms: int,
                 commands: list[CommandRow] | None = None) -> Report:
    """The whole report for a period given as text (see ``compute.parse_period``)."""
    period = compute.parse_period(period_text, ctx.rules)
    return compute.build(await collect(query, store, ctx, period, now_ms, commands))
