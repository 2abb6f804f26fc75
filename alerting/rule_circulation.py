"""Circulation rule: circ_pump_trip (critical). A station whose circulation stops heats nobody.

The circulation pump and the flow meter are read together (``circulation`` in the rule file):
none of the station's circulation pumps reports running, or the circulation flow falls below
``flow_share`` of its normal (learned from the station's own flow, ``learn_min`` of it first),
for ``hold_min``. A pump's fault bit is said in the context. It is one incident for the cause:
while it fires, the station's room and building alerts are under it (the flats cool because the
water stopped), and when circulation is back it closes after the rooms-back check, as a station
outage does. With circulation near zero the make-up rate (make-up ÷ circulation) is huge:
the make-up family leaves such hours out of ``makeup_rate`` (it reads ``Context.tripped``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from alerting.family import NO_VERDICTS, Context, Family, FrameView, Verdict
from alerting.lifecycle import Life, get_fields, set_fields
from contract.alerts import Rule, Severity, alert_key

_HOUR_MS = 3_600_000
_GAP_MS = 15 * 60_000

_FIELDS = ("back_at", "below_before", "faults", "flow", "last_t", "learned_ms", "normal", "running",
           "tripped")


class Circulation:
    __slots__ = _FIELDS

    def __init__(self) -> None:
        self.running: dict[str, bool] = {}  # pump running bit → its last value
        self.faults: dict[str, bool] = {}
        self.flow: float | None = None
        self.normal: float | None = None  # the station's own circulation flow, learned
        self.learned_ms = 0
        self.last_t = 0
        self.tripped = False
        self.back_at = 0  # circulation back: the rooms-back check runs from here
        self.below_before = 0  # its rooms below the standard when the trip started

    def __getstate__(self) -> tuple[Any, ...]:
        return get_fields(self, _FIELDS)

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        set_fields(self, _FIELDS, state)


class CirculationFamily(Family):
    name = "circulation"
    order = 25  # before make-up, which reads Context.tripped for the same message
    raises = (Rule.CIRC_PUMP_TRIP,)

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        self.stations: dict[str, Circulation] = {}
        r = ctx.rules.circulation
        self._pumps, self._faults, self._flow = tuple(r.pumps), tuple(r.faults), r.flow

    def points(self) -> frozenset[str]:
        return frozenset((self._flow, *self._pumps, *self._faults))

    def holds(self) -> dict[Rule, tuple[Rule, ...]]:
        return {Rule.CIRC_PUMP_TRIP: (Rule.ROOM_LOW, Rule.BUILDING_LOW)}

    def observe(self, view: FrameView, now: int) -> list[Verdict]:
        vals = view.values
        if not vals:
            return NO_VERDICTS
        flow_s = vals.get(self._flow)
        bits = [p for p in self._pumps if p in vals] + [p for p in self._faults if p in vals]
        if flow_s is None and not bits:
            return NO_VERDICTS
        st = self.stations.get(view.station)
        if st is None:
            st = self.stations[view.station] = Circulation()
        t = view.t
        if t <= st.last_t:
            return NO_VERDICTS  # late or redelivered: the newer state is already judged
        dt = t - st.last_t if st.last_t else 0
        st.last_t = t
        for p in bits:
            s = vals[p]
            if type(s.value) is bool and s.quality != "bad":
                (st.running if p in self._pumps else st.faults)[p] = s.value
        r = self.ctx.rules.circulation
        learned = st.normal is not None and st.learned_ms >= r.learn_min * 60_000
        flow = None
        if flow_s is not None and type(flow_s.value) is float and flow_s.quality != "bad":
            flow = st.flow = flow_s.value
        stopped = bool(st.running) and not any(st.running.values())
        low = flow is not None and learned and st.normal is not None and flow < r.flow_share * st.normal
        tripped = stopped or low
        if flow is not None and not tripped:
            # the normal flow follows the station's own over about an hour (setbacks, a second pump)
            a = 1.0 if st.normal is None else min(1.0, dt / _HOUR_MS) if dt <= _GAP_MS else 0.0
            st.normal = flow if st.normal is None else st.normal + a * (flow - st.normal)
            if dt <= _GAP_MS:
                st.learned_ms += dt
        if tripped:
            self.ctx.tripped.add(view.station)
        else:
            self.ctx.tripped.discard(view.station)
        return self._verdict(view.station, st, tripped, t, view)

    def _verdict(self, station: str, st: Circulation, tripped: bool, t: int,
                 view: FrameView) -> list[Verdict]:
        if not tripped and not st.tripped and not st.back_at:
            return NO_VERDICTS  # the common case, every message: circulating, nothing open
        key = alert_key(Rule.CIRC_PUMP_TRIP, station)
        is_open = self.ctx.is_open(key)
        below = self.ctx.rooms_below.get(station, 0)
        if tripped:
            if not st.tripped:
                st.below_before = below
            st.back_at = 0
            active = True
        elif is_open:
            if not st.back_at:
                st.back_at = t
            recovery_ms = self.ctx.rules.room.recovery_max_h * _HOUR_MS
            active = below > st.below_before and t - st.back_at < recovery_ms
        else:
            st.tripped, st.back_at = False, 0
            return NO_VERDICTS
        st.tripped = tripped
        r = self.ctx.rules.circulation
        faults = sorted(p for p, on in st.faults.items() if on)
        stopped = bool(st.running) and not any(st.running.values())
        reason = ("rooms recovering" if not tripped else "pumps stopped" if stopped
                  else "circulation flow collapsed")
        flow, normal = st.flow, st.normal
        update: dict[str, Any] = {"reason": reason, "faults": faults,
                                  "rooms_below_standard": max(0, below - st.below_before)}
        v = Verdict(key, Rule.CIRC_PUMP_TRIP, active, t, Severity.CRITICAL,
                    value=None if flow is None else round(flow, 2), hold_ms=r.hold_min * 60_000,
                    clear_ms=r.clear_min * 60_000, quiet=view.quiet, station=station,
                    context=lambda: {"flow_m3_h": None if flow is None else round(flow, 2),
                                     "normal_flow_m3_h": None if normal is None else round(normal, 1),
                                     **update})
        v.update = update
        return [v]

    def adopt(self, lives: Iterable[Life]) -> None:
        self.ctx.tripped.clear()
        for life in lives:
            if life.rule == Rule.CIRC_PUMP_TRIP and life.station is not None:
                st = self.stations.get(life.station)
                if st is not None and st.tripped:
                    self.ctx.tripped.add(life.station)

    def state(self) -> Any:
        return self.stations

    def restore(self, state: Any) -> None:
        self.stations = state
        self.ctx.tripped.clear()
        self.ctx.tripped.update(k for k, v in state.items() if v.tripped)


FAMILY = CirculationFamily
