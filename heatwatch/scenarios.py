"""Alert scenarios: the simulator's station physics on an accelerated clock, judged by the engine.

A scenario file (``tests/scenarios/*.yaml``) states the station, the events, and what the
dispatch room must and must not be paged for::

    description: a building's supply fails; its households go cold together
    start: 2026-12-10T00:00:00+08:00
    duration: 8h
    buildings: 3                # b01..b03, each with `households` room sensors
    households: 8
    events:
      - {at: 1h, event: cold_building, building: b02, for: 6h}
    expect:                     # each must be paged (firing, not quiet) within `within` of `after`
      - {rule: building_low, building: b02, after: 1h, within: 3h}
    quiet:                      # raised and stored, but must not page
      - {rule: room_low, building: b02}
    restart_at: 2h              # optional: the collector restarts (engine from its snapshot)

Every page that matches no ``expect`` entry is a false alarm. Run them all and print the report:
``.venv/bin/python -m heatwatch.scenarios tests/scenarios``.

The closed loop of remote control (docs/control.md): an engineer paged for a rule sends remote
commands, each checked as the gateway checks it (the point's bounds, ``max_step`` from the
present value, ``min_interval_s`` since its last write: the vocabulary's defaults) and written
into the station model; the scenario then expects the alert to resolve and the rooms to recover::

    commands:                   # when building_low pages for b02: 70, 80, 90, 100 % every 15 min
      - {when_paged: building_low, building: b02, point: building_valve_setpoint,
         values: [70, 80, 90, 100], delay: 10m, every: 15m}
    resolved:                   # within `within` of the first command
      - {rule: building_low, building: b02, within: 4h}
    rooms_above: {building: b02, value: 18}   # every room of b02 at the end
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from alerting.engine import Engine
from contract.alerts import AlertRules, Transition
from contract.commands import Bounds, Reason, bounds_problem
from contract.config import WriteSpec, read_yaml, render_errors
from contract.errors import ConfigError
from contract.payload import Frame, Sample
from contract.points import VOCABULARY, Kind, Level, check_name
from simulator.physics import Event, Key, StationModel
from simulator.scenario import EventTiming, seconds

STATION, GATEWAY = "st001", "gw-st001"
_STATION_POINTS = [d.name for d in VOCABULARY.values()
                   if d.level is Level.STATION and d.kind is not Kind.TEXT]


class _Match(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rule: str
    building: str | None = None
    household: str | None = None
    subject: str | None = None
    after: float = 0.0  # sim seconds from the start: the detection delay is measured from here
    within: float | None = None

    @field_validator("after", "within", mode="before")
    @classmethod
    def _dur(cls, v: object) -> float | None:
        return None if v is None else seconds(v)

    def hits(self, tr: Transition) -> bool:
        return (tr.rule == self.rule and self.building in (None, tr.building)
                and self.household in (None, tr.household) and self.subject in (None, tr.subject))


class _Command(BaseModel):
    """Remote commands an engineer sends once ``when_paged`` pages (for ``building``, if given)."""

    model_config = ConfigDict(extra="forbid")
    when_paged: str
    building: str | None = None
    point: str
    values: list[float] = Field(min_length=1)
    delay: float = 600.0
    every: float = 900.0

    @field_validator("delay", "every", mode="before")
    @classmethod
    def _dur(cls, v: object) -> float:
        return seconds(v)

    @field_validator("point")
    @classmethod
    def _writable(cls, v: str) -> str:
        d = check_name(v)
        if d is None or d.write is None:
            raise ValueError(f"{v} is not a writable point of the vocabulary")
        return v


class _Rooms(BaseModel):
    model_config = ConfigDict(extra="forbid")
    building: str
    value: float


class ScenarioSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    description: str
    start: dt.datetime
    duration: float
    step: float = 60.0
    room_every: float = 1200.0
    buildings: int = Field(3, ge=1, le=50)
    households: int = Field(8, ge=1, le=200)
    seed: int = 1
    events: list[EventTiming] = Field(default_factory=list)
    rules: dict[str, Any] = Field(default_factory=dict)
    restart_at: float | None = None
    expect: list[_Match] = Field(default_factory=list)
    quiet: list[_Match] = Field(default_factory=list)
    commands: list[_Command] = Field(default_factory=list)
    resolved: list[_Match] = Field(default_factory=list)  # `within` counts from the first command
    rooms_above: _Rooms | None = None

    @field_validator("duration", "step", "room_every", "restart_at", mode="before")
    @classmethod
    def _dur(cls, v: object) -> float | None:
        return None if v is None else seconds(v)


@dataclass
class Outcome:
    name: str
    detections: list[tuple[str, float | None]] = field(default_factory=list)  # expect → delay s
    false_alarms: list[Transition] = field(default_factory=list)
    loud: list[Transition] = field(default_factory=list)  # expected quiet, but paged
    missing_quiet: list[str] = field(default_factory=list)
    transitions: list[Transition] = field(default_factory=list)
    sent: list[tuple[int, str, str | None, float]] = field(default_factory=list)  # ms, point, building, value
    refused: list[str] = field(default_factory=list)  # commands the gateway's checks would refuse
    rooms: dict[str, float] = field(default_factory=dict)  # coldest room per building at the end
    cold_rooms: list[str] = field(default_factory=list)  # rooms_above not met

    @property
    def passed(self) -> bool:
        return (all(d is not None for _, d in self.detections) and not self.false_alarms
                and not self.loud and not self.missing_quiet and not self.refused and not self.cold_rooms)


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


def run(spec: ScenarioSpec, name: str = "") -> Outcome:
    rules = AlertRules.model_validate(spec.rules)
    t0 = spec.start.timestamp()
    model = StationModel(STATION, _keys(spec), seed=spec.seed, events=[
        Event(e.event, t0 + e.at, None if e.for_ is None else t0 + e.at + e.for_, e.building,
              e.household, e.point, e.device) for e in spec.events])
    engine = Engine(rules)
    out: list[Transition] = []
    seq, next_room, next_tick, restarted = 0, t0, t0, False
    due: list[tuple[float, _Command, float]] = []  # (sim time, command, value)
    triggered: set[int] = set()
    last_write: dict[tuple[str, str | None], int] = {}
    sent: list[tuple[int, str, str | None, float]] = []
    refused: list[str] = []
    t = t0
    while t <= t0 + spec.duration:
        for when, c, value in [d for d in due if d[0] <= t]:
            due.remove((when, c, value))
            problem = _command(model, c, value, int(t * 1000), last_write)
            if problem is None:
                sent.append((int(t * 1000), c.point, c.building, value))
            else:
                refused.append(f"{c.point} {c.building or ''} {value:g}: {problem}")
        values = model.step(t)
        ms = int(t * 1000)
        if spec.restart_at is not None and not restarted and t >= t0 + spec.restart_at:
            blob = engine.snapshot()  # what the collector left on disk when it was killed
            engine = Engine(rules)
            engine.restore(blob)
            restarted = True
        down = model.event_on("link_down", t)
        rooms_due = t >= next_room
        if rooms_due:
            next_room += spec.room_every
        if not down:
            samples = []
            for (p, b, h), v in values.items():
                if h is not None and not rooms_due:
                    continue
                if model.event_on("stale_sensor", t, point=p, building=b, household=h):
                    continue
                unit = VOCABULARY[p].unit
                if model.broken((p, b, h), t):
                    samples.append(Sample(point=p, unit=unit, building=b, household=h, quality="bad"))
                    continue
                val: bool | float = v if isinstance(v, bool) else float(v)
                samples.append(Sample(point=p, unit=unit, building=b, household=h, value=val))
            seq += 1
            out += engine.observe(Frame(STATION, GATEWAY, "0badc0de", seq, ms, False, samples), ms)
        if t >= next_tick:
            out += engine.tick(ms)
            next_tick += 60
        for i, c in enumerate(spec.commands):  # the engineer answers the page
            if i in triggered:
                continue
            if any(tr.page and tr.state == "firing" and tr.rule == c.when_paged
                   and c.building in (None, tr.building) for tr in out):
                triggered.add(i)
                due += [(t + c.delay + k * c.every, c, v) for k, v in enumerate(c.values)]
        t += spec.step
    res = judge(spec, name, out, sent)
    res.sent, res.refused = sent, refused
    for b in sorted({b for _, b, h in model.keys if h is not None and b is not None}):
        res.rooms[b] = min(float(v) for (p, bb, h), v in model.values.items()
                           if p == "room_temp" and bb == b and h is not None and isinstance(v, float))
    if spec.rooms_above is not None:
        low = res.rooms.get(spec.rooms_above.building)
        if low is None or low < spec.rooms_above.value:
            res.cold_rooms.append(f"{spec.rooms_above.building}: coldest room {low}")
    return res


def _command(model: StationModel, c: _Command, value: float, now_ms: int,
             last_write: dict[tuple[str, str | None], int]) -> str | None:
    """Check one command as a gateway with the vocabulary's default write block would, and write
    it into the model; the reason it would be refused, or None."""
    d = check_name(c.point)
    assert d is not None and d.write is not None
    lo, hi, step = d.write
    key = (c.point, c.building, None)
    present = model.setpoints.get(key, model.values.get(key))
    problem = bounds_problem(c.point, value, Bounds(min=lo, max=hi, max_step=step,
                                                    min_interval_s=WriteSpec().min_interval_s),
                             is_bool=False, current=present if isinstance(present, float) else None,
                             last_write_ms=last_write.get((c.point, c.building)), now_ms=now_ms)
    if problem is None and step is not None and not isinstance(present, float):
        problem = (Reason.STEP, f"the present value of {c.point} is unknown")
    if problem is not None:
        return problem[1]
    model.write(key, value)
    last_write[(c.point, c.building)] = now_ms
    return None


def judge(spec: ScenarioSpec, name: str, out: list[Transition],
          sent: list[tuple[int, str, str | None, float]] | None = None) -> Outcome:
    t0 = int(spec.start.timestamp() * 1000)
    res = Outcome(name, transitions=out)
    pages = [tr for tr in out if tr.page and tr.state == "firing"]
    for m in spec.expect:
        hit = next((tr for tr in pages if m.hits(tr) and tr.ts >= t0 + m.after * 1000), None)
        delay = None if hit is None else (hit.ts - t0) / 1000 - m.after
        if delay is not None and m.within is not None and delay > m.within:
            delay = None
        res.detections.append((f"{m.rule} {m.building or ''}{m.household or ''}{m.subject or ''}".strip(),
                               delay))
    for tr in pages:
        if any(m.hits(tr) for m in spec.quiet):
            res.loud.append(tr)
        elif not any(m.hits(tr) for m in spec.expect):
            res.false_alarms.append(tr)
    for m in spec.quiet:
        if not any(m.hits(tr) and tr.quiet for tr in out):
            res.missing_quiet.append(m.rule)
    first = min((ts for ts, *_ in sent), default=None) if sent else None
    for m in spec.resolved:
        done = None if first is None else next(
            (tr for tr in out if m.hits(tr) and tr.state == "resolved" and tr.ts >= first), None)
        delay = None if done is None or first is None else (done.ts - first) / 1000
        if delay is not None and m.within is not None and delay > m.within:
            delay = None
        res.detections.append((f"resolved {m.rule} {m.building or ''}{m.household or ''}".strip(), delay))
    return res


def report(results: list[Outcome]) -> str:
    lines = [f"{'scenario':<28} {'result':<6} {'detections (delay)':<58} false alarms"]
    for r in results:
        det = ", ".join(f"{what} {'MISSED' if d is None else f'{d / 60:.0f} min'}"
                        for what, d in r.detections) or "none expected"
        fa = ", ".join(f"{t.rule} {t.building or t.subject or ''}" for t in r.false_alarms + r.loud)
        fa = fa or ("0" if not r.missing_quiet else f"not raised quietly: {r.missing_quiet}")
        if r.refused:
            fa += f"; commands refused: {r.refused}"
        if r.cold_rooms:
            fa += f"; rooms still cold: {r.cold_rooms}"
        lines.append(f"{r.name:<28} {'pass' if r.passed else 'FAIL':<6} {det:<58} {fa}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("folder", type=Path, nargs="?", default=Path("tests/scenarios"))
    args = ap.parse_args(argv)
    results = [run(load(f), f.stem) for f in sorted(args.folder.glob("*.yaml"))]
    print(report(results))
    return 0 if all(r.passed for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
