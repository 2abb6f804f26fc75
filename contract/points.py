"""The canonical point vocabulary shared by every register map, rule and dashboard.

A register map names each point with one of these names, so a rule written for
``secondary_supply_temp`` works for every station whatever its controller. A station with
several loops or pumps of one kind numbers the extra ones with a suffix: ``circ_pump_running_2``.
A point outside the vocabulary must start with ``x_`` so nobody mistakes it for a standard one.

Each point belongs to one entity level: the station itself, a building entrance, or a household
(room sensor). The level decides which identifiers a reading must carry and where it is stored.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum


class Level(StrEnum):
    STATION = "station"
    BUILDING = "building"
    HOUSEHOLD = "household"


class Kind(StrEnum):
    NUMBER = "number"
    BOOL = "bool"
    TEXT = "text"


@dataclass(frozen=True, slots=True)
class PointDef:
    name: str
    zh: str
    unit: str
    level: Level
    kind: Kind = Kind.NUMBER
    lo: float | None = None  # plausible range; readings outside are flagged "uncertain"
    hi: float | None = None
    # may be written remotely (setpoints, valve openings): the default engineering bounds of a
    # command, (min, max, max_step per command), which a map's ``write:`` block may tighten or
    # change (DOMAIN.md §Remote building control)
    write: tuple[float, float, float | None] | None = None

    @property
    def writable(self) -> bool:
        return self.write is not None


_S, _B, _H = Level.STATION, Level.BUILDING, Level.HOUSEHOLD
_BOOL = Kind.BOOL

_DEFS: tuple[PointDef, ...] = (
    # primary loop 一次网
    PointDef("primary_supply_temp", "一次供水温度", "°C", _S, lo=0, hi=150),
    PointDef("primary_return_temp", "一次回水温度", "°C", _S, lo=0, hi=150),
    PointDef("primary_supply_pressure", "一次供水压力", "MPa", _S, lo=0, hi=2.5),
    PointDef("primary_return_pressure", "一次回水压力", "MPa", _S, lo=0, hi=2.5),
    PointDef("primary_flow", "一次瞬时流量", "m³/h", _S, lo=0, hi=5000),
    PointDef("primary_flow_total", "一次累计流量", "m³", _S, lo=0),
    PointDef("primary_heat_rate", "一次瞬时热量", "GJ/h", _S, lo=0, hi=500),
    PointDef("primary_heat_total", "一次累计热量", "GJ", _S, lo=0),
    # secondary loop 二次网
    PointDef("secondary_supply_temp", "二次供水温度", "°C", _S, lo=0, hi=100),
    PointDef("secondary_return_temp", "二次回水温度", "°C", _S, lo=0, hi=100),
    PointDef("secondary_supply_pressure", "二次供水压力", "MPa", _S, lo=0, hi=1.6),
    PointDef("secondary_return_pressure", "二次回水压力", "MPa", _S, lo=0, hi=1.6),
    PointDef("secondary_flow", "二次循环流量", "m³/h", _S, lo=0, hi=5000),
    PointDef("secondary_flow_total", "二次累计流量", "m³", _S, lo=0),
    PointDef("secondary_heat_total", "二次累计热量", "GJ", _S, lo=0),
    # make-up 补水
    PointDef("makeup_flow", "补水瞬时流量", "m³/h", _S, lo=0, hi=200),
    PointDef("makeup_total", "补水累计流量", "m³", _S, lo=0),
    PointDef("tank_level", "水箱液位", "m", _S, lo=0, hi=5),
    PointDef("city_water_total", "自来水补水累计", "m³", _S, lo=0),
    # pumps 泵
    PointDef("circ_pump_running", "循环泵运行", "", _S, _BOOL),
    PointDef("circ_pump_fault", "循环泵故障", "", _S, _BOOL),
    PointDef("circ_pump_freq", "循环泵频率", "Hz", _S, lo=0, hi=50),
    PointDef("circ_pump_freq_setpoint", "循环泵频率设定", "Hz", _S, lo=0, hi=50, write=(20, 50, 5)),
    PointDef("makeup_pump_running", "补水泵运行", "", _S, _BOOL),
    PointDef("makeup_pump_fault", "补水泵故障", "", _S, _BOOL),
    PointDef("makeup_pump_freq", "补水泵频率", "Hz", _S, lo=0, hi=50),
    # primary control valve 一次侧电动调节阀
    # a minimum opening of 5 % was seen across a 100-station city; ≤ ~10 % opening per step
    PointDef("primary_valve_setpoint", "一次侧电动调节阀开度给定", "%", _S, lo=0, hi=100, write=(5, 100, 10)),
    PointDef("primary_valve_position", "一次侧电动调节阀阀位反馈", "%", _S, lo=0, hi=100),
    # setpoints 设定
    # radiators: supply ≤ 85 °C, climate curves clamp at a 30 °C minimum; ≤ ~3 K per step
    PointDef("secondary_supply_temp_setpoint", "二次供温设定", "°C", _S, lo=20, hi=95, write=(30, 85, 3)),
    # secondary loops run at 0.2–0.6 MPa; a step of 0.05 MPa is already a large hydraulic change
    PointDef("secondary_return_pressure_setpoint", "二次回压设定", "MPa", _S, lo=0, hi=1.6,
             write=(0.1, 0.8, 0.05)),
    PointDef("diff_pressure_setpoint", "压差设定", "MPa", _S, lo=0, hi=1.0, write=(0.02, 0.5, 0.05)),
    PointDef("work_mode", "工作模式", "", _S, lo=0, hi=15, write=(0, 15, None)),
    # the PLC's local/manual switch (就地/手动): while true, the gateway refuses every remote write
    # to that device (DOMAIN.md: a controller in local mode must not be written)
    PointDef("local_mode", "就地/手动模式", "", _S, _BOOL),
    # environment 环境
    PointDef("outdoor_temp", "室外温度", "°C", _S, lo=-40, hi=40),
    # building entrance 楼栋热力入口
    PointDef("building_supply_temp", "楼栋供水温度", "°C", _B, lo=0, hi=100),
    PointDef("building_return_temp", "楼栋回水温度", "°C", _B, lo=0, hi=100),
    PointDef("building_valve_setpoint", "楼栋阀门开度给定", "%", _B, lo=0, hi=100, write=(5, 100, 10)),
    PointDef("building_valve_position", "楼栋阀门开度反馈", "%", _B, lo=0, hi=100),
    PointDef("building_heat_total", "楼栋热表累计热量", "GJ", _B, lo=0),
    # household 住户
    PointDef("room_temp", "室内温度", "°C", _H, lo=5, hi=35),
)

VOCABULARY: dict[str, PointDef] = {d.name: d for d in _DEFS}

QUALITY_SUFFIX = "_quality"  # InfluxDB field carrying a non-good reading's quality
POINT_NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
_INSTANCE_RE = re.compile(r"^(?P<base>[a-z][a-z0-9_]*?)_(?P<n>[1-9][0-9]?)$")


def lookup(name: str) -> PointDef | None:
    """The definition of a canonical point, or of a numbered instance of one; None for ``x_``."""
    d = VOCABULARY.get(name)
    if d is not None:
        return d
    m = _INSTANCE_RE.fullmatch(name)
    if m is not None:
        return VOCABULARY.get(m.group("base"))
    return None


def check_name(name: str) -> PointDef | None:
    """Validate a point name; return its definition (None for a custom ``x_`` point).

    Raises ValueError naming what is wrong.
    """
    if not POINT_NAME_RE.fullmatch(name):  # "$" alone would let a trailing "\n" through
        raise ValueError(f"point name {name!r} must be lower-case letters, digits and _")
    if name.endswith(QUALITY_SUFFIX):
        raise ValueError(f"point name {name!r} must not end in {QUALITY_SUFFIX} (reserved)")
    d = lookup(name)
    if d is None and not name.startswith("x_"):
        raise ValueError(
            f"{name!r} is not in the canonical point vocabulary; "
            "use a canonical name (see docs/contract.md) or prefix a custom point with x_"
        )
    return d
