"""Remote commands: what the control room sends a gateway, what the gateway answers, and the
checks both sides make. Pure: no I/O (keys arrive as bytes; docs/control.md has the story).

    heatwatch/v1/station/{station}/command/{id}         API → gateway, QoS 1, MQTT 5 message expiry
    heatwatch/v1/station/{station}/command-result/{id}  gateway → all, QoS 1, via its durable outbox

A command travels signed (Ed25519)::

    {"schema": 1, "key": "3f0c9a…", "sig": "<base64 of 64 bytes>",
     "command": {"id": "…", "station": "st001", "device": "plc", "point": "building_valve_setpoint",
                 "building": "b02", "household": null, "value": 70.0,
                 "deadline": 1763700300000, "issued_at": 1763700000000, "issuer": "li.wei",
                 "reason": "b02 rooms at 16 °C", "ticket": "T-20261210-0042"}}

``key`` names the public key (the first 16 hex digits of the SHA-256 of its 32 raw bytes); the
signature covers :meth:`Command.canonical`: a fixed prefix and the command's JSON with sorted
keys, every field present, as orjson writes it (shortest round-tripping floats). A verifier
rebuilds those bytes from the parsed command, so a field added, dropped or changed anywhere on
the way fails the check.

A result (one per command id; a gateway answers a redelivered command with the stored one)::

    {"schema": 1, "id": "…", "station": "st001", "gateway": "gw-st001", "state": "confirmed",
     "reason": null, "detail": "read back 70.0", "device": "plc", "point": "building_valve_setpoint",
     "building": "b02", "household": null, "value": 70.0, "old_value": 60.0, "read_back": 70.0,
     "code": null, "ts": 1763700000950}
"""

from __future__ import annotations

import base64
import hashlib
from enum import StrEnum
from typing import Annotated, Literal

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, Field, StrictBool, field_validator, model_validator

from contract.errors import InvalidInput
from contract.payload import TS_MAX_MS, TS_MIN_MS, parse
from contract.points import check_name
from contract.topics import Ident

SCHEMA_VERSION = 1
_SIGNED_PREFIX = b"heatwatch/v1 command\n"  # signatures over commands cannot be replayed as anything else

Ticket = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:/-]*$")]
KeyId = Annotated[str, Field(pattern=r"^[0-9a-f]{16}$")]
Value = StrictBool | Annotated[float, Field(allow_inf_nan=False)]  # what a command writes


class State(StrEnum):
    """A command's lifecycle (docs/control.md). The last five are a gateway's answers."""

    AWAITING_CONFIRMATION = "awaiting_confirmation"  # a station-wide setpoint: a second engineer
    REQUESTED = "requested"  # committed; the API's sender publishes it
    SENT = "sent"  # the broker acknowledged it
    CONFIRMED = "confirmed"  # written and read back equal
    MISMATCH = "mismatch"  # written, but the read-back differs (PLC override, clamp)
    REJECTED = "rejected"  # refused before any write (reason)
    FAILED = "failed"  # the write failed (Modbus exception code, timeout)
    EXPIRED = "expired"  # its deadline passed before it could run: never written
    UNKNOWN = "unknown"  # shown, never stored: sent, and no result by deadline + grace


FINAL = frozenset({State.CONFIRMED, State.MISMATCH, State.REJECTED, State.FAILED, State.EXPIRED})
ResultState = Literal["confirmed", "mismatch", "rejected", "failed", "expired"]


