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
from contract.config import read_yaml, render_errors
from contract.errors import ConfigError
from contract.payload import Frame, Sample
from contract.points import VOCABULARY, Kind, Level
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

    @property
    def passed(self) -> bool:
        return (all(d is not None for _, d in self.detections) and not self.false_alarms
                and not self.loud and not self.missing_quiet)


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
                                        "building_valve_position", "building_heat_total")]
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
    t = t0
    while t <= t0 + spec.duration:
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
        t += spec.step
    return judge(spec, name, out)


def judge(spec: ScenarioSpec, name: str, out: list[Transition]) -> Outcome:
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
    return res


def report(results: list[Outcome]) -> str:
    lines = [f"{'scenario':<28} {'result':<6} {'detections (delay)':<58} false alarms"]
    for r in results:
        det = ", ".join(f"{what} {'MISSED' if d is None else f'{d / 60:.0f} min'}"
                        for what, d in r.detections) or "none expected"
        fa = ", ".join(f"{t.rule} {t.building or t.subject or ''}" for t in r.false_alarms + r.loud)
        fa = fa or ("0" if not r.missing_quiet else f"not raised quietly: {r.missing_quiet}")
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
