"""Alert scenarios: the simulator's station physics on an accelerated clock, judged by the engine.

A scenario file (``tests/scenarios/*.yaml``) states the stations, what happens to them and to
their data on the way, and what the dispatch room must and must not be paged for::

    description: a building's supply fails; its households go cold together
    start: 2026-12-10T00:00:00+08:00
    duration: 8h
    stations: 1                 # st001, st002 …; stations_per_gateway of them behind each gateway
    buildings: 3                # b01..b03, each with `households` room sensors
    households: 8
    events:                     # the simulator's physics (simulator/physics.py EVENT_KINDS)
      - {at: 1h, event: cold_building, building: b02, for: 6h}
    profiles:                   # any reported point: set / add (a number, or [from, to] = a ramp)
      - {point: makeup_flow, at: 4d10h, for: 6h, add: [0.1, 1.9]}    # also counted by the totalizer
      - {point: circ_pump_running, at: 2h, for: 1h, set: false}
      - {point: room_temp, household: b01-0301, at: 2h, set: 18.3}    # stuck at a given value
      - {point: room_temp, household: b01-0401, at: 1h, sentinel: 85.0, every: 2}   # or sentinel: bad
    delivery:                   # what the network does to the messages on their way
      - {at: 3d23h55m, for: 10m, fault: redeliver, by: 7m}   # also gap, duplicate, delay, reverse, clock_skew
    status:                     # status messages: a gateway's will, a station's devices
      - {at: 1h, gateway: gw-st001, state: offline}
      - {at: 1h, station: st001, state: offline, devices: {plc: offline}}
    works:                      # a works window for a building (a silence in the store)
      - {at: 2h, for: 4h, building: b02, reason: riser repair}
    rules: {}                   # the rule file (overrides of contract/alerts.py AlertRules)
    expect:                     # each must be paged (firing, not quiet) within `within` of `after`
      - {rule: building_low, building: b02, after: 1h, within: 3h}
    quiet:                      # raised and stored, but must not page
      - {rule: room_low, building: b02}
    open_at_end:                # still open when the scenario ends (a continuing leak never "clears")
      - {rule: makeup_rate}
    restart_at: 2h              # optional: the collector restarts (engine from its snapshot)

The closed loop of remote control (docs/control.md): an engineer paged for a rule sends remote
commands, each checked as the gateway checks it (the point's bounds, ``max_step`` from the
present value, ``min_interval_s`` since its last write: the vocabulary's defaults) and written
into the model of the station that paged (or ``station``); the scenario then expects the alert
to resolve and the rooms to recover::

    commands:                   # when building_low pages for b02: 70, 80, 90, 100 % every 15 min
      - {when_paged: building_low, building: b02, point: building_valve_setpoint,
         values: [70, 80, 90, 100], delay: 10m, every: 15m}
    resolved:                   # within `within` of the first command
      - {rule: building_low, building: b02, within: 4h}
    rooms_above: {building: b02, value: 18}   # every room of b02 (of st001, or `station`) at the end

Every page that matches no ``expect`` entry is a false page, and a room page whose value meets
the standard (median ≥ ``room.warning_below``) is counted on its own: it must never happen.
The runner plays the collector in front of the engine: a message stamped more than
``max_future_s`` ahead of its receipt is re-stamped on receipt time and marked (``skew_ms``)
where the contract carries the mark, else rejected as the collector did before.

Run them all and print the report: ``.venv/bin/python -m heatwatch.scenarios tests/scenarios``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import heapq
import random
import statistics
import sys
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from alerting.engine import Engine, Silence
from contract.alerts import AlertRules, Transition
from contract.commands import Bounds, Reason, bounds_problem
from contract.config import WriteSpec, read_yaml, render_errors
from contract.errors import ConfigError
from contract.payload import Frame, GatewayStatus, Sample, StationStatus
from contract.points import VOCABULARY, Kind, Level, check_name
from simulator.physics import Event, Key, StationModel
from simulator.scenario import seconds

STATION, GATEWAY = "st001", "gw-st001"
_STATION_POINTS = [d.name for d in VOCABULARY.values()
                   if d.level is Level.STATION and d.kind is not Kind.TEXT]
# a flow a profile changes is counted by its totalizer too, so volumes and rates agree
_TOTALS = {"makeup_flow": "makeup_total", "secondary_flow": "secondary_flow_total",
           "primary_flow": "primary_flow_total"}
_ROOM_RULES = ("room_low", "building_low")
Number = float | int


def _dur(v: object) -> float | None:
    return None if v is None else seconds(v)


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class _Timed(_Spec):
    at: float = 0.0
    for_: float | None = Field(default=None, alias="for")

    @field_validator("at", "for_", mode="before")
    @classmethod
    def _times(cls, v: object) -> float | None:
        return _dur(v)

    def active(self, rel: float) -> bool:
        return self.at <= rel and (self.for_ is None or rel < self.at + self.for_)

    def progress(self, rel: float) -> float:
        """0 at the start of the span, 1 at its end (a span without an end: 0)."""
        if not self.for_:
            return 0.0
        return min(1.0, max(0.0, (rel - self.at) / self.for_))


class EventSpec(_Timed):
    event: str
    station: str | None = None  # None: every station
    building: str | None = None
    household: str | None = None
    point: str | None = None
    device: str | None = None


class Profile(_Timed):
    """A reported point changed over a span: ``set`` it, ``add`` to it (a number, or [from, to] ramped
    across the span), or replace every ``every``-th report with a ``sentinel`` (a number, or ``bad``)."""

    point: str
    station: str | None = None
    building: str | None = None
    household: str | None = None
    set: bool | Number | tuple[Number, Number] | None = None
    add: Number | tuple[Number, Number] | None = None
    sentinel: Number | Literal["bad"] | None = None
    every: int = Field(1, ge=1)
    noise: float = Field(0.0, ge=0, description="± this (Gaussian σ) on a set value: a live sensor")

    @model_validator(mode="after")
    def _one(self) -> Profile:
        given = [k for k in ("set", "add", "sentinel") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of set, add, sentinel")
        try:
            check_name(self.point)
        except ValueError as exc:
            raise ValueError(f"point: {exc}") from None
        return self

    def matches(self, key: Key, station: str) -> bool:
        p, b, h = key
        return (p == self.point and self.station in (None, station) and self.building in (None, b)
                and self.household in (None, h))

    def apply(self, v: float | bool, rel: float, rnd: random.Random) -> float | bool:
        x = self.set if self.set is not None else self.add
        if isinstance(x, tuple):
            x = x[0] + (x[1] - x[0]) * self.progress(rel)
        if isinstance(x, bool):
            return x
        jitter = rnd.gauss(0, self.noise) if self.noise else 0.0
        if self.set is not None:
            return float(x) + jitter  # type: ignore[arg-type]
        return float(v) + float(x) + jitter  # type: ignore[arg-type]


class Delivery(_Timed):
    """What the network or the gateway does to messages of the span."""

    fault: Literal["gap", "duplicate", "delay", "reverse", "redeliver", "clock_skew"]
    by: float = 0.0  # delay / redelivery / skew
    station: str | None = None

    @field_validator("by", mode="before")
    @classmethod
    def _by(cls, v: object) -> float:
        return seconds(v)


class StatusSpec(_Timed):
    gateway: str | None = None
    station: str | None = None
    state: Literal["online", "offline", "degraded"]
    devices: dict[str, Literal["online", "offline", "degraded"]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _which(self) -> StatusSpec:
        if (self.gateway is None) == (self.station is None):
            raise ValueError("give a gateway or a station")
        if self.gateway is not None and self.state == "degraded":
            raise ValueError("a gateway is online or offline")
        return self


class Works(_Timed):
    building: str | None = None
    station: str = STATION
    reason: str = "works"


class _Match(_Spec):
    rule: str
    station: str | None = None
    building: str | None = None
    household: str | None = None
    subject: str | None = None
    gateway: str | None = None
    after: float = 0.0  # sim seconds from the start: the detection delay is measured from here
    within: float | None = None
    context: dict[str, Any] = Field(default_factory=dict)  # the page's context must say these

    @field_validator("after", "within", mode="before")
    @classmethod
    def _times(cls, v: object) -> float | None:
        return _dur(v)

    def hits(self, tr: Transition) -> bool:
        return (tr.rule == self.rule and self.station in (None, tr.station)
                and self.building in (None, tr.building) and self.household in (None, tr.household)
                and self.subject in (None, tr.subject) and self.gateway in (None, tr.gateway))

    def label(self) -> str:
        where = " ".join(x for x in (self.station, self.gateway, self.building, self.household,
                                     self.subject) if x)
        return f"{self.rule} {where}".strip()


class Command(_Spec):
    """Remote commands an engineer sends once ``when_paged`` pages (for ``building``, if given),
    to the station that paged unless ``station`` says which."""

    when_paged: str
    station: str | None = None
    building: str | None = None
    point: str
    values: list[float] = Field(min_length=1)
    delay: float = 600.0
    every: float = 900.0

    @field_validator("delay", "every", mode="before")
    @classmethod
    def _times(cls, v: object) -> float:
        return seconds(v)

    @field_validator("point")
    @classmethod
    def _writable(cls, v: str) -> str:
        d = check_name(v)
        if d is None or d.write is None:
            raise ValueError(f"{v} is not a writable point of the vocabulary")
        return v

    def answers(self, tr: Transition) -> bool:
        return (tr.page and tr.state == "firing" and tr.rule == self.when_paged
                and self.station in (None, tr.station) and self.building in (None, tr.building))


class RoomsAbove(_Spec):
    station: str = STATION
    building: str
    value: float


class ScenarioSpec(_Spec):
    description: str
    start: dt.datetime
    duration: float
    step: float = 60.0
    room_every: float = 1200.0
    stations: int = Field(1, ge=1, le=50)
    stations_per_gateway: int = Field(1, ge=1)
    buildings: int = Field(3, ge=1, le=50)
    households: int = Field(8, ge=1, le=200)
    seed: int = 1
    max_future_s: float = 300.0  # the collector's ingest.max_future_s
    events: list[EventSpec] = Field(default_factory=list)
    profiles: list[Profile] = Field(default_factory=list)
    delivery: list[Delivery] = Field(default_factory=list)
    status: list[StatusSpec] = Field(default_factory=list)
    works: list[Works] = Field(default_factory=list)
    rules: AlertRules = AlertRules()
    restart_at: float | None = None
    expect: list[_Match] = Field(default_factory=list)
    quiet: list[_Match] = Field(default_factory=list)
    open_at_end: list[_Match] = Field(default_factory=list)
    commands: list[Command] = Field(default_factory=list)
    resolved: list[_Match] = Field(default_factory=list)  # `within` counts from the first command
    rooms_above: RoomsAbove | None = None

    @field_validator("duration", "step", "room_every", "restart_at", mode="before")
    @classmethod
    def _times(cls, v: object) -> float | None:
        return _dur(v)

    @field_validator("events")
    @classmethod
    def _kinds(cls, v: list[EventSpec]) -> list[EventSpec]:
        from simulator.physics import EVENT_KINDS

        for i, e in enumerate(v):
            if e.event not in EVENT_KINDS:
                raise ValueError(f"@{i}.event: unknown event {e.event!r}; "
                                 f"known: {', '.join(sorted(EVENT_KINDS))}")
        return v

    @model_validator(mode="after")
    def _stations_exist(self) -> ScenarioSpec:
        names = set(self.station_names())
        where = [(f"commands.{i}.station", c.station) for i, c in enumerate(self.commands)]
        if self.rooms_above is not None:
            where.append(("rooms_above.station", self.rooms_above.station))
        for path, name in where:
            if name is not None and name not in names:
                raise ValueError(f"{path}: no station {name} in this scenario ({self.stations})")
        return self

    def station_names(self) -> list[str]:
        return [f"st{i:03d}" for i in range(1, self.stations + 1)]

    def gateway_of(self, station: str) -> str:
        if self.stations_per_gateway == 1:
            return f"gw-{station}"
        return f"gw{(int(station[2:]) - 1) // self.stations_per_gateway + 1:02d}"


class Sent(NamedTuple):
    """A command written into a station's model (a tuple: time first, value last)."""

    ms: int
    station: str
    point: str
    building: str | None
    value: float


