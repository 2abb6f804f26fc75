"""Make-up water rules per station and network: makeup_rate, makeup_daily, makeup_burst, makeup_pump.

补水率 = make-up volume ÷ circulating volume over the same hour. Volumes come from totalizer
deltas: a counter that goes backwards has rolled over (when ``rollover`` is known and it was
near it) or been reset/replaced (the delta is dropped and counted, never a negative or a huge
volume), a step bigger than ``max_plausible_flow`` allows is a replacement too, and a delta
across a data gap (> 15 min) has no hour to belong to, so it is kept out of the judged volumes.
Circulating volume integrates the circulation flow.

- ``makeup_rate``: an hour above ``rate_limit_pct`` starts it, held ``rate_hold_h`` it fires.
  An hour in which the supply temperature moved ≥ ``ramp_k`` K is not judged (thermal expansion
  and contraction move ~0.5 % of the water per 10 K).
- ``makeup_daily``: a local day far above the station's own baseline: median of the last
  ``baseline_days`` normal days + ``daily_mad_k``·MAD, and ``daily_min_excess_pct`` above the
  median. Days that alarmed stay out of the baseline, so a leak never becomes normal. The
  context says whether the day was flat (leak) or peaked in the evening against a quiet night
  (hot-water theft).
- ``makeup_burst`` (critical, at once): make-up flow ≥ ``burst_min_flow`` while the secondary
  return pressure fell ≥ ``burst_pressure_drop`` within ``burst_window_min``, or the tank level
  fell ≥ ``tank_drop_m`` within the window; it holds while the make-up flow stays that high.
- ``makeup_pump``: a day with pump starts or run time ``pump_factor`` × its baseline.

Water that flows during a silence or maintenance window (filling, pressure tests) or the season's
start grace is counted as excluded, not judged. A works window for one building covers the
station's make-up too — its duration and ``refill_tail_h`` after it, while the drained riser is
refilled — and the make-up alerts raised meanwhile are stored as silenced, not paged.
"""

from __future__ import annotations

import statistics
from collections import deque
from typing import Any

from alerting.family import Context, Family, FrameView, Verdict
from alerting.lifecycle import get_fields, set_fields
from contract.alerts import NetworkRules, Quiet, Rule, Severity, alert_key
from contract.payload import Sample

HOUR_MS = 3_600_000
_GAP_MS = 15 * 60_000
_NIGHT = range(1, 5)  # 01:00–05:00: a leak shows here as much as at any hour, theft does not
_EVENING = range(17, 23)


_NET_FIELDS = ("day_cover_ms", "day_hours", "day_m3", "excluded_m3", "flow", "flow_t", "history", "hour",
               "hour_circ",
               "hour_m3", "meter_events", "total", "total_t")


class Net:
    __slots__ = _NET_FIELDS

    def __init__(self) -> None:
        self.total: float | None = None
        self.total_t = 0
        self.flow: float | None = None
        self.flow_t = 0
        self.hour = -1
        self.hour_m3 = self.hour_circ = 0.0
        self.day_m3 = self.excluded_m3 = 0.0
        self.day_hours = [0.0] * 24
        self.day_cover_ms = 0  # the part of the day the totalizer's readings span (gaps left out)
        self.history: deque[float] = deque(maxlen=14)  # daily m³ of normal days
        self.meter_events = 0  # resets and replacements seen

    def __getstate__(self) -> tuple[Any, ...]:
        return get_fields(self, _NET_FIELDS)

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        set_fields(self, _NET_FIELDS, state)


_MAKEUP_FIELDS = ("day", "day_excluded", "flow", "keys", "last_t", "nets", "p_win", "pump_cover_ms",
                  "pump_hist", "pump_on", "pump_run_ms", "pump_starts", "pump_t", "ramp_hours", "sup_hi",
                  "sup_hour", "sup_lo", "tank_win", "trip_hours")


class StationMakeup:
    __slots__ = _MAKEUP_FIELDS

    def __init__(self) -> None:
        self.nets: dict[str, Net] = {}
        self.keys: dict[str, str] = {}  # alert keys of this station's make-up rules, built once
        self.day = -1
        self.day_excluded = False  # part of the day was grace or silenced: not a baseline day
        self.last_t = 0  # the newest message judged: older ones (late, redelivered) add nothing
        self.p_win: deque[tuple[int, float]] = deque()
        self.tank_win: deque[tuple[int, float]] = deque()
        self.flow = 0.0
        self.pump_on = False
        self.pump_t = 0
        self.pump_starts = 0
        self.pump_run_ms = 0.0
        self.pump_cover_ms = 0  # the part of the day the pump's readings span
        self.pump_hist: deque[tuple[int, float]] = deque(maxlen=14)
        self.sup_hour = -1
        self.sup_lo = self.sup_hi = 0.0
        self.ramp_hours: deque[int] = deque(maxlen=4)
        self.trip_hours: deque[int] = deque(maxlen=4)  # hours the circulation tripped in

    def __getstate__(self) -> tuple[Any, ...]:
        return get_fields(self, _MAKEUP_FIELDS)

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        set_fields(self, _MAKEUP_FIELDS, state)


