"""Versioned MQTT payloads: telemetry, station status, gateway status.

Telemetry (JSON, UTF-8), one message per poll group per cycle::

    {"schema": 1, "station": "st001", "gateway": "gw-st001",
     "boot": "5f0c…", "seq": 42, "ts": 1763700000000, "backfill": false,
     "values": [
       {"point": "secondary_supply_temp", "value": 55.2, "unit": "°C", "quality": "good"},
       {"point": "building_valve_position", "building": "b01", "value": 45.0, "unit": "%",
        "quality": "good"},
       {"point": "room_temp", "building": "b01", "household": "b01-0301", "value": null,
        "unit": "°C", "quality": "bad"}]}

``ts`` is the sample time taken at the gateway (ms since the Unix epoch, UTC); it becomes the
InfluxDB timestamp, so a redelivered message overwrites instead of duplicating. ``boot`` is a
random id drawn at each gateway start and ``seq`` counts messages within one boot, so the
collector can count gaps and restarts.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache
from typing import Annotated, Any, Literal, TypeVar

import msgspec
import orjson
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr, ValidationError, model_validator

from contract.errors import PayloadError
from contract.points import Kind, Level, PointDef, check_name
from contract.topics import IDENT_PATTERN, Ident

SCHEMA_VERSION = 1
MAX_PAYLOAD_BYTES = 1_000_000  # a 5,000-value message is about 400 kB
MAX_VALUES = 5_000
# a sequence number is an InfluxDB integer and a receipt's range bound: int64 (issue #16: seq 10^19
# made counters and lines overflow)
SEQ_MAX = 2**63 - 1

# 2000-01-01 … 2100-01-01 in ms: anything else is a unit mistake (seconds, µs) not a time.
TS_MIN_MS = 946_684_800_000
TS_MAX_MS = 4_102_444_800_000

BootId = Annotated[str, Field(pattern=r"^[0-9a-f]{8,64}$")]


class Quality(StrEnum):
    GOOD = "good"
    UNCERTAIN = "uncertain"  # read fine, but outside the point's plausible range
    BAD = "bad"  # read failed, or a NaN / sentinel: the value is absent


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Reading(_Frozen):
    point: str
    building: Ident | None = None
    household: Ident | None = None
    value: StrictBool | float | StrictStr | None = None  # absent = null: only with quality bad
    unit: str = Field(max_length=16)
    quality: Quality = Quality.GOOD

    @property
    def level(self) -> Level:
        if self.household is not None:
            return Level.HOUSEHOLD
        return Level.BUILDING if self.building is not None else Level.STATION


class Telemetry(_Frozen):
    schema_: Literal[1] = Field(alias="schema")
    station: Ident
    gateway: Ident
    boot: BootId
    seq: int = Field(ge=0, le=SEQ_MAX)
    ts: int = Field(ge=TS_MIN_MS, le=TS_MAX_MS)
    backfill: bool = False
    # set when the poll group reports by exception: the message holds only the points that
    # changed (possibly none), and each point is re-sent at least every heartbeat_s seconds
    heartbeat_s: float | None = Field(default=None, gt=0, le=86400)
    values: list[Reading] = Field(max_length=MAX_VALUES)

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _check_readings(self) -> Telemetry:
        if not self.values and self.heartbeat_s is None:
            raise ValueError("values: empty; only a report-by-exception message (heartbeat_s) "
                             "may carry no values")
        for i, r in enumerate(self.values):
            problem = reading_problem(r)
            if problem:
                raise ValueError(f"values.{i} ({r.point}): {problem}")
        return self

    def to_json(self) -> bytes:
        return orjson.dumps(self.model_dump(by_alias=True, exclude_none=True))


@lru_cache(maxsize=4096)
def _point(name: str) -> PointDef | None:
    return check_name(name)


def reading_problem(r: Reading) -> str | None:
    """What is wrong with one reading against the vocabulary, or None."""
    try:
        d = _point(r.point)
    except ValueError as exc:
        return str(exc)
    if r.household is not None and r.building is None:
        return "a household reading needs its building"
    if isinstance(r.value, float) and not math.isfinite(r.value):
        return "value must be finite (send quality 'bad' and value null instead)"
    if r.value is None and r.quality is not Quality.BAD:
        return "value null is only allowed with quality 'bad'"
    if d is None:
        return None
    if r.level is not d.level:
        need = {Level.STATION: "no building or household", Level.BUILDING: "a building",
                Level.HOUSEHOLD: "a building and a household"}[d.level]
        return f"is a {d.level} point and needs {need}"
    if r.unit != d.unit:
        return f"unit must be {d.unit!r}, got {r.unit!r}"
    if r.value is not None:
        is_bool = isinstance(r.value, bool)
        if d.kind is Kind.BOOL and not is_bool:
            return "value must be true or false"
        if d.kind is Kind.NUMBER and (is_bool or isinstance(r.value, str)):
            return "value must be a number"
    return None


class DeviceState(StrEnum):
    ONLINE = "online"
    DEGRADED = "degraded"  # answers, but some points fail
    OFFLINE = "offline"


class DeviceStatus(_Frozen):
    state: DeviceState
    error: str | None = None


class StationStatus(_Frozen):
    schema_: Literal[1] = Field(alias="schema")
    station: Ident
    gateway: Ident
    state: DeviceState
    devices: dict[str, DeviceStatus]
    ts: int = Field(ge=TS_MIN_MS, le=TS_MAX_MS)

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class WritablePoint(_Frozen):
    """One point a gateway takes remote commands for, with the bounds it enforces (its map's
    ``write:`` block). The API validates a command against these, as the gateway announced them."""

    device: Ident
    point: str
    building: Ident | None = None
    household: Ident | None = None
    unit: str = Field(max_length=16)
    kind: Literal["number", "bool"]
    min: float | None = None
    max: float | None = None
    max_step: float | None = None
    min_interval_s: float = Field(ge=0)
    # a station-level point (supply temperature, pressure setpoints, pump speed) acts on every
    # building: a second engineer confirms it before it is sent
    station_wide: bool


class GatewayStatus(_Frozen):
    """Retained. Published ``online`` at connect; the broker publishes the ``offline`` will.
    Both list the points the gateway takes commands for (none without a ``control:`` block)."""

    schema_: Literal[1] = Field(alias="schema")
    gateway: Ident
    state: Literal["online", "offline"]
    boot: BootId
    stations: list[Ident]
    ts: int = Field(ge=TS_MIN_MS, le=TS_MAX_MS)
    writable: list[WritablePoint] = Field(default_factory=list, max_length=5000)
    # the kind of each custom x_ point it publishes, as its maps declare them: its readings of
    # that point are of that kind and no other (docs/contract.md, "Kinds")
    custom: dict[str, Kind] = Field(default_factory=dict, max_length=MAX_VALUES)

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _custom_names(self) -> GatewayStatus:
        for name in self.custom:
            if check_name(name) is not None:
                raise ValueError(f"custom: {name} is a canonical point (its kind is the vocabulary's)")
        return self


def _first_error(exc: ValidationError) -> str:
    err = exc.errors(include_url=False)[0]
    loc = ".".join(str(p) for p in err["loc"])
    msg = err["msg"].removeprefix("Value error, ")
    more = f" (+{exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"{loc}: {msg}{more}" if loc else f"{msg}{more}"


def parse_json_object(raw: bytes) -> dict[str, Any]:
    if len(raw) > MAX_PAYLOAD_BYTES:
        raise PayloadError(f"payload of {len(raw)} bytes exceeds {MAX_PAYLOAD_BYTES}", "too_large")
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise PayloadError(f"not JSON: {exc}", "bad_json") from None
    if not isinstance(obj, dict):
        raise PayloadError(f"payload must be a JSON object, got {type(obj).__name__}", "bad_json")
    if obj.get("schema") != SCHEMA_VERSION:
        raise PayloadError(
            f"schema version {obj.get('schema')!r} is not supported (expected {SCHEMA_VERSION})",
            "schema_version",
        )
    return obj


M = TypeVar("M", bound=BaseModel)


def parse(model: type[M], raw: bytes) -> M:
    """Parse and validate one payload; raise PayloadError with a reason and a path."""
    obj = parse_json_object(raw)
    try:
        return model.model_validate(obj)
    except ValidationError as exc:
        raise PayloadError(_first_error(exc), "schema") from None


def parse_telemetry(raw: bytes) -> Telemetry:
    return parse(Telemetry, raw)


def parse_station_status(raw: bytes) -> StationStatus:
    return parse(StationStatus, raw)


def parse_gateway_status(raw: bytes) -> GatewayStatus:
    return parse(GatewayStatus, raw)


# -- the collector's hot path ------------------------------------------------------------------
# Validating every reading through pydantic costs 2.5 µs per value (measured on 200-value
# messages), which alone would eat the collector's whole budget at 300k values/s; a hand check
# over orjson's dicts still cost 1.2 µs. ``decode_telemetry`` lets msgspec decode the JSON
# straight into typed structs (0.11 µs per value, faster than orjson.loads alone), checks the
# rest with caches (identifiers, and each (point, building, household, unit) once), and hands
# anything unusual to the pydantic model, which stays the single authority on what is valid and
# words every error. A property test (tests/unit/test_fast_decode.py) holds the two to the same
# answers.


class Sample(msgspec.Struct, forbid_unknown_fields=True, frozen=True, gc=False):
    """One reading as the collector handles it (same fields as ``Reading``)."""

    point: str
    unit: str
    building: str | None = None
    household: str | None = None
    value: bool | float | str | None = None
    quality: Literal["good", "uncertain", "bad"] = "good"


class _Wire(msgspec.Struct, forbid_unknown_fields=True):
    schema: int
    station: str
    gateway: str
    boot: str
    seq: int
    ts: int
    values: list[Sample]
    backfill: bool = False
    heartbeat_s: float | None = None


_WIRE = msgspec.json.Decoder(_Wire)


@dataclass(frozen=True, slots=True)
class Frame:
    """One validated telemetry message, as the collector handles it."""

    station: str
    gateway: str
    boot: str
    seq: int
    ts: int
    backfill: bool
    samples: list[Sample]
    heartbeat_s: float | None = None  # reported by exception: each point at least this often
    # The gateway's clock was off: the collector re-stamped the message on its receipt time (``ts``
    # is then that) and keeps here how far the gateway's own stamp was from it (gateway − receipt,
    # ms; > 0 = the gateway's clock is fast). 0: ``ts`` is the gateway's own. The data are kept
    # and judged; the rules raise ``clock_skew`` for the gateway (alerting/rule_clock.py).
    skew_ms: int = 0

    @classmethod
    def of(cls, t: Telemetry) -> Frame:
        return cls(t.station, t.gateway, t.boot, t.seq, t.ts, t.backfill,
                   [Sample(point=r.point, unit=r.unit, building=r.building, household=r.household,
                           value=r.value, quality=r.quality.value) for r in t.values], t.heartbeat_s)


_BOOT_RE = re.compile(r"[0-9a-f]{8,64}")
_IDENT_RE = re.compile(IDENT_PATTERN)
_KNOWN_IDENTS: set[str] = set()
# (point, building, household, unit) whose names, levels and unit passed the model → point kind
_KNOWN_KEYS: dict[tuple[str, str | None, str | None, str], Kind | None] = {}
_CACHE_MAX = 1_000_000


_UNKNOWN: Any = object()  # not in _KNOWN_KEYS (None there means "valid, no canonical kind")


class _Decline(Exception):
    """Not the common case: let the pydantic model decide and word the error."""


def _ident(s: str) -> None:
    if s not in _KNOWN_IDENTS:
        if not _IDENT_RE.fullmatch(s):
            raise _Decline
        if len(_KNOWN_IDENTS) > _CACHE_MAX:
            _KNOWN_IDENTS.clear()
        _KNOWN_IDENTS.add(s)


def _static_kind(key: tuple[str, str | None, str | None, str]) -> Kind | None:
    """The point kind of a reading key the model accepts; _Decline if it would not."""
    point, building, household, unit = key
    try:
        r = Reading(point=point, building=building, household=household, unit=unit,
                    quality=Quality.BAD)
    except ValidationError:
        raise _Decline from None
    if reading_problem(r) is not None:
        raise _Decline
    d = _point(point)
    if len(_KNOWN_KEYS) > _CACHE_MAX:
        _KNOWN_KEYS.clear()
    kind = _KNOWN_KEYS[key] = d.kind if d is not None else None
    return kind


def _fast(raw: bytes) -> Frame:
    try:
        w = _WIRE.decode(raw)
    # msgspec raises UnicodeDecodeError (not a DecodeError) for invalid UTF-8 inside a string
    except (msgspec.ValidationError, msgspec.DecodeError, UnicodeDecodeError):
        raise _Decline from None
    hb = w.heartbeat_s
    if (w.schema != SCHEMA_VERSION or not 0 <= w.seq <= SEQ_MAX or not TS_MIN_MS <= w.ts <= TS_MAX_MS
            or not (0 if hb else 1) <= len(w.values) <= MAX_VALUES or not _BOOT_RE.fullmatch(w.boot)
            or (hb is not None and not 0 < hb <= 86400)):
        raise _Decline
    _ident(w.station)
    _ident(w.gateway)
    known, isfinite = _KNOWN_KEYS, math.isfinite
    for r in w.values:
        key = (r.point, r.building, r.household, r.unit)
        kind = known.get(key, _UNKNOWN)  # a known key is a valid one
        if kind is _UNKNOWN:
            kind = _static_kind(key)
        v = r.value
        tv = type(v)
        if tv is float:
            if kind is Kind.BOOL or not isfinite(v):  # type: ignore[arg-type]
                raise _Decline
        elif tv is bool:
            if kind is Kind.NUMBER:
                raise _Decline
        elif tv is str:
            if kind is not None and kind is not Kind.TEXT:
                raise _Decline
        elif r.quality != "bad":  # value null
            raise _Decline
    return Frame(w.station, w.gateway, w.boot, w.seq, w.ts, w.backfill, w.values, hb)


def decode_telemetry(raw: bytes) -> Frame:
    """Parse and validate one telemetry payload for the collector (same rules as the model)."""
    if len(raw) <= MAX_PAYLOAD_BYTES:
        try:
            return _fast(raw)
        except _Decline:
            pass
    obj = parse_json_object(raw)  # words the error: size, JSON, schema version
    try:
        return Frame.of(Telemetry.model_validate(obj))
    except ValidationError as exc:
        raise PayloadError(_first_error(exc), "schema") from None


class _Envelope(msgspec.Struct):
    station: str
    gateway: str
    boot: str
    seq: int


_ENVELOPE = msgspec.json.Decoder(_Envelope)


def telemetry_envelope(raw: bytes) -> tuple[str, str, str, int] | None:
    """(station, gateway, boot, seq) of a telemetry payload that may be invalid elsewhere, when
    those four are well formed; else None. The collector receipts a message it rejected for good
    by these (a gateway never sends a malformed envelope, so None means "not from a gateway")."""
    if len(raw) > MAX_PAYLOAD_BYTES:
        return None
    try:
        e = _ENVELOPE.decode(raw)
    except (msgspec.ValidationError, msgspec.DecodeError, UnicodeDecodeError):
        return None
    if not (0 <= e.seq <= SEQ_MAX and _BOOT_RE.fullmatch(e.boot) and _IDENT_RE.fullmatch(e.station)
            and _IDENT_RE.fullmatch(e.gateway)):
        return None
    return e.station, e.gateway, e.boot, e.seq