@dataclass
class Outcome:
    name: str
    detections: list[tuple[str, float | None]] = field(default_factory=list)  # expect → delay s
    false_alarms: list[Transition] = field(default_factory=list)
    loud: list[Transition] = field(default_factory=list)  # expected quiet, but paged
    compliant: list[Transition] = field(default_factory=list)  # room pages for values ≥ standard
    missing_quiet: list[str] = field(default_factory=list)
    closed: list[str] = field(default_factory=list)  # open_at_end entries that were not open
    transitions: list[Transition] = field(default_factory=list)
    error: str | None = None  # the scenario could not run (an invalid file)
    sent: list[Sent] = field(default_factory=list)  # commands written
    refused: list[str] = field(default_factory=list)  # commands the gateway's checks would refuse
    # coldest room per building at the end (st001's by building, another station's "st002/b01")
    rooms: dict[str, float] = field(default_factory=dict)
    cold_rooms: list[str] = field(default_factory=list)  # rooms_above not met

    @property
    def passed(self) -> bool:
        return (self.error is None and all(d is not None for _, d in self.detections)
                and not self.false_alarms and not self.loud and not self.compliant
                and not self.missing_quiet and not self.closed and not self.refused
                and not self.cold_rooms)


def load(path: Path) -> ScenarioSpec:
    data = read_yaml(path)
    try:
        return ScenarioSpec.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(str(path), render_errors(exc, data)) from None


