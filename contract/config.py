"""Config files (YAML) parsed into typed models; every error names the file, the path and the key.

Four kinds of file, told apart by their ``kind:`` key:

- ``register_map``: the registers of one controller model (a template shared by every station
  that has that cabinet: "一站一案" differences go in the gateway config);
- ``gateway``: one gateway: its station, broker, outbox, poll groups and devices;
- ``collector``, ``alerter`` and ``api``: broker, InfluxDB and alert-store settings of those services.

``${NAME}`` and ``${NAME:-default}`` in string values are taken from the environment, so
secrets and per-machine paths stay out of the files.
"""

from __future__ import annotations

import codecs
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import orjson
import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from contract.alerts import AlertRules, Severity, load_rules
from contract.codec import (
    FLOATS,
    INTEGERS,
    MULTI_WORD,
    SIXTEEN_BIT,
    ByteOrder,
    DataType,
    WordOrder,
    order_of,
    word_count,
)
from contract.errors import ConfigError
from contract.payload import MAX_PAYLOAD_BYTES, MAX_VALUES, TS_MAX_MS
from contract.points import Kind, Level, PointDef, check_name
from contract.report import ReportSettings
from contract.topics import Ident


def _store_url(v: str) -> str:
    """The alert store's SQLAlchemy URL: the two databases heatwatch ships a driver for."""
    if re.fullmatch(r"sqlite:///\S.*", v) or v.startswith("postgresql+psycopg://"):
        return v
    scheme = v.partition("://")[0] if "://" in v else v[:40]  # never echo a password
    hint = ("use sqlite:///PATH (four slashes for an absolute path: sqlite:////var/lib/heatwatch/"
            "alerts.sqlite) or postgresql+psycopg://USER:PASSWORD@HOST/DB")
    if scheme in ("sqlite", "postgresql", "postgres") or scheme.startswith("postgresql+"):
        raise ValueError(f"store URL {scheme}://… is not supported: {hint}")
    raise ValueError(f"unsupported store URL {scheme!r}: {hint}")


StoreUrl = Annotated[str, AfterValidator(_store_url)]


def _http_url(v: str) -> str:
    parts = urlsplit(v)
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"{v!r}: the port is not a number from 1 to 65535") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or port == 0 or " " in v:
        raise ValueError(f"{v!r} is not an http(s) URL of InfluxDB, e.g. http://127.0.0.1:8086")
    if parts.query or parts.fragment:
        raise ValueError(f"{v!r}: no query or fragment here (the database is `database:`)")
    return v


Table = Literal["coil", "discrete_input", "input_register", "holding_register"]
Addressing = Literal["zero_based", "one_based", "modicon"]
BIT_TABLES = ("coil", "discrete_input")
_MODICON_PREFIX = {"coil": 0, "discrete_input": 1, "input_register": 3, "holding_register": 4}


def type_kind(t: DataType) -> Kind:
    """The kind of value a register type gives."""
    if t in (DataType.BOOL, DataType.BIT):
        return Kind.BOOL
    return Kind.TEXT if t is DataType.STRING else Kind.NUMBER


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


WriteFunction = Literal["fc6", "fc16"]
_INT_LIMITS = {
    DataType.INT16: (-(2**15), 2**15 - 1), DataType.UINT16: (0, 2**16 - 1),
    DataType.INT32: (-(2**31), 2**31 - 1), DataType.UINT32: (0, 2**32 - 1),
    DataType.INT64: (-(2**63), 2**63 - 1), DataType.UINT64: (0, 2**64 - 1),
}


class WriteSpec(_Strict):
    """How a point may be written remotely. Engineering units; the bounds a canonical setpoint
    leaves out come from the vocabulary (DOMAIN.md: valve ≥ its minimum opening, ≤ 10 % or 3 K
    per step, 15 min between steps); a custom ``x_`` point must give min and max."""

    min: float | None = None
    max: float | None = None
    # per command, against the value read just before the write; null: no step limit
    max_step: float | None = Field(default=None, gt=0)
    # between two writes of this point (EEPROM wear, thermal lag: a building answers in hours)
    min_interval_s: float = Field(default=900, ge=0, le=7 * 86400)
    # a single register by FC6 (default) or FC16 (devices that take only FC16); 32/64-bit values
    # always go in one FC16 request; coils by FC5; a bit by read-modify-write of its register
    function: WriteFunction | None = None
    # read-back must match within this (engineering units); default: half the register's
    # resolution for integers (scale / 2), float32's precision for floats
    tolerance: float | None = Field(default=None, gt=0)


