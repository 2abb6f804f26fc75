"""Modbus links: one client per connection (host and port, or serial port); the devices behind
one link are read one at a time, separate links concurrently.

A Modbus exception (illegal address, …) means a wrong map: the block's points are bad and the
device is *degraded*. A timeout or a dropped connection means a sick device: it is *offline*,
its remaining requests are skipped, and it is retried with capped backoff so a dead slave
costs its bus at most one timeout per backoff period, never every cycle.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field

import structlog
from pymodbus import FramerType
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException

from contract.config import ResolvedDevice
from contract.payload import DeviceState
from gateway.metrics import Histogram
from gateway.plan import Request

log = structlog.get_logger("heatwatch.gateway.modbus")

BACKOFF_MIN_S, BACKOFF_MAX_S = 1.0, 60.0
ILLEGAL_ADDRESS = 2  # Modbus exception code


class ReadFailed(Exception):
    """The device did not answer (timeout, connection): it is offline."""


class ReadRejected(Exception):
    """The device answered with a Modbus exception: the map is wrong for this block."""

    def __init__(self, code: int) -> None:
        super().__init__(f"modbus exception {code}")
        self.code = code


# seconds per Modbus request: 0.3 ms for 125 registers on loopback TCP (LIMITS.md) up to
# ~0.3 s for a full request at 9600 baud; a timeout is counted, not timed
RTT_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


@dataclass
class ModbusStats:
    """One device's exchanges: round trips answered (with an answer or a Modbus exception),
    exceptions by code (a wrong map), and requests that got no answer (a sick device)."""

    rtt: Histogram = field(default_factory=lambda: Histogram(RTT_BUCKETS_S))
    exceptions: Counter[int] = field(default_factory=Counter)
    no_answer: int = 0


class Link:
    """One connection shared by every device behind it: a Modbus TCP server, a serial device
    server speaking RTU over TCP, or an RS-485 port of this machine. Its lock serialises the
    devices on it (a bus carries one request at a time); separate links run concurrently."""

    def __init__(self, dev: ResolvedDevice) -> None:
        self.where = dev.where
        self.client: AsyncModbusTcpClient | AsyncModbusSerialClient
        if dev.serial is not None:
            s = dev.serial
            self.client = AsyncModbusSerialClient(
                s.device, framer=FramerType.RTU, baudrate=s.baudrate, bytesize=s.bytesize,
                parity=s.parity, stopbits=s.stopbits, timeout=dev.timeout_s, retries=0,
                reconnect_delay=0)
        else:
            framer = FramerType.RTU if dev.transport == "rtu_over_tcp" else FramerType.SOCKET
            self.client = AsyncModbusTcpClient(str(dev.host), port=dev.port, framer=framer,
                                               timeout=dev.timeout_s, retries=0, reconnect_delay=0)
        self.lock = asyncio.Lock()
        self.stats: dict[int, ModbusStats] = {}  # by device id (unique on one link)

    def _stats(self, device_id: int) -> ModbusStats:
        st = self.stats.get(device_id)
        if st is None:
            st = self.stats[device_id] = ModbusStats()
        return st

    async def read(self, req: Request, device_id: int) -> list[int]:
        st = self._stats(device_id)
        c = self.client
        if not c.connected and not await c.connect():
            st.no_answer += 1
            raise ReadFailed(f"cannot connect to {self.where}")
        t0 = time.perf_counter()
        try:
            if req.table == "holding_register":
                rr = await c.read_holding_registers(req.address, count=req.count, device_id=device_id)
            elif req.table == "input_register":
                rr = await c.read_input_registers(req.address, count=req.count, device_id=device_id)
            elif req.table == "coil":
                rr = await c.read_coils(req.address, count=req.count, device_id=device_id)
            else:
                rr = await c.read_discrete_inputs(req.address, count=req.count, device_id=device_id)
        except (TimeoutError, ModbusException, OSError) as exc:
            st.no_answer += 1
            raise ReadFailed(f"{type(exc).__name__}: {exc}") from None
        st.rtt.observe(time.perf_counter() - t0)
        if rr.isError():
            code = int(getattr(rr, "exception_code", 0))
            st.exceptions[code] += 1
            raise ReadRejected(code)
        if req.table in ("coil", "discrete_input"):
            return [1 if b else 0 for b in rr.bits[: req.count]]
        return list(rr.registers)

    async def write(self, table: str, address: int, words: list[int], device_id: int, fc: str) -> None:
        """One write request: a coil by FC5, one register by FC6, registers by FC16 (``fc``).
        Raises ReadFailed when the device does not answer, ReadRejected with the Modbus
        exception code when it refuses (the names cover writes too)."""
        st = self._stats(device_id)
        c = self.client
        if not c.connected and not await c.connect():
            st.no_answer += 1
            raise ReadFailed(f"cannot connect to {self.where}")
        t0 = time.perf_counter()
        try:
            if table == "coil":
                rr = await c.write_coil(address, bool(words[0]), device_id=device_id)
            elif fc == "fc6":
                rr = await c.write_register(address, words[0], device_id=device_id)
            else:
                rr = await c.write_registers(address, words, device_id=device_id)
        except (TimeoutError, ModbusException, OSError) as exc:
            st.no_answer += 1
            raise ReadFailed(f"{type(exc).__name__}: {exc}") from None
        st.rtt.observe(time.perf_counter() - t0)
        if rr.isError():
            code = int(getattr(rr, "exception_code", 0))
            st.exceptions[code] += 1
            raise ReadRejected(code)

    def close(self) -> None:
        self.client.close()


@dataclass
class DeviceHealth:
    state: DeviceState = DeviceState.ONLINE
    error: str | None = None
    failures: int = 0
    next_try: float = 0.0
    reported: bool = False  # the current outage was logged loudly already
    # poll group → the first refusal of its last cycle: a wrong map in one group's block keeps
    # the device degraded while the other groups read it fine
    refused: dict[str, str] = field(default_factory=dict)


Answer = tuple[Request, list[int] | None]  # a request and its words (None: failed)


@dataclass
class Device:
    cfg: ResolvedDevice
    link: Link
    health: DeviceHealth = field(default_factory=DeviceHealth)
    plans: dict[str, list[Request]] = field(default_factory=dict)  # per poll group; adapts

    async def read_group(self, group: str) -> list[Answer]:
        """Read one poll group's requests. Updates health, and the plan where a block was split.

        Health changes only on an exchange with the device: a group with no requests for it says
        nothing about it (a room concentrator read only by the slow group must not be declared
        "answering again" by every fast cycle while it is dead)."""
        plan = self.plans.get(group, [])
        if not plan:
            return []
        h = self.health
        if h.state is DeviceState.OFFLINE and time.monotonic() < h.next_try:
            return [(r, None) for r in plan]
        out: list[Answer] = []
        rejected: str | None = None
        async with self.link.lock:
            for i, req in enumerate(plan):
                try:
                    answers, error = await self._read(req)
                except ReadFailed as exc:
                    out.extend((r, None) for r in plan[i:])
                    self._offline(str(exc))
                    return out
                if len(answers) > 1:
                    log.warning("block refused with illegal data address; split to isolate it",
                                device=self.cfg.name, request=str(req), now=[str(r) for r, _ in answers])
                out.extend(answers)
                rejected = rejected or error
        self.plans[group] = [r for r, _ in out]  # the next cycle reads the pieces, not the refused block
        self._answered(group, rejected)
        return out

    async def _read(self, req: Request) -> tuple[list[Answer], str | None]:
        """One request's answers and the first refusal. A block refused with "illegal data
        address" is halved by its points until each piece answers or is a single point."""
        try:
            return [(req, await self.link.read(req, self.cfg.device_id))], None
        except ReadRejected as exc:
            if exc.code != ILLEGAL_ADDRESS or len(req.points) < 2:
                return [(req, None)], f"{req}: {exc}"
        half = len(req.points) // 2
        answers: list[Answer] = []
        error: str | None = None
        for pts in (req.points[:half], req.points[half:]):
            start = pts[0][1]
            end = max(wire + p.words for p, wire in pts)
            got, err = await self._read(Request(req.table, start, end - start, list(pts)))
            answers.extend(got)
            error = error or err
        return answers, error

    def _offline(self, error: str) -> None:
        h = self.health
        h.failures += 1
        h.next_try = time.monotonic() + min(BACKOFF_MAX_S, BACKOFF_MIN_S * 2 ** (h.failures - 1))
        if not h.reported:
            log.warning("device not answering", device=self.cfg.name, error=error)
            h.reported = True
        else:
            log.debug("device still not answering", device=self.cfg.name, error=error)
        h.state, h.error = DeviceState.OFFLINE, error

    def _answered(self, group: str, rejected: str | None) -> None:
        h = self.health
        if h.state is DeviceState.OFFLINE:
            log.info("device answering again", device=self.cfg.name, after_failures=h.failures)
        if rejected is None:
            h.refused.pop(group, None)
        elif h.refused.get(group) != rejected:
            log.warning("device rejects a request: check the register map", device=self.cfg.name,
                        error=rejected)
            h.refused[group] = rejected
        h.failures, h.reported = 0, False
        h.state = DeviceState.DEGRADED if h.refused else DeviceState.ONLINE
        h.error = next(iter(h.refused.values()), None)