def _keys(spec: ScenarioSpec) -> list[Key]:
    keys: list[Key] = [(p, None, None) for p in _STATION_POINTS]
    for i in range(1, spec.buildings + 1):
        b = f"b{i:02d}"
        keys += [(p, b, None) for p in ("building_supply_temp", "building_return_temp",
                                        "building_valve_setpoint", "building_valve_position",
                                        "building_heat_total")]
        keys += [("room_temp", b, f"{b}-{f:02d}01") for f in range(1, spec.households + 1)]
    return keys


_RESTAMP = "skew_ms" in {f.name for f in dataclasses.fields(Frame)}  # the contract carries the mark


class _Station:
    """One simulated station: physics, the scenario's profiles on top, and its message sequence."""

    def __init__(self, spec: ScenarioSpec, name: str, index: int, t0: float) -> None:
        self.spec, self.name, self.t0 = spec, name, t0
        self.gateway = spec.gateway_of(name)
        events = [Event(e.event, t0 + e.at, None if e.for_ is None else t0 + e.at + e.for_,
                        e.building, e.household, e.point, e.device)
                  for e in spec.events if e.station in (None, name)]
        self.model = StationModel(name, _keys(spec), seed=spec.seed + index, events=events)
        self.profiles = [p for p in spec.profiles if p.station in (None, name)]
        self.extra: dict[str, float] = {}  # totalizer volume the profiles added
        self.reports: dict[Key, int] = {}  # reports per sensor (for sentinel every N)
        self.seq = 0
        self.last_t: float | None = None
        self.rnd = random.Random(f"{name}:{spec.seed}:profiles")

    def frame(self, t: float, rooms_due: bool) -> Frame | None:
        values = self.model.step(t)
        rel = t - self.t0
        dt_h = 0.0 if self.last_t is None else (t - self.last_t) / 3600
        self.last_t = t
        model = self.model
        if model.event_on("link_down", t):
            return None
        samples = []
        live = [p for p in self.profiles if p.active(rel)]
        for key, v in values.items():
            p, b, h = key
            if h is not None and not rooms_due:
                continue
            if model.event_on("stale_sensor", t, point=p, building=b, household=h):
                continue
            unit = VOCABULARY[p].unit
            if model.broken(key, t):
                samples.append(Sample(point=p, unit=unit, building=b, household=h, quality="bad"))
                continue
            val: bool | float = v if isinstance(v, bool) else float(v)
            bad = False
            for prof in live:
                if not prof.matches(key, self.name):
                    continue
                if prof.sentinel is not None:
                    n = self.reports[key] = self.reports.get(key, 0) + 1
                    if n % prof.every == 0:
                        if prof.sentinel == "bad":
                            bad = True
                        else:
                            val = float(prof.sentinel)
                    continue
                before = val
                val = prof.apply(val, rel, self.rnd)
                total = _TOTALS.get(p)
                if total is not None and isinstance(val, float) and isinstance(before, float):
                    self.extra[total] = self.extra.get(total, 0.0) + (val - before) * dt_h
            if p in self.extra and isinstance(val, float):
                val += self.extra[p]
            if bad:
                samples.append(Sample(point=p, unit=unit, building=b, household=h, quality="bad"))
            else:
                samples.append(Sample(point=p, unit=unit, building=b, household=h, value=val))
        for prof in live:  # a point the station's maps do not serve (a second pump): the profile's own
            if (prof.set is not None and prof.building is None and prof.household is None
                    and (prof.point, None, None) not in values):
                d = check_name(prof.point)
                unit = d.unit if d is not None else ""
                samples.append(Sample(point=prof.point, unit=unit, value=prof.apply(0.0, rel, self.rnd)))
        self.seq += 1
        return Frame(self.name, self.gateway, "0badc0de", self.seq, int(t * 1000), False, samples)