class PointMap(_Strict):
    """One point of a register map. Which keys a type demands or forbids is checked per key."""

    point: str
    building: Ident | None = None
    household: Ident | None = None
    type: DataType
    # what its readings are: number, bool or text, as its type gives (bool and bit: bool, string:
    # text, the rest: number). A custom x_ point may say so; the gateway publishes no other kind,
    # and InfluxDB fixes a field's type at its first write (docs/contract.md, "Kinds")
    kind: Kind | None = Field(default=None, validate_default=True)
    table: Table
    address: int = Field(ge=0, le=465536)
    bit: int | None = Field(default=None, validate_default=True)
    length: int | None = Field(default=None, validate_default=True)
    word_order: WordOrder | None = Field(default=None, validate_default=True)
    # a 16-bit register whose two bytes come swapped (low byte first): BA; AB is Modbus's own
    byte_order: ByteOrder | None = Field(default=None, validate_default=True)
    scale: float = Field(default=1.0, validate_default=True)
    offset: float = Field(default=0.0, validate_default=True)
    unit: str | None = Field(default=None, validate_default=True)
    range: tuple[float, float] | None = None
    invalid_raw: list[int] = Field(default_factory=list, validate_default=True)
    group: Ident = "fast"
    # may be written by a remote command, within these bounds (docs/control.md)
    write: WriteSpec | None = Field(default=None, validate_default=True)
    # report by exception (a poll group with by_exception): resend only when the value moved by
    # at least this much (engineering units) since it was last sent; None: on any change
    deadband: float | None = Field(default=None, ge=0, validate_default=True)

    @field_validator("point")
    @classmethod
    def _point(cls, v: str) -> str:
        check_name(v)
        return v

    @property
    def definition(self) -> PointDef | None:
        return check_name(self.point)

    @field_validator("kind")
    @classmethod
    def _kind(cls, v: Kind | None, info: ValidationInfo) -> Kind | None:
        t = info.data.get("type")
        if t is None:
            return v
        given = type_kind(t)
        if v is not None and v is not given:
            need = {Kind.BOOL: "bool or bit", Kind.TEXT: "string", Kind.NUMBER: "a numeric type"}[v]
            raise ValueError(f"type {t} gives a {given} value; a {v} point needs type {need}")
        return given

    @field_validator("table")
    @classmethod
    def _table(cls, v: str, info: ValidationInfo) -> str:
        t = info.data.get("type")
        if t is None:
            return v
        if (t is DataType.BOOL) != (v in BIT_TABLES):
            raise ValueError("type bool goes with coil or discrete_input, and only it does")
        return v

    @field_validator("bit")
    @classmethod
    def _bit(cls, v: int | None, info: ValidationInfo) -> int | None:
        if info.data.get("type") is DataType.BIT:
            if v is None or not 0 <= v <= 15:
                raise ValueError("type bit needs bit: 0..15")
        elif v is not None:
            raise ValueError("only for type bit")
        return v

    @field_validator("length")
    @classmethod
    def _length(cls, v: int | None, info: ValidationInfo) -> int | None:
        if info.data.get("type") is DataType.STRING:
            if v is None or not 1 <= v <= 64:
                raise ValueError("type string needs length: 1..64 registers")
        elif v is not None:
            raise ValueError("only for type string")
        return v

    @field_validator("word_order")
    @classmethod
    def _word_order(cls, v: WordOrder | None, info: ValidationInfo) -> WordOrder | None:
        t = info.data.get("type")
        if v is None or t is None:
            return v
        if t is DataType.STRING and v in (WordOrder.ABCD, WordOrder.BADC):
            return v
        if t not in MULTI_WORD:
            hint = ("; a 16-bit register with its bytes swapped takes byte_order: BA"
                    if t in SIXTEEN_BIT else "")
            raise ValueError(f"only for 32/64-bit types (and ABCD/BADC for strings){hint}")
        return v

    @field_validator("byte_order")
    @classmethod
    def _byte_order(cls, v: ByteOrder | None, info: ValidationInfo) -> ByteOrder | None:
        t = info.data.get("type")
        if v is None or t is None:
            return v
        if t not in SIXTEEN_BIT:
            raise ValueError("only for int16/uint16 (a 32/64-bit value swaps the bytes of each word "
                             "with word_order: BADC or DCBA)")
        return v

    @field_validator("scale", "offset")
    @classmethod
    def _scaling(cls, v: float, info: ValidationInfo) -> float:
        t = info.data.get("type")
        default = 1.0 if info.field_name == "scale" else 0.0
        if t is not None and t not in INTEGERS | FLOATS and v != default:
            raise ValueError("only for numeric types")
        if info.field_name == "scale" and v == 0:
            raise ValueError("must not be 0")
        return v

    @field_validator("unit")
    @classmethod
    def _unit(cls, v: str | None, info: ValidationInfo) -> str:
        name, t = info.data.get("point"), info.data.get("type")
        d = check_name(name) if name else None
        if d is None:
            if v is None and t is not None and t in INTEGERS | FLOATS:
                raise ValueError("a custom numeric point needs its unit")
            return v or ""
        if v is not None and v != d.unit:
            raise ValueError(f"{name} is measured in {d.unit!r}, not {v!r}")
        if t is not None:
            kind = type_kind(t)
            if kind is not d.kind:
                raise ValueError(f"{name} is a {d.kind} point; type {t} gives a {kind}")
        return d.unit

    @field_validator("deadband")
    @classmethod
    def _deadband(cls, v: float | None, info: ValidationInfo) -> float | None:
        t = info.data.get("type")
        if v is not None and t is not None and t not in INTEGERS | FLOATS:
            raise ValueError("only for numeric types (others are sent when they change)")
        return v

    @field_validator("invalid_raw")
    @classmethod
    def _invalid(cls, v: list[int], info: ValidationInfo) -> list[int]:
        if v and info.data.get("type") not in INTEGERS:
            raise ValueError("only for integer types")
        return v

    @model_validator(mode="before")
    @classmethod
    def _old_writable(cls, data: Any) -> Any:
        if isinstance(data, dict) and "writable" in data:
            raise ValueError("@writable: replaced by a write: block (min, max, max_step, min_interval_s; "
                             "write: {} takes the point's defaults), see docs/control.md")
        return data

    @field_validator("write")
    @classmethod
    def _write(cls, v: WriteSpec | None, info: ValidationInfo) -> WriteSpec | None:
        if v is None:
            return v
        t, table, name = info.data.get("type"), info.data.get("table"), info.data.get("point")
        if t is None or table is None or name is None:
            return v  # reported on its own key
        if table not in ("holding_register", "coil"):
            raise ValueError("only holding registers and coils can be written")
        d = check_name(name)
        if d is not None and not d.writable:
            raise ValueError(f"{name} is a measurement, not a setpoint")
        if t is DataType.STRING:
            raise ValueError("text points are not written remotely")
        given = v.model_fields_set
        if t in (DataType.BOOL, DataType.BIT):
            extra = sorted(given & {"min", "max", "max_step", "tolerance"})
            if extra:
                raise ValueError(f"@{extra[0]}: only for numeric points (a {t} point is true or false)")
            if v.function is not None and t is DataType.BOOL:
                raise ValueError("@function: coils are written with FC5")
            return v
        if v.function == "fc6" and t in MULTI_WORD:
            raise ValueError(f"@function: a {t} value is written whole in one FC16 request, never "
                             "as single registers (a half-written value is a wrong setpoint)")
        lo, hi, step = v.min, v.max, v.max_step
        if d is not None and d.write is not None:
            lo = d.write[0] if "min" not in given else lo
            hi = d.write[1] if "max" not in given else hi
            step = d.write[2] if "max_step" not in given else step
        if lo is None or hi is None:
            raise ValueError("@min: a custom point needs its min and max")
        if lo >= hi:
            raise ValueError(f"@min: {lo:g} must be below max {hi:g}")
        if t in INTEGERS:
            scale, offset = info.data.get("scale", 1.0), info.data.get("offset", 0.0)
            rlo, rhi = _INT_LIMITS[t]
            for key, eng in (("min", lo), ("max", hi)):
                raw = (eng - offset) / scale
                if not rlo <= round(raw) <= rhi:
                    raise ValueError(f"@{key}: {eng:g} does not fit {t} with scale {scale:g} "
                                     f"(raw {raw:g} outside {rlo}..{rhi})")
                if abs(raw) > 2**53:  # a command's value is a float64: beyond, it is not exact
                    raise ValueError(f"@{key}: {eng:g} is raw {raw:g}, beyond ±2^53 where a command's "
                                     "value (a float64) cannot name every integer")
        return v.model_copy(update={"min": lo, "max": hi, "max_step": step})

    @model_validator(mode="after")
    def _entity(self) -> PointMap:
        d = self.definition
        level = (Level.HOUSEHOLD if self.household else
                 Level.BUILDING if self.building else Level.STATION)
        if self.household and not self.building:
            raise ValueError("@building: a household point needs its building")
        if d is not None and d.level is not level:
            key = "household" if d.level is Level.HOUSEHOLD else "building"
            raise ValueError(f"@{key}: {self.point} is a {d.level} point")
        if self.range is not None and self.range[0] >= self.range[1]:
            raise ValueError("@range: low must be below high")
        return self

    @property
    def key(self) -> tuple[str, str | None, str | None]:
        return (self.point, self.building, self.household)

    @property
    def writable(self) -> bool:
        return self.write is not None

    @property
    def words(self) -> int:
        return word_count(self.type, self.length)

    @property
    def value_kind(self) -> Kind:
        """What its readings are (the ``kind`` key is filled from the type when not given)."""
        return self.kind if self.kind is not None else type_kind(self.type)

    @property
    def order(self) -> WordOrder:
        """The codec's order for this point (its word order, or a 16-bit point's byte order)."""
        return order_of(self.word_order, self.byte_order)

    @property
    def plausible(self) -> tuple[float | None, float | None]:
        if self.range is not None:
            return self.range
        d = self.definition
        return (d.lo, d.hi) if d else (None, None)

    def wire_address(self, addressing: Addressing) -> int:
        """The 0-based protocol address. Raises ValueError if the address does not fit the mode."""
        a = self.address
        if addressing == "zero_based":
            wire = a
        elif addressing == "one_based":
            if a < 1:
                raise ValueError("one_based addresses start at 1")
            wire = a - 1
        else:
            p = _MODICON_PREFIX[self.table]
            base = p * 100000 if a > 99999 else p * 10000
            if not base + 1 <= a <= base + (65536 if a > 99999 else 9999):
                raise ValueError(
                    f"modicon address {a} is not a {self.table} reference "
                    f"({p}xxxx or {p}xxxxx)"
                )
            wire = a - base - 1
        if wire + self.words > 65536:
            raise ValueError("runs past the end of the register space")
        return wire


