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
  Once open, it is judged against the circulation it opened with at most: a leak that goes on
  does not "clear" because a second pump raised the circulation.
- ``makeup_daily``: make-up far above the station's *own* history, at three time scales. In
  minutes, a surge (critical): the network's make-up flow at ``burst_factor`` × its own peak
  (median over normal days of the median hourly maximum) and ``burst_min_excess`` above it for
  ``burst_confirm_min`` — a burst paged within minutes whatever the pressure control does (a
  variable-speed make-up pump holds the pressure, the city water keeps the tank up), or a big
  draw-off. Hourly, a CUSUM
  (Page's cumulative sum, the change-point test of the leak-detection literature) of each
  hour's volume against that hour of day's baseline (median of the last ``baseline_days``
  normal days): S = max(0, S + x − b − k), raised when S ≥ h, with k = ``cusum_k``·Δ and
  h = ``cusum_h``·Δ, Δ the station's night minimum (median over those days of the least
  01:00–05:00 hour, at least ``leak_min_m3_h``), both at least 2σ and 4σ of the hours' own
  scatter. A sustained step of one night minimum (make-up at twice the night minimum) gains
  Δ/2 an hour and is raised within 3 h; a theft that keeps each night hour under the fixed
  rate limit is raised within the first hour at three times the night flow. Daily, a local day
  far above the baseline: median of the last normal days + ``daily_mad_k``·MAD, and
  ``daily_min_excess_pct`` above the median. Days that alarmed (either way) stay out of the
  baselines, so a leak never becomes normal. The context says whether the excess was flat
  (leak), at night or in the evening (hot-water theft).
- ``makeup_burst`` (critical, at once): make-up flow ≥ ``burst_min_flow`` while the secondary
  return pressure fell ≥ ``burst_pressure_drop`` within ``burst_window_min``, or the tank level
  fell ≥ ``tank_drop_m`` within the window: the burst proved by the pressure or the tank; it
  holds while the make-up flow stays that high.
- ``makeup_pump``: a day with pump starts or run time ``pump_factor`` × its baseline.

