"""The takeover report's I/O: InfluxQL with server-side aggregation, and alert-store reads.

Two sources, picked for each report by what ``heatwatch influx setup`` created (``find_sources``):

- **the 1-hour rollup** (retention policy ``rollup_1h``, contract/influx.py) where its continuous
  queries carry the counts and the plausible room means and cover the period. Every statement is
  a plain aggregate over stored hours — no ``GROUP BY time`` — returning a row per station or
  sensor, not per hour: make-up as sums per station (the last minus the first totalizer value,
  the sum of the hourly mean flows) once one pass has found the hours that would break those sums
  (a gap, a counter going back, a step no pipe carries) and their stations are read hour by hour
  instead; presence as counts with the first and last hour; rooms as counts and minima, then the
  hours below the standard of only the sensors that had any.
- **the raw measurements** otherwise (the report's notes say why): InfluxDB averages every sensor
  and station per hour itself (``GROUP BY time(1h)``), 20–50 µs per series-hour — minutes for a
  season of a large company (bench/report_bench.py).

``collect()`` takes a ``query_many(statements, bind)`` coroutine (the API's InfluxReader has
one; the command line makes one), the database's name and the alert store (the asset register
is read through the site registry, the remote commands through the command store, on the same
database), and returns ``report.compute.Inputs``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import glob
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alerting.commands import CommandStore
from alerting.registry import SiteRegistry
from alerting.rows import AlertRow, CommandRecord, Register, TicketEvent
from alerting.store import Store
from contract.alerts import AlertRules, load_rules
from contract.commands import State, shown_state
from contract.config import GatewayConfig, load_gateway_config
from contract.errors import ConfigError, DatabaseUnavailable
from contract.influx import (
    MEASUREMENT_BUILDING,
    MEASUREMENT_HOUSEHOLD,
    MEASUREMENT_STATION,
    ROLLUP_1H,
    ROOM_POINT,
    rooms_cq_range,
)
from contract.payload import GatewayStatus
from contract.points import POINT_NAME_RE, QUALITY_SUFFIX
from report import compute, rollup
from report.compute import (
    HOUR_MS,
    Inputs,
    Period,
    PointKey,
    Range,
    RoomTotal,
    Sensor,
    StationPlan,
    hour_ceil,
    hour_floor,
)
from report.model import VALVE_POINT, CommandRow, Report, ReportSettings, load_settings

QueryMany = Callable[[list[str], dict[str, str | int | float] | None], Awaitable[list[list[dict[str, Any]]]]]
_BATCH = 200  # statements per round trip (fault windows): one URL stays well under 1 MB


@dataclass
class Context:
    """What a report needs besides the data, loaded once (API start-up, the command line)."""

    settings: ReportSettings = field(default_factory=ReportSettings)
    rules: AlertRules = field(default_factory=AlertRules)
    plans: dict[str, StationPlan] = field(default_factory=dict)
    # a command sent with no result this long past its deadline shows as unknown (the API's
    # control.unknown_grace_s, so the report shows what GET /v1/commands shows)
    unknown_grace_s: float = 60.0


def plans_from(configs: Sequence[GatewayConfig]) -> dict[str, StationPlan]:
    """Samples per hour of each point (its poll group's interval; a report-by-exception group
    at least its heartbeat) and the buildings whose entrance valve setpoint the gateway takes
    commands for: a ``write:`` block in the map under a gateway with a ``control:`` block (without
    one it takes no command and announces no writable point: gateway/commands.py)."""
    out: dict[str, StationPlan] = {}
    for cfg in configs:
        plan = out.setdefault(cfg.station, StationPlan(cfg.station, {}, set()))
        for dev in cfg.resolved:
            for p in dev.points:
                g = cfg.poll_groups[p.group]
                every = g.max_silence_s if g.by_exception else g.interval_s
                plan.per_hour[p.key] = plan.per_hour.get(p.key, 0.0) + 3600.0 / every
                if (cfg.control is not None and p.writable and p.point == VALVE_POINT and p.building
                        and p.household is None):
                    plan.controllable.add(p.building)
    return out


def announced_valves(statuses: Iterable[GatewayStatus]) -> dict[str, set[str]]:
    """Station → the buildings whose entrance valve setpoint its gateway's status announces
    writable (the points the API checks a command against; an offline will carries them too)."""
    out: dict[str, set[str]] = {}
    for st in statuses:
        valves = {w.building for w in st.writable
                  if w.point == VALVE_POINT and w.building is not None and w.household is None}
        for s in st.stations:
            out.setdefault(s, set()).update(valves)
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
    commands: list[CommandRecord]  # the remote commands issued in the period


def store_rows(store: Store, start: int, end: int) -> StoreRows:
    """What the report reads from the site's database, read-only."""
    return StoreRows(store.between(start, end), store.ticket_events(start, end),
                     SiteRegistry(store.db).register(), CommandStore(store.db.engine).issued(start, end))