# The longest a reading can be on the wire: every name as written, the value at its longest (a
# float's repr is at most 24 characters; a string register's ASCII control characters are JSON-
# escaped to 6 bytes each), quality "uncertain"; and an envelope with every field at its longest.
_LONGEST_FLOAT = -2.2250738585072014e-308
_ENVELOPE_BYTES = len(orjson.dumps({
    "schema": 1, "station": "s" * 64, "gateway": "g" * 64, "boot": "f" * 64, "seq": 2**63 - 1,
    "ts": TS_MAX_MS, "backfill": False, "heartbeat_s": -_LONGEST_FLOAT, "values": []}))


def longest_reading(p: PointMap) -> int:
    """Bytes of the longest reading ``p`` can give in a telemetry message (with its comma)."""
    kind = p.value_kind
    value: float | bool | str = ("\x01" * 2 * (p.length or 1) if kind is Kind.TEXT
                                 else False if kind is Kind.BOOL else _LONGEST_FLOAT)
    r = {"point": p.point, "building": p.building, "household": p.household, "value": value,
         "unit": p.unit or "", "quality": "uncertain"}
    return len(orjson.dumps({k: v for k, v in r.items() if v is not None})) + 1


def check_kinds(points: Iterable[tuple[str, PointMap]]) -> None:
    """A custom point name has one kind wherever it is mapped (``(where, point)`` pairs): every
    building's ``x_valve_mode`` lands in one InfluxDB field, whose type its first write fixes."""
    seen: dict[str, tuple[Kind, str]] = {}
    for where, p in points:
        first = seen.setdefault(p.point, (p.value_kind, where))
        if first[0] is not p.value_kind:
            raise ValueError(f"{where}.kind: {p.point} is a {p.value_kind} here and a {first[0]} on "
                             f"{first[1]}; one name, one kind")


def check_layout(points: list[PointMap], addressing: Addressing, where: str = "") -> None:
    """Every address fits the addressing mode and no two points claim one register."""
    claimed: dict[tuple[str, int], str] = {}
    for j, p in enumerate(points):
        at = f"{where}points.{j} ({p.point})"
        try:
            wire = p.wire_address(addressing)
        except ValueError as exc:
            raise ValueError(f"{at}.address: {exc}") from None
        if p.type is DataType.BIT:
            continue  # several bits share one register
        for w in range(wire, wire + p.words):
            other = claimed.get((p.table, w))
            if other is not None:
                # in the map's own notation, as its author wrote it, and on the wire
                written = w + (p.address - wire)
                addr = f"{written} (wire {w})" if written != w else str(w)
                raise ValueError(f"{at}.address: {p.table} {addr} is also used by {other}")
            claimed[(p.table, w)] = at


class RegisterMap(_Strict):
    """A controller model's register map, shared by every station with that cabinet."""

    kind: Literal["register_map"] = "register_map"
    model: str
    addressing: Addressing
    max_registers_per_request: int = Field(default=125, ge=1, le=125)
    word_order: WordOrder = WordOrder.ABCD  # default for multi-word points that name none
    # how a single writable register is written: fc6, or fc16 for devices that take only that
    write_single: WriteFunction = "fc6"
    points: list[PointMap] = Field(min_length=1)

    @model_validator(mode="after")
    def _layout(self) -> RegisterMap:
        seen: dict[tuple[str, str | None, str | None], int] = {}
        for j, p in enumerate(self.points):
            first = seen.setdefault(p.key, j)
            if first != j:
                what = " ".join(k for k in p.key if k)
                raise ValueError(f"points.{j} ({p.point}).point: {what} is also points.{first}; "
                                 "a point is mapped once (add building/household to tell them apart)")
        check_layout(self.points, self.addressing)
        check_kinds((f"points.{j} ({p.point})", p) for j, p in enumerate(self.points))
        return self


Transport = Literal["tcp", "rtu_over_tcp", "rtu"]


class SerialSettings(_Strict):
    """An RS-485 bus: every device on one ``device`` shares these settings and is read in turn."""

    device: str  # /dev/ttyUSB0, /dev/ttyS1, /dev/serial/by-id/…
    baudrate: Literal[1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200] = 9600
    parity: Literal["N", "E", "O"] = "N"
    bytesize: Literal[7, 8] = 8
    stopbits: Literal[1, 2] = 1


class DeviceConfig(_Strict):
    name: Ident
    # tcp: Modbus TCP; rtu_over_tcp: RTU frames through a serial device server (an NPort-style
    # box in front of an RS-485 bus); rtu: a serial port of this machine
    transport: Transport = "tcp"
    host: str | None = None
    port: int = Field(default=502, ge=1, le=65535)
    serial: SerialSettings | None = None
    device_id: int = Field(default=1, ge=0, le=247)
    timeout_s: float = Field(default=1.0, gt=0, le=30)
    map: str | None = None  # path of a register_map file, relative to this config
    addressing: Addressing | None = None  # with inline points
    max_registers_per_request: int | None = Field(default=None, ge=1, le=125)
    word_order: WordOrder | None = None
    write_single: WriteFunction | None = None  # overrides the map's
    points: list[PointMap] = Field(default_factory=list)
    # "一站一案": this station's differences from the shared map (applied by load_config)
    overrides: list[dict[str, Any]] = Field(default_factory=list)  # match keys + keys to change
    without: list[dict[str, Any]] = Field(default_factory=list)  # template points not fitted here
    extra_points: list[PointMap] = Field(default_factory=list)  # points only this station has

    @model_validator(mode="after")
    def _transport(self) -> DeviceConfig:
        if self.transport == "rtu":
            if self.serial is None:
                raise ValueError("serial: transport rtu needs serial: {device: /dev/ttyUSB0, baudrate: …}")
            if self.host is not None:
                raise ValueError("host: a transport rtu device is on a serial port, not a host")
        else:
            if self.host is None:
                raise ValueError(f"host: transport {self.transport} needs the device's host")
            if self.serial is not None:
                raise ValueError(f"serial: only for transport rtu (this device is {self.transport})")
        return self


class PollGroup(_Strict):
    interval_s: float = Field(gt=0, le=86400)
    # report by exception: a point is sent when its quality changes, when it moved by its
    # deadband, or when it has not been sent for max_silence_s (the heartbeat); every cycle
    # still sends a message (station liveness, sequence numbers, device status)
    by_exception: bool = False
    max_silence_s: float = Field(default=300, gt=0, le=86400)

    @model_validator(mode="after")
    def _silence(self) -> PollGroup:
        if self.by_exception and self.max_silence_s < self.interval_s:
            raise ValueError(f"max_silence_s: {self.max_silence_s:g} is shorter than interval_s "
                             f"{self.interval_s:g}; the heartbeat cannot beat faster than the poll")
        return self


