"""Scenario files: timed events for ``heatwatch simulate --scenario FILE``.

    speed: 60                  # sim seconds per real second
    events:
      - {at: 10m, station: st001, event: leak, for: 2h}
      - {at: 0s, station: st002, event: cold_building, building: b02}
      - {at: 30m, station: st003, event: dead_device, device: makeup_meter, for: 10m}

``at`` and ``for`` are sim time after the start: a number of seconds or 30s / 10m / 2h / 1d.
``rooms_settle: 3m`` (optional) makes every room follow its target that much faster than the
simulated flats' half an hour (the demo's, so a valve command shows within minutes; real
buildings take hours).
A negative ``at`` (``-3h``) is an event that began before the start: the station model starts
settled, so its rooms are already as cold as three hours of it made them.

``steps:`` (a list) and ``map_overrides:`` belong to ``heatwatch demo``, which runs the steps
against its processes (stop a gateway, start it again, open a valve) and writes its copy of
the maps with those changes; the simulator only checks their shape.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from contract.config import read_yaml, render_errors
from contract.errors import ConfigError
from simulator.physics import EVENT_KINDS, Event

_DUR_RE = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_PART_RE = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
_COMPOUND_RE = re.compile(r"^-?(?:\d+(?:\.\d+)?[smhd])+$")
_UNIT = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def seconds(v: object) -> float:
    if isinstance(v, (int, float)):
        return float(v)
    text = str(v).strip()
    if _COMPOUND_RE.fullmatch(text):  # 1h30m, 4d18h, -2h30m
        total = sum(float(n) * _UNIT[u] for n, u in _PART_RE.findall(text))
        return -total if text.startswith("-") else total
    m = _DUR_RE.match(text)
    if not m:
        raise ValueError(f"{v!r} is not a duration like 90, 30s, 10m, 2h, 1d, 1h30m or -3h")
    return float(m.group(1)) * _UNIT[m.group(2)]


class EventTiming(BaseModel):
    """One timed event of a scenario, without the station (a one-station runner needs none)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    at: float
    for_: float | None = Field(default=None, alias="for")
    event: str
    building: str | None = None
    household: str | None = None
    point: str | None = None
    device: str | None = None

    @field_validator("at", "for_", mode="before")
    @classmethod
    def _dur(cls, v: object) -> float | None:
        return None if v is None else seconds(v)

    @field_validator("for_")
    @classmethod
    def _positive(cls, v: float | None) -> float | None:
        if v is not None and v <= 0:
            raise ValueError("must be a positive duration")
        return v

    @field_validator("event")
    @classmethod
    def _kind(cls, v: str) -> str:
        if v not in EVENT_KINDS:
            raise ValueError(f"unknown event; known: {', '.join(sorted(EVENT_KINDS))}")
        return v


class _EventSpec(EventTiming):
    station: str


class _Scenario(BaseModel):
    model_config = ConfigDict(extra="forbid")
    description: str = ""  # what it plays, in a sentence (heatwatch demo prints it)
    speed: float = Field(default=1.0, gt=0)
    rooms_settle: float | None = Field(default=None, gt=0)  # s; None: the model's own
    events: list[_EventSpec] = Field(default_factory=list)
    steps: list[dict[str, Any]] = Field(default_factory=list)  # heatwatch demo's (heatwatch.demo)
    map_overrides: dict[str, Any] = Field(default_factory=dict)  # heatwatch demo's

    @field_validator("rooms_settle", mode="before")
    @classmethod
    def _dur(cls, v: object) -> float | None:
        return None if v is None else seconds(v)


class RelativeEvent(Event):
    """An event whose times are offsets from the simulation start."""

    def shifted(self, t0: float) -> Event:
        return replace(Event(self.kind, self.start, self.end, self.building, self.household,
                             self.point, self.device),
                       start=self.start + t0, end=None if self.end is None else self.end + t0)


def _load(path: str | Path) -> _Scenario:
    data = read_yaml(Path(path))
    try:
        return _Scenario.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(str(path), render_errors(exc, data)) from None


def rooms_settle(path: str | Path) -> float | None:
    """The scenario's ``rooms_settle`` in seconds (None: the model's own half an hour)."""
    return _load(path).rooms_settle


def load_scenario(path: str | Path) -> tuple[float, list[tuple[str, RelativeEvent]]]:
    sc = _load(path)
    out = []
    for e in sc.events:
        end = None if e.for_ is None else e.at + e.for_
        out.append((e.station, RelativeEvent(e.event, e.at, end, e.building, e.household,
                                             e.point, e.device)))
    return sc.speed, out