class Input(NamedTuple):
    """One thing the rules are given, at ``now`` (ms, the scenario's clock): ``silences`` (a list
    of Silence: the works windows, at the start and after a restart), a telemetry ``frame``, a
    ``station`` or ``gateway`` status, a ``tick``, or a ``restart`` (the judge restarts from its
    snapshot)."""

    kind: Literal["silences", "frame", "station", "gateway", "tick", "restart"]
    now: int
    msg: Any = None


@dataclass
class Played:
    out: list[Transition] = field(default_factory=list)
    sent: list[Sent] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    stations: list[_Station] = field(default_factory=list)


def play(spec: ScenarioSpec, feed: Callable[[Input], list[Transition]]) -> Played:
    """The scenario, in order, into ``feed`` (which judges and returns the transitions): the
    stations' physics and profiles, the network's faults, statuses, works, ticks every minute,
    the restart, and the engineer's commands answering pages. ``run`` feeds one rule engine;
    the alerter's tests feed the same stream to partitioned members."""
    t0 = spec.start.timestamp()
    stations = [_Station(spec, s, i, t0) for i, s in enumerate(spec.station_names())]
    res = Played(stations=stations)
    out = res.out
    out += feed(Input("silences", int(t0 * 1000), _works(spec, t0)))
    queue: list[tuple[float, int, str, Any]] = []  # (deliver at, order, kind, message)
    order = 0

    def push(at: float, kind: str, msg: Any) -> None:
        nonlocal order
        order += 1
        heapq.heappush(queue, (at, order, kind, msg))

    for s in spec.status:
        push(t0 + s.at, "status", s)
    by_name = {st.name: st for st in stations}
    due: list[tuple[float, int, str, Command, float]] = []  # (sim time, order, station, command, value)
    waiting = list(enumerate(spec.commands))  # not yet answered
    last_write: dict[tuple[str, str, str | None], int] = {}
    sent, refused = res.sent, res.refused
    seen = 0  # transitions already looked at for pages the engineer answers
    next_room, next_tick, restarted = t0, t0, False
    t = t0
    while t <= t0 + spec.duration:
        rel = t - t0
        while due and due[0][0] <= t:
            _, _, where, c, value = heapq.heappop(due)
            problem = _command(by_name[where].model, c, value, int(t * 1000), last_write, where)
            if problem is None:
                sent.append(Sent(int(t * 1000), where, c.point, c.building, value))
            else:
                refused.append(f"{where} {c.point} {c.building or ''} {value:g}: {problem}")
        if spec.restart_at is not None and not restarted and rel >= spec.restart_at:
            out += feed(Input("restart", int(t * 1000)))  # from what the judge left on disk
            out += feed(Input("silences", int(t * 1000), _works(spec, t0)))
            restarted = True
        rooms_due = t >= next_room
        if rooms_due:
            next_room += spec.room_every
        for st in stations:
            frame = st.frame(t, rooms_due)
            if frame is not None:
                _send(spec, frame, t, rel, push)
        while queue and queue[0][0] <= t:
            at, _, kind, msg = heapq.heappop(queue)
            now = int(at * 1000)
            if kind == "status":
                out += feed(_status(spec, msg, now))
                continue
            out += feed(Input("frame", now, msg))  # as sent: the judge checks its time
        if t >= next_tick:
            out += feed(Input("tick", int(t * 1000)))
            next_tick += 60
        for tr in out[seen:] if waiting else ():  # the engineer answers the page
            for i, c in [w for w in waiting if w[1].answers(tr)]:
                waiting.remove((i, c))
                target = c.station or tr.station
                if target is None:  # a gateway's page: say which station in the scenario file
                    refused.append(f"{c.point}: the {tr.rule} page names no station")
                    continue
                for k, v in enumerate(c.values):
                    heapq.heappush(due, (t + c.delay + k * c.every, order + k, target, c, v))
                order += len(c.values)
        seen = len(out)
        t += spec.step
    return res