def command_rows(rows: Iterable[CommandRecord], now_ms: int, grace_s: float) -> list[CommandRow]:
    """The command store's rows as the report counts them: their state as the API shows it (a
    command sent and unanswered past its deadline plus the grace is unknown)."""
    return [CommandRow(id=r.id, station=r.station, building=r.building, household=r.household,
                       point=r.point or "", origin=r.origin, issued_at=r.created_at,
                       outcome=shown_state(State(r.state), r.deadline, now_ms, grace_s).value,
                       finished_at=r.result_at, ticket=r.ticket) for r in rows]


# -- InfluxQL -------------------------------------------------------------------------------
def _field(name: str, where: str) -> str:
    """A point name from a rule file, checked before it becomes a quoted InfluxQL identifier."""
    if not POINT_NAME_RE.fullmatch(name):
        raise ConfigError("rules", [f"{where}: {name!r} is not a point name"])
    return name


_t = rollup.t
_rows = rollup.rows
_BY_SENSOR = rollup.BY_SENSOR
_ROOM = f'"{ROOM_POINT}"'
_PARALLEL = 4  # requests in flight per report: InfluxDB answers each on one core


def _offset(tz_h: float) -> str:
    """GROUP BY time(1d, offset) so InfluxDB's days are local days."""
    return f"{round(-tz_h * 60) % 1440}m"


def _rules_standards(rules: AlertRules) -> list[float]:
    """Every room standard the rules can give a sensor (the default and each override)."""
    out = {rules.room.warning_below}
    for o in [*rules.stations.values(), *rules.buildings.values()]:
        if "warning_below" in o.room:
            out.add(o.room["warning_below"])
    return sorted(out)


# -- which data: the 1-hour rollup where `heatwatch influx setup` made it, else raw -------------
@dataclass
class Sources:
    """What the report reads from the 1-hour rollup, and why not the rest.

    ``station``: make-up, presence, counts and the outdoor temperature (the rollup's CQ with
    counts covers the period); ``rooms``: the plausible room means, their CQ using the rule
    file's plausible range; ``end``: the rollup's newest complete hour (a period not over yet is
    reported up to it)."""

    station: bool = False
    rooms: bool = False
    end: int | None = None
    notes: list[str] = field(default_factory=list)


def _first_time(series: list[dict[str, Any]]) -> int | None:
    got = [int(row["time"]) for _, row in _rows(series)]
    return min(got) if got else None


_MINUTE = "%Y-%m-%d %H:%M"


def _local(t_ms: int, tz_h: float, fmt: str = "%Y-%m-%d") -> str:
    return dt.datetime.fromtimestamp(t_ms / 1000, dt.timezone(dt.timedelta(hours=tz_h))).strftime(fmt)


