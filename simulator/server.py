"""Serve simulated stations over Modbus with pymodbus's own servers (SimDevice API).

Each link of the gateway configs (host and port, or serial port) becomes one server (Modbus
TCP, RTU over TCP, or RTU on a serial port); each device on it one device id, as on an RS-485
bus. Registers are laid out by the same register maps the gateway reads. On every request the
device's ``action`` hook copies the current register image into pymodbus's block (reads) or
applies the written values to the model's setpoints (writes); a device under a ``dead_device``
event never answers, so the client times out as it would against a dead slave.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import struct
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from pymodbus import FramerType
from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType as SimType
from pymodbus.simulator import SimData, SimDevice

from contract.codec import FLOATS, INTEGERS, DataType, decode, encode
from contract.config import GatewayConfig, PointMap, ResolvedDevice
from contract.errors import ConfigError
from simulator.physics import Event, Key, StationModel
from simulator.scenario import RelativeEvent

log = logging.getLogger("heatwatch.simulator")
SAVE_EVERY_S = 10.0  # a kill -9 loses at most this much of the stations' state (a few ms to write)
logging.getLogger("pymodbus").setLevel(logging.ERROR)

_READ_TABLE = {1: "coil", 2: "discrete_input", 3: "holding_register", 4: "input_register"}
_WRITE_TABLE = {5: "coil", 15: "coil", 6: "holding_register", 16: "holding_register"}
_INT_RANGE = {
    DataType.INT16: (-(2**15), 2**15 - 1), DataType.UINT16: (0, 2**16 - 1),
    DataType.INT32: (-(2**31), 2**31 - 1), DataType.UINT32: (0, 2**32 - 1),
    DataType.INT64: (-(2**63), 2**63 - 1), DataType.UINT64: (0, 2**64 - 1),
}


def to_raw(p: PointMap, value: float | bool | str) -> int | float | str | bool:
    """Engineering value → the raw value a device would hold for this point."""
    if p.type in (DataType.BOOL, DataType.BIT, DataType.STRING):
        return value
    raw = (float(value) - p.offset) / p.scale
    if p.type in INTEGERS:
        lo, hi = _INT_RANGE[p.type]
        return max(lo, min(hi, round(raw)))
    return raw


def served_value(p: PointMap, value: float | bool | str) -> float | bool | str:
    """What a correct gateway must read back for ``value``: the raw value's quantisation undone.

    Computed independently of contract.codec (float32 via struct, integers via round) so the
    end-to-end test does not trust the codec it is testing.
    """
    raw = to_raw(p, value)
    if isinstance(raw, (bool, str)):
        return raw
    if p.type is DataType.FLOAT32:
        raw = struct.unpack(">f", struct.pack(">f", raw))[0]
    return float(raw) * p.scale + p.offset


class PortInUse(RuntimeError):
    """A link's server could not listen; the message names the address."""


@dataclass
class _Slot:
    point: PointMap
    key: Key
    table: str
    wire: int