class Makeup(Family):
    name = "makeup"
    order = 30
    raises = (Rule.MAKEUP_RATE, Rule.MAKEUP_DAILY, Rule.MAKEUP_BURST, Rule.MAKEUP_PUMP)

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        self.stations: dict[str, StationMakeup] = {}

    def points(self) -> frozenset[str]:
        nets = self.ctx.rules.makeup.networks.values()
        return (frozenset({"secondary_supply_temp", "makeup_flow", "makeup_pump_running",
                           "secondary_return_pressure", "tank_level"})
                | {p for n in nets for p in (n.makeup_total, n.circulation_flow)})

    def observe(self, view: FrameView, now: int) -> list[Verdict]:
        if not view.values:
            return []
        sm = self.stations.get(view.station)
        if sm is None:
            sm = self.stations[view.station] = StationMakeup()
        out: list[Verdict] = []
        _observe(self.ctx, view.station, sm, view.values, view.t, view.quiet, view.grace, out)
        return out

    def state(self) -> Any:
        return self.stations

    def restore(self, state: Any) -> None:
        self.stations = state


FAMILY = Makeup


def _observe(ctx: Context, station: str, sm: StationMakeup, vals: dict[str, Sample], t: int,
             quiet: Quiet, grace: bool, out: list[Verdict]) -> None:
    if t <= sm.last_t:
        # A redelivered or late message (QoS 1 after a reconnect): its totalizer readings lie
        # between ones already counted, so it holds no water of its own, and judging it would
        # move days and hours backwards (closing a day twice put near-empty days into the
        # baseline). Its data are in InfluxDB all the same.
        return
    sm.last_t = t
    rules = ctx.rules.makeup_for(station) if station in ctx.rules.stations else ctx.rules.makeup
    day = ctx.local_day(t)
    if day != sm.day:
        if sm.day >= 0 and not grace:
            _close_day(ctx, station, sm, rules, day, t, quiet, out)
        sm.day = day
        sm.day_excluded = grace
    if grace:
        sm.day_excluded = True
    s = vals.get("secondary_supply_temp")
    if s is not None and type(s.value) is float and s.quality == "good":
        h = t // HOUR_MS
        if h != sm.sup_hour:
            if sm.sup_hour >= 0 and sm.sup_hi - sm.sup_lo >= rules.ramp_k:
                sm.ramp_hours.append(sm.sup_hour)
            sm.sup_hour, sm.sup_lo, sm.sup_hi = h, s.value, s.value
        else:
            sm.sup_lo, sm.sup_hi = min(sm.sup_lo, s.value), max(sm.sup_hi, s.value)
    if station in ctx.tripped:
        h = t // HOUR_MS
        if not sm.trip_hours or sm.trip_hours[-1] != h:
            sm.trip_hours.append(h)
    # works anywhere at the station — one building's riser drained and refilled too — cover the
    # station's make-up for their duration and the refill after them
    works = ctx.works(station, t, rules.refill_tail_h * HOUR_MS)
    silenced = grace or works is not None
    if silenced:
        sm.day_excluded = True
    if works is not None and not quiet:
        quiet = Quiet.SILENCED
    for name in rules.networks:
        nr = ctx.rules.network_for(station, name) if station in ctx.rules.stations else rules.networks[name]
        _network(ctx, station, sm, name, nr, vals, t, quiet, silenced, grace, rules.rate_hold_h,
                  rules.max_plausible_flow, out)
    s = vals.get("makeup_flow")
    if s is not None and type(s.value) is float and s.quality != "bad":
        sm.flow = s.value
    s = vals.get("makeup_pump_running")
    if s is not None and type(s.value) is bool:
        if sm.pump_t and t > sm.pump_t and t - sm.pump_t <= _GAP_MS:
            sm.pump_cover_ms += t - sm.pump_t
        if sm.pump_on and sm.pump_t and t > sm.pump_t:
            sm.pump_run_ms += min(t - sm.pump_t, _GAP_MS)
        if s.value and not sm.pump_on:
            sm.pump_starts += 1
        sm.pump_on, sm.pump_t = s.value, t
    p, tank = vals.get("secondary_return_pressure"), vals.get("tank_level")
    if not grace and (p is not None or tank is not None):
        _burst(ctx, station, sm, rules, p, tank, t, quiet, out)