def receipt(frame: Frame, now: int, max_future_s: float) -> Frame | None:
    """A frame as the alerter takes it at ``now``: stamped more than ``max_future_s`` ahead, it is
    re-stamped on its receipt time and marked (``skew_ms``) where the contract carries the mark,
    else rejected (None)."""
    if frame.ts > now + max_future_s * 1000:
        if not _RESTAMP:
            return None  # "ts in the future (gateway clock?)": rejected, not judged
        return dataclasses.replace(frame, ts=now, skew_ms=frame.ts - now)
    return frame


def frame_payload(frame: Frame) -> bytes:
    """The telemetry message a gateway publishes for ``frame`` (the wire form of contract/payload.py)."""
    values = [{k: v for k, v in (("point", r.point), ("unit", r.unit), ("building", r.building),
                                 ("household", r.household), ("value", r.value), ("quality", r.quality))
               if v is not None} for r in frame.samples]
    msg: dict[str, Any] = {"schema": 1, "station": frame.station, "gateway": frame.gateway,
                           "boot": frame.boot, "seq": frame.seq, "ts": frame.ts, "values": values}
    if frame.backfill:
        msg["backfill"] = True
    if frame.heartbeat_s is not None:
        msg["heartbeat_s"] = frame.heartbeat_s
    return orjson.dumps(msg)