def _secret_from_file(data: Any, info: ValidationInfo, pairs: tuple[tuple[str, str], ...]) -> Any:
    """Fill a secret (``password``, ``token``) from its ``…_file`` before validation.

    Secrets come from a file (mode 0600, or systemd's ``$CREDENTIALS_DIRECTORY``, or a compose
    secret under /run/secrets) or from the environment through ``${NAME}`` in the config, never
    from the command line, where ``ps`` shows them to every user of the machine. A relative path
    is relative to the config file. One trailing newline is dropped (``echo pw > file``).
    """
    if not isinstance(data, dict):
        return data
    base = (info.context or {}).get("base") if info is not None else None
    out = dict(data)
    for key, file_key in pairs:
        ref = out.get(file_key)
        if ref is None:
            continue
        if out.get(key) is not None:
            raise ValueError(f"@{file_key}: give {key} or {file_key}, not both")
        path = Path(str(ref))
        if base is not None and not path.is_absolute():
            path = Path(base) / path
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ValueError(f"@{file_key}: cannot read {path}: {exc.strerror}") from None
        secret = text[:-1] if text.endswith("\n") else text
        if not secret or "\n" in secret:
            raise ValueError(f"@{file_key}: {path} must hold the secret on one line")
        out[file_key] = str(path)
        out[key] = secret
    return out


def _config_path(value: str | None, info: ValidationInfo) -> str | None:
    """A file named in a config, made absolute (relative to the config file)."""
    if value is None:
        return None
    base = (info.context or {}).get("base")
    path = Path(value)
    return str(Path(base) / path) if base is not None and not path.is_absolute() else value


class TlsSettings(_Strict):
    """TLS to the broker: the site CA that signed the broker's certificate, and this client's own
    certificate and key where the broker asks for one (``heatwatch site`` issues them)."""

    ca_file: str  # the site CA (PEM); the broker's certificate must chain to it
    cert_file: str | None = None  # this client's certificate (PEM)
    key_file: str | None = None  # its private key (PEM, unencrypted, mode 0600)
    # True skips the check that the broker's certificate names the host connected to: only for
    # a broker reached through an address its certificate does not list. Never the default.
    insecure: bool = False

    @field_validator("ca_file", "cert_file", "key_file")
    @classmethod
    def _path(cls, v: str | None, info: ValidationInfo) -> str | None:
        path = _config_path(v, info)
        if path is not None and not os.path.isfile(path):
            raise ValueError(f"no such file: {path}")
        return path

    @model_validator(mode="after")
    def _pair(self) -> TlsSettings:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("@key_file: a client certificate needs both cert_file and key_file")
        return self