def _key(sm: StationMakeup, rule: Rule, station: str, network: str | None = None) -> str:
    k = sm.keys.get(rule + (network or ""))
    if k is None:
        k = sm.keys[rule + (network or "")] = alert_key(rule, station, subject=network)
    return k


def _good(s: Sample | None) -> float | None:
    if s is None or s.quality == "bad" or type(s.value) is not float:
        return None
    return s.value


def _network(ctx: Context, station: str, sm: StationMakeup, name: str, nr: NetworkRules,
             vals: dict[str, Sample], t: int, quiet: Quiet, silenced: bool, grace: bool,
             hold_h: float, max_flow: float, out: list[Verdict]) -> None:
    net = sm.nets.get(name)
    if net is None:
        net = sm.nets[name] = Net()
    hour = t // HOUR_MS
    if hour != net.hour:
        if net.hour >= 0 and not grace:
            _close_hour(ctx, station, sm, name, nr, net, hold_h, quiet, out)
        net.hour, net.hour_m3, net.hour_circ = hour, 0.0, 0.0
    f = _good(vals.get(nr.circulation_flow))
    if f is not None and t > net.flow_t:
        if net.flow is not None and t - net.flow_t <= _GAP_MS:
            net.hour_circ += net.flow * (t - net.flow_t) / HOUR_MS
        net.flow, net.flow_t = f, t
    v = _good(vals.get(nr.makeup_total))
    if v is None or t <= net.total_t:
        return
    last, last_t = net.total, net.total_t
    net.total, net.total_t = v, t
    if last is None:
        return
    d = v - last
    if d < 0:
        if nr.rollover is not None and 0.5 * nr.rollover < last <= nr.rollover and v < nr.rollover:
            d += nr.rollover
        else:
            net.meter_events += 1  # reset or a new meter: this delta is no water
            return
    if d > max_flow * max(t - last_t, 60_000) / HOUR_MS:
        net.meter_events += 1  # a jump no pipe could carry: replacement or a misread
        return
    if t - last_t <= _GAP_MS:
        net.day_cover_ms += t - last_t
    if silenced or t - last_t > _GAP_MS:
        net.excluded_m3 += d
        return
    net.hour_m3 += d
    net.day_m3 += d
    net.day_hours[ctx.local_hour(t)] += d


def _close_hour(ctx: Context, station: str, sm: StationMakeup, name: str, nr: NetworkRules,
                net: Net, hold_h: float, quiet: Quiet, out: list[Verdict]) -> None:
    if net.hour_circ <= 0:
        return  # no circulation measured: no verdict
    ramp_now = net.hour == sm.sup_hour and sm.sup_hi - sm.sup_lo >= ctx.rules.makeup.ramp_k
    if net.hour in sm.ramp_hours or ramp_now:
        return  # thermal expansion: this hour says nothing about leaks
    if net.hour in sm.trip_hours:
        return  # the circulation tripped: make-up ÷ a collapsed flow is no leak rate
    rate = 100.0 * net.hour_m3 / net.hour_circ
    end = (net.hour + 1) * HOUR_MS
    active = rate > nr.rate_limit_pct
    key = _key(sm, Rule.MAKEUP_RATE, station, name)
    if active or ctx.is_open(key):
        m3, circ = net.hour_m3, net.hour_circ
        out.append(Verdict(key, Rule.MAKEUP_RATE, active, end, Severity.MAJOR, value=round(rate, 3),
                           hold_ms=hold_h * HOUR_MS, quiet=quiet, station=station, subject=name,
                           since=net.hour * HOUR_MS,
                           context=lambda: {"rate_pct": round(rate, 3), "limit_pct": nr.rate_limit_pct,
                                            "makeup_m3_h": round(m3, 3),
                                            "circulation_m3_h": round(circ, 1)}))


def _baseline(hist: list[float], k: float, min_excess_pct: float) -> tuple[float, float, float]:
    med = statistics.median(hist)
    mad = statistics.median([abs(x - med) for x in hist])
    floor = 0.05 * med  # a very steady station must not alarm on a few percent
    return med, mad, max(med + k * max(mad, floor), med * (1 + min_excess_pct / 100))