Water that flows during a silence or maintenance window (filling, pressure tests) or the season's
start grace is counted as excluded, not judged. A works window for one building covers the
station's make-up too — its duration and ``refill_tail_h`` after it, while the drained riser is
refilled — and the make-up alerts raised meanwhile are stored as silenced, not paged.
"""

from __future__ import annotations

import statistics
from array import array
from collections import deque
from typing import Any

from alerting.family import NO_VERDICTS, Context, Family, FrameView, Verdict
from alerting.lifecycle import get_fields, set_fields
from contract.alerts import NetworkRules, Quiet, Rule, Severity, alert_key
from contract.payload import Sample

HOUR_MS = 3_600_000
_GAP_MS = 15 * 60_000
_NIGHT = range(1, 5)  # 01:00–05:00: a leak shows here as much as at any hour, theft does not
_EVENING = range(17, 23)


_NET_FIELDS = ("base", "cusum", "cusum_on", "cusum_since", "day_cover_ms", "day_fmax", "day_hours",
               "day_leak", "day_m3", "day_on", "excluded_m3", "flow", "flow_t", "history", "hour",
               "hour_circ", "hour_cover_ms", "hour_excl", "hour_m3", "hours_hist", "meter_events",
               "night_min", "open_circ", "peak", "peak_hist", "sigma", "surge_on", "surge_since", "total",
               "total_t")


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
        self.hour_cover_ms = 0  # the part of the hour its deltas span
        self.hour_excl = False  # water of this hour was excluded (works, grace)
        # the hour-of-day baseline: 24 hourly volumes of each recent normal day (8 bytes a value)
        self.hours_hist: deque[array[float]] = deque(maxlen=14)
        self.base: list[float] | None = None  # median m³ of each local hour over those days
        self.night_min = 0.0  # median of the days' least night hour (m³/h)
        self.sigma = 0.0  # robust scatter of an hour around its baseline (m³)
        self.cusum = 0.0  # S, m³ above baseline + allowance, accumulated
        self.cusum_since = 0  # when S last started rising from 0
        self.cusum_on = False
        self.day_on = False  # the last completed day alarmed (holds until the next day's verdict)
        self.day_leak = False  # the CUSUM was raised on this day: not a baseline day
        self.open_circ = 0.0  # the circulation (m³/h) the open makeup_rate alert started at
        self.day_fmax = [0.0] * 24  # the make-up flow's maximum in each local hour of the day
        self.peak_hist: deque[float] = deque(maxlen=14)  # normal days' median hourly maximum
        self.peak: float | None = None  # the network's own peak make-up flow (m³/h)
        self.surge_since = 0  # the make-up flow far above that peak since
        self.surge_on = False

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
                | {p for n in nets for p in (n.makeup_total, n.circulation_flow, n.makeup_flow) if p})

    def observe(self, view: FrameView, now: int) -> list[Verdict]:
        if not view.values:
            return NO_VERDICTS
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
        _network(ctx, station, sm, name, nr, vals, t, quiet, silenced, grace, rules, out)
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
             rules: Any, out: list[Verdict]) -> None:
    net = sm.nets.get(name)
    if net is None:
        net = sm.nets[name] = Net()
    hour = t // HOUR_MS
    if hour != net.hour:
        if net.hour >= 0 and not grace:
            _close_hour(ctx, station, sm, name, nr, net, rules, quiet, out)
        net.hour, net.hour_m3, net.hour_circ = hour, 0.0, 0.0
        net.hour_cover_ms, net.hour_excl = 0, False
    f = _good(vals.get(nr.circulation_flow))
    if f is not None and t > net.flow_t:
        if net.flow is not None and t - net.flow_t <= _GAP_MS:
            net.hour_circ += net.flow * (t - net.flow_t) / HOUR_MS
        net.flow, net.flow_t = f, t
    mf = _good(vals.get(nr.makeup_flow)) if nr.makeup_flow else None
    if mf is not None:
        lh = ctx.local_hour(t)
        if mf > net.day_fmax[lh]:
            net.day_fmax[lh] = mf
        if not grace:
            _surge(ctx, station, sm, name, net, mf, t, rules, quiet, out)
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
    if d > rules.max_plausible_flow * max(t - last_t, 60_000) / HOUR_MS:
        net.meter_events += 1  # a jump no pipe could carry: replacement or a misread
        return
    if t - last_t <= _GAP_MS:
        net.day_cover_ms += t - last_t
        net.hour_cover_ms += t - last_t
    if silenced or t - last_t > _GAP_MS:
        net.excluded_m3 += d
        net.hour_excl = net.hour_excl or silenced
        return
    net.hour_m3 += d
    net.day_m3 += d
    net.day_hours[ctx.local_hour(t)] += d


def _close_hour(ctx: Context, station: str, sm: StationMakeup, name: str, nr: NetworkRules,
                net: Net, rules: Any, quiet: Quiet, out: list[Verdict]) -> None:
    ramp_now = net.hour == sm.sup_hour and sm.sup_hi - sm.sup_lo >= ctx.rules.makeup.ramp_k
    ramp = net.hour in sm.ramp_hours or ramp_now  # thermal expansion: says nothing about leaks
    if not ramp and not net.hour_excl and net.hour_cover_ms >= 0.8 * HOUR_MS:
        _cusum(ctx, station, sm, name, net, rules, quiet, out)
    if net.hour_circ <= 0 or ramp:
        return  # no circulation measured, or thermal expansion: no rate verdict
    if net.hour in sm.trip_hours:
        return  # the circulation tripped: make-up ÷ a collapsed flow is no leak rate
    key = _key(sm, Rule.MAKEUP_RATE, station, name)
    is_open = ctx.is_open(key)
    circ = net.hour_circ
    if is_open and net.open_circ > 0:
        # the water lost does not shrink because more water circulates: judged against the
        # circulation the alert started at, at most
        circ = min(circ, net.open_circ)
    rate = 100.0 * net.hour_m3 / circ
    end = (net.hour + 1) * HOUR_MS
    active = rate > nr.rate_limit_pct
    if active and not is_open:
        net.open_circ = net.hour_circ
    if active or is_open:
        m3 = net.hour_m3
        out.append(Verdict(key, Rule.MAKEUP_RATE, active, end, Severity.MAJOR, value=round(rate, 3),
                           hold_ms=rules.rate_hold_h * HOUR_MS, quiet=quiet, station=station,
                           subject=name, since=net.hour * HOUR_MS,
                           context=lambda: {"rate_pct": round(rate, 3), "limit_pct": nr.rate_limit_pct,
                                            "makeup_m3_h": round(m3, 3),
                                            "circulation_m3_h": round(circ, 1)}))
    elif net.open_circ:
        net.open_circ = 0.0


def _cusum(ctx: Context, station: str, sm: StationMakeup, name: str, net: Net, rules: Any,
           quiet: Quiet, out: list[Verdict]) -> None:
    """One hour's make-up against that hour of day's own baseline: Page's CUSUM."""
    base = net.base
    if base is None:
        return  # too few normal days yet
    start = net.hour * HOUR_MS
    lh = ctx.local_hour(start)
    x, b = net.hour_m3, base[lh]
    delta = max(net.night_min, rules.leak_min_m3_h)
    k = max(rules.cusum_k * delta, 2 * net.sigma)
    h = max(rules.cusum_h * delta, 4 * net.sigma)
    prev = net.cusum
    # capped: a repaired leak falls back below h/2 within a few hours
    s = max(0.0, min(prev + x - b - k, 2 * h))
    if prev == 0 and s > 0:
        net.cusum_since = start
    net.cusum = s
    on = s >= h or (net.cusum_on and s >= h / 2)
    net.cusum_on = on
    if on:
        net.day_leak = True
    key = _key(sm, Rule.MAKEUP_DAILY, station, name)
    active = on or net.day_on or net.surge_on
    if not active and not ctx.is_open(key):
        return
    excess, night = x - b, net.night_min
    pattern = ("night: leak or theft at night?" if lh in _NIGHT else
               "evening: hot-water theft?" if lh in _EVENING else "daytime excess: leak?")
    update: dict[str, Any] = {"cusum_m3": round(s, 3), "last_hour_excess_m3": round(excess, 3)}
    v = Verdict(key, Rule.MAKEUP_DAILY, active, start + HOUR_MS, Severity.MAJOR, value=round(x, 3),
                clear_ms=rules.leak_clear_h * HOUR_MS, quiet=quiet, station=station, subject=name,
                since=net.cusum_since or start,
                context=lambda: {"detector": "hourly CUSUM against the station's own hours",
                                 "hour_m3": round(x, 3), "baseline_hour_m3": round(b, 3),
                                 "night_min_m3_h": round(night, 3), "allowance_m3": round(k, 3),
                                 "threshold_m3": round(h, 3), "pattern": pattern, **update})
    v.update = update
    out.append(v)