async def find_sources(query: QueryMany, database: str, ctx: Context, period: Period, data_end: int,
                       now_ms: int) -> Sources:
    """Ask InfluxDB what ``heatwatch influx setup`` created: the 1-hour rollup's retention policy,
    its continuous queries (with counts; the rooms CQ's plausible range) and whether their rows
    cover the period (rows rolled up before counts existed have none)."""
    raw = "everything aggregated per hour from the raw data (minutes for a season of a large company)"
    if ctx.settings.rollups == "off":
        return Sources(notes=[f"Rollups off in the report settings: {raw}."])
    try:
        rps, cqs = await query(["SHOW RETENTION POLICIES", "SHOW CONTINUOUS QUERIES"], None)
    except DatabaseUnavailable as exc:  # InfluxDB 2.x's 1.x API has no continuous queries to show
        return Sources(notes=[f"Could not ask InfluxDB which rollups it keeps ({exc}): {raw}."])
    have_rp = any(row.get("name") == rollup.RP for _, row in _rows(rps))
    mine = [row for s in cqs if s.get("name") == database for _, row in _rows([s])]
    main = [r for r in mine if str(r["name"]).startswith(f"heatwatch_rollup_{ROLLUP_1H.name}_")
            and rooms_cq_range(str(r["name"])) is None]
    if not have_rp or not main:
        return Sources(notes=[f"No 1-hour rollup here (`heatwatch influx setup` has not created it): {raw}."])
    if not any("count(*)" in str(r["query"]) for r in main):
        return Sources(notes=["The 1-hour rollup here carries no counts (made by an older heatwatch): run "
                              f"`heatwatch influx setup` to bring it up to date; {raw}."])
    ranges = [got[1] for r in mine if (got := rooms_cq_range(str(r["name"]))) and got[0] == ROLLUP_1H.name]
    # the rollup must hold the period's hours from the first the raw data has (a CQ the collector
    # made at start rolls up only from then: the hours before need `heatwatch influx backfill`),
    # with counts (rows an older heatwatch rolled up have none). One CQ and one backfill write
    # every measurement's rows, so the station rows tell for all; LIMIT 1 reads a block a series
    hs, he = hour_floor(period.start), hour_ceil(data_end)
    st = rollup.src(MEASUREMENT_STATION)
    stmts = [f"SELECT /^count_/ FROM {st} WHERE {_t(hs, he)} LIMIT 1",
             f"SELECT /^last_/ FROM {st} WHERE {_t(hs, he)} LIMIT 1",
             f'SELECT * FROM "{MEASUREMENT_STATION}" WHERE {_t(hs, he)} LIMIT 1']
    recent = data_end > now_ms - 3 * HOUR_MS
    if recent:  # the newest hour a continuous query has written
        stmts.append(f"SELECT /^count_/ FROM {st} WHERE {_t(he - 4 * HOUR_MS, he)} "
                     "ORDER BY time DESC LIMIT 1")
    res = await query(stmts, None)
    counted, seen, first_raw = _first_time(res[0]), _first_time(res[1]), _first_time(res[2])
    if first_raw is not None and (seen is None or hour_floor(first_raw) < seen):
        at = "no hour of the period" if seen is None else _local(seen, period.tz_h, _MINUTE)
        return Sources(notes=[f"The 1-hour rollup starts at {at}, the raw data at "
                              f"{_local(first_raw, period.tz_h, _MINUTE)} (run `heatwatch influx backfill` "
                              f"for the hours between): {raw}."])
    if seen is not None and (counted is None or counted > seen):
        since = "" if counted is None else f" from {_local(counted, period.tz_h)} on"
        return Sources(notes=[f"The 1-hour rollup holds counts of station data{since} only (older hours "
                              "were rolled up by an older heatwatch, before the raw data's retention): "
                              f"{raw}."])
    out = Sources(station=True, end=he)
    if recent:
        newest = [int(row["time"]) for _, row in _rows(res[-1])]
        out.end = min(he, newest[0] + HOUR_MS) if newest else min(he, hour_floor(now_ms))
        if out.end < data_end:
            out.notes.append(f"Up to {_local(out.end, period.tz_h, _MINUTE)}, the end of the 1-hour "
                             "rollup's newest complete hour.")
    plausible = (ctx.rules.sensor.plausible_min, ctx.rules.sensor.plausible_max)
    if plausible in ranges:
        out.rooms = True
        out.notes.insert(0, "Read from the 1-hour rollup (`heatwatch influx setup`): InfluxDB sums stored "
                            "hours per station and sensor.")
    else:
        why = (f"its plausible range is {', '.join(f'{a:g}–{b:g}' for a, b in ranges)} °C, the rule file's "
               f"{plausible[0]:g}–{plausible[1]:g} °C (run `heatwatch influx setup` with this rule file)"
               if ranges else "it holds no plausible room means (run `heatwatch influx setup`)")
        out.notes.insert(0, "Make-up, presence and counts read from the 1-hour rollup (`heatwatch influx "
                            f"setup`); room sensor-hours averaged from the raw readings: {why}.")
    return out