def engine_feed(spec: ScenarioSpec) -> Callable[[Input], list[Transition]]:
    """One rule engine judging a scenario (a restart: a new engine from the old one's snapshot)."""
    rules = spec.rules
    engine = Engine(rules)

    def feed(i: Input) -> list[Transition]:
        nonlocal engine
        if i.kind == "frame":
            frame = receipt(i.msg, i.now, spec.max_future_s)
            return [] if frame is None else engine.observe(frame, i.now)
        if i.kind == "tick":
            return engine.tick(i.now)
        if i.kind == "station":
            return engine.station_status(i.msg, i.now)
        if i.kind == "gateway":
            return engine.gateway_status(i.msg, i.now)
        if i.kind == "silences":
            engine.set_silences(i.msg)
        else:  # restart: what the collector left on disk when it was killed
            blob = engine.snapshot()
            engine = Engine(rules)
            engine.restore(blob)
        return []

    return feed


def run(spec: ScenarioSpec, name: str = "") -> Outcome:
    played = play(spec, engine_feed(spec))
    res = judge(spec, name, played.out, played.sent)
    res.sent, res.refused = played.sent, played.refused
    for st in played.stations:
        for b in sorted({b for _, b, h in st.model.keys if h is not None and b is not None}):
            rooms = [float(v) for (p, bb, h), v in st.model.values.items()
                     if p == "room_temp" and bb == b and h is not None and isinstance(v, float)]
            if rooms:
                res.rooms[b if st.name == STATION else f"{st.name}/{b}"] = min(rooms)
    if spec.rooms_above is not None:
        want = spec.rooms_above
        where = want.building if want.station == STATION else f"{want.station}/{want.building}"
        low = res.rooms.get(where)
        if low is None or low < want.value:
            res.cold_rooms.append(f"{where}: coldest room {low}")
    return res


def _command(model: StationModel, c: Command, value: float, now_ms: int,
             last_write: dict[tuple[str, str, str | None], int], station: str) -> str | None:
    """Check one command as a gateway with the vocabulary's default write block would, and write
    it into the model; the reason it would be refused, or None."""
    d = check_name(c.point)
    assert d is not None and d.write is not None  # Command._writable
    lo, hi, step = d.write
    key: Key = (c.point, c.building, None)
    present = model.setpoints.get(key, model.values.get(key))
    problem = bounds_problem(c.point, value, Bounds(min=lo, max=hi, max_step=step,
                                                    min_interval_s=WriteSpec().min_interval_s),
                             is_bool=False, current=present if isinstance(present, float) else None,
                             last_write_ms=last_write.get((station, c.point, c.building)), now_ms=now_ms)
    if problem is None and step is not None and not isinstance(present, float):
        problem = (Reason.STEP, f"the present value of {c.point} is unknown")
    if problem is not None:
        return problem[1]
    model.write(key, value)
    last_write[(station, c.point, c.building)] = now_ms
    return None