class Reason(StrEnum):
    """Why a command was rejected or failed: one label each, for counters and the API."""

    BAD_PAYLOAD = "bad_payload"
    UNKNOWN_KEY = "unknown_key"
    BAD_SIGNATURE = "bad_signature"
    WRONG_STATION = "wrong_station"
    CLOCK_SKEW = "clock_skew"
    UNKNOWN_POINT = "unknown_point"
    BOUNDS = "bounds"
    STEP = "step"
    RATE_LIMIT = "rate_limit"
    LOCAL_MODE = "local_mode"
    MODBUS_EXCEPTION = "modbus_exception"
    TIMEOUT = "timeout"
    INTERRUPTED = "interrupted"  # the gateway stopped between write and result: fate unknown, not retried
    NOT_CONFIRMED = "not_confirmed"  # API: the second engineer did not confirm before the deadline
    NOT_SENT = "not_sent"  # API: could not be published before the deadline


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Command(_Frozen):
    id: Ident
    station: Ident
    device: Ident
    point: str
    building: Ident | None = None
    household: Ident | None = None
    value: Value
    deadline: int = Field(ge=TS_MIN_MS, le=TS_MAX_MS)  # ms; never executed after this
    issued_at: int = Field(ge=TS_MIN_MS, le=TS_MAX_MS)
    issuer: str = Field(min_length=1, max_length=64)
    reason: str = Field(min_length=1, max_length=500)
    ticket: Ticket

    @field_validator("point")
    @classmethod
    def _point(cls, v: str) -> str:
        check_name(v)
        return v

    @model_validator(mode="after")
    def _order(self) -> Command:
        if self.deadline <= self.issued_at:
            raise ValueError("deadline: must be after issued_at")
        if self.household is not None and self.building is None:
            raise ValueError("building: a household point needs its building")
        return self

    def canonical(self) -> bytes:
        """The bytes a signature covers."""
        return _SIGNED_PREFIX + orjson.dumps(self.model_dump(mode="json"), option=orjson.OPT_SORT_KEYS)


class SignedCommand(_Frozen):
    schema_: Literal[1] = Field(default=1, alias="schema")
    key: KeyId
    sig: str = Field(min_length=86, max_length=88)
    command: Command

    def to_json(self) -> bytes:
        return orjson.dumps(self.model_dump(mode="json", by_alias=True))


class CommandResult(_Frozen):
    schema_: Literal[1] = Field(default=1, alias="schema")
    id: Ident
    station: Ident
    gateway: Ident
    state: ResultState
    reason: Reason | None = None  # for rejected and failed
    detail: str = Field(default="", max_length=500)
    # what the command asked, when it could be read (absent for an unreadable payload)
    device: Ident | None = None
    point: str | None = None
    building: Ident | None = None
    household: Ident | None = None
    value: Value | None = None
    old_value: Value | None = None  # read just before the write
    read_back: Value | None = None  # read just after it
    code: int | None = Field(default=None, ge=1, le=255)  # the Modbus exception code of a failure
    ts: int = Field(ge=TS_MIN_MS, le=TS_MAX_MS)  # when the gateway decided (ms)

    @model_validator(mode="after")
    def _reason(self) -> CommandResult:
        if self.state in ("rejected", "failed") and self.reason is None:
            raise ValueError(f"reason: a {self.state} result needs its reason")
        return self

    def to_json(self) -> bytes:
        return orjson.dumps(self.model_dump(mode="json", by_alias=True))


def parse_signed_command(raw: bytes) -> SignedCommand:
    return parse(SignedCommand, raw)


def parse_command_result(raw: bytes) -> CommandResult:
    return parse(CommandResult, raw)


# -- keys and signatures ---------------------------------------------------------------------------
class SignatureError(InvalidInput):
    reason = Reason.BAD_SIGNATURE.value


def key_id(key: Ed25519PublicKey) -> str:
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def generate_keypair() -> tuple[bytes, bytes]:
    """A new signing key: (private key PEM, PKCS#8 unencrypted; public key PEM)."""
    k = Ed25519PrivateKey.generate()
    private = k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption())
    public = k.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)
    return private, public


def load_private_key(pem: bytes, where: str) -> Ed25519PrivateKey:
    """Raises ValueError naming ``where`` when ``pem`` is not an unencrypted Ed25519 private key."""
    try:
        k = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{where}: not a PEM private key without a passphrase ({exc})") from None
    if not isinstance(k, Ed25519PrivateKey):
        raise ValueError(f"{where}: an Ed25519 key is needed, this is {type(k).__name__}")
    return k


