"""A simulated heating season, compressed: the simulator's station physics stepped at a coarse
interval (10 min by default) over days or weeks, written to InfluxDB with the collector's own
line encoder and judged by the rule engine into the alert store — the data the takeover report
(issue #17) reads, produced in seconds instead of weeks.

Scripted events are the simulator's (``slow_leak``, ``theft``, ``cold_building``,
``cold_household``, ``stuck_sensor``, ``broken_sensor``, ``link_down`` …), plus ``cold_snaps``:
days whose outdoor temperature is ``snap_k`` lower (colder than the design outdoor
temperature, so those days leave the room pass rate).

``Truth`` keeps what was written in a compact form, so a test can compute every figure of the
report again from the raw samples, on a path that shares nothing with ``report.compute``.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import httpx

from alerting.engine import Engine
from alerting.store import Store
from contract.alerts import AlertRules, Transition
from contract.config import GatewayConfig
from contract.influx import telemetry_lines
from contract.payload import Frame, Sample
from contract.points import VOCABULARY, Kind, Level
from simulator.physics import Event, Key, StationModel

# the station points the rules and the report read (a full PLC map has ~60; this keeps a
# month of a few stations small)
STATION_POINTS = ("outdoor_temp", "secondary_supply_temp", "secondary_return_temp",
                  "secondary_return_pressure", "secondary_flow", "makeup_flow", "makeup_total", "tank_level",
                  "makeup_pump_running", "circ_pump_running", "primary_supply_temp", "primary_flow")
BUILDING_POINTS = ("building_supply_temp", "building_return_temp", "building_valve_position")


@dataclass
class StationSpec:
    station: str
    buildings: int = 3
    households: int = 4  # room sensors per building
    events: list[Event] = field(default_factory=list)  # times: seconds after the season's start
    config: GatewayConfig | None = None  # when given, its points are the station's keys


@dataclass
class Truth:
    """What was written, for an independent recomputation."""

    rooms: dict[tuple[str, str, str], list[tuple[int, float | None]]] = field(
        default_factory=lambda: defaultdict(list))  # (ts, value) — None: a bad reading
    station: dict[tuple[str, str], list[tuple[int, float]]] = field(default_factory=lambda: defaultdict(list))
    counts: dict[str, Counter[tuple[str, str | None, str | None]]] = field(
        default_factory=lambda: defaultdict(Counter))  # samples with a value, per key
    frames: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))  # station → ts
    lines: int = 0


def _keys(spec: StationSpec) -> list[Key]:
    if spec.config is not None:
        return [p.key for d in spec.config.resolved for p in d.points]
    keys: list[Key] = [(p, None, None) for p in STATION_POINTS]
    for i in range(1, spec.buildings + 1):
        b = f"b{i:02d}"
        keys += [(p, b, None) for p in BUILDING_POINTS]
        keys += [("room_temp", b, f"{b}-{f:02d}01") for f in range(1, spec.households + 1)]
    return keys


def _unit(point: str) -> str:
    d = VOCABULARY.get(point)
    return d.unit if d is not None else ""


def run(stations: Sequence[StationSpec], start: dt.datetime, days: float, *, step_s: int = 600,
        rules: AlertRules | None = None, cold_snaps: Sequence[int] = (), snap_k: float = 12.0,
        write: Callable[[list[str]], None] | None = None, store: Store | None = None,
        seed: int = 1, batch: int = 20_000) -> Truth:
    """Step every station from ``start`` for ``days``; write lines (``write``) and the engine's
    alerts (``store``) as it goes. ``cold_snaps``: day indexes (0 = the first local day)."""
    t0 = start.timestamp()  # a local midnight: day indexes count from it
    engine = Engine(rules or AlertRules()) if store is not None else None
    truth = Truth()
    models = {s.station: StationModel(s.station, _keys(s), seed=seed, events=[
        Event(e.kind, t0 + e.start, None if e.end is None else t0 + e.end, e.building, e.household, e.point,
              e.device) for e in s.events]) for s in stations}
    text = {p for m in models.values() for p, _, _ in m.keys
            if (d := VOCABULARY.get(p)) is not None and d.kind is Kind.TEXT}
    pending: list[str] = []
    transitions: list[Transition] = []
    seq = 0
    n = int(days * 86400 // step_s)
    for step in range(n):
        t = t0 + step * step_s
        ms = int(t * 1000)
        snap = int((t - t0) // 86400) in cold_snaps
        for st, model in models.items():
            values = model.step(t)
            if model.event_on("link_down", t):
                continue
            samples: list[Sample] = []
            for (p, b, h), v in values.items():
                if model.event_on("stale_sensor", t, point=p, building=b, household=h):
                    continue
                if model.broken((p, b, h), t):
                    samples.append(Sample(point=p, unit=_unit(p), building=b, household=h, quality="bad"))
                    if h is not None:
                        truth.rooms[(st, b or "", h)].append((ms, None))
                    continue
                val: bool | float | str
                if p in text or isinstance(v, str):
                    val = str(v)
                elif isinstance(v, bool):
                    val = v
                else:
                    val = float(v)
                    if p == "outdoor_temp" and snap:
                        val -= snap_k
                    d = VOCABULARY.get(p)
                    if d is not None and d.level is Level.HOUSEHOLD:
                        val = round(val, 2)  # what a 0.01 °C register holds
                quality: Literal["good", "uncertain"] = "good"
                d = VOCABULARY.get(p)
                if isinstance(val, float) and d is not None and (
                        (d.lo is not None and val < d.lo) or (d.hi is not None and val > d.hi)):
                    quality = "uncertain"  # as the gateway flags a reading outside the plausible range
                samples.append(Sample(point=p, unit=_unit(p), building=b, household=h, value=val,
                                      quality=quality))
                truth.counts[st][(p, b, h)] += 1
                if h is not None and isinstance(val, float):
                    truth.rooms[(st, b or "", h)].append((ms, val if quality == "good" else None))
                elif p in ("makeup_total", "secondary_flow", "outdoor_temp") and isinstance(val, float):
                    truth.station[(st, p)].append((ms, val))
            seq += 1
            frame = Frame(st, f"gw-{st}", "5ea50n00", seq, ms, False, samples)
            truth.frames[st].append(ms)
            if write is not None:
                pending += telemetry_lines(frame)
            if engine is not None:
                transitions += engine.observe(frame, ms)
        if engine is not None:
            transitions += engine.tick(ms)
        if write is not None and len(pending) >= batch:
            truth.lines += len(pending)
            write(pending)
            pending = []
        if store is not None and len(transitions) >= 2000:
            store.apply(transitions)
            transitions = []
    if write is not None and pending:
        truth.lines += len(pending)
        write(pending)
    if store is not None and transitions:
        store.apply(transitions)
    return truth


def influx_writer(url: str, database: str) -> Callable[[list[str]], None]:
    """Create ``database`` and return a function that writes lines to it (precision ms)."""
    client = httpx.Client(timeout=60)
    client.post(f"{url}/query", params={"q": f'CREATE DATABASE "{database}"'}).raise_for_status()

    def write(lines: list[str]) -> None:
        r = client.post(f"{url}/write", params={"db": database, "precision": "ms"},
                        content="\n".join(lines).encode())
        if r.status_code != 204:
            raise RuntimeError(f"InfluxDB write answered {r.status_code}: {r.text[:300]}")

    return write
