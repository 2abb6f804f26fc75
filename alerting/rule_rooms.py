"""Room temperature rules: room_low per household sensor, building_low, sensor_fault.

GB/T 33833-2017 §5.1 asks ≥ 18 °C in bedrooms and living rooms. A household is judged on the
median of its sensor over ``room.window_min`` (an open window or a kettle next to the sensor
does not move a median), low (below ``warning_below``) for ``room.hold_min`` before it fires.
It resolves after the median is back above ``warning_below + clear_above_by`` for
``clear_hold_min``, or meets the standard (≥ ``warning_below``, inside that hysteresis band) for
``compliant_clear_min``. The hysteresis only ever holds an alert open: a median that meets the
standard is never a firing, a page, a severity raise or an escalation (a flat at 18.3 °C is
not a complaint, whatever it was before).

A sensor that is stale (no good report for ``stale_factor`` × its learned interval, or × the
station's heartbeat when its gateway reports by exception; judged against its own station's
newest data so a dead link is the station's alert, not a thousand sensor alerts), implausible
(outside 5–35 °C), flat-lined (within ± flat_band for flat_hours) or jumped > jump_k K away
from its building's other sensors is a ``sensor_fault`` (info) and is excluded from room_low
and from the building count while the condition lasts. A sensor that is intermittently bad —
``intermittent_bad`` of its last ``intermittent_of`` reports bad (quality bad, or implausible,
e.g. a reset value every other report) — is a ``sensor_fault`` too ("intermittent"; a good
report in between does not reset that count); its plausible readings are still judged. A message
whose every room reading is bad is its device not answering (the concentrator's silence, for
device_offline and the stale rule), not a bad report of each sensor.

A building with ≥ building_share (min building_min) of its valid sensors low at once is a supply
or hydraulic fault: ``building_low``, one incident with its households under it (listed in its
context; their own alerts are inhibited). When the cause is gone it stays open while any of its
flats is still below the standard (the rooms-back check, up to ``recovery_max_h``), then resolves
after ``clear_hold_min``: the households' tail is reported inside the incident, not paged. A
flat still cold after ``recovery_max_h`` is its own problem, and its own alert pages.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, NamedTuple

from alerting.family import Context, Family, FrameView, Verdict
from alerting.lifecycle import Life, get_fields, set_fields
from contract.alerts import Quiet, Rule, Severity, alert_key
from contract.payload import Sample

_MEDIAN_EVERY_MS = 60_000  # recompute a busy sensor's median at most once a minute of data time
_MIN_GAP_MS, _MAX_GAP_MS = 1_000, 6 * 3_600_000


class Params(NamedTuple):
    warn: float
    major: float
    crit: float
    window_ms: float
    hold_ms: float
    clear_at: float
    clear_ms: float
    share: float
    minimum: int
    b_hold_ms: float
    bucket_ms: float
    band_clear_ms: float
    recovery_ms: float


_SENSOR_FIELDS = (
    "b",
    "bad_since",
    "building",
    "c_low",
    "c_valid",
    "fault_open",
    "flat_hi",
    "flat_lo",
    "flat_since",
    "hist",
    "household",
    "interval",
    "jump_since",
    "last_good",
    "last_t",
    "low",
    "low_open",
    "median",
    "next_eval",
    "p",
    "prev",
    "stale",
    "station",
    "win_t",
    "win_v",
)


class Sensor:
    __slots__ = _SENSOR_FIELDS

    def __init__(self, station: str, building: str, household: str, b: Building, p: Params) -> None:
        self.station, self.building, self.household = station, building, household
        self.b, self.p = b, p
        # the median window, ≤ 13 points, as two lists of numbers: no tuple per reading for the
        # garbage collector to track (a list is 1/8 of a deque's memory)
        self.win_t: list[int] = []
        self.win_v: list[float] = []
        self.last_t = 0  # newest report, good or not
        self.last_good = 0
        self.interval: float | None = None  # learned report interval, ms
        self.prev: float | None = None
        self.median: float | None = None
        self.next_eval = 0
        self.low = False  # the median is below the standard
        self.flat_since = 0
        self.flat_lo = self.flat_hi = 0.0
        self.bad_since: int | None = None  # implausible since
        # its last reports, newest in bit 0, 1 = bad (quality bad or implausible): an intermittent
        # fault (a reset value every other report) accumulates here where bad_since resets
        self.hist = 0
        self.jump_since: int | None = None
        self.stale = False
        self.c_valid = self.c_low = False  # what this sensor contributes to its building's counts
        self.low_open = self.fault_open = False  # has a live room_low / sensor_fault alert

    # pickled as one tuple (the snapshot holds ~100,000 of these; per-object dicts doubled it)
    def __reduce__(self) -> tuple[Any, ...]:
        return _blank_sensor, (), get_fields(self, _SENSOR_FIELDS)

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        set_fields(self, _SENSOR_FIELDS, state)

    def excluded(self, flat_ms: float) -> bool:
        return (self.stale or self.bad_since is not None or self.jump_since is not None
                or self.flat(flat_ms))

    def flat(self, flat_ms: float) -> bool:
        return self.last_good - self.flat_since >= flat_ms and self.flat_since > 0


_BUILDING_FIELDS = ("cause_gone", "n_last", "n_low", "n_valid", "open", "sensors", "sum_last")


class Building:
    __slots__ = _BUILDING_FIELDS

    def __init__(self) -> None:
        self.sensors: list[Sensor] = []
        self.n_valid = self.n_low = 0
        self.sum_last = 0.0  # of the sensors' latest plausible values (neighbour mean for jumps)
        self.n_last = 0
        self.open = False
        self.cause_gone = 0  # when its open alert's cause (the share of low flats) went away

    def __getstate__(self) -> tuple[Any, ...]:
        return get_fields(self, _BUILDING_FIELDS)

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        set_fields(self, _BUILDING_FIELDS, state)


def _blank_sensor() -> Sensor:
    """What unpickling fills: the snapshot format names it (``get_fields``)."""
    return Sensor("", "", "", Building(), Params(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0))


class Rooms(Family):
    name = "rooms"
    order = 20
    raises = (Rule.ROOM_LOW, Rule.BUILDING_LOW, Rule.SENSOR_FAULT)

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        self._out: list[Verdict] = []
        self.sensors: dict[tuple[str, str, str], Sensor] = {}
        self.buildings: dict[tuple[str, str], Building] = {}
        self.by_station: dict[str, list[Sensor]] = {}
        # station → household → sensor: one short string hashed per reading instead of a 3-tuple
        # built and hashed (a household code repeated in two buildings of a station falls back
        # to ``sensors``)
        self.households: dict[str, dict[str, Sensor]] = {}
        self._params: dict[tuple[str, str], Params] = {}
        self._dirty: dict[tuple[str, str], Building] = {}
        sr = ctx.rules.sensor
        self._flat_ms = sr.flat_hours * 3.6e6
        self._flat2 = 2 * sr.flat_band
        self._fault_hold = sr.implausible_hold_min * 60_000
        self._pmin, self._pmax, self._jump_k = sr.plausible_min, sr.plausible_max, sr.jump_k
        self._hist_mask = (1 << sr.intermittent_of) - 1
        self._intermittent = sr.intermittent_bad

    def points(self) -> frozenset[str]:
        return frozenset({"room_temp"})

    def observe(self, view: FrameView, now: int) -> list[Verdict]:
        samples = view.households
        if samples:
            station, t, quiet, room = view.station, view.t, view.quiet, self.sample
            # (all() stops at the first good one: one comparison for a message that answered)
            if len(samples) > 1 and all(s.quality == "bad" for s in samples):
                # The device did not answer (a failed read is quality bad for each of its points):
                # its silence, not each sensor's fault. Counted as bad reports, a concentrator
                # that missed three polls in twelve, or a demo restarted three times before its
                # simulator listened, flagged every sensor behind it "intermittent" (36 on the
                # demo's three stations). The stale rule and device_offline judge the silence.
                return self._take()
            hh = self.station_households(station)
            for s in samples:
                room(station, hh, s, t, quiet)
            self.flush(t, quiet)
        return self._take()

    def _take(self) -> list[Verdict]:
        if not self._out:
            return self._out
        out, self._out = self._out, []
        return out

    def escalate_after_ms(self, life: Life) -> float:
        if life.rule == Rule.ROOM_LOW or life.rule == Rule.BUILDING_LOW:
            return self.ctx.rules.room.escalate_after_h * 3.6e6
        return 0.0

    def state(self) -> Any:
        return {"sensors": self.sensors, "buildings": self.buildings, "by_station": self.by_station}

    def restore(self, state: Any) -> None:
        self.sensors, self.buildings = state["sensors"], state["buildings"]
        self.by_station = state["by_station"]
        self.households = {}
        below = self.ctx.rooms_below
        below.clear()
        for se in self.sensors.values():  # the rule file may have changed since the snapshot
            se.p = self.params(se.station, se.building)
            self.households.setdefault(se.station, {}).setdefault(se.household, se)
            if se.c_low:
                below[se.station] = below.get(se.station, 0) + 1

    def adopt(self, lives: Iterable[Life]) -> None:
        """Point the sensors' and buildings' open-alert flags at the engine's lives."""
        for se in self.sensors.values():
            se.low_open = se.fault_open = False
        for b in self.buildings.values():
            b.open = False
        for life in lives:
            if life.station is None or life.building is None:
                continue
            if life.rule == Rule.BUILDING_LOW:
                self.buildings.setdefault((life.station, life.building), Building()).open = True
            elif life.household is not None and life.rule in (Rule.ROOM_LOW, Rule.SENSOR_FAULT):
                key = (life.station, life.building, life.household)
                se = self.sensors.get(key) or self._new(*key)
                if life.rule == Rule.ROOM_LOW:
                    se.low_open = True
                else:
                    se.fault_open = True

    def params(self, station: str, building: str) -> Params:
        p = self._params.get((station, building))
        if p is None:
            r = self.ctx.rules.room_for(station, building)
            p = self._params[(station, building)] = Params(
                r.warning_below, r.major_below, r.critical_below, r.window_min * 60_000,
                r.hold_min * 60_000, r.warning_below + r.clear_above_by, r.clear_hold_min * 60_000,
                r.building_share, r.building_min, r.building_hold_min * 60_000, r.window_min * 5_000,
                r.compliant_clear_min * 60_000, r.recovery_max_h * 3_600_000)
        return p

    # -- one reading --------------------------------------------------------------------------
    def station_households(self, station: str) -> dict[str, Sensor]:
        hh = self.households.get(station)
        if hh is None:
            hh = self.households[station] = {}
        return hh

    def sample(self, station: str, hh: dict[str, Sensor], s: Sample, t: int, quiet: Quiet) -> None:
        """One room reading; ``hh`` is ``station_households(station)``, looked up once a message."""
        # The hot path of the rules: ~0.2 µs per value budget. Constants are cached on self, a
        # sensor carries its building and parameters, and a sensor with nothing to judge (no
        # open alert, not low, no fault, counts unchanged) returns before _judge.
        building, household = s.building, s.household
        se = hh.get(household)  # type: ignore[arg-type]
        if se is None or se.building != building:
            se = self.sensors.get((station, building, household))  # type: ignore[arg-type]
            if se is None:
                se = self._new(station, building, household)  # type: ignore[arg-type]
        if t <= se.last_t:
            return  # a redelivery or replayed past: already judged, and the past never pages
        se.last_t = t
        v = s.value
        if s.quality == "bad" or type(v) is not float:
            # not a reading (the stale rule counts the silence), but a bad report all the same
            se.hist = ((se.hist << 1) | 1) & self._hist_mask
            if se.fault_open or bin(se.hist).count("1") >= self._intermittent:
                self._judge(se, se.b, t, quiet)
            return
        implausible = v < self._pmin or v > self._pmax
        se.hist = ((se.hist << 1) | implausible) & self._hist_mask
        if se.last_good:
            gap = t - se.last_good
            gap = _MIN_GAP_MS if gap < _MIN_GAP_MS else _MAX_GAP_MS if gap > _MAX_GAP_MS else gap
            se.interval = gap if se.interval is None else 0.8 * se.interval + 0.2 * gap
        se.last_good = t
        se.stale = False
        b = se.b
        if implausible:
            if se.bad_since is None:
                se.bad_since = t
        else:
            se.bad_since = None
            prev = se.prev
            if prev is None:
                b.sum_last += v
                b.n_last += 1
            else:
                d = v - prev
                if (d > self._jump_k or -d > self._jump_k) and b.n_last > 1:
                    nb = (b.sum_last - prev) / (b.n_last - 1)
                    if abs(v - nb) > self._jump_k and se.jump_since is None:
                        se.jump_since = t
                elif (se.jump_since is not None and b.n_last > 1
                      and abs(v - (b.sum_last - prev) / (b.n_last - 1)) <= self._jump_k):
                    se.jump_since = None
                b.sum_last += d
            se.prev = v
            lo, hi = se.flat_lo, se.flat_hi
            if v < lo:
                lo = se.flat_lo = v
            elif v > hi:
                hi = se.flat_hi = v
            if hi - lo > self._flat2 or se.flat_since == 0:
                se.flat_since, se.flat_lo, se.flat_hi = t, v, v
            p = se.p
            win_t, win_v = se.win_t, se.win_v
            if win_t and t - win_t[-1] < p.bucket_ms:
                win_v[-1] = v  # ≤ 12 points a window, whatever the sensor's rate
            else:
                win_t.append(t)
                win_v.append(v)
            edge = t - p.window_ms
            while win_t[0] <= edge:
                del win_t[0]
                del win_v[0]
            if t >= se.next_eval:
                n = len(win_v)
                if n == 1:
                    m = v
                else:
                    vals = sorted(win_v)
                    m = vals[n // 2] if n % 2 else (vals[n // 2 - 1] + vals[n // 2]) / 2
                se.median = m
                se.next_eval = t + _MEDIAN_EVERY_MS
                se.low = m < p.warn
        if (se.low or se.c_low or se.low_open or se.fault_open or se.bad_since is not None
                or se.jump_since is not None or se.c_valid is not (se.median is not None)
                or t - se.flat_since >= self._flat_ms or se.hist):
            self._judge(se, b, t, quiet)

    def _new(self, station: str, building: str, household: str) -> Sensor:
        b = self.buildings.get((station, building))
        if b is None:
            b = self.buildings[(station, building)] = Building()
        se = self.sensors[(station, building, household)] = Sensor(station, building, household, b,
                                                                   self.params(station, building))
        b.sensors.append(se)
        self.by_station.setdefault(station, []).append(se)
        self.station_households(station).setdefault(household, se)
        return se

    # -- verdicts -----------------------------------------------------------------------------
    def _judge(self, se: Sensor, b: Building, t: int, quiet: Quiet, *, faults: bool = True) -> None:
        excluded = se.excluded(self._flat_ms)
        p = self.params(se.station, se.building)
        station, building, household = se.station, se.building, se.household
        # sensor_fault
        reason = self._fault(se, t) if faults else None
        if faults and (reason is not None or se.fault_open):
            key = alert_key(Rule.SENSOR_FAULT, station, building, household)
            if reason is None and not self.ctx.is_open(key):
                se.fault_open = False  # resolved by the verdict before
            else:
                self._out.append(Verdict(key, Rule.SENSOR_FAULT, reason is not None, t, Severity.INFO,
                                         value=se.prev, clear_ms=self._fault_hold, quiet=quiet,
                                         station=station, building=building, household=household,
                                         context=lambda: {"reason": reason}))
                se.fault_open = True
        # room_low
        m = se.median
        low = se.low and not excluded and m is not None
        if low or se.low_open:
            key = alert_key(Rule.ROOM_LOW, station, building, household)
            if not low and not self.ctx.is_open(key):
                se.low_open = False
            else:
                sev = self._severity(m, p) if m is not None else Severity.WARNING
                sev, q = self._cold_day(station, t, sev, quiet) if low else (sev, quiet)
                # meets the standard but inside the hysteresis band: clear, on a longer hold
                clear = p.band_clear_ms if (not low and m is not None and not excluded
                                            and m < p.clear_at) else p.clear_ms
                self._out.append(Verdict(key, Rule.ROOM_LOW, low, t, sev, value=m, hold_ms=p.hold_ms,
                                         clear_ms=clear, quiet=q, station=station,
                                         building=building, household=household,
                                         context=lambda: self._context(station, m, p, t)))
                se.low_open = True
        # the building's counts, then its verdict
        valid = m is not None and not excluded
        if valid != se.c_valid or low != se.c_low:
            b.n_valid += valid - se.c_valid
            b.n_low += low - se.c_low
            if low != se.c_low:
                below = self.ctx.rooms_below
                below[station] = below.get(station, 0) + low - se.c_low
            se.c_valid, se.c_low = valid, low
        self._dirty[(station, building)] = b

    def flush(self, t: int, quiet: Quiet) -> None:
        """Judge the buildings whose sensors reported, once per message (not per reading, so a
        message's first readings never stand for the whole building)."""
        if not self._dirty:
            return
        dirty, self._dirty = self._dirty, {}
        for (station, building), b in dirty.items():
            self._judge_building(station, building, b, t, quiet)

    def _judge_building(self, station: str, building: str, b: Building, t: int, quiet: Quiet) -> None:
        p = self.params(station, building)
        if b.n_valid < max(p.minimum, len(b.sensors) / 2):
            return  # most sensors silent, faulty or not yet heard since a restart: no verdict
        need = max(p.minimum, math.ceil(p.share * b.n_valid - 1e-9))
        cause = b.n_low >= need
        if not cause and not b.open:
            return
        key = alert_key(Rule.BUILDING_LOW, station, building)
        if not cause and not self.ctx.is_open(key):
            b.open = False
            b.cause_gone = 0
            return
        if cause:
            b.cause_gone = 0
        elif not b.cause_gone:
            b.cause_gone = t
        # the rooms-back check: the incident holds while any of its flats is still below
        tail = not cause and b.n_low > 0 and t - b.cause_gone < p.recovery_ms
        low = [x for x in b.sensors if x.c_low and x.median is not None]
        meds = sorted(x.median for x in low if x.median is not None)
        bm = meds[len(meds) // 2] if meds else None
        sev = self._severity(bm, p) if bm is not None else Severity.WARNING
        sev, quiet = self._cold_day(station, t, sev, quiet) if cause or tail else (sev, quiet)
        n_low, n_valid = b.n_low, b.n_valid
        hh = sorted(x.household for x in low)
        update: dict[str, Any] = {"sensors_low": n_low, "sensors_valid": n_valid,
                                  "households_low": hh[:50], "rooms_back": not low}
        v = Verdict(key, Rule.BUILDING_LOW, cause or tail, t, sev, value=bm, hold_ms=p.b_hold_ms,
                    clear_ms=p.clear_ms, quiet=quiet, station=station, building=building,
                    context=lambda: {**self._context(station, bm, p, t), **update})
        v.update = update
        self._out.append(v)
        b.open = True

    def _cold_day(self, station: str, t: int, sev: Severity, quiet: Quiet) -> tuple[Severity, Quiet]:
        """On a day colder than the design outdoor temperature GB/T 33833 §5.1 does not apply:
        the room alert pages as the rule file says (``cold_day.paging``)."""
        paging = self.ctx.rules.cold_day.paging
        if paging == "page" or not self.ctx.cold_day(station, t):
            return sev, quiet
        if paging == "info":
            return Severity.INFO, quiet
        return sev, quiet or Quiet.EXEMPT

    def _fault(self, se: Sensor, t: int) -> str | None:
        if se.stale:
            return "stale"
        if se.bad_since is not None and t - se.bad_since >= self._fault_hold:
            return "implausible"
        if se.jump_since is not None and t - se.jump_since >= self._fault_hold:
            return "jump"
        if se.flat(self._flat_ms):
            return "flat"
        if se.bad_since is None and bin(se.hist).count("1") >= self._intermittent:
            return "intermittent"  # bad reports among good ones (all bad is "implausible")
        return None

    @staticmethod
    def _severity(m: float, p: Params) -> Severity:
        if m < p.crit:
            return Severity.CRITICAL
        if m < p.major:
            return Severity.MAJOR
        return Severity.WARNING

    def _context(self, station: str, median: float | None, p: Params, t: int) -> dict[str, Any]:
        ctx: dict[str, Any] = {}
        if median is not None:
            ctx["median"] = round(median, 2)
            ctx["shortfall_k"] = round(p.warn - median, 2)  # Tianjin refunds by this: ≤2, 2–6, >6 K
        daily = self.ctx.daily_mean(station, t)
        if daily is not None:
            ctx["outdoor_daily_mean"] = round(daily[0], 1)
            ctx["outdoor_mean_source"] = daily[1]
            # GB/T 33833 §5.1 does not hold on days colder than the design outdoor temperature
            ctx["below_design_outdoor"] = daily[0] < self.ctx.rules.design_outdoor_temp
        if self.ctx.season(t)[1]:
            ctx["season_start"] = True
        return ctx

    # -- time-driven --------------------------------------------------------------------------
    def tick(self, now: int) -> list[Verdict]:
        """Stale sensors, judged against their station's newest data, not the wall clock."""
        sr = self.ctx.rules.sensor
        default = sr.interval_s * 1000
        stations = self.ctx.stations
        for station, sensors in self.by_station.items():
            st = stations.get(station)
            if st is None or not st.last_t:
                continue
            ref, quiet_ms = st.last_t, max(st.heartbeat_ms, _MIN_GAP_MS)  # quiet: reported by exception
            stale = [se for se in sensors if se.last_good
                     and ref - se.last_good > sr.stale_factor * max(se.interval or default, quiet_ms)]
            mass = len(stale) >= 3 and len(stale) >= sr.mass_stale_share * len(sensors)
            for se in stale:
                if not se.stale:
                    se.stale = True
                    # a mass silence is a concentrator or link: the sensors leave the rules but
                    # get no alert each (the station's device_offline / station_offline says it)
                    self._judge(se, self.buildings[(station, se.building)], ref, Quiet.NONE,
                                faults=not mass)
            self.flush(ref, Quiet.NONE)
        return self._take()


FAMILY = Rooms
