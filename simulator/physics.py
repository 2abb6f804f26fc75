"""Believable station physics on a simulated clock. Pure: given sim time, gives point values.

Model (per station, deterministic for a seed):
- outdoor temperature: daily sine, coldest at 05:00, warmest at 15:00;
- secondary supply follows a radiator climate curve (slope 1.4, clamped 35–75 °C), return
  below it by a load-dependent ΔT; primary supply 70–120 °C;
- totalizers integrate their flows over sim time; make-up runs at a small baseline
  (~0.3 % of circulation) and the tank drains with it and is refilled by the city-water valve;
- a written secondary supply setpoint (a remote command) replaces the climate curve: the supply
  temperature follows it over ~10 minutes;
- buildings: valve position follows its setpoint (written remotely) with a lag; the building's
  flow follows the valve; building supply/return follow the station's secondary loop;
- households: room temperature settles (over ~half an hour to the next hours; ``room_settle_s``)
  toward a target set by their building's flow (valve) and supply, with a per-household offset
  and ±0.1 K noise: opening a cold building's valve from 60 % to 100 % raises its rooms by 6 K, enough to
  carry them through a ``cold_building`` supply fault (the closed loop of docs/control.md).

An event already under way at the model's first step (a scenario's negative ``at``) starts with
its full effect on the rooms, as a station first connected mid-winter would show it: a building
cold since before the start has cold rooms at the first reading. A model restored from a saved
state (``state``/``restore``, ``heatwatch simulate --state``) starts from it instead: a restarted
simulator is the same stations a moment later, not the scenario's start again.

Events change this: ``leak`` (a burst: make-up ×30, secondary return pressure falls 0.08 MPa
over 10 min, tank drains), ``slow_leak`` (+3 m³/h of make-up around the clock, pressure held by
the make-up pump), ``theft`` (+4 m³/h from 18:00 to 22:00 local time: hot water drawn off the
network), ``pressure_test`` (make-up +12 m³/h raising the return pressure 0.15 MPa),
``cold_building`` (a starved branch: its supply 12 K low and its rooms 6 K, less as its valve
opens beyond 60 %, gone at 100 %: the remote fix), ``cold_household``, ``open_window``,
``stuck_sensor`` (the value freezes),
``broken_sensor`` and ``stale_sensor`` (the register reads the device's fault sentinel; a
scenario runner drops a stale sensor's readings altogether), ``dead_device`` (the device stops
answering; handled by the server) and ``link_down`` (nothing from the station reaches the
broker; for scenario runners).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any

Key = tuple[str, str | None, str | None]  # (point, building, household)

EVENT_KINDS = frozenset({
    "leak", "slow_leak", "theft", "pressure_test", "cold_building", "cold_household",
    "open_window", "stuck_sensor", "broken_sensor", "stale_sensor", "dead_device", "link_down",
})
LOCAL_UTC_OFFSET_H = 8.0  # the simulated city's local time (theft happens in the local evening)
VALVE_GAIN_K = 0.06  # room temperature per % of building valve opening, around the nominal 60 %
# (a cold_building is a starved branch: opening its valve restores the flow, see _starved)
SUPPLY_GAIN = 0.3  # room temperature per K of secondary supply above (or below) the climate curve


@dataclass
class Event:
    kind: str
    start: float  # sim time, s since the Unix epoch
    end: float | None = None
    building: str | None = None
    household: str | None = None
    point: str | None = None
    device: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in EVENT_KINDS:
            raise ValueError(f"unknown event {self.kind!r}; known: {', '.join(sorted(EVENT_KINDS))}")

    def active(self, t: float) -> bool:
        return self.start <= t and (self.end is None or t < self.end)


@dataclass
class StationModel:
    station: str
    keys: list[Key]  # every point the station's maps serve
    seed: int = 0
    events: list[Event] = field(default_factory=list)
    setpoints: dict[Key, float | bool] = field(default_factory=dict)
    local_mode: bool = False  # the cabinet's local/remote switch
    written: set[Key] = field(default_factory=set)  # setpoints a remote command has written
    # how fast rooms follow their target (a first-order lag): about half an hour for the
    # simulated flats; the demo shortens it so a valve command shows within minutes
    room_settle_s: float = 1800.0

    def __post_init__(self) -> None:
        rnd = random.Random(f"{self.station}:{self.seed}")
        self._rnd = random.Random(rnd.random())
        self.phase = rnd.uniform(-1.0, 1.0)
        self.buildings = sorted({b for _, b, _ in self.keys if b})
        self.households = sorted({(b, h) for _, b, h in self.keys if h and b})
        self.hh_offset = {h: rnd.uniform(-1.2, 1.2) for _, h in self.households}
        self.b_offset = {b: rnd.uniform(-0.8, 0.8) for b in self.buildings}
        self.t: float | None = None
        self.totals: dict[str, float] = {
            "primary_flow_total": rnd.uniform(1e4, 5e4), "secondary_flow_total": rnd.uniform(1e5, 9e5),
            "makeup_total": rnd.uniform(100, 900), "city_water_total": rnd.uniform(100, 900),
            "primary_heat_total": rnd.uniform(1e3, 9e3), "secondary_heat_total": rnd.uniform(1e3, 9e3),
        }
        self.b_heat = {b: rnd.uniform(100, 900) for b in self.buildings}
        self.tank = 1.6
        self.refilling = False
        self.valve_pos: dict[str, float] = {}
        self.supply: float | None = None  # the secondary supply actually delivered
        self.supply_offset = 0.0  # how far it is above the climate curve (a written setpoint)
        self.room: dict[str, float] = {h: 20.0 + self.hh_offset[h] for _, h in self.households}
        self.restored = False  # the rooms came from a saved state (restore)
        self.values: dict[Key, float | bool | str] = {}
        self.frozen: dict[Key, float | bool | str] = {}
        for k in self.keys:
            p = k[0]
            if p == "building_valve_setpoint" or p == "secondary_supply_temp_setpoint":
                self.setpoints.setdefault(k, 60.0)
            elif p.endswith("_setpoint") or p == "work_mode":
                self.setpoints.setdefault(k, {"primary_valve_setpoint": 50.0, "work_mode": 1.0,
                                              "diff_pressure_setpoint": 0.12}.get(p, 0.3))

    def write(self, key: Key, value: float | bool) -> None:
        """A remote write landed on this setpoint (the PLC took it)."""
        self.setpoints[key] = value
        self.written.add(key)

    # -- across restarts -------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """What a restarted simulator carries on from, as JSON: the flats' temperatures (thermal
        mass), the setpoints remote commands wrote (a PLC keeps them), the valves' positions,
        the meters' counts, the tank and the supply temperature."""
        return {"room": dict(self.room), "valve_pos": dict(self.valve_pos), "supply": self.supply,
                "setpoints": [[list(k), self.setpoints[k]] for k in sorted(self.written, key=str)],
                "totals": dict(self.totals), "b_heat": dict(self.b_heat), "tank": self.tank,
                "refilling": self.refilling, "local_mode": self.local_mode}

    def restore(self, state: dict[str, Any]) -> None:
        """Carry on from ``state`` (``state()``'s, possibly of other configs: what this model does
        not have is left out). The first step then starts from it, not from where the events
        would have settled the rooms. ValueError names a value that is not a number."""
        def num(path: str, v: object) -> float:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"{path}: {v!r} is not a number")
            return float(v)

        def known(name: str, have: Any) -> dict[str, float]:  # what this model has, checked
            return {k: num(f"{name}.{k}", v) for k, v in (state.get(name) or {}).items() if k in have}

        rooms, valves = known("room", self.room), known("valve_pos", self.buildings)
        totals, b_heat = known("totals", self.totals), known("b_heat", self.b_heat)
        written: dict[Key, float | bool] = {}
        for i, item in enumerate(state.get("setpoints") or []):
            key: Key = (str(item[0][0]), item[0][1], item[0][2])
            if key in self.setpoints:
                written[key] = item[1] if isinstance(item[1], bool) else num(f"setpoints.{i}", item[1])
        self.room.update(rooms)
        self.valve_pos.update(valves)
        self.totals.update(totals)
        self.b_heat.update(b_heat)
        for key, value in written.items():
            self.write(key, value)
        if state.get("supply") is not None:
            self.supply = num("supply", state["supply"])
        if state.get("tank") is not None:
            self.tank = num("tank", state["tank"])
        self.refilling = bool(state.get("refilling", self.refilling))
        self.local_mode = bool(state.get("local_mode", self.local_mode))
        self.restored = bool(rooms)

    # -- events --------------------------------------------------------------------------------
    def _on(self, kind: str, t: float, **match: str | None) -> Event | None:
        for e in self.events:
            if e.kind == kind and e.active(t) and all(
                getattr(e, k) in (None, v) for k, v in match.items()
            ):
                return e
        return None

    def event_on(self, kind: str, t: float, **match: str | None) -> bool:
        """Whether an event of ``kind`` matching ``match`` is active at sim time ``t``."""
        return self._on(kind, t, **match) is not None

    def dead_devices(self, t: float) -> set[str]:
        return {e.device for e in self.events if e.kind == "dead_device" and e.active(t) and e.device}

    def broken(self, key: Key, t: float) -> bool:
        p, b, h = key
        return (self._on("broken_sensor", t, point=p, building=b, household=h) is not None
                or self._on("stale_sensor", t, point=p, building=b, household=h) is not None)

    # -- physics -------------------------------------------------------------------------------
    def step(self, t: float) -> dict[Key, float | bool | str]:
        """Advance to sim time ``t`` (s since the epoch) and return every point's value."""
        # the first step: rooms start where they would have settled, unless a saved state says
        # where they are (a restart: the flats did not cool or warm in the moment it took)
        settle = self.t is None and not self.restored
        dt = 0.0 if self.t is None else max(0.0, min(t - self.t, 3600.0))
        self.t = t
        hour = (t / 3600.0) % 24
        noise = self._rnd.gauss
        outdoor = -4.0 + self.phase + 5.0 * math.sin(2 * math.pi * (hour - 9) / 24)
        load = max(0.0, min(1.0, (18.0 - outdoor) / 25.0))
        curve = max(35.0, min(75.0, 35.0 + 1.4 * (18.0 - outdoor)))
        wanted = curve
        sp_key: Key = ("secondary_supply_temp_setpoint", None, None)
        if sp_key in self.written:
            wanted = float(self.setpoints[sp_key])
        # the exchanger's control loop brings the supply to what is wanted over ~10 minutes
        self.supply = wanted if self.supply is None else self.supply + (wanted - self.supply) * min(
            1.0, dt / 600.0)
        sec_supply = self.supply
        self.supply_offset = sec_supply - curve
        sec_return = sec_supply - (6.0 + 10.0 * load)
        sec_flow = 120.0 + noise(0, 0.5)
        pri_supply = max(70.0, min(120.0, 85.0 + 1.3 * (5.0 - outdoor)))
        pri_return = sec_return + 4.0
        heat_rate = sec_flow * (sec_supply - sec_return) * 4.186e-3  # GJ/h
        pri_flow = heat_rate / max(1e-3, (pri_supply - pri_return) * 4.186e-3)

        leak = self._on("leak", t)
        leak_k = 0.0
        if leak is not None:
            leak_k = min(1.0, (t - leak.start) / 600.0)
        makeup = 0.004 * sec_flow * (1.0 + 30.0 * leak_k) + abs(noise(0, 0.01))
        ret_p = 0.30 - 0.08 * leak_k + noise(0, 0.002)
        if self._on("slow_leak", t) is not None:
            makeup += 3.0
        local_hour = (t / 3600.0 + LOCAL_UTC_OFFSET_H) % 24
        if self._on("theft", t) is not None and 18 <= local_hour < 22:
            makeup += 4.0
        test = self._on("pressure_test", t)
        if test is not None:
            makeup += 12.0
            ret_p += 0.15 * min(1.0, (t - test.start) / 600.0)
        sup_p = ret_p + 0.15 + noise(0, 0.002)

        hours = dt / 3600.0
        self.totals["secondary_flow_total"] += sec_flow * hours
        self.totals["primary_flow_total"] += pri_flow * hours
        self.totals["makeup_total"] += makeup * hours
        self.totals["secondary_heat_total"] += heat_rate * hours
        self.totals["primary_heat_total"] += heat_rate * 1.02 * hours
        # tank: drained by make-up, refilled from city water between 1.0 and 1.8 m (≈ 4 m² tank)
        self.tank -= makeup * hours / 4.0
        if self.tank < 1.0:
            self.refilling = True
        if self.refilling:
            self.tank += 2.0 * hours / 4.0
            self.totals["city_water_total"] += 2.0 * hours
            if self.tank >= 1.8:
                self.refilling = False
        self.tank = max(0.0, self.tank)

        v: dict[Key, float | bool | str] = {}
        station_vals: dict[str, float | bool] = {
            "outdoor_temp": outdoor + noise(0, 0.05),
            "secondary_supply_temp": sec_supply + noise(0, 0.1),
            "secondary_return_temp": sec_return + noise(0, 0.1),
            "secondary_supply_pressure": sup_p, "secondary_return_pressure": ret_p,
            "secondary_flow": sec_flow,
            "primary_supply_temp": pri_supply + noise(0, 0.1),
            "primary_return_temp": pri_return + noise(0, 0.1),
            "primary_supply_pressure": 0.85 + noise(0, 0.003),
            "primary_return_pressure": 0.45 + noise(0, 0.003),
            "primary_flow": pri_flow, "primary_heat_rate": heat_rate,
            "makeup_flow": makeup, "tank_level": self.tank,
            "circ_pump_running": True, "circ_pump_fault": False,
            "circ_pump_freq": 38.0 + 8.0 * load,
            "makeup_pump_running": makeup > 0.3 or leak is not None,
            "makeup_pump_fault": False, "makeup_pump_freq": 30.0 if makeup > 0.3 else 0.0,
            "primary_valve_position": 20.0 + 70.0 * load,
            "local_mode": self.local_mode,
            **self.totals,
        }
        for k in self.keys:
            p, b, h = k
            if k in self.setpoints:
                val: float | bool | str = self.setpoints[k]
            elif b is None:
                base = p.rsplit("_", 1)[0] if p[-1].isdigit() else p
                sv = station_vals.get(base)
                val = sv if sv is not None else self._custom(p)
            elif h is None:
                val = self._building(p, b, t, dt, sec_supply, sec_return)
            else:
                val = self._household(p, b, h, t, dt, settle)
            v[k] = val
        for k, val in list(v.items()):  # stuck sensors hold the value they had when they stuck
            p, b, h = k
            if self._on("stuck_sensor", t, point=p, building=b, household=h) is not None:
                v[k] = self.frozen.setdefault(k, val)
            else:
                self.frozen.pop(k, None)
        self.values = v
        return v

    def _custom(self, p: str) -> float | bool | str:
        return "HX-SIM" if p.endswith(("_model", "_firmware", "_name", "_program")) else 0.0

    def _building(self, p: str, b: str, t: float, dt: float, sup: float, ret: float) -> float:
        sp = float(self.setpoints.get(("building_valve_setpoint", b, None), 60.0))
        pos = self.valve_pos.get(b, sp)
        pos += (sp - pos) * min(1.0, dt / 60.0)  # the actuator takes about a minute
        self.valve_pos[b] = pos
        cold = self._starved(b, t, pos)
        b_sup = sup - 1.0 - 12.0 * cold
        if p == "building_valve_position":
            return pos
        if p == "building_supply_temp":
            return b_sup
        if p == "building_return_temp":
            return ret - 1.5 - 8.0 * cold + (pos - 60.0) * 0.05
        if p == "building_heat_total":
            self.b_heat[b] += 0.4 * (pos / 60.0) * dt / 3600.0
            return self.b_heat[b]
        return 0.0

    def _starved(self, b: str, t: float, pos: float) -> float:
        """How cold a ``cold_building`` leaves building ``b``: 1 at its valve's usual 60 % or
        less, falling to 0 as the valve opens fully (opening a starved branch restores its flow)."""
        if self._on("cold_building", t, building=b) is None:
            return 0.0
        return max(0.0, min(1.0, (100.0 - pos) / 40.0))

    def _household(self, p: str, b: str, h: str, t: float, dt: float, settle: bool = False) -> float:
        if p != "room_temp":
            return 0.0
        pos = self.valve_pos.get(b, 60.0)
        usual = target = (20.5 + self.b_offset[b] + self.hh_offset[h] + (pos - 60.0) * VALVE_GAIN_K
                          + self.supply_offset * SUPPLY_GAIN)
        target -= 6.0 * self._starved(b, t, pos)
        if self._on("cold_household", t, household=h):
            target = 14.0
        if self._on("open_window", t, household=h):
            target -= 8.0
        cur = self.room[h]
        if settle:  # an event already under way at the start has long since taken its toll
            cur += target - usual
        cur += (target - cur) * min(1.0, dt / self.room_settle_s)
        self.room[h] = cur
        return cur + self._rnd.gauss(0, 0.05)