def _send(spec: ScenarioSpec, frame: Frame, t: float, rel: float,
          push: Any) -> None:
    """Put one message on its way, through the scenario's delivery faults."""
    at, copies = t, [0.0]
    for d in spec.delivery:
        if not d.active(rel) or d.station not in (None, frame.station):
            continue
        if d.fault == "gap":
            return
        if d.fault == "clock_skew":
            frame = dataclasses.replace(frame, ts=frame.ts + int(d.by * 1000))
        elif d.fault == "delay":
            at = t + d.by
        elif d.fault == "reverse":  # held to the span's end, then sent newest first
            end = spec.start.timestamp() + d.at + (d.for_ or 0.0)
            at = end + (end - t) / 1e6
        elif d.fault == "duplicate":
            copies.append(0.0)
        elif d.fault == "redeliver":
            copies.append(d.by)
    for extra in copies:
        push(at + extra, "frame", frame)


def _status(spec: ScenarioSpec, s: StatusSpec, now: int) -> Input:
    if s.gateway is not None:
        stations = [x for x in spec.station_names() if spec.gateway_of(x) == s.gateway]
        g = GatewayStatus.model_validate({"schema": 1, "gateway": s.gateway, "state": s.state,
                                          "boot": "0badc0de", "stations": stations, "ts": now})
        return Input("gateway", now, g)
    assert s.station is not None
    st = StationStatus.model_validate({
        "schema": 1, "station": s.station, "gateway": spec.gateway_of(s.station), "state": s.state,
        "devices": {k: {"state": v} for k, v in s.devices.items()}, "ts": now})
    return Input("station", now, st)


def _works(spec: ScenarioSpec, t0: float) -> list[Silence]:
    return [Silence(w.station, w.building, int((t0 + w.at) * 1000),
                    int((t0 + w.at + (w.for_ or spec.duration)) * 1000), w.reason) for w in spec.works]


def _compliant(spec: ScenarioSpec, tr: Transition) -> bool:
    """A room page for a median that meets the standard."""
    if tr.rule not in _ROOM_RULES or tr.value is None or tr.station is None:
        return False
    return tr.value >= spec.rules.room_for(tr.station, tr.building).warning_below


def judge(spec: ScenarioSpec, name: str, out: list[Transition],
          sent: list[Sent] | None = None) -> Outcome:
    t0 = int(spec.start.timestamp() * 1000)
    res = Outcome(name, transitions=out)
    pages = [tr for tr in out if tr.page and tr.state == "firing"]
    for m in spec.expect:
        hit = next((tr for tr in pages if m.hits(tr) and tr.ts >= t0 + m.after * 1000
                    and all(tr.context.get(k) == v for k, v in m.context.items())), None)
        delay = None if hit is None else (hit.ts - t0) / 1000 - m.after
        if delay is not None and m.within is not None and delay > m.within:
            delay = None
        res.detections.append((m.label(), delay))
    for tr in pages:
        if _compliant(spec, tr):
            res.compliant.append(tr)
        if any(m.hits(tr) for m in spec.quiet):
            res.loud.append(tr)
        elif not any(m.hits(tr) for m in spec.expect):
            res.false_alarms.append(tr)
    for m in spec.quiet:
        if not any(m.hits(tr) and tr.quiet for tr in out):
            res.missing_quiet.append(m.rule)
    for m in spec.open_at_end:
        last: dict[str, str] = {}
        for tr in out:
            if m.hits(tr):
                last[tr.key] = tr.state
        if not last or "resolved" in last.values():
            res.closed.append(m.label())
    first = min((s.ms for s in sent or ()), default=None)
    for m in spec.resolved:  # after the engineer's first command
        done = None if first is None else next(
            (tr for tr in out if m.hits(tr) and tr.state == "resolved" and tr.ts >= first), None)
        delay = None if done is None or first is None else (done.ts - first) / 1000
        if delay is not None and m.within is not None and delay > m.within:
            delay = None
        res.detections.append((f"resolved {m.label()}", delay))
    return res


def _rule_of(label: str) -> str:
    return label.split(" ", 1)[0]