def _surge(ctx: Context, station: str, sm: StationMakeup, name: str, net: Net, flow: float, t: int,
           rules: Any, quiet: Quiet, out: list[Verdict]) -> None:
    """Minutes: the make-up flow far above the network's own peak, whatever the pressure control
    and the tank do (a variable-speed make-up pump holds the pressure through a burst)."""
    peak = net.peak
    far = (peak is not None and flow >= rules.burst_factor * peak
           and flow - peak >= rules.burst_min_excess)
    if not far:
        net.surge_since = 0
        if not net.surge_on:
            return
    elif not net.surge_since:
        net.surge_since = t
    on = far and t - net.surge_since >= rules.burst_confirm_min * 60_000
    if not on and not net.surge_on:
        return
    net.surge_on = on
    key = _key(sm, Rule.MAKEUP_DAILY, station, name)
    active = on or net.cusum_on or net.day_on
    if not active and not ctx.is_open(key):
        return
    ratio = 0.0 if not peak else flow / peak
    update: dict[str, Any] = {"makeup_flow_m3_h": round(flow, 2), "times_own_peak": round(ratio, 1)}
    v = Verdict(key, Rule.MAKEUP_DAILY, active, t, Severity.CRITICAL if on else Severity.MAJOR,
                value=round(flow, 3), clear_ms=rules.leak_clear_h * HOUR_MS, quiet=quiet,
                station=station, subject=name, since=net.surge_since or t,
                context=lambda: {"detector": "make-up flow far above the station's own peak (burst or "
                                             "draw-off?), whatever the pressure does",
                                 "peak_flow_m3_h": None if peak is None else round(peak, 2), **update})
    v.update = update
    out.append(v)