class DeviceImage:
    """The register image of one simulated device, rendered from its station model."""

    def __init__(self, dev: ResolvedDevice, model: StationModel) -> None:
        self.dev, self.model = dev, model
        self.slots = [_Slot(p, p.key, p.table, p.wire_address(dev.addressing)) for p in dev.points]
        self.span: dict[str, tuple[int, int]] = {}
        for s in self.slots:
            lo, hi = self.span.get(s.table, (s.wire, s.wire))
            self.span[s.table] = (min(lo, s.wire), max(hi, s.wire + s.point.words - 1))
        self.words: dict[str, list[int]] = {}
        # wire addresses this device refuses with "illegal data address" although they sit
        # inside its served span: firmware holes, the quirk that breaks coalesced reads
        self.illegal: dict[str, set[int]] = {}
        # every write request that reached this device: (function code, address, values)
        self.writes: list[tuple[int, int, list[int]]] = []
        self.held: set[Key] = set()  # points the PLC program overrides: writes to them do not take
        self.write_error: ExcCodes | None = None  # answer every write with this exception
        self.write_delay_s = 0.0  # a slow PLC: the write is answered this much later
        self.render()

    def simdevice(self) -> SimDevice:
        blocks: dict[str, list[SimData]] = {}
        for table in ("coil", "discrete_input", "holding_register", "input_register"):
            if table not in self.span:
                # pymodbus wants all four blocks: an unused bit table gets 16 idle bits, an
                # unused register table one invalid word (answers "illegal address")
                blocks[table] = (
                    [SimData(0, count=16, values=False, datatype=SimType.BITS)]
                    if table in ("coil", "discrete_input")
                    else [SimData(0, count=1, datatype=SimType.INVALID)])
            elif table in ("coil", "discrete_input"):
                n = (self.span[table][1] // 16 + 1) * 16
                blocks[table] = [SimData(0, count=n, values=False, datatype=SimType.BITS)]
            else:
                lo, hi = self.span[table]
                blocks[table] = [SimData(lo, count=hi - lo + 1, values=0, datatype=SimType.REGISTERS)]
        return SimDevice(
            self.dev.device_id,
            simdata=(blocks["coil"], blocks["discrete_input"], blocks["holding_register"],
                     blocks["input_register"]),
            action=partial(_action, self),
        )

    def render(self) -> None:
        """Encode the model's current values into per-table word images."""
        values, t = self.model.values, self.model.t or time.time()
        out: dict[str, list[int]] = {}
        for table, (lo, hi) in self.span.items():
            if table in ("coil", "discrete_input"):
                out[table] = [0] * ((hi // 16) + 1)
            else:
                out[table] = [0] * (hi - lo + 1)
        for s in self.slots:
            v = values.get(s.key)
            if v is None:
                continue
            p = s.point
            words = out[s.table]
            if s.table in ("coil", "discrete_input"):
                if v:
                    words[s.wire // 16] |= 1 << (s.wire % 16)
                continue
            base = s.wire - self.span[s.table][0]
            if self.model.broken(s.key, t):
                if p.invalid_raw:
                    enc = encode(p.invalid_raw[0], p.type, p.order, p.length)
                elif p.type in FLOATS:
                    enc = encode(math.nan, p.type, p.order)
                else:
                    continue
            elif p.type is DataType.BIT:
                if v:
                    words[base] |= 1 << (p.bit or 0)
                continue
            else:
                enc = encode(to_raw(p, v), p.type, p.order, p.length)
            words[base : base + len(enc)] = enc
        self.words = out

    def apply_write(self, table: str, address: int, values: Sequence[int] | Sequence[bool]) -> None:
        """A client wrote registers or coils: set the model's setpoints from the written points."""
        words = {t: list(w) for t, w in self.words.items()}
        if table == "coil":
            for i, bit in enumerate(values):
                a = address + i
                if bit:
                    words["coil"][a // 16] |= 1 << (a % 16)
                else:
                    words["coil"][a // 16] &= ~(1 << (a % 16))
        else:
            lo = self.span[table][0]
            for i, w in enumerate(values):
                words[table][address - lo + i] = int(w)
        end = address + len(values)
        for s in self.slots:
            if s.table != table or not (s.wire < end and address < s.wire + s.point.words):
                continue
            if s.key in self.held:
                continue
            p = s.point
            if table == "coil":
                val: float | bool | str = bool(words["coil"][s.wire // 16] >> (s.wire % 16) & 1)
            else:
                base = s.wire - self.span[table][0]
                raw = decode(words[table][base : base + p.words], p.type, p.order,
                             p.bit or 0)
                val = raw if isinstance(raw, (bool, str)) else float(raw) * p.scale + p.offset
            if not isinstance(val, str):
                self.model.write(s.key, val)
        self.model.values.update({k: v for k, v in self.model.setpoints.items() if k in self.model.values})
        self.render()


async def _action(img: DeviceImage, fc: int, start: int, address: int, count: int,
                  registers: list[int], set_values: list[int] | list[bool] | None) -> ExcCodes | None:
    if img.model.t is not None and img.dev.name in img.model.dead_devices(img.model.t):
        await asyncio.Event().wait()  # a dead slave: never answer; the client times out
    if set_values is not None:
        img.writes.append((fc, address, [int(v) for v in set_values]))
        if img.write_delay_s:
            await asyncio.sleep(img.write_delay_s)
        if img.write_error is not None:
            return img.write_error
        table = _WRITE_TABLE.get(fc)
        if table is not None:
            img.apply_write(table, address, set_values)
        return None
    table = _READ_TABLE.get(fc)
    holes = img.illegal.get(table or "")
    if holes and any(a in holes for a in range(address, address + count)):
        return ExcCodes.ILLEGAL_ADDRESS
    if table is not None and table in img.words:
        registers[:] = img.words[table]
    return None


class Simulator:
    """Every configured station, on a simulated clock running ``speed`` times real time."""

    def __init__(self, configs: Sequence[GatewayConfig], *, speed: float = 1.0,
                 start: float | None = None, seed: int = 0, tick_s: float = 1.0,
                 serial_peers: dict[str, str] | None = None,
                 scenario: Sequence[tuple[str, RelativeEvent]] = (),
                 room_settle_s: float | None = None, state_path: Path | None = None) -> None:
        """``scenario``: events timed from the start, in place before the first step (one that
        began before the start is already in the models' settled state); ``room_settle_s``: how
        fast rooms follow their target (None: the model's own); ``state_path``: a JSON file the
        stations' physical state is saved to (every ``SAVE_EVERY_S`` and at the stop) and carried
        on from at the next start (``StationModel.state``: rooms, the setpoints remote commands
        wrote, valves, meters), as the real stations would be after the simulator's restart."""
        self.configs = list(configs)
        # a gateway's serial port → the port the simulator answers on (the other end of the
        # cable or null modem); a port not listed is opened by its own name
        self.serial_peers = dict(serial_peers or {})
        self.speed, self.tick_s = speed, tick_s
        self._t0_real = time.time()
        self._t0_sim = start if start is not None else self._t0_real
        self.paused_at: float | None = None
        self.models: dict[str, StationModel] = {}
        self.images: list[DeviceImage] = []
        keys: dict[str, list[Key]] = defaultdict(list)
        for cfg in self.configs:
            for dev in cfg.resolved:
                keys[cfg.station].extend(p.key for p in dev.points)
        for station, ks in keys.items():
            self.models[station] = StationModel(station, ks, seed=seed)
            if room_settle_s is not None:
                self.models[station].room_settle_s = room_settle_s
        for station, ev in scenario:
            if station not in self.models:
                raise ValueError(f"the scenario has an event for station {station!r}, which none of "
                                 f"the gateway configs serves ({', '.join(sorted(self.models))})")
            self.add_event(station, ev.shifted(self._t0_sim))
        self._servers: list[ModbusTcpServer | ModbusSerialServer] = []
        self.state_path = state_path
        self._saved = time.monotonic()
        self._save_failed = False
        if state_path is not None:
            if not state_path.parent.is_dir():  # at once, not a traceback at the first save
                raise ConfigError(str(state_path),
                                  [f"--state: the folder {state_path.parent} does not exist"])
            self._restore(state_path)
        self.step()

    # -- state across restarts ------------------------------------------------------------------
    def _restore(self, path: Path) -> None:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            log.warning("%s: unreadable (%s); the stations start afresh", path, exc)
            return
        for station, st in ((data.get("stations") or {}) if isinstance(data, dict) else {}).items():
            if station in self.models and isinstance(st, dict):
                try:
                    self.models[station].restore(st)
                except (ValueError, TypeError, IndexError) as exc:
                    log.warning("%s: stations.%s: %s; that station starts afresh", path, station, exc)

    def save_state(self) -> None:
        """Write every station's state to ``state_path`` (atomically: a kill mid-write keeps the
        last whole file)."""
        if self.state_path is None:
            return
        tmp = self.state_path.with_name(self.state_path.name + ".tmp")
        self._saved = time.monotonic()  # a failed save is tried again at the next interval, not each tick
        try:
            tmp.write_text(json.dumps({"stations": {st: m.state() for st, m in self.models.items()}}),
                           encoding="utf-8")
            tmp.replace(self.state_path)
        except OSError as exc:  # a full disk or a folder gone: the simulation goes on, unsaved
            if not self._save_failed:
                log.warning("%s: cannot save the stations' state: %s", self.state_path, exc)
            self._save_failed = True
        else:
            self._save_failed = False

    # -- clock ---------------------------------------------------------------------------------
    def now(self) -> float:
        if self.paused_at is not None:
            return self.paused_at
        return self._t0_sim + (time.time() - self._t0_real) * self.speed

    def pause(self) -> None:
        """Freeze the clock and every value (tests compare what was served with what arrived)."""
        self.paused_at = self.now()

    def add_event(self, station: str, event: Event) -> None:
        self.models[station].events.append(event)

    def step(self) -> None:
        t = self.now()
        for m in self.models.values():
            m.step(t)
        for img in self.images:
            img.render()

    def refuse(self, station: str, device: str, table: str, wire: int) -> None:
        """Make one device answer "illegal data address" for any read touching ``wire``."""
        for img in self.images:
            if img.model.station == station and img.dev.name == device:
                img.illegal.setdefault(table, set()).add(wire)
                return
        raise KeyError(f"no device {device} at station {station}")

    def image(self, station: str, device: str) -> DeviceImage:
        for img in self.images:
            if img.model.station == station and img.dev.name == device:
                return img
        raise KeyError(f"no device {device} at station {station}")

    def writes(self, station: str, device: str) -> list[tuple[int, int, list[int]]]:
        """Every write request the device received: (function code, address, values)."""
        return list(self.image(station, device).writes)

    def hold(self, station: str, device: str, key: Key) -> None:
        """The PLC program overrides this point: a write is acknowledged and does not take."""
        self.image(station, device).held.add(key)

    def refuse_writes(self, station: str, device: str, code: int | None) -> None:
        """Answer every write with Modbus exception ``code`` (None: accept them again)."""
        self.image(station, device).write_error = ExcCodes(code) if code is not None else None

    def slow_writes(self, station: str, device: str, delay_s: float) -> None:
        """A slow PLC: every write is answered ``delay_s`` after it arrives."""
        self.image(station, device).write_delay_s = delay_s

    def set_local_mode(self, station: str, on: bool) -> None:
        """Turn the cabinet's local/remote switch (the ``local_mode`` point)."""
        m = self.models[station]
        m.local_mode = on
        for k in m.values:
            if k[0] == "local_mode":
                m.values[k] = on
        for img in self.images:
            if img.model is m:
                img.render()

    def served(self, station: str) -> dict[Key, float | bool | str]:
        """The engineering value a correct gateway reads for every point, right now."""
        out: dict[Key, float | bool | str] = {}
        m = self.models[station]
        for cfg in self.configs:
            if cfg.station != station:
                continue
            for dev in cfg.resolved:
                for p in dev.points:
                    out[p.key] = served_value(p, m.values[p.key])
        return out

    # -- serving -------------------------------------------------------------------------------
    async def start(self) -> None:
        by_link: dict[tuple[str, ...], list[SimDevice]] = defaultdict(list)
        first: dict[tuple[str, ...], ResolvedDevice] = {}
        for cfg in self.configs:
            for dev in cfg.resolved:
                img = DeviceImage(dev, self.models[cfg.station])
                self.images.append(img)
                by_link[dev.link].append(img.simdevice())
                first.setdefault(dev.link, dev)
        for link, devices in by_link.items():
            dev = first[link]
            server: ModbusTcpServer | ModbusSerialServer
            if dev.serial is not None:
                sp = dev.serial
                server = ModbusSerialServer(devices, framer=FramerType.RTU,
                                            port=self.serial_peers.get(sp.device, sp.device),
                                            baudrate=sp.baudrate, bytesize=sp.bytesize, parity=sp.parity,
                                            stopbits=sp.stopbits)
            else:
                framer = FramerType.RTU if dev.transport == "rtu_over_tcp" else FramerType.SOCKET
                server = ModbusTcpServer(devices, address=(str(dev.host), dev.port), framer=framer)
            try:
                await server.serve_forever(background=True)
            except RuntimeError:  # pymodbus: "Could not start listen", naming no address
                await self.stop()
                raise PortInUse(f"cannot serve {dev.where} (the link of {dev.name}): the port is in use "
                                "or the address is not this machine's") from None
            self._servers.append(server)
            log.info("serving %d device(s) on %s", len(devices), dev.where)

    async def run(self) -> None:
        """Serve and advance the physics until cancelled."""
        await self.start()
        try:
            while True:
                await asyncio.sleep(self.tick_s)
                if self.paused_at is None:
                    self.step()
                if self.state_path is not None and time.monotonic() - self._saved >= SAVE_EVERY_S:
                    self.save_state()
        finally:
            self.save_state()
            await self.stop()

    async def stop(self) -> None:
        for s in self._servers:
            await s.shutdown()  # type: ignore[no-untyped-call]
        self._servers.clear()
