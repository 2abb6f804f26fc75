"""Wiring of the gateway: one task per poll group, the publisher, remote commands
(gateway/commands.py, with a ``control:`` block), and housekeeping.

Every cycle of a poll group reads all devices concurrently (devices behind one link take
turns), decodes each point with its quality, keeps what a report-by-exception group sends
(gateway/report.py), and appends one telemetry message to the outbox stamped with the cycle's
sample time. Only then is the publisher woken.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from functools import partial
from typing import Any, Literal, TypeVar

import orjson
import structlog

from contract import topics
from contract.config import GatewayConfig
from contract.errors import CannotOpen
from contract.payload import DeviceState, DeviceStatus, GatewayStatus, Reading, StationStatus, Telemetry
from durable.queue import DiskQueue, QueueUnavailable
from gateway import watchdog
from gateway.commands import CommandPath
from gateway.modbus import Answer, Device, Link
from gateway.plan import plan_requests
from gateway.publisher import Publisher
from gateway.report import ExceptionFilter
from messaging.client import Message

log = structlog.get_logger("heatwatch.gateway")
T = TypeVar("T")


async def blocking(fn: Callable[..., T], *args: Any) -> T:
    """The one way gateway code runs blocking I/O (SQLite) off the event loop."""
    return await asyncio.to_thread(fn, *args)


async def _queued(q: asyncio.Queue[Message]) -> AsyncIterator[Message]:
    while True:
        yield await q.get()


def decode_answers(answers: list[Answer]) -> list[Reading]:
    out: list[Reading] = []
    for req, ws in answers:
        if ws is None:
            out.extend(d.bad for _, _, d in req.decoders)
        else:
            out.extend(d(ws[off : off + n]) for off, n, d in req.decoders)
    return out


class Gateway:
    def __init__(self, cfg: GatewayConfig) -> None:
        self.cfg = cfg
        self.boot = uuid.uuid4().hex
        self.seq = 0
        self._appending = asyncio.Lock()
        try:
            self.outbox = DiskQueue(cfg.outbox.path, max_bytes=cfg.outbox.max_bytes,
                                     max_age_s=cfg.outbox.max_age_h * 3600)
        except QueueUnavailable as exc:
            raise CannotOpen("gateway outbox", exc.path, exc.reason, "outbox.path") from None
        links: dict[tuple[str, ...], Link] = {}
        self.devices: list[Device] = []
        for d in cfg.resolved:
            link = links.get(d.link)
            if link is None:
                link = links[d.link] = Link(d)
            self.devices.append(Device(d, link))
        self.links = list(links.values())
        for dev in self.devices:
            dev.plans = {g: plan_requests(dev.cfg, g) for g in cfg.poll_groups}
        self.filters = {g: ExceptionFilter((p for d in cfg.resolved for p in d.points if p.group == g),
                                           pg.max_silence_s)
                        for g, pg in cfg.poll_groups.items() if pg.by_exception}
        self.topic = str(topics.telemetry(cfg.station))
        self.status_topic = str(topics.station_status(cfg.station))
        self.gw_topic = str(topics.gateway_status(cfg.gateway))
        self._last_status: bytes | None = None
        self.messages = 0
        self.cycles: dict[str, int] = dict.fromkeys(cfg.poll_groups, 0)  # finished, per poll group
        self.publisher: Publisher | None = None
        # remote commands (a bad key file fails here, at start-up)
        self.commands = (CommandPath(cfg, self.devices, self.outbox, send=self._send_now)
                         if cfg.control is not None else None)

    def _send_now(self, row_id: int, topic: str, payload: bytes) -> None:
        if self.publisher is not None:
            self.publisher.publish_now(row_id, topic, payload)

    def _gateway_status(self, state: Literal["online", "offline"]) -> bytes:
        return GatewayStatus(schema_=1, gateway=self.cfg.gateway, state=state,
                             boot=self.boot, stations=[self.cfg.station],
                             ts=int(time.time() * 1000),
                             writable=self.commands.writable() if self.commands else [],
                             custom={p.point: p.value_kind for d in self.cfg.resolved for p in d.points
                                     if p.definition is None},
                             ).model_dump_json(by_alias=True).encode()

    async def run(self) -> None:
        structlog.contextvars.bind_contextvars(station=self.cfg.station)  # this task and its children
        log.info("gateway starting", gateway=self.cfg.gateway, station=self.cfg.station,
                 boot=self.boot, backlog=self.outbox.count,
                 requests={g: sum(len(d.plans[g]) for d in self.devices) for g in self.cfg.poll_groups})
        subs = [(self.commands.filter, 1)] if self.commands is not None else []
        self.publisher = Publisher(self.cfg, self.outbox, blocking=blocking,
                                   birth=self._gateway_status("online"),
                                   will=self._gateway_status("offline"), will_topic=self.gw_topic,
                                   subscriptions=subs, boot=self.boot)
        commands_in: asyncio.Queue[Message] = asyncio.Queue()  # bounded by the session's Receive Maximum
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self.publisher.run())
                tg.create_task(self._receive(commands_in))
                if self.commands is not None:
                    tg.create_task(self.commands.run(self.publisher.client, _queued(commands_in)))
                for group, pg in self.cfg.poll_groups.items():
                    if any(d.plans[group] for d in self.devices):
                        tg.create_task(self._poll_loop(group, pg.interval_s))
                tg.create_task(self._housekeeping())
        finally:
            for link in self.links:
                link.close()
            self.outbox.close()
            if self.commands is not None:
                self.commands.close()

    async def _receive(self, commands_in: asyncio.Queue[Message]) -> None:
        """The session's one consumer: receipts are taken here (a quick delete), commands queued
        for the command path, which takes them one at a time (a write can take seconds)."""
        assert self.publisher is not None
        client = self.publisher.client
        async for msg in client.messages():
            if msg.topic == self.publisher.receipt_topic:
                await self.publisher.take_receipt(msg)
                client.ack(msg)
            elif self.commands is not None:
                commands_in.put_nowait(msg)
            else:
                log.warning("message on no subscription of this gateway ignored", topic=msg.topic[:200])
                client.ack(msg)

    async def _poll_loop(self, group: str, interval: float) -> None:
        next_t = time.monotonic()
        while True:
            await self.poll_once(group)
            watchdog.beat(f"{self.cfg.station}/{group}", interval)  # systemd's WatchdogSec
            next_t += interval
            now = time.monotonic()
            if next_t < now:  # a slow cycle: skip the missed ones rather than bunch up
                next_t = now + interval - ((now - next_t) % interval)
            await asyncio.sleep(next_t - now)

    async def poll_once(self, group: str) -> Telemetry:
        ts = int(time.time() * 1000)
        answers = await asyncio.gather(*(d.read_group(group) for d in self.devices))
        readings: list[Reading] = []
        for a in answers:
            readings.extend(decode_answers(a))
        by_exception = self.filters.get(group)
        heartbeat: float | None = None
        if by_exception is not None:
            readings = by_exception.select(readings, ts)
            heartbeat = self.cfg.poll_groups[group].max_silence_s
        # seq and the outbox row under one lock: two poll groups appending at once (each in its own
        # worker thread) could otherwise commit 11 before 10, and the rows go out in row order; a
        # consumer counting on 0, 1, 2 … (the alerter's latest values) would see a gap that is none
        async with self._appending:
            msg = Telemetry(schema_=1, station=self.cfg.station, gateway=self.cfg.gateway, boot=self.boot,
                            seq=self.seq, ts=ts, heartbeat_s=heartbeat, values=readings)
            self.seq += 1
            # boot and seq: how the collector's receipt names this row, also after a restart
            await blocking(partial(self.outbox.append, boot=self.boot, seq=msg.seq), self.topic,
                           msg.to_json(), ts)
        if by_exception is not None:
            by_exception.sent_at(readings, ts)
        self.messages += 1
        self.cycles[group] = self.cycles.get(group, 0) + 1
        if self.publisher is not None:
            self.publisher.notify()
            self._publish_status(ts)
        return msg

    def refused_readings(self) -> dict[str, int]:
        """Readings published as bad instead of a value that must not go out, by reason
        (gateway/decode.py: ``inexact``, ``kind``). Read by the metrics scrape."""
        out: dict[str, int] = {}
        for dev in self.devices:
            for plan in list(dev.plans.values()):
                for req in plan:
                    for dec in req.built():
                        for reason, n in list(dec.refused.items()):
                            out[reason] = out.get(reason, 0) + n
        return out

    def station_status(self, ts: int) -> StationStatus:
        """The station's state from its devices' health, as published on the status topic."""
        devs = {d.cfg.name: DeviceStatus(state=d.health.state, error=d.health.error) for d in self.devices}
        states = {s.state for s in devs.values()}
        state = (DeviceState.ONLINE if states == {DeviceState.ONLINE} else
                 DeviceState.OFFLINE if states == {DeviceState.OFFLINE} else DeviceState.DEGRADED)
        return StationStatus(schema_=1, station=self.cfg.station, gateway=self.cfg.gateway,
                             state=state, devices=devs, ts=ts)

    def _publish_status(self, ts: int) -> None:
        status = self.station_status(ts)
        body = orjson.dumps({"state": status.state,
                             "devices": {k: v.model_dump() for k, v in status.devices.items()}})
        if body == self._last_status:
            return  # retained: publish changes only
        self._last_status = body
        assert self.publisher is not None
        self.publisher.publish_retained(self.status_topic, status.model_dump_json(by_alias=True).encode())

    async def _housekeeping(self) -> None:
        while True:
            await asyncio.sleep(60)
            n = await blocking(self.outbox.expire)
            if n:
                log.warning("outbox messages expired unsent", dropped=n, total_dropped=self.outbox.dropped)
            if self.commands is not None:
                await self.commands.housekeeping()