# -- the raw path ---------------------------------------------------------------------------
def _rooms_inner(start: int, end: int, lo: float, hi: float, stds: Sequence[float] = (),
                 where: str = "") -> str:
    # the hourly mean of each sensor's plausible readings: bad readings carry no value, an
    # implausible (uncertain) one is outside [lo, hi] and left out here. With ``stds``, a column
    # f<j> per standard: floor((m − standard) / 1000) is −1 for an hour below it and 0 at or above
    # (|m − standard| < 1000), so one pass over the readings counts hours and failures together —
    # InfluxDB evaluates a subquery once per statement, and a statement per standard cost as much
    # again (bench/report_bench.py --profile)
    fails = "".join(f', floor((mean({_ROOM}) - {std!r}) / 1000) AS f{j}' for j, std in enumerate(stds))
    return (f'SELECT mean({_ROOM}) AS m{fails} FROM "{MEASUREMENT_HOUSEHOLD}" '
            f'WHERE {_t(start, end)}{where} AND {_ROOM} >= {lo!r} AND {_ROOM} <= {hi!r} '
            'GROUP BY time(1h), "station", "building", "household" fill(none)')


def _raw_sensor_hours(s: int, e: int, n: int, lo: float, hi: float) -> str:
    """One sensor's hourly means in [s, e) (its station, building, household bound as $s<n> …)."""
    return (f'SELECT mean({_ROOM}) AS m FROM "{MEASUREMENT_HOUSEHOLD}" WHERE "station" = $s{n} '
            f'AND "building" = $b{n} AND "household" = $h{n} AND {_t(s, e)} AND {_ROOM} >= {lo!r} '
            f"AND {_ROOM} <= {hi!r} GROUP BY time(1h) fill(none)")


async def _raw_rooms(query: QueryMany, ranges: Sequence[Range], stds: Sequence[float], lo: float, hi: float
                     ) -> tuple[dict[Sensor, RoomTotal], dict[Sensor, list[tuple[int, float]]]]:
    """Sensor-hours per sensor with the hours at or above each standard (one subquery pass), then
    the hours below the highest standard of only the sensors that had any: a second pass over
    their series (most sensors pass every hour; their readings are not read again)."""
    sums = "".join(f", sum(f{j}) AS f{j}" for j in range(len(stds)))
    res = await query([f"SELECT count(m) AS n{sums} FROM ({_rooms_inner(s, e, lo, hi, stds)}){_BY_SENSOR}"
                       for s, e in ranges], None)
    totals: dict[Sensor, RoomTotal] = {}
    for series in res:
        for tags, row in _rows(series):
            tot = totals.setdefault((tags["station"], tags["building"], tags["household"]), RoomTotal())
            n = int(row["n"] or 0)
            tot.hours += n
            for j, std in enumerate(stds):
                tot.passing[std] = tot.passing.get(std, 0) + n + int(row.get(f"f{j}") or 0)
    top = stds[-1]
    by_station: dict[str, list[str]] = defaultdict(list)
    for (st, _, h), x in sorted(totals.items()):
        if x.passing.get(top, 0) < x.hours:
            by_station[st].append(h)
    stmts = []
    for st, hs in sorted(by_station.items()):
        where = rollup.one_of("station", [st]) + rollup.one_of("household", hs)
        stmts += [f"SELECT m FROM ({_rooms_inner(s, e, lo, hi, where=where)}) WHERE m < {top!r}{_BY_SENSOR}"
                  for s, e in ranges]
    low: dict[Sensor, list[tuple[int, float]]] = {}
    for j in range(0, len(stmts), _BATCH):
        for series in await query(stmts[j:j + _BATCH], None):
            for tags, row in _rows(series):
                low.setdefault((tags["station"], tags["building"], tags["household"]), []).append(
                    (int(row["time"]), float(row["m"])))
    return totals, low


async def _raw_counts(query: QueryMany, span: str) -> dict[str, dict[PointKey, int]]:
    res = await query([
        f'SELECT count(*) FROM "{MEASUREMENT_STATION}" WHERE {span} GROUP BY "station"',
        f'SELECT count(*) FROM "{MEASUREMENT_BUILDING}" WHERE {span} GROUP BY "station", "building"',
        f'SELECT count(*) FROM "{MEASUREMENT_HOUSEHOLD}" WHERE {span}{_BY_SENSOR}'], None)
    out: dict[str, dict[PointKey, int]] = {}
    for level, series in zip(("station", "building", "household"), res, strict=True):
        for tags, row in _rows(series):
            c = out.setdefault(tags["station"], {})
            b, h = tags.get("building"), tags.get("household")
            for col, n in row.items():
                if col.startswith("count_") and n and not col.endswith(QUALITY_SUFFIX):
                    c[(col.removeprefix("count_"), b if level != "station" else None,
                       h if level == "household" else None)] = int(n)
    return out