class MqttSettings(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(default=1883, ge=1, le=65535)
    username: str | None = None
    password: SecretStr | None = None  # or ${ENV_VAR}; never on the command line
    password_file: str | None = None  # read at load into password
    tls: TlsSettings | None = None  # None: plain TCP (loopback and tests only)
    keepalive_s: int = Field(default=30, ge=5, le=3600)
    # MQTT 5 persistent sessions (the gateway; the collector has its own top-level keys): how long
    # the broker keeps a disconnected client's session and queued messages, and how many
    # unacknowledged messages it may send the client at once
    session_expiry_s: int = Field(default=7 * 86400, ge=0, le=2**32 - 1)
    receive_maximum: int = Field(default=100, ge=1, le=65535)

    @model_validator(mode="before")
    @classmethod
    def _password_file(cls, data: Any, info: ValidationInfo) -> Any:
        return _secret_from_file(data, info, (("password", "password_file"),))

    @model_validator(mode="after")
    def _user(self) -> MqttSettings:
        if self.password is not None and not self.username:
            raise ValueError("@username: a password needs its username")
        return self


class OutboxSettings(_Strict):
    path: str
    max_bytes: int = Field(default=512 * 1024 * 1024, ge=1024 * 1024)
    max_age_h: float = Field(default=72, ge=1)
    max_inflight: int = Field(default=200, ge=1, le=10000)
    # Keep a telemetry row after the broker's PUBACK until the collector receipts it, after its
    # own durable write (docs/contract.md, "Receipts"): a broker killed with -9 loses what it
    # acknowledged since its last autosave. false: delete at the PUBACK, for a site whose
    # collector sends no receipts (the broker's persistence is then the only copy).
    receipts: bool = True
    # re-send a row still unreceipted this long after it went out, once the collector has
    # receipted a row sent after it (so a collector that is away or behind is not sent copies)
    receipt_timeout_s: float = Field(default=300, ge=1, le=86400)


class ResolvedDevice(_Strict):
    """A device with its map applied: what the gateway and simulator actually use."""

    name: Ident
    transport: Transport = "tcp"
    host: str | None = None
    port: int = 502
    serial: SerialSettings | None = None
    device_id: int
    timeout_s: float
    addressing: Addressing
    max_registers_per_request: int
    write_single: WriteFunction = "fc6"
    points: list[PointMap]

    @property
    def link(self) -> tuple[str, ...]:
        """What devices share one connection (and so are read one at a time): a serial port,
        or a host and port (a TCP server fronting several device ids, a serial device server)."""
        if self.serial is not None:
            return ("rtu", self.serial.device)
        return (self.transport, str(self.host), str(self.port))

    @property
    def where(self) -> str:
        if self.serial is not None:
            s = self.serial
            return f"{s.device} {s.baudrate} {s.bytesize}{s.parity}{s.stopbits}"
        return f"{self.host}:{self.port}" + (" rtu" if self.transport == "rtu_over_tcp" else "")


class MetricsSettings(_Strict):
    """A Prometheus ``/metrics`` endpoint of the process (docs/operations.md, "Health").
    Loopback by default: the figures name stations and devices, and the endpoint has no login;
    a Prometheus on another machine reaches it through the site's VPN or an SSH tunnel, or the
    host is set to an address only that network reaches."""

    host: str = "127.0.0.1"
    port: int = Field(ge=0, le=65535)  # 0: any free port (tests; the process logs which)


class GatewayControl(_Strict):
    """Remote commands (docs/control.md). Without this block the gateway takes none and its
    status lists no writable point."""

    # PEM files of the control room's Ed25519 public keys (relative to this config); a command
    # that verifies against none of them is refused
    public_keys: list[str] = Field(min_length=1)
    # SQLite file: every command id seen with its result, and each point's last write, kept
    # across restarts (a redelivered command is answered from here, never written twice)
    ledger: str
    # a command issued further ahead of this gateway's clock than this is refused (clock_skew):
    # with a clock running behind, the deadline check would let a late command through
    max_clock_skew_s: float = Field(default=120, gt=0, le=3600)


class GatewayConfig(_Strict):
    kind: Literal["gateway"]
    gateway: Ident
    station: Ident
    mqtt: MqttSettings = MqttSettings()
    outbox: OutboxSettings
    control: GatewayControl | None = None
    # off by default; one endpoint per process: the configs of one process that set it agree
    metrics: MetricsSettings | None = None
    poll_groups: dict[Ident, PollGroup] = Field(default_factory=lambda: {"fast": PollGroup(interval_s=5)})
    devices: list[DeviceConfig] = Field(min_length=1)
    # Filled by load_config from devices[].map; not written by hand.
    resolved: list[ResolvedDevice] = Field(default_factory=list)

    @model_validator(mode="after")
    def _cross_checks(self) -> GatewayConfig:
        names = [d.name for d in self.devices]
        if len(set(names)) != len(names):
            raise ValueError("devices: device names must be unique")
        links: dict[tuple[str, ...], tuple[str, ResolvedDevice]] = {}
        for i, dev in enumerate(self.resolved):
            other = links.setdefault(dev.link, (f"devices.{i} ({dev.name})", dev))
            if other[1] is dev:
                continue
            where = f"devices.{i} ({dev.name})"
            if dev.serial != other[1].serial:
                raise ValueError(f"{where}.serial: {dev.serial.device if dev.serial else ''} is the "
                                 f"bus of {other[0]} with other settings; one bus, one set of settings")
            if dev.device_id == other[1].device_id:
                raise ValueError(f"{where}.device_id: {dev.device_id} is also {other[0]} on {dev.where}")
        seen: dict[tuple[str, str | None, str | None], str] = {}
        for i, dev in enumerate(self.resolved):
            for j, p in enumerate(dev.points):
                where = f"devices.{i} ({dev.name}).points.{j} ({p.point})"
                if p.group not in self.poll_groups:
                    raise ValueError(f"{where}.group: no poll group {p.group!r} "
                                     f"(have {', '.join(self.poll_groups)})")
                if p.key in seen:
                    raise ValueError(f"{where}.point: {p.point} {p.building or ''} "
                                     f"{p.household or ''} is also mapped on {seen[p.key]}")
                seen[p.key] = f"{dev.name} points.{j}"
            check_layout(dev.points, dev.addressing, f"devices.{i} ({dev.name}).")
        check_kinds((f"devices.{i} ({dev.name}).points.{j} ({p.point})", p)
                    for i, dev in enumerate(self.resolved) for j, p in enumerate(dev.points))
        # one message per poll group and cycle: it must fit what the broker and collector take
        # (a larger one would be refused by both, every cycle, and a failed build stops the poll)
        for group in self.poll_groups:
            points = [p for dev in self.resolved for p in dev.points if p.group == group]
            size = _ENVELOPE_BYTES + sum(longest_reading(p) for p in points)
            if len(points) > MAX_VALUES or size > MAX_PAYLOAD_BYTES:
                raise ValueError(f"poll_groups.{group}: {len(points):,} points make messages of up to "
                                 f"{size:,} bytes; one message holds at most {MAX_VALUES:,} values and "
                                 f"{MAX_PAYLOAD_BYTES:,} bytes: spread the points over more poll groups")
        return self


class LifecycleSettings(_Strict):
    """How long InfluxDB keeps what (``heatwatch influx setup``; see contract/influx.py)."""

    raw_days: float = Field(default=90, ge=1)  # raw samples: the default retention policy
    rollup_5m_days: float = Field(default=2 * 365, ge=1)  # 5-minute mean/min/max/last/count
    rollup_1h_days: float = Field(default=20 * 365, ge=1)  # 1-hour mean/min/max/last/count
    # at collector start: create or adjust retention policies and continuous queries (needs an
    # InfluxDB admin where authentication is on; without one the collector logs and carries on)
    setup_at_start: bool = True

    @model_validator(mode="after")
    def _longer(self) -> LifecycleSettings:
        if not self.raw_days <= self.rollup_5m_days <= self.rollup_1h_days:
            raise ValueError("@rollup_5m_days: keep raw_days <= rollup_5m_days <= rollup_1h_days")
        return self


class InfluxSettings(_Strict):
    url: Annotated[str, AfterValidator(_http_url)] = "http://127.0.0.1:8086"
    api: Literal["v1", "v2"] = "v1"
    database: str = "heatwatch"  # v1 database; for v2 the bucket if bucket is not set
    retention_policy: str | None = None
    username: str | None = None
    password: SecretStr | None = None  # or ${ENV_VAR}
    password_file: str | None = None  # read at load into password
    org: str | None = None
    bucket: str | None = None
    token: SecretStr | None = None
    token_file: str | None = None  # read at load into token
    create_database: bool = True
    timeout_s: float = Field(default=10, gt=0)
    # retention and rollups; None: heatwatch leaves retention policies alone (keeps everything raw)
    lifecycle: LifecycleSettings | None = None
    # gzip the write bodies: "auto" = when InfluxDB is not on this machine. Level 1 cuts the bytes
    # ~5× for ~0.5 µs per line; on loopback it buys nothing (LIMITS.md), across a WAN it does.
    gzip: Literal["auto", "on", "off"] = "auto"

    @model_validator(mode="before")
    @classmethod
    def _secret_files(cls, data: Any, info: ValidationInfo) -> Any:
        return _secret_from_file(data, info, (("password", "password_file"), ("token", "token_file")))

    @model_validator(mode="after")
    def _v2(self) -> InfluxSettings:
        if self.api == "v2" and not (self.org and self.token):
            raise ValueError("@org: api v2 needs org and token")
        return self


class BatchSettings(_Strict):
    max_lines: int = Field(default=5000, ge=1, le=100_000)
    # a batch's lines in characters (~bytes): the request stays under InfluxDB 1.x's default
    # max-body-size (25 MB), and each batch in flight (at most concurrency + 3) holds at most this
    max_bytes: int = Field(default=16 * 1024**2, ge=64 * 1024, le=1024**3)
    max_delay_s: float = Field(default=0.5, gt=0, le=60)
    # InfluxDB writes in flight at once. Each write waits for InfluxDB's WAL fsync; with one at a
    # time the collector idles through it. Acknowledgements still go out in arrival order.
    concurrency: int = Field(default=2, ge=1, le=8)


class IngestSettings(_Strict):
    max_future_s: float = Field(default=300, ge=0)
    max_past_days: float = Field(default=30, gt=0)
    # when set, telemetry from any other station is rejected (reason unknown_station)
    known_stations: list[Ident] | None = None


class SpoolSettings(_Strict):
    """Where batches go when InfluxDB cannot take them, so the broker's queue can be acknowledged."""

    path: str
    # gzip'd line protocol, ~6 bytes a value (measured): 4 GiB ≈ 2 h of 100k values/s
    max_bytes: int = Field(default=4 * 1024**3, ge=1024 * 1024)
    max_age_h: float = Field(default=30 * 24, ge=1)
    after_s: float = Field(default=5, ge=0)  # how long a write may fail before its batch is spooled


class StatsSettings(_Strict):
    interval_s: float = Field(default=10, gt=0)  # counters written to InfluxDB this often
    metrics_port: int | None = Field(default=None, ge=0, le=65535)  # Prometheus /metrics; 0 = any
    metrics_host: str = "127.0.0.1"


class WebhookSettings(_Strict):
    url: str = Field(pattern=r"^https?://")
    min_severity: Severity = Severity.WARNING
    # heatwatch: the Transition as JSON; alertmanager: Alertmanager's webhook message (relays built
    # for Alertmanager take it as is); alertmanager_api: POST to a real Alertmanager's
    # /api/v2/alerts (url ends in it), which then routes, groups and repeats (contract/alertmanager.py)
    format: Literal["heatwatch", "alertmanager", "alertmanager_api"] = "heatwatch"
    timeout_s: float = Field(default=5, gt=0)
    headers: dict[str, SecretStr] = Field(default_factory=dict)  # e.g. Authorization


class CollectorConfig(_Strict):
    kind: Literal["collector"]
    client_id: Ident = "heatwatch-collector"
    mqtt: MqttSettings = MqttSettings()
    receive_maximum: int = Field(default=1000, ge=1, le=65535)
    # payload bytes waiting in the inbox: past this the collector stops reading the socket, as it
    # does at receive_maximum messages (issue #16: 30 × 10 MB with InfluxDB stopped took RSS from
    # 79 to 407 MB). 1,000 typical 10 kB messages are 10 MB: the count binds first.
    receive_max_bytes: int = Field(default=32 * 1024**2, ge=1024**2, le=16 * 1024**3)
    session_expiry_s: int = Field(default=7 * 86400, ge=0)
    influx: InfluxSettings = InfluxSettings()
    batch: BatchSettings = BatchSettings()
    ingest: IngestSettings = IngestSettings()
    spool: SpoolSettings
    stats: StatsSettings = StatsSettings()
    subscription_group: Ident | None = Field(
        default=None, description="share telemetry, command results and alert transitions with other "
                                  "collectors through MQTT 5 shared subscriptions $share/<group>/… "
                                  "(docs/scaling.md)")
    # the site's rule file (the alerter's; relative to this config): the collector reads only its
    # room sensors' plausible range (sensor.plausible_min…max), which the 1-hour rollup's plausible
    # room means keep (docs/operations.md); None = the rules' defaults, 5–35 °C
    rules: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _rules_moved(cls, data: Any) -> Any:
        if isinstance(data, dict) and "alerts" in data:
            raise ValueError(
                "@alerts: the rules run in the alerter now (kind: alerter, `heatwatch alerter CONFIG`; "
                "docs/alerts.md): move this block into an alerter config, without state_path and "
                "webhook_outbox (the alerter keeps both in the alert store)")
        return data


class AlertSettings(_Strict):
    """The alerter's rule engine, its alert store and what it sends (contract/alerts.py: the rule file)."""

    rules: str | None = None  # rule file (YAML, kind: rules); relative to this config; None = defaults
    store: StoreUrl  # SQLAlchemy URL: sqlite:////var/lib/heatwatch/alerts.sqlite or postgresql+psycopg://…
    tick_s: float = Field(default=15, gt=0)  # time-driven rules (stale, offline, escalation)
    # each partition's engine snapshot into the store this often (a takeover restores it and replays
    # what came since from its standby); a partition of a 5,000-station city pickles in ~25 ms
    snapshot_s: float = Field(default=30, gt=0)
    silences_s: float = Field(default=30, gt=0)  # re-read silences from the store this often
    seen_s: float = Field(default=60, gt=0)  # open alerts' last seen written to the store this often
    # the latest value of every point per entity into the store's `latest` table this often (the
    # hotline's "now", read without a time-series query; alerter/latest.py); null = off
    latest_s: float | None = Field(default=5, gt=0)
    publish: bool = True  # every transition on heatwatch/v1/alert/{station} (the collector stores them)
    webhooks: list[WebhookSettings] = Field(default_factory=list)
    # a critical alert still firing that nobody has acknowledged is paged again this often (hours;
    # None: never); checked every seen_s
    renotify_critical_h: float | None = Field(default=4.0, gt=0)


class PartitionSettings(_Strict):
    """Alerter members sharing the stations by partition leases in the store (docs/scaling.md)."""

    count: int = Field(default=64, ge=1, le=4096)  # fixed for a store once members have run
    lease_s: float = Field(default=10, ge=1, le=600)  # a member silent this long loses its partitions
    renew_s: float = Field(default=3, gt=0)  # leases renewed and the assignment looked at this often
    # messages of the partitions another member judges, kept this long (and at most max_bytes) so
    # a takeover replays what came since the partition's last snapshot
    standby_s: float = Field(default=90, gt=0)
    standby_max_bytes: int = Field(default=512 * 1024**2, ge=1024**2)

    @model_validator(mode="after")
    def _renew(self) -> PartitionSettings:
        if self.renew_s * 2 > self.lease_s:
            raise ValueError("@renew_s: renew at least twice per lease_s (a missed round must not cost "
                             "the leases)")
        return self


class AlerterConfig(_Strict):
    kind: Literal["alerter"]
    # this member's name, unique among the alerter members sharing a store; also its MQTT client id
    # (its own persistent session: every member receives every message)
    member: Ident = "heatwatch-alerter"
    mqtt: MqttSettings = MqttSettings()
    receive_maximum: int = Field(default=1000, ge=1, le=65535)
    session_expiry_s: int = Field(default=7 * 86400, ge=0)
    # what counts as valid telemetry: the same limits as the collector's, so the rules judge what
    # the collector stores (keep the two in step)
    ingest: IngestSettings = IngestSettings()
    alerts: AlertSettings
    partitions: PartitionSettings = PartitionSettings()
    batch_max: int = Field(default=500, ge=1, le=100_000)  # messages judged per store commit at most
    # once a message arrives, wait this long for more before judging them as one batch (one commit,
    # one write of PUBACKs); at 100 messages/s, 0.1 s took the CPU per value from 6.5 to … µs
    batch_delay_s: float = Field(default=0.1, ge=0, le=5)
    metrics: MetricsSettings | None = None

    @model_validator(mode="after")
    def _standby_covers_a_takeover(self) -> AlerterConfig:
        p = self.partitions
        need = self.alerts.snapshot_s + p.lease_s + p.renew_s
        if p.standby_s < need + 5:
            raise ValueError("@partitions.standby_s: keep at least alerts.snapshot_s + lease_s + renew_s "
                             f"+ 5 = {need + 5:g} s (a takeover replays from the last snapshot)")
        return self


class ListenSettings(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)


class ApiControl(_Strict):
    """Remote commands from the API (docs/control.md)."""

    # PEM file of the control room's Ed25519 private key (mode 0600), relative to this config
    signing_key: str
    mqtt: MqttSettings = MqttSettings()
    client_id: Ident = "heatwatch-api"  # each worker adds its process id
    default_deadline_s: float = Field(default=300, ge=10, le=86400)
    max_deadline_s: float = Field(default=3600, ge=10, le=86400)
    # no result this long after its deadline: the command shows as "unknown" (sent, fate not known)
    unknown_grace_s: float = Field(default=60, ge=0, le=86400)
    # the broker keeps a command this long past its deadline (MQTT 5 message expiry), so a gateway
    # back within it answers "expired" (certainly not written) instead of the command staying unknown
    late_report_s: float = Field(default=900, ge=0, le=7 * 86400)


class ApiConfig(_Strict):
    kind: Literal["api"]
    listen: ListenSettings = ListenSettings()
    influx: InfluxSettings = InfluxSettings()
    store: StoreUrl  # the alert store the collector writes (SQLAlchemy URL)
    control: ApiControl | None = None
    # requests by route and status, latency; with several workers the supervisor serves them all
    metrics: MetricsSettings | None = None
    workers: int = Field(default=1, ge=1, le=32,
                         description="uvicorn worker processes; 2 on a 2-core box halves the tail under load")
    report: str | None = Field(default=None, description=(
        "the takeover report's settings (kind: report; company, rule file, gateway configs, refund "
        "bands); relative to this config"))


_MODELS: dict[str, type[BaseModel]] = {
    "gateway": GatewayConfig, "collector": CollectorConfig, "alerter": AlerterConfig, "api": ApiConfig,
    "register_map": RegisterMap, "rules": AlertRules, "report": ReportSettings,
}

# ---------------------------------------------------------------------------------------------
# loading

_ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _expand(node: Any, path: str, problems: list[str]) -> Any:
    if isinstance(node, str):
        def sub(m: re.Match[str]) -> str:
            val = os.environ.get(m.group(1))
            if val is None:
                if m.group(2) is None:
                    problems.append(f"{path}: environment variable {m.group(1)} is not set")
                    return ""
                return m.group(2)
            return val
        return _ENV_RE.sub(sub, node)
    if isinstance(node, dict):
        return {k: _expand(v, f"{path}.{k}" if path else str(k), problems) for k, v in node.items()}
    if isinstance(node, list):
        return [_expand(v, f"{path}.{i}", problems) for i, v in enumerate(node)]
    return node


class _DuplicateKey(yaml.YAMLError):
    def __init__(self, key: str, line: int, first: int) -> None:
        super().__init__(f"line {line}: key {key!r} appears twice in one mapping (first on line {first}); "
                         "YAML would keep only the last")


# libyaml's parser where PyYAML was built with it: a gateway config with a 300-point map loads
# in 25 ms instead of 115 ms, most of it parsing (one process with 200 stations: 23 s → 5 s)
class _Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """A safe loader that refuses a key given twice in one mapping (PyYAML keeps the last one
    silently: a second ``port:`` further down a file would win without a word)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[tuple[str, str], int] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue
            line, key = key_node.start_mark.line + 1, (key_node.tag, key_node.value)
            if key in seen:
                raise _DuplicateKey(str(key_node.value), line, seen[key])
            seen[key] = line
        out: dict[Any, Any] = super().construct_mapping(node, deep=deep)
        return out


def decode_text(raw: bytes, file: str) -> str:
    """A config file's bytes as text: UTF-8, with or without a byte-order mark.

    Anything else is refused, naming the line, rather than guessed: a file saved by Windows
    Notepad as "ANSI" on a Chinese system is GBK, and decoding GB18030 whenever UTF-8 fails
    would also "succeed" on Latin-1 or damaged bytes (GB18030 maps most byte pairs to some
    character), turning a wrong encoding into wrong addresses and labels that pass validation.
    The fix is one "save as UTF-8" away, and every other tool (git, grep, the editor of the
    next person) then reads the same characters.
    """
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise ConfigError(file, ['encoded as UTF-16 (Notepad\'s "Unicode"): save it as UTF-8'])
    try:
        return raw.decode("utf-8-sig")  # Notepad writes a UTF-8 BOM: still UTF-8, and harmless
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        try:
            raw.decode("gb18030")
        except UnicodeDecodeError:
            raise ConfigError(file, [f"line {line}: not UTF-8: save it as UTF-8"]) from None
        raise ConfigError(file, [f"line {line}: not UTF-8 (looks like GBK/GB18030?): save it as UTF-8 "
                                 f"(e.g. iconv -f GB18030 -t UTF-8 {file} > new.yaml)"]) from None


def read_yaml(path: Path) -> dict[str, Any]:
    file = str(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(file, [f"cannot read: {exc.strerror}"]) from None
    text = decode_text(raw, file)
    try:
        data = yaml.load(text, Loader=_Loader)  # a safe loader
    except _DuplicateKey as exc:
        raise ConfigError(file, [str(exc)]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ConfigError(file, [f"{where}not valid YAML: {getattr(exc, 'problem', exc)}"]) from None
    if not isinstance(data, dict):
        raise ConfigError(file, ["must be a mapping with a 'kind:' key"])
    problems: list[str] = []
    expanded: dict[str, Any] = _expand(data, "", problems)
    if problems:
        raise ConfigError(file, problems)
    return expanded


def _label(data: Any, loc: tuple[int | str, ...]) -> str:
    """Dotted path, with the point name after each ``points.N`` so the error says which point."""
    out: list[str] = []
    node = data
    for part in loc:
        try:
            node = node[part] if node is not None else None
        except (KeyError, IndexError, TypeError):
            node = None
        label = "devices" if not out and part == "resolved" else str(part)
        if out == ["devices"] and isinstance(node, dict) and isinstance(node.get("name"), str):
            label = f"{part} ({node['name']})"
        if out and out[-1] == "points" and isinstance(node, dict) and isinstance(node.get("point"), str):
            label = f"{part} ({node['point']})"
        out.append(label)
    return ".".join(out)


def render_errors(exc: ValidationError, data: Any) -> list[str]:
    problems = []
    for err in exc.errors(include_url=False):
        loc = tuple(err["loc"])
        msg = str(err["msg"]).removeprefix("Value error, ")
        if msg.startswith("@"):  # a path relative to where the validator ran
            rel, _, msg = msg[1:].partition(": ")
            loc = loc + tuple(int(p) if p.isdigit() else p for p in rel.split("."))
        if err["type"] == "extra_forbidden":
            msg = "unknown key (typo?)"
        elif err["type"] == "missing":
            msg = "required key is missing"
        problems.append(f"{_label(data, loc)}: {msg}" if loc else msg)
    return list(dict.fromkeys(problems))  # inline points are checked as given and as resolved


def _validate(model: type[Any], data: dict[str, Any], file: str) -> Any:
    try:  # "base": secret and certificate files named relative to the config file
        return model.model_validate(data, context={"base": str(Path(file).resolve().parent)})
    except ValidationError as exc:
        raise ConfigError(file, render_errors(exc, data)) from None


def load_register_map(path: Path) -> RegisterMap:
    data = read_yaml(path)
    if data.get("kind") != "register_map":
        raise ConfigError(str(path), ["kind: must be register_map"])
    rmap: RegisterMap = _validate(RegisterMap, data, str(path))
    return rmap


_MATCH_KEYS = ("point", "building", "household")


def _station_differences(points: list[dict[str, Any]], dev: dict[str, Any], where: str,
                         file: str) -> list[dict[str, Any]]:
    """Apply a device's ``without``, ``overrides`` and ``extra_points`` to its template's points.

    A rule names a template point by ``point`` (and ``building``/``household`` where the map has
    several); it must match exactly one, or the error says which rule and why.
    """
    problems: list[str] = []

    def find(rule: Any, at: str) -> int | None:
        if not isinstance(rule, dict) or not isinstance(rule.get("point"), str):
            problems.append(f"{at}.point: name the template point to change")
            return None
        hits = [j for j, p in enumerate(points)
                if all(p.get(k) == rule[k] for k in _MATCH_KEYS if k in rule)]
        label = " ".join(str(rule[k]) for k in _MATCH_KEYS if k in rule)
        if not hits:
            problems.append(f"{at}.point: the map has no point {label}")
            return None
        if len(hits) > 1:
            problems.append(f"{at}.point: {label} matches {len(hits)} points of the map; "
                            "add building/household to say which")
            return None
        return hits[0]

    drop: set[int] = set()
    for k, rule in enumerate(dev.get("without") or []):
        j = find(rule, f"{where}.without.{k}")
        if j is not None:
            drop.add(j)
    for k, rule in enumerate(dev.get("overrides") or []):
        j = find(rule, f"{where}.overrides.{k}")
        if j is None:
            continue
        if j in drop:
            problems.append(f"{where}.overrides.{k}: {rule['point']} is also listed under without")
            continue
        changes = {key: v for key, v in rule.items() if key not in _MATCH_KEYS}
        if not changes:
            problems.append(f"{where}.overrides.{k}: says which point but not what to change")
        points[j] = {**points[j], **changes}
    if problems:
        raise ConfigError(file, problems)
    extra = dev.get("extra_points") or []
    kept = [p for j, p in enumerate(points) if j not in drop]
    return kept + (list(extra) if isinstance(extra, list) else [])


def _resolve_devices(data: dict[str, Any], base: Path, file: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i, dev in enumerate(data.get("devices") or []):
        if not isinstance(dev, dict):
            continue  # the model reports it
        map_ref, inline = dev.get("map"), dev.get("points")
        if bool(map_ref) == bool(inline):
            raise ConfigError(file, [f"devices.{i}: give either map: FILE or points:, not both or neither"])
        points: list[Any]
        addressing: Any  # the model checks it
        if map_ref:
            rmap = load_register_map((base / str(map_ref)).resolve())
            points = [p.model_dump(exclude_unset=True) for p in rmap.points]
            addressing, maxreg, order = rmap.addressing, rmap.max_registers_per_request, rmap.word_order
            single = rmap.write_single
            points = _station_differences(points, dev, f"devices.{i} ({dev.get('name')})", file)
        else:
            if dev.get("overrides") or dev.get("without") or dev.get("extra_points"):
                raise ConfigError(file, [f"devices.{i}: overrides, without and extra_points change a "
                                         "map: FILE; with inline points, edit the points"])
            points = list(inline) if isinstance(inline, list) else []
            addressing = dev.get("addressing")
            if addressing is None:
                raise ConfigError(file, [f"devices.{i}.addressing: inline points must say "
                                         "zero_based, one_based or modicon"])
            maxreg, order, single = 125, WordOrder.ABCD, "fc6"
        order = dev.get("word_order") or order
        for p in points:
            if isinstance(p, dict) and p.get("type") in {t.value for t in MULTI_WORD}:
                p.setdefault("word_order", order)
        out.append({
            "name": dev.get("name"), "transport": dev.get("transport", "tcp"), "host": dev.get("host"),
            "port": dev.get("port", 502), "serial": dev.get("serial"),
            "device_id": dev.get("device_id", 1), "timeout_s": dev.get("timeout_s", 1.0),
            "addressing": addressing,
            "max_registers_per_request": dev.get("max_registers_per_request") or maxreg,
            "write_single": dev.get("write_single") or single,
            "points": points,
        })
    return out


AnyConfig = (GatewayConfig | CollectorConfig | AlerterConfig | ApiConfig | RegisterMap | AlertRules
             | ReportSettings)


def load_config(path: str | Path) -> AnyConfig:
    """Load and validate any heatwatch config; raise ConfigError naming file, path and key."""
    p = Path(path)
    data = read_yaml(p)
    kind = data.get("kind")
    model = _MODELS.get(str(kind))
    if model is None:
        raise ConfigError(str(p), [f"kind: must be one of {', '.join(_MODELS)}, got {kind!r}"])
    if model is GatewayConfig:
        data["resolved"] = _resolve_devices(data, p.parent, str(p))
    if model is ReportSettings:  # its rule file and gateway configs are relative to it
        if isinstance(data.get("rules"), str):
            data["rules"] = str(p.parent / data["rules"])
        if isinstance(data.get("gateways"), list):
            data["gateways"] = [str(p.parent / g) if isinstance(g, str) else g for g in data["gateways"]]
    if model is ApiConfig and isinstance(data.get("report"), str):
        data["report"] = str(p.parent / data["report"])  # absolute stays absolute
    alerts = data.get("alerts") if model is AlerterConfig else None
    if isinstance(alerts, dict) and isinstance(alerts.get("rules"), str):
        alerts["rules"] = str(p.parent / alerts["rules"])  # absolute stays absolute
    if model is CollectorConfig and isinstance(data.get("rules"), str):
        data["rules"] = str(p.parent / data["rules"])
    control = data.get("control") if model in (GatewayConfig, ApiConfig) else None
    if isinstance(control, dict):  # key files are named relative to the config, like maps
        if isinstance(control.get("public_keys"), list):
            control["public_keys"] = [str(p.parent / k) if isinstance(k, str) else k
                                      for k in control["public_keys"]]
        if isinstance(control.get("signing_key"), str):
            control["signing_key"] = str(p.parent / control["signing_key"])
    cfg: AnyConfig = _validate(model, data, str(p))
    alerts = cfg.alerts if isinstance(cfg, AlerterConfig) else None
    rule_file = (("alerts.rules", alerts.rules) if alerts is not None
                 else ("rules", cfg.rules) if isinstance(cfg, CollectorConfig) else ("", None))
    if rule_file[1] is not None:
        rules = Path(rule_file[1])
        if not rules.is_file():
            raise ConfigError(str(p), [f"{rule_file[0]}: no rule file {rules}"
                                       + (" (it is a directory)" if rules.is_dir() else "")])
        load_rules(rules)  # its own errors name the rule file and its keys
    return cfg


def env_names(path: str | Path, dotted: str) -> list[str]:
    """The environment variables (``${NAME}``) the value at ``dotted`` of a config file is built
    from, so a message can say which one moves it; [] when unreadable or none."""
    try:
        node: Any = yaml.load(Path(path).read_text(encoding="utf-8-sig"), Loader=_Loader)
        for part in dotted.split("."):
            node = node[part]
    except (OSError, UnicodeDecodeError, yaml.YAMLError, KeyError, TypeError):
        return []
    return list(dict.fromkeys(m.group(1) for m in _ENV_RE.finditer(node))) if isinstance(node, str) else []


def load_gateway_config(path: str | Path) -> GatewayConfig:
    cfg = load_config(path)
    if not isinstance(cfg, GatewayConfig):
        raise ConfigError(str(path), [f"kind: expected gateway, got {cfg.kind}"])
    return cfg


def load_collector_config(path: str | Path) -> CollectorConfig:
    cfg = load_config(path)
    if not isinstance(cfg, CollectorConfig):
        raise ConfigError(str(path), [f"kind: expected collector, got {cfg.kind}"])
    return cfg


def load_alerter_config(path: str | Path) -> AlerterConfig:
    cfg = load_config(path)
    if not isinstance(cfg, AlerterConfig):
        raise ConfigError(str(path), [f"kind: expected alerter, got {cfg.kind}"])
    return cfg


def load_api_config(path: str | Path) -> ApiConfig:
    cfg = load_config(path)
    if not isinstance(cfg, ApiConfig):
        raise ConfigError(str(path), [f"kind: expected api, got {cfg.kind}"])
    return cfg


def load_report_settings(path: str | Path) -> ReportSettings:
    cfg = load_config(path)
    if not isinstance(cfg, ReportSettings):
        raise ConfigError(str(path), [f"kind: expected report, got {cfg.kind}"])
    return cfg
