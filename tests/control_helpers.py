"""Helpers for the remote-control tests: a station whose PLC has a writable point of every type
and word order, keys, and signed commands."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from contract.commands import Command, generate_keypair, load_private_key, sign

STATION, GATEWAY, DEVICE = "st001", "gw-st001", "plc"

# (point, building, type, extra map keys, value to write, expected function code, expected words)
# The words are worked out by hand from the IEEE/two's-complement bytes (not by contract.codec):
# 12.5 = 0x41480000, 123456.0 = 0x47F12000 (libmodbus's test value), -2.25 = 0xC0100000,
# 3.5 = 0x400C000000000000, -123456 = 0xFFFE1DC0, 123456789 = 0x075BCD15.
WRITES: list[tuple[str, str | None, str, dict[str, Any], float | bool, int, list[int]]] = [
    ("building_valve_setpoint", "b01", "uint16", {"scale": 0.1}, 65.0, 6, [650]),
    ("secondary_supply_temp_setpoint", None, "int16", {"scale": 0.1}, 58.5, 16, [585]),  # fc16 point
    ("x_i16", None, "int16", {"scale": 0.5, "offset": -40}, -55.0, 6, [0xFFE2]),  # raw -30
    # 16-bit registers sent low byte first: -2 = 0xFFFE, 4660 = 0x1234, bytes swapped on the wire
    ("x_i16_ba", None, "int16", {"byte_order": "BA"}, -2.0, 6, [0xFEFF]),
    ("x_u16_ba", None, "uint16", {"byte_order": "BA", "scale": 0.1}, 466.0, 6, [0x3412]),
    ("x_i32", None, "int32", {"word_order": "ABCD"}, -123456.0, 16, [0xFFFE, 0x1DC0]),
    ("x_u32", None, "uint32", {"word_order": "CDAB", "scale": 0.01}, 1234567.89, 16, [0xCD15, 0x075B]),
    ("x_f32_abcd", None, "float32", {"word_order": "ABCD"}, 12.5, 16, [0x4148, 0x0000]),
    ("x_f32_badc", None, "float32", {"word_order": "BADC"}, 12.5, 16, [0x4841, 0x0000]),
    ("x_f32_cdab", None, "float32", {"word_order": "CDAB"}, 123456.0, 16, [0x2000, 0x47F1]),
    ("x_f32_dcba", None, "float32", {"word_order": "DCBA"}, -2.25, 16, [0x0000, 0x10C0]),
    ("x_f64_abcd", None, "float64", {"word_order": "ABCD"}, 3.5, 16, [0x400C, 0, 0, 0]),
    ("x_f64_cdab", None, "float64", {"word_order": "CDAB"}, 3.5, 16, [0, 0, 0, 0x400C]),
    ("x_i64_dcba", None, "int64", {"word_order": "DCBA"}, -2.0, 16, [0xFEFF, 0xFFFF, 0xFFFF, 0xFFFF]),
    ("x_u64_badc", None, "uint64", {"word_order": "BADC"}, 4294967301.0, 16, [0, 0x0100, 0, 0x0500]),
    ("x_flag_b5", None, "bit", {"bit": 5}, True, 6, [0b100000]),  # register 29 was 0
    ("x_flag_b3", None, "bit", {"bit": 3}, True, 6, [0b101000]),  # read-modify-write keeps bit 5
    ("x_pump_enable", None, "bool", {}, True, 5, [1]),  # a coil, FC5
]
_ADDR = {"uint16": 1, "int16": 1, "int32": 2, "uint32": 2, "float32": 2, "float64": 4, "int64": 4,
         "uint64": 4}


def control_points(min_interval_s: float = 0) -> list[dict[str, Any]]:
    """The PLC's inline points: every writable of WRITES, and the local/remote switch."""
    points: list[dict[str, Any]] = []
    addr = 0
    for name, building, typ, extra, _, _, _ in WRITES:
        p: dict[str, Any] = {"point": name, "type": typ, **extra, "group": "slow"}
        if building:
            p["building"] = building
        write: dict[str, Any] = {"min_interval_s": min_interval_s}
        if typ == "bool":
            p.update(table="coil", address=0)
        elif typ == "bit":
            p.update(table="holding_register", address=29)
        else:
            p.update(table="holding_register", address=addr)
            addr += _ADDR[typ]
        if name.startswith("x_"):
            p["unit"] = ""
            if typ not in ("bool", "bit"):  # wide, and within what each register can hold
                lo = 0 if typ.startswith("u") else -1000 if typ == "int16" else -1e9
                write.update(min=lo, max=1000 if typ in ("int16", "uint16") else 1e10 if "64" in typ else 1e7)
        if name == "secondary_supply_temp_setpoint":
            write["function"] = "fc16"
        p["write"] = write
        points.append(p)
    points.append({"point": "local_mode", "table": "discrete_input", "address": 0, "type": "bool",
                   "group": "status"})
    return points


def write_keys(folder: Path) -> tuple[Ed25519PrivateKey, Path, Path]:
    """A key pair on disk: (private key, private key file, public key file)."""
    folder.mkdir(parents=True, exist_ok=True)
    private, public = generate_keypair()
    (folder / "control-room.key").write_bytes(private)
    (folder / "control-room.key").chmod(0o600)
    (folder / "control-room.pub").write_bytes(public)
    return load_private_key(private, "test"), folder / "control-room.key", folder / "control-room.pub"


def write_control_gateway(folder: Path, *, mqtt_port: int, plc_port: int, public_key: Path,
                          min_interval_s: float = 0, poll_s: float = 1.0, timeout_s: float = 0.5) -> Path:
    cfg = {
        "kind": "gateway", "gateway": GATEWAY, "station": STATION,
        "mqtt": {"host": "127.0.0.1", "port": mqtt_port, "keepalive_s": 5},
        "outbox": {"path": str(folder / "outbox.sqlite")},
        "control": {"public_keys": [str(public_key)], "ledger": str(folder / "ledger.sqlite")},
        "poll_groups": {"fast": {"interval_s": poll_s}, "status": {"interval_s": poll_s},
                        "slow": {"interval_s": poll_s}},
        "devices": [{"name": DEVICE, "host": "127.0.0.1", "port": plc_port, "device_id": 1,
                     "timeout_s": timeout_s, "addressing": "zero_based",
                     "points": control_points(min_interval_s)}],
    }
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "gateway.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def command(point: str, value: float | bool, *, building: str | None = None, deadline_s: float = 30,
            cid: str | None = None, station: str = STATION, device: str = DEVICE) -> Command:
    now = int(time.time() * 1000)
    return Command(id=cid or uuid.uuid4().hex, station=station, device=device, point=point,
                   building=building, value=value, issued_at=now, deadline=now + int(deadline_s * 1000),
                   issuer="test-engineer", reason="test", ticket="T-1")


def signed(cmd: Command, key: Ed25519PrivateKey) -> bytes:
    return sign(cmd, key).to_json()


def command_topic(cmd: Command) -> str:
    return f"heatwatch/v1/station/{cmd.station}/command/{cmd.id}"


def result_topic(cid: str, station: str = STATION) -> str:
    return f"heatwatch/v1/station/{station}/command-result/{cid}"
