"""Modbus links: one client per (host, port); devices behind one port are read one at a time.

A Modbus exception (illegal address, …) means a wrong map: the block's points are bad and the
device is *degraded*. A timeout or a dropped connection means a sick device: it is *offline*,
its remaining requests are skipped, and it is retried with capped backoff so a dead slave
costs its bus at most one timeout per backoff period, never every cycle.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import structlog
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException

from contract.config import ResolvedDevice
from contract.payload import DeviceState
from gateway.plan import Request

log = structlog.get_logger("heatwatch.gateway.modbus")

BACKOFF_MIN_S, BACKOFF_MAX_S = 1.0, 60.0


class ReadFailed(Exception):
    """The device did not answer (timeout, connection): it is offline."""


class ReadRejected(Exception):
    """The device answered with a Modbus exception: the map is wrong for this block."""

    def __init__(self, code: int) -> None:
        super().__init__(f"modbus exception {code}")
        self.code = code


class Link:
    """A TCP connection shared by every device at one (host, port)."""

    def __init__(self, host: str, port: int, timeout_s: float) -> None:
        self.host, self.port = host, port
        self.client = AsyncModbusTcpClient(host, port=port, timeout=timeout_s, retries=0,
                                           reconnect_delay=0)
        self.lock = asyncio.Lock()

    async def read(self, req: Request, device_id: int) -> list[int]:
        c = self.client
        if not c.connected and not await c.connect():
            raise ReadFailed(f"cannot connect to {self.host}:{self.port}")
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
            raise ReadFailed(f"{type(exc).__name__}: {exc}") from None
        if rr.isError():
            raise ReadRejected(int(getattr(rr, "exception_code", 0)))
        if req.table in ("coil", "discrete_input"):
            return [1 if b else 0 for b in rr.bits[: req.count]]
        return list(rr.registers)

    def close(self) -> None:
        self.client.close()


@dataclass
class DeviceHealth:
    state: DeviceState = DeviceState.ONLINE
    error: str | None = None
    failures: int = 0
    next_try: float = 0.0
    reported: bool = False  # the current outage was logged loudly already


@dataclass
class Device:
    cfg: ResolvedDevice
    link: Link
    health: DeviceHealth = field(default_factory=DeviceHealth)

    async def read_all(self, requests: list[Request]) -> list[list[int] | None]:
        """Words per request (None where the request failed). Updates health."""
        h = self.health
        if h.state is DeviceState.OFFLINE and time.monotonic() < h.next_try:
            return [None] * len(requests)
        out: list[list[int] | None] = []
        rejected: str | None = None
        async with self.link.lock:
            for i, req in enumerate(requests):
                try:
                    out.append(await self.link.read(req, self.cfg.device_id))
                except ReadRejected as exc:
                    out.append(None)
                    rejected = f"{req}: {exc}"
                except ReadFailed as exc:
                    out.extend([None] * (len(requests) - i))
                    self._offline(str(exc))
                    return out
        self._answered(rejected)
        return out

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

    def _answered(self, rejected: str | None) -> None:
        h = self.health
        if h.state is DeviceState.OFFLINE:
            log.info("device answering again", device=self.cfg.name, after_failures=h.failures)
        if rejected and h.error != rejected:
            log.warning("device rejects a request: check the register map", device=self.cfg.name,
                        error=rejected)
        h.failures, h.reported = 0, False
        h.state = DeviceState.DEGRADED if rejected else DeviceState.ONLINE
        h.error = rejected