def _close_day(ctx: Context, station: str, sm: StationMakeup, rules: Any, day: int, t: int,
               quiet: Quiet, out: list[Verdict]) -> None:
    day_start = ctx.day_start(sm.day)
    end = day_start + 86_400_000
    real_day_ms = rules.day_min_coverage * 86_400_000
    for name, net in sm.nets.items():
        hist = list(net.history)[-rules.baseline_days:]
        vol = net.day_m3
        alarmed = False
        if len(hist) >= rules.baseline_min_days and not sm.day_excluded:
            med, mad, threshold = _baseline(hist, rules.daily_mad_k, rules.daily_min_excess_pct)
            alarmed = vol > threshold
            key = _key(sm, Rule.MAKEUP_DAILY, station, name)
            if alarmed or ctx.is_open(key):
                hours = net.day_hours
                night = sum(hours[h] for h in _NIGHT) / len(_NIGHT)
                evening = sum(hours[h] for h in _EVENING) / len(_EVENING)
                pattern = ("evening peak: hot-water theft?" if evening > 1.5 * night + 0.05 * med / 24
                           else "flat: leak?")
                out.append(Verdict(
                    key, Rule.MAKEUP_DAILY, alarmed, end, Severity.MAJOR, value=round(vol, 2), quiet=quiet,
                    station=station, subject=name, since=day_start,
                    context={"day_m3": round(vol, 2), "baseline_median_m3": round(med, 2),
                                           "baseline_mad_m3": round(mad, 3),
                                           "threshold_m3": round(threshold, 2), "pattern": pattern,
                                           "night_m3_h": round(night, 3),
                                           "evening_m3_h": round(evening, 3),
                                           "excluded_m3": round(net.excluded_m3, 2)}))
        if not alarmed and not sm.day_excluded and net.day_cover_ms >= real_day_ms:
            net.history.append(vol)  # only whole, normal days make the baseline
        net.day_m3, net.excluded_m3, net.day_cover_ms = 0.0, 0.0, 0
        net.day_hours = [0.0] * 24
    # the make-up pump against its own baseline
    starts, run_h = sm.pump_starts, sm.pump_run_ms / HOUR_MS
    covered = sm.pump_cover_ms >= real_day_ms
    sm.pump_starts, sm.pump_run_ms, sm.pump_cover_ms = 0, 0.0, 0
    if sm.day_excluded:
        return
    ph = list(sm.pump_hist)[-rules.baseline_days:]
    alarmed = False
    if len(ph) >= rules.baseline_min_days:
        med_s = statistics.median([x[0] for x in ph])
        med_r = statistics.median([x[1] for x in ph])
        many = starts >= rules.pump_min_starts and starts > rules.pump_factor * max(med_s, 1)
        long = run_h >= 1 and run_h > rules.pump_factor * max(med_r, 0.1)
        alarmed = many or long
        key = _key(sm, Rule.MAKEUP_PUMP, station)
        if alarmed or ctx.is_open(key):
            out.append(Verdict(key, Rule.MAKEUP_PUMP, alarmed, end, Severity.WARNING, value=float(starts),
                               quiet=quiet, station=station, since=day_start,
                               context=lambda: {"starts": starts, "run_h": round(run_h, 2),
                                                "baseline_starts": med_s,
                                                "baseline_run_h": round(med_r, 2)}))
    if not alarmed and covered:
        sm.pump_hist.append((starts, run_h))


def _window_drop(win: deque[tuple[int, float]], t: int, v: float, span: float) -> float:
    """How far ``v`` is below the highest value of the last ``span`` ms.

    ``win`` keeps only the values that can still be a maximum (a monotonic queue): O(1) a
    sample instead of a scan of ~60 points at 10-s sampling."""
    while win and win[-1][1] <= v:
        win.pop()
    win.append((t, v))
    edge = t - span
    while win[0][0] < edge:
        win.popleft()
    return win[0][1] - v


def _burst(ctx: Context, station: str, sm: StationMakeup, rules: Any, p: Sample | None,
           tank: Sample | None, t: int, quiet: Quiet, out: list[Verdict]) -> None:
    span = rules.burst_window_min * 60_000
    drop = level_drop = 0.0
    pv, tv = _good(p), _good(tank)
    if pv is not None:
        drop = _window_drop(sm.p_win, t, pv, span)
    if tv is not None:
        level_drop = _window_drop(sm.tank_win, t, tv, span)
    surge = sm.flow >= rules.burst_min_flow and drop >= rules.burst_pressure_drop
    emptying = level_drop >= rules.tank_drop_m
    key = _key(sm, Rule.MAKEUP_BURST, station)
    is_open = ctx.is_open(key)
    # once raised it holds while the make-up still surges: the pressure settles lower and the
    # tank runs dry within minutes, but the water keeps going until someone closes a valve
    active = surge or emptying or (is_open and sm.flow >= rules.burst_min_flow)
    if active or is_open:
        flow = sm.flow
        out.append(Verdict(
            key, Rule.MAKEUP_BURST, active, t, Severity.CRITICAL, value=round(flow, 3), clear_ms=span,
            quiet=quiet, station=station,
            context=lambda: {"makeup_flow_m3_h": round(flow, 2),
                                   "return_pressure_drop_mpa": round(drop, 3),
                                   "tank_drop_m": round(level_drop, 3),
                                   "why": "make-up surging while pressure falls" if surge
                                   else "tank emptying faster than it refills"}))