async def _raw_presence(query: QueryMany, span: str, ref_point: dict[str, str], start: int, end: int
                        ) -> dict[str, compute.Presence]:
    refs = sorted(set(ref_point.values()))
    res = await query([f'SELECT count("{r}") AS n FROM "{MEASUREMENT_STATION}" WHERE {span} '
                       'GROUP BY time(1h), "station" fill(none)' for r in refs], None)
    out = {}
    for r, series in zip(refs, res, strict=True):
        hourly: dict[str, list[tuple[int, int]]] = defaultdict(list)
        for tags, row in _rows(series):
            if ref_point.get(tags["station"]) == r and row.get("n"):
                hourly[tags["station"]].append((int(row["time"]), int(row["n"])))
        for st, hs in hourly.items():
            out[st] = compute.presence(hs, start, end)
    return out


async def _raw_makeup(query: QueryMany, span: str, rules: AlertRules, nets: dict[str, tuple[str, str]]
                      ) -> dict[tuple[str, str], compute.MakeupTally]:
    pairs = sorted(set(nets.values()))
    res = await query([f'SELECT last("{tot}") AS total, mean("{circ}") AS circ FROM "{MEASUREMENT_STATION}" '
                       f'WHERE {span} GROUP BY time(1h), "station" fill(none)' for tot, circ in pairs], None)
    out = {}
    for pair, series in zip(pairs, res, strict=True):
        hourly: dict[str, list[compute.HourRow]] = defaultdict(list)
        for tags, row in _rows(series):
            hourly[tags["station"]].append((int(row["time"]), row.get("total"), row.get("circ")))
        for st, hs in hourly.items():
            out.update({(st, n): compute.tally(rules, st, n, hs) for n, p in nets.items() if p == pair})
    return out


def _ref_points(counts: dict[str, dict[PointKey, int]], plans: dict[str, StationPlan]) -> dict[str, str]:
    """The reference point of each station's presence: with a config, a station point of its
    fastest poll group; without, the station's most frequent point."""
    out = {}
    for st, cs in counts.items():
        plan = plans.get(st)
        cands: dict[PointKey, float] = (
            {k: v for k, v in plan.per_hour.items() if k[1] is None} if plan is not None
            else {k: float(v) for k, v in cs.items() if k[1] is None})
        if cands:
            out[st] = max(sorted(cands), key=lambda k: cands[k])[0]
    return out