def report(results: list[Outcome]) -> str:
    lines = [f"{'scenario':<28} {'result':<6} {'detections (delay)':<58} false pages"]
    for r in results:
        if r.error is not None:
            lines.append(f"{r.name:<28} {'ERROR':<6} {r.error}")
            continue
        det = ", ".join(f"{what} {'MISSED' if d is None else f'{d / 60:.0f} min'}"
                        for what, d in r.detections) or "none expected"
        bad = [f"{t.rule} {t.station if t.station != STATION else ''} "
               f"{t.building or t.subject or t.gateway or ''}".replace("  ", " ").strip()
               for t in r.false_alarms + r.loud]
        bad += [f"{t.rule} {t.household or t.building} at {t.value:.1f} °C (meets the standard)"
                for t in r.compliant if t.value is not None]
        bad = [f"{what} ×{n}" if n > 1 else what for what, n in Counter(bad).items()]
        bad += [f"not raised quietly: {q}" for q in r.missing_quiet]
        bad += [f"not open at the end: {c}" for c in r.closed]
        bad += [f"command refused: {c}" for c in r.refused]
        bad += [f"rooms still cold: {c}" for c in r.cold_rooms]
        lines.append(f"{r.name:<28} {'pass' if r.passed else 'FAIL':<6} {det:<58} "
                     f"{', '.join(bad) or '0'}")
    return "\n".join(lines)


def summary(results: Iterable[Outcome]) -> str:
    """The whole library per rule: detection delay median and max, missed, false pages, and pages
    for room values that meet the standard (must be 0)."""
    results = list(results)
    delays: dict[str, list[float]] = {}
    missed: dict[str, int] = {}
    false: dict[str, int] = {}
    compliant: dict[str, int] = {}
    for r in results:
        for what, d in r.detections:
            rule = _rule_of(what)
            if d is None:
                missed[rule] = missed.get(rule, 0) + 1
            else:
                delays.setdefault(rule, []).append(d)
        for t in r.false_alarms + r.loud:
            false[t.rule] = false.get(t.rule, 0) + 1
        for t in r.compliant:
            compliant[t.rule] = compliant.get(t.rule, 0) + 1
    rules = sorted(set(delays) | set(missed) | set(false) | set(compliant))
    lines = [f"{'rule':<18} {'detected':>8} {'median':>9} {'max':>9} {'missed':>7} {'false pages':>12} "
             f"{'pages ≥ standard':>17}"]
    for rule in rules:
        ds = delays.get(rule, [])
        med = f"{statistics.median(ds) / 60:.0f} min" if ds else "-"
        mx = f"{max(ds) / 60:.0f} min" if ds else "-"
        lines.append(f"{rule:<18} {len(ds):>8} {med:>9} {mx:>9} {missed.get(rule, 0):>7} "
                     f"{false.get(rule, 0):>12} {compliant.get(rule, 0):>17}")
    n_pass = sum(r.passed for r in results)
    lines.append(f"{len(results)} scenarios, {n_pass} pass; missed {sum(missed.values())}, "
                 f"false pages {sum(false.values())}, pages for values meeting the standard "
                 f"{sum(compliant.values())}")
    return "\n".join(lines)


def run_file(path: Path) -> Outcome:
    try:
        return run(load(path), path.stem)
    except ConfigError as exc:
        return Outcome(path.stem, error=str(exc).replace("\n", "; "))


# the library beside this checkout's code, so the bare command works from any folder (the README
# prints it; its walk test runs it from a folder holding only .venv and deploy)
LIBRARY = Path(__file__).resolve().parent.parent / "tests" / "scenarios"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("paths", type=Path, nargs="*", default=[LIBRARY],
                    help="scenario files or folders of them (default: this checkout's tests/scenarios)")
    args = ap.parse_args(argv)
    files: list[Path] = []
    for p in args.paths:
        if p.is_dir():
            files += sorted(p.glob("*.yaml"))
        elif p.exists():
            files.append(p)
        else:
            print(f"{p}: no such file or folder", file=sys.stderr)
            return 2
    results = [run_file(f) for f in files]
    print(report(results))
    print()
    print(summary(results))
    for r in results:
        if r.error is not None:
            print(r.error, file=sys.stderr)
    if any(r.error is not None for r in results):
        return 2
    return 0 if all(r.passed for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