def load_public_key(pem: bytes, where: str) -> Ed25519PublicKey:
    try:
        k = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{where}: not a PEM public key ({exc})") from None
    if not isinstance(k, Ed25519PublicKey):
        raise ValueError(f"{where}: an Ed25519 key is needed, this is {type(k).__name__}")
    return k


def sign(cmd: Command, key: Ed25519PrivateKey) -> SignedCommand:
    sig = base64.b64encode(key.sign(cmd.canonical())).decode()
    return SignedCommand(key=key_id(key.public_key()), sig=sig, command=cmd)


def verify(signed: SignedCommand, keys: dict[str, Ed25519PublicKey]) -> Command:
    """The command, if its signature verifies against the named one of ``keys``."""
    key = keys.get(signed.key)
    if key is None:
        raise SignatureError(f"signed with key {signed.key}, which is not one of this gateway's "
                             f"({', '.join(sorted(keys)) or 'none'})", Reason.UNKNOWN_KEY.value)
    try:
        sig = base64.b64decode(signed.sig, validate=True)
        key.verify(sig, signed.command.canonical())
    except (InvalidSignature, ValueError):
        raise SignatureError(f"the signature does not verify with key {signed.key}") from None
    return signed.command


# -- bounds: one check for the API (against the gateway's status) and the gateway (its map) --------
class Bounds(_Frozen):
    """The engineering bounds of one writable point, as a gateway announces them."""

    min: float | None = None
    max: float | None = None
    max_step: float | None = None
    min_interval_s: float = 0


def _num(v: float) -> str:
    return f"{v:g}"


def bounds_problem(point: str, value: bool | float, b: Bounds, *, is_bool: bool,
                   current: bool | float | None = None, last_write_ms: int | None = None,
                   now_ms: int = 0) -> tuple[Reason, str] | None:
    """What stops ``value`` being written to ``point``, worded with the bound that was hit, or None.

    ``current``: the point's present value (the step is measured from it; unknown: not checked);
    ``last_write_ms``: when the point was last written (for ``min_interval_s``).
    """
    if is_bool != isinstance(value, bool):
        want = "true or false" if is_bool else "a number"
        return Reason.BOUNDS, f"{point} takes {want}, not {value!r}"
    if not is_bool:
        v = float(value)
        if b.min is not None and v < b.min:
            return Reason.BOUNDS, f"value {_num(v)} below min {_num(b.min)} of {point}"
        if b.max is not None and v > b.max:
            return Reason.BOUNDS, f"value {_num(v)} above max {_num(b.max)} of {point}"
        if (b.max_step is not None and isinstance(current, (int, float)) and not isinstance(current, bool)
                and abs(v - current) > b.max_step + 1e-9):
            return Reason.STEP, (f"value {_num(v)} is {_num(abs(v - current))} from the present "
                                 f"{_num(current)}: above max_step {_num(b.max_step)} of {point}")
    if last_write_ms is not None and b.min_interval_s and now_ms - last_write_ms < b.min_interval_s * 1000:
        wait = b.min_interval_s - (now_ms - last_write_ms) / 1000
        return Reason.RATE_LIMIT, (f"{point} was written {(now_ms - last_write_ms) / 1000:.0f} s ago: "
                                   f"min_interval_s {_num(b.min_interval_s)} (next in {wait:.0f} s)")
    return None


def shown_state(stored: State, deadline_ms: int, now_ms: int, grace_s: float) -> State:
    """What a reader sees: a command that may have reached its gateway (sent, or requested and
    handed to the broker without a PUBACK yet) with no result by deadline + grace is unknown."""
    if stored in (State.SENT, State.REQUESTED) and now_ms > deadline_ms + grace_s * 1000:
        return State.UNKNOWN
    return stored