# -- collect --------------------------------------------------------------------------------
async def collect(query: QueryMany, store: Store, ctx: Context, period: Period, now_ms: int,
                  announced: dict[str, set[str]] | None = None, *, database: str) -> Inputs:
    """Every input of the report, from the 1-hour rollup where it serves (``find_sources``), else
    from the raw data. Independent statements run as concurrent requests (InfluxDB answers
    concurrent requests on every core; one request's statements run one after another).
    ``announced``: station → the valve buildings its gateway's status announces writable
    (``announced_valves``; the API with ``control:`` holds the statuses), ahead of the configs."""
    rules = ctx.rules
    data_end = min(period.end, max(period.start, now_ms))
    src = await find_sources(query, database, ctx, period, data_end, now_ms)
    if src.end is not None:
        data_end = max(period.start, min(data_end, src.end))
    span = _t(period.start, data_end)
    hours = (hour_floor(period.start), hour_ceil(data_end))  # the rollup's whole hours
    rspan = _t(*hours)
    nets = {n: (_field(nr.makeup_total, f"makeup.networks.{n}.makeup_total"),
                _field(nr.circulation_flow, f"makeup.networks.{n}.circulation_flow"))
            for n, nr in rules.makeup.networks.items()}
    lo, hi = rules.sensor.plausible_min, rules.sensor.plausible_max
    stds = _rules_standards(rules)
    gate = asyncio.Semaphore(_PARALLEL)

    async def one(q: str) -> list[dict[str, Any]]:
        async with gate:
            return (await query([q], None))[0]

    async def each(stmts: list[str]) -> list[list[dict[str, Any]]]:
        return list(await asyncio.gather(*(one(q) for q in stmts)))

    outdoor_q = (rollup.outdoor(rspan, _offset(period.tz_h)) if src.station else
                 f'SELECT mean("outdoor_temp") AS m FROM "{MEASUREMENT_STATION}" WHERE {span} '
                 f"GROUP BY time(1d, {_offset(period.tz_h)}) fill(none)")
    i = Inputs(period=period, rules=rules, settings=ctx.settings, data_end=data_end, generated_at=now_ms,
               daily_outdoor={}, analysis=[], plans=ctx.plans, announced=announced)

    async def rooms_side() -> StoreRows:
        # the outdoor means decide the analysed ranges (cold days leave), and the alert store the
        # sensors' fault episodes: then the sensor-hours and the fault hours
        rows: StoreRows
        rows, outdoor = await asyncio.gather(asyncio.to_thread(store_rows, store, period.start, period.end),
                                             each([outdoor_q]))
        for _, row in _rows(outdoor[0]):
            if row.get("m") is not None:
                i.daily_outdoor[int(row["time"])] = float(row["m"])
        i.analysis = compute.analysis_ranges(period, rules, i.daily_outdoor, data_end)
        if i.analysis:
            got = (rollup.rooms(each, i.analysis, stds) if src.rooms
                   else _raw_rooms(query, i.analysis, stds, lo, hi))
            (i.room_totals, i.room_low), i.room_fault_hours = await asyncio.gather(got, fault_hours(rows))
        return rows

    async def fault_hours(rows: StoreRows) -> dict[Sensor, list[tuple[int, float]]]:
        # the hours of each sensor_fault episode: left out of the pass rate
        windows = compute.fault_windows(rows.alerts, i.analysis, data_end)
        jobs = [(k, s, e) for k, ws in sorted(windows.items()) for s, e in ws]
        out: dict[Sensor, list[tuple[int, float]]] = {}
        for j in range(0, len(jobs), _BATCH):
            chunk = jobs[j:j + _BATCH]
            bind: dict[str, str | int | float] = {}
            stmts = []
            for n, ((st, b, h), s, e) in enumerate(chunk):
                bind |= {f"s{n}": st, f"b{n}": b, f"h{n}": h}
                stmts.append(rollup.sensor_hours(s, e, n) if src.rooms
                             else _raw_sensor_hours(s, e, n, lo, hi))
            for (k, _, _), series in zip(chunk, await query(stmts, bind), strict=True):
                for _, row in _rows(series):
                    if row.get("m") is not None:
                        out.setdefault(k, []).append((int(row["time"]), float(row["m"])))
        return out

    async def information() -> None:
        i.counts = await (rollup.counts(each, rspan) if src.station else _raw_counts(query, span))
        i.ref_point = _ref_points(i.counts, ctx.plans)
        if not i.ref_point:
            return
        if src.station:
            samples = {st: i.counts[st].get((r, None, None), 0) for st, r in i.ref_point.items()}
            no_plan = set(i.ref_point) - set(ctx.plans)
            i.presence = await rollup.presence(each, rspan, i.ref_point, samples, no_plan, period.start,
                                               data_end)
        else:
            i.presence = await _raw_presence(query, span, i.ref_point, period.start, data_end)

    async def makeup() -> None:
        i.makeup = await (rollup.makeup(each, rspan, rules, nets, hours) if src.station
                          else _raw_makeup(query, span, rules, nets))

    rows, _, _ = await asyncio.gather(rooms_side(), information(), makeup())
    i.station_register = {r.station: r for r in rows.register.stations}
    i.building_register = {(r.station, r.building): r for r in rows.register.buildings}
    i.households = rows.register.households
    i.alerts = rows.alerts
    i.ticket_events = rows.events
    i.commands = command_rows(rows.commands, now_ms, ctx.unknown_grace_s)
    i.notes = [
        *src.notes,
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
        "Remote control: a building is remotely controllable when its gateway's status announces its "
        f"entrance valve setpoint ({VALVE_POINT}) writable — what the API checks a command against — or, "
        "for a station whose status the report does not hold, when its gateway config maps it writable "
        "under a control: block; proven when a command to that valve issued in the period was confirmed "
        "(written and read back equal); commands by their state at the time of the report.",
    ]
    return i


async def report(query: QueryMany, store: Store, ctx: Context, period_text: str, now_ms: int,
                 announced: dict[str, set[str]] | None = None, *, database: str) -> Report:
    """The whole report for a period given as text (see ``compute.parse_period``)."""
    period = compute.parse_period(period_text, ctx.rules)
    return compute.build(await collect(query, store, ctx, period, now_ms, announced, database=database))