def _hour_baseline(net: Net, min_days: int, days: int) -> None:
    """The hour-of-day baseline, night minimum and scatter from the recent normal days."""
    hist = list(net.hours_hist)[-days:]
    if len(hist) < min_days:
        net.base = None
        return
    base = [statistics.median([d[h] for d in hist]) for h in range(24)]
    net.base = base
    net.night_min = statistics.median([min(d[h] for h in _NIGHT) for d in hist])
    net.sigma = 1.4826 * statistics.median([abs(d[h] - base[h]) for d in hist for h in range(24)])


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
        key = _key(sm, Rule.MAKEUP_DAILY, station, name)
        if len(hist) >= rules.baseline_min_days and not sm.day_excluded:
            med, mad, threshold = _baseline(hist, rules.daily_mad_k, rules.daily_min_excess_pct)
            alarmed = vol > threshold
            net.day_on = alarmed
            if alarmed or net.cusum_on or net.surge_on or ctx.is_open(key):
                hours = net.day_hours
                night = sum(hours[h] for h in _NIGHT) / len(_NIGHT)
                evening = sum(hours[h] for h in _EVENING) / len(_EVENING)
                pattern = ("evening peak: hot-water theft?" if evening > 1.5 * night + 0.05 * med / 24
                           else "flat: leak?")
                out.append(Verdict(
                    key, Rule.MAKEUP_DAILY, alarmed or net.cusum_on or net.surge_on, end, Severity.MAJOR,
                    value=round(vol, 2),
                    clear_ms=rules.leak_clear_h * HOUR_MS, quiet=quiet, station=station, subject=name,
                    since=day_start,
                    context={"detector": "the day against the station's own days",
                             "day_m3": round(vol, 2), "baseline_median_m3": round(med, 2),
                                           "baseline_mad_m3": round(mad, 3),
                                           "threshold_m3": round(threshold, 2), "pattern": pattern,
                                           "night_m3_h": round(night, 3),
                                           "evening_m3_h": round(evening, 3),
                                           "excluded_m3": round(net.excluded_m3, 2)}))
        else:
            net.day_on = False
        if (not alarmed and not net.day_leak and not sm.day_excluded
                and net.day_cover_ms >= real_day_ms):
            net.history.append(vol)  # only whole, normal days make the baselines
            net.hours_hist.append(array("d", net.day_hours))
            _hour_baseline(net, rules.baseline_min_days, rules.baseline_days)
            peaks = [x for x in net.day_fmax if x > 0]
            if len(peaks) >= 20:
                net.peak_hist.append(statistics.median(peaks))
                if len(net.peak_hist) >= rules.baseline_min_days:
                    net.peak = statistics.median(list(net.peak_hist)[-rules.baseline_days:])
        net.day_fmax = [0.0] * 24
        net.day_m3, net.excluded_m3, net.day_cover_ms, net.day_leak = 0.0, 0.0, 0, net.cusum_on
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
