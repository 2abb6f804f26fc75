"""Commands in → check → write → read back → result out (docs/control.md).

Takes the signed commands of this gateway's station from its persistent MQTT session
(``heatwatch/v1/station/{station}/command/+``), one at a time, and answers each on
``…/command-result/{id}`` through the durable outbox, so a result survives a broker outage and a
restart. A command is acknowledged to the broker only once its result is in the ledger and the
outbox.

For each command, in this order, refusing at the first doubt:

1. the ledger (SQLite, on disk): an id seen before is answered with its stored result and never
   written again; an id whose write started but never finished (the process died in between)
   gets ``failed: interrupted`` and its read-back, not a second write;
2. the payload, the signature (the control room's Ed25519 keys from ``control.public_keys``), the
   station, the deadline on this gateway's clock (``expired``: never written; the broker's
   MQTT 5 message expiry is the second line) and a command issued ahead of this clock by more
   than ``control.max_clock_skew_s`` (a clock running behind would let a late command through);
3. the point: in this gateway's own map with a ``write:`` block (whatever the API believed);
4. under the link's lock (other links keep polling; this bus waits one write and its reads):
   the device's ``local_mode`` point where its map has one, the present value, the bounds,
   the step from the present value and the minimum interval since this point's last write;
5. the write, encoded by the same codec as the reads (scale and offset inverted, word order,
   FC6/FC16 per point and device, coils by FC5, a bit by read-modify-write of its register),
   then the read-back, compared within the point's resolution: ``confirmed`` or ``mismatch``
   (the PLC holds its own value, or clamps); a Modbus exception is ``failed`` with its code, no
   answer ``failed: timeout``.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import structlog
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from contract import topics
from contract.codec import FLOATS, INTEGERS, DataType, encode
from contract.commands import (
    Bounds,
    Command,
    CommandResult,
    Reason,
    ResultState,
    SignatureError,
    bounds_problem,
    key_id,
    load_public_key,
    parse_signed_command,
    verify,
)
from contract.config import GatewayConfig, PointMap
from contract.errors import ConfigError, PayloadError, TopicError
from contract.payload import Quality, WritablePoint
from contract.points import Level
from durable.queue import DiskQueue
from gateway.decode import PointDecoder
from gateway.modbus import Device, ReadFailed, ReadRejected
from gateway.plan import Request
from messaging.client import Message, MqttClient

log = structlog.get_logger("heatwatch.gateway.commands")
KEEP_LEDGER_DAYS = 30  # far past any deadline plus the broker's expiry: no redelivery comes later

_SCHEMA = """
CREATE TABLE IF NOT EXISTS commands (
    id          TEXT PRIMARY KEY,
    received_ms INTEGER NOT NULL,
    result      BLOB             -- NULL: the write started and never finished
);
CREATE TABLE IF NOT EXISTS writes (
    target TEXT PRIMARY KEY,     -- device/point/building/household
    at_ms  INTEGER NOT NULL
);
"""

Target = tuple[str, str, str | None, str | None]  # device, point, building, household
T = TypeVar("T")

# The command path's disk calls (the ledger, the result's outbox row) run on threads of their own.
# On the process's shared to_thread pool they queued behind every station's telemetry commit: with
# 50 stations polled every 2 s the gateway's part of a command took p50 30 ms, p99 616 ms
# (bench/command_bench.py), most of it waiting for a worker.
_POOL: ThreadPoolExecutor | None = None


async def command_blocking(fn: Callable[..., T], *args: Any) -> T:
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=2, thread_name_prefix="commands")
    return await asyncio.get_running_loop().run_in_executor(_POOL, partial(fn, *args))


def _target_key(t: Target) -> str:
    return "/".join(x or "" for x in t)


class Ledger:
    """Every command id this gateway took, with its result, and each point's last write.
    WAL + synchronous=FULL like the outbox: a row whose call returned survives kill -9."""

    def __init__(self, path: str) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)

    def get(self, cid: str) -> tuple[bool, bytes | None] | None:
        """None: never seen; (True, None): started, not finished; (True, result): done."""
        with self._lock:
            row = self._db.execute("SELECT result FROM commands WHERE id = ?", (cid,)).fetchone()
        if row is None:
            return None
        return True, bytes(row[0]) if row[0] is not None else None

    def start(self, cid: str, now_ms: int) -> None:
        with self._lock:
            self._db.execute("INSERT OR IGNORE INTO commands (id, received_ms) VALUES (?, ?)", (cid, now_ms))

    def finish(self, cid: str, result: bytes, now_ms: int, wrote: Target | None) -> None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("INSERT INTO commands (id, received_ms, result) VALUES (?, ?, ?) "
                             "ON CONFLICT(id) DO UPDATE SET result = excluded.result", (cid, now_ms, result))
            if wrote is not None:
                self._db.execute("INSERT INTO writes (target, at_ms) VALUES (?, ?) "
                                 "ON CONFLICT(target) DO UPDATE SET at_ms = excluded.at_ms",
                                 (_target_key(wrote), now_ms))
            self._db.execute("COMMIT")

    def last_write(self, t: Target) -> int | None:
        with self._lock:
            row = self._db.execute("SELECT at_ms FROM writes WHERE target = ?", (_target_key(t),)).fetchone()
        return int(row[0]) if row else None

    def prune(self, before_ms: int) -> int:
        with self._lock:
            return int(self._db.execute("DELETE FROM commands WHERE received_ms < ? AND result IS NOT NULL",
                                        (before_ms,)).rowcount)

    def close(self) -> None:
        with self._lock:
            self._db.close()


def load_keys(paths: list[str], file: str = "gateway config") -> dict[str, Ed25519PublicKey]:
    """The control room's public keys by key id; a ConfigError names the unreadable one."""
    keys: dict[str, Ed25519PublicKey] = {}
    problems = []
    for i, path in enumerate(paths):
        where = f"control.public_keys.{i}"
        try:
            k = load_public_key(Path(path).read_bytes(), path)
        except OSError as exc:
            problems.append(f"{where}: cannot read {path}: {exc.strerror}")
            continue
        except ValueError as exc:
            problems.append(f"{where}: {exc}")
            continue
        keys[key_id(k)] = k
    if problems:
        raise ConfigError(file, problems)
    return keys


class _Refused(Exception):
    def __init__(self, state: ResultState, reason: Reason | None, detail: str,
                 code: int | None = None) -> None:
        super().__init__(detail)
        self.state, self.reason, self.detail, self.code = state, reason, detail, code


def _tolerance(p: PointMap, target: float) -> float:
    if p.write is not None and p.write.tolerance is not None:
        return p.write.tolerance
    if p.type in INTEGERS:
        return abs(p.scale) / 2 + 1e-9  # the register holds whole steps of `scale`
    if p.type is DataType.FLOAT32:
        return abs(target) * 2**-22 + abs(p.scale) * 1e-9  # float32 keeps 24 bits
    return abs(target) * 1e-12 + 1e-12


class CommandPath:
    def __init__(self, cfg: GatewayConfig, devices: list[Device], outbox: DiskQueue, *,
                 send: Callable[[int, str, bytes], None], blocking: Callable[..., Any] = command_blocking,
                 clock: Callable[[], float] = time.time, config_file: str = "gateway config") -> None:
        assert cfg.control is not None
        self.cfg, self.outbox, self._send_now, self._blocking, self.clock = cfg, outbox, send, blocking, clock
        self.keys = load_keys(cfg.control.public_keys, config_file)
        self.ledger = Ledger(cfg.control.ledger)
        self.targets: dict[Target, tuple[Device, PointMap]] = {}
        self.local: dict[str, PointMap] = {}  # device → its local_mode point
        for dev in devices:
            for p in dev.cfg.points:
                if p.write is not None:
                    self.targets[(dev.cfg.name, p.point, p.building, p.household)] = (dev, p)
                if p.point == "local_mode":
                    self.local[dev.cfg.name] = p
        self.devices = {d.cfg.name: d for d in devices}
        self.filter = f"{topics.ROOT}/station/{cfg.station}/command/+"
        self.counts: Counter[str] = Counter()  # results by state (and reason)

    def writable(self) -> list[WritablePoint]:
        out = []
        for (dev, _, _, _), (_, p) in self.targets.items():
            w = p.write
            assert w is not None
            is_bool = p.type in (DataType.BOOL, DataType.BIT)
            level = (Level.HOUSEHOLD if p.household else Level.BUILDING if p.building else Level.STATION)
            out.append(WritablePoint(device=dev, point=p.point, building=p.building, household=p.household,
                                     unit=p.unit or "", kind="bool" if is_bool else "number",
                                     min=w.min, max=w.max, max_step=w.max_step,
                                     min_interval_s=w.min_interval_s, station_wide=level is Level.STATION))
        return out

    def close(self) -> None:
        self.ledger.close()

    # -- the consumer ----------------------------------------------------------------------------
    async def run(self, client: MqttClient, messages: AsyncIterator[Message] | None = None) -> None:
        """Take commands one at a time (never two writes at once on one station) and acknowledge
        each once its result is durable. ``messages``: where they come from when the session's
        consumer is someone else (the gateway routes receipts apart); else the client's own."""
        async for msg in messages if messages is not None else client.messages():
            await self.take(msg)
            client.ack(msg)

    async def take(self, msg: Message) -> CommandResult | None:
        try:
            t = topics.parse_topic(msg.topic)
        except TopicError as exc:
            log.warning("message on the command subscription ignored", topic=msg.topic[:200], error=str(exc))
            return None
        if t.kind is not topics.TopicKind.COMMAND or t.subject != self.cfg.station or t.item is None:
            log.warning("message on the command subscription ignored", topic=msg.topic[:200])
            return None
        cid = t.item
        seen = await self._blocking(self.ledger.get, cid)
        if seen is not None and seen[1] is not None:
            self.counts["redelivered"] += 1
            log.info("command seen before: its result is sent again, nothing is written", command=cid)
            await self._send(cid, seen[1])
            return CommandResult.model_validate_json(seen[1])
        wrote: Target | None
        if seen is not None:  # the write started and the gateway stopped before its result
            result, wrote = await self._interrupted(cid, msg.payload)
        else:
            result, wrote = await self._execute(cid, msg.payload)
        body = result.to_json()
        now = int(self.clock() * 1000)
        await self._blocking(self.ledger.finish, cid, body, now, wrote)
        await self._send(cid, body)
        self.counts[result.state] += 1
        if result.reason is not None:
            self.counts[f"{result.state}:{result.reason}"] += 1
        (log.info if result.state == "confirmed" else log.warning)(
            "command", command=cid, state=result.state, reason=result.reason, detail=result.detail,
            point=result.point, building=result.building, value=result.value)
        return result

    async def _send(self, cid: str, body: bytes) -> None:
        topic = str(topics.Topic(topics.TopicKind.COMMAND_RESULT, self.cfg.station, cid))
        row_id = await self._blocking(self.outbox.append, topic, body)
        self._send_now(row_id, topic, body)  # durable now; an engineer waits for it

    def _result(self, cid: str, state: ResultState, cmd: Command | None, *, reason: Reason | None = None,
                detail: str = "", old: float | bool | None = None, read: float | bool | None = None,
                code: int | None = None) -> CommandResult:
        fields: dict[str, Any] = {}
        if cmd is not None:
            fields = dict(device=cmd.device, point=cmd.point, building=cmd.building,
                          household=cmd.household, value=cmd.value)
        return CommandResult(id=cid, station=self.cfg.station, gateway=self.cfg.gateway, state=state,
                             reason=reason, detail=detail[:500], old_value=old, read_back=read, code=code,
                             ts=int(self.clock() * 1000), **fields)

    def _check(self, cid: str, payload: bytes) -> Command:
        """Payload, signature, station, clock: raise _Refused, or return the command to run."""
        try:
            signed = parse_signed_command(payload)
        except PayloadError as exc:
            raise _Refused("rejected", Reason.BAD_PAYLOAD, str(exc)) from None
        cmd = signed.command
        if cmd.id != cid:
            raise _Refused("rejected", Reason.BAD_PAYLOAD,
                           f"command id {cmd.id!r} is not the topic's {cid!r}")
        try:
            verify(signed, self.keys)
        except SignatureError as exc:
            raise _Refused("rejected", Reason(exc.reason), str(exc)) from None
        if cmd.station != self.cfg.station:
            raise _Refused("rejected", Reason.WRONG_STATION,
                           f"for station {cmd.station}, this gateway serves {self.cfg.station}")
        now = int(self.clock() * 1000)
        if now > cmd.deadline:
            raise _Refused("expired", None, f"deadline passed {(now - cmd.deadline) / 1000:.1f} s before "
                                            "it could run; nothing written")
        assert self.cfg.control is not None
        ahead = cmd.issued_at - now
        if ahead > self.cfg.control.max_clock_skew_s * 1000:
            raise _Refused("rejected", Reason.CLOCK_SKEW,
                           f"issued {ahead / 1000:.0f} s ahead of this gateway's clock: one of the clocks "
                           "is wrong; nothing written")
        return cmd

    async def _execute(self, cid: str, payload: bytes) -> tuple[CommandResult, Target | None]:
        cmd: Command | None = None
        try:
            cmd = self._check(cid, payload)
            target: Target = (cmd.device, cmd.point, cmd.building, cmd.household)
            found = self.targets.get(target)
            if found is None:
                where = f"{cmd.point}" + (f" of building {cmd.building}" if cmd.building else "")
                raise _Refused("rejected", Reason.UNKNOWN_POINT,
                               f"device {cmd.device} has no writable point {where} in this gateway's map")
            dev, p = found
            return await self._write(cid, cmd, dev, p, target)
        except _Refused as r:
            return self._result(cid, r.state, cmd, reason=r.reason, detail=r.detail, code=r.code), None

    async def _write(self, cid: str, cmd: Command, dev: Device, p: PointMap,
                     target: Target) -> tuple[CommandResult, Target | None]:
        w = p.write
        assert w is not None
        last = await self._blocking(self.ledger.last_write, target)
        is_bool = p.type in (DataType.BOOL, DataType.BIT)
        async with dev.link.lock:
            local = self.local.get(dev.cfg.name)
            if local is not None:
                on = await self._read_value(dev, local, "local_mode")
                if on is not False:
                    raise _Refused("rejected", Reason.LOCAL_MODE,
                                   f"device {dev.cfg.name} is in local/manual mode; nothing written")
            old = await self._read_value(dev, p, "the present value")
            now = int(self.clock() * 1000)
            problem = bounds_problem(cmd.point, cmd.value, Bounds(min=w.min, max=w.max, max_step=w.max_step,
                                                                  min_interval_s=w.min_interval_s),
                                     is_bool=is_bool, current=old, last_write_ms=last, now_ms=now)
            if problem is None and w.max_step is not None and old is None:
                problem = (Reason.STEP, f"the present value of {cmd.point} is not readable; "
                                        "the step cannot be checked")
            if problem is not None:
                raise _Refused("rejected", problem[0], problem[1])
            if now > cmd.deadline:
                raise _Refused("expired", None, "deadline passed while checking; nothing written")
            await self._blocking(self.ledger.start, cid, now)
            try:
                words = await self._encode(dev, p, cmd.value)
                fc = (w.function or dev.cfg.write_single) if p.words == 1 else "fc16"
                await dev.link.write(p.table, p.wire_address(dev.cfg.addressing), words,
                                     dev.cfg.device_id, fc)
            except _Refused as r:
                r.detail = f"{r.detail}; old value {old}"
                raise
            except ReadRejected as exc:
                res = self._result(cid, "failed", cmd, reason=Reason.MODBUS_EXCEPTION, code=exc.code or None,
                                   detail=f"the device answered the write with Modbus exception {exc.code}",
                                   old=old)
                return res, None
            except ReadFailed as exc:
                res = self._result(cid, "failed", cmd, reason=Reason.TIMEOUT, old=old,
                                   detail=f"no answer to the write ({exc}); it may or may not have taken")
                return res, target
            try:
                read = await self._read_value(dev, p, "the read-back")
            except _Refused as r:
                return self._result(cid, "failed", cmd, reason=r.reason, code=r.code, old=old,
                                    detail=f"written (acknowledged), but {r.detail}"), target
        return self._compare(cid, cmd, p, old, read), target

    def _compare(self, cid: str, cmd: Command, p: PointMap, old: float | bool | None,
                 read: float | bool | None) -> CommandResult:
        if isinstance(cmd.value, bool):
            same = read is cmd.value
        else:
            tol = _tolerance(p, cmd.value)
            same = isinstance(read, float) and abs(read - cmd.value) <= tol
        if same:
            return self._result(cid, "confirmed", cmd, detail=f"read back {read}", old=old, read=read)
        return self._result(cid, "mismatch", cmd, old=old, read=read,
                            detail=f"wrote {cmd.value}, read back {read}: the device holds another value "
                                   "(local override or clamp)")

    async def _read_value(self, dev: Device, p: PointMap, what: str) -> float | bool | None:
        """One point read now (under the link's lock); None when the value is not a value."""
        wire = p.wire_address(dev.cfg.addressing)
        try:
            words = await dev.link.read(Request(p.table, wire, p.words, [(p, wire)]), dev.cfg.device_id)
        except ReadRejected as exc:
            raise _Refused("failed", Reason.MODBUS_EXCEPTION, f"reading {what} of {p.point}: Modbus "
                           f"exception {exc.code}", exc.code or None) from None
        except ReadFailed as exc:
            raise _Refused("failed", Reason.TIMEOUT, f"reading {what} of {p.point}: {exc}") from None
        r = PointDecoder(p)(words)
        if r.quality is Quality.BAD or isinstance(r.value, str):
            return None
        return r.value

    async def _encode(self, dev: Device, p: PointMap, value: float | bool) -> list[int]:
        """The words of the write, with the read codec's inverse (caller holds the link's lock)."""
        if p.type is DataType.BOOL:
            return [1 if value else 0]
        if p.type is DataType.BIT:  # read-modify-write of the register that holds the bit
            wire = p.wire_address(dev.cfg.addressing)
            try:
                reg = (await dev.link.read(Request(p.table, wire, 1, []), dev.cfg.device_id))[0]
            except ReadRejected as exc:
                raise _Refused("failed", Reason.MODBUS_EXCEPTION,
                               f"reading the register of bit {p.bit}: Modbus exception {exc.code}",
                               exc.code or None) from None
            except ReadFailed as exc:
                raise _Refused("failed", Reason.TIMEOUT,
                               f"reading the register of bit {p.bit}: {exc}") from None
            mask = 1 << (p.bit or 0)
            return [(reg | mask) if value else (reg & ~mask & 0xFFFF)]
        raw = (float(value) - p.offset) / p.scale
        order = p.order  # word order, or a 16-bit register's byte order
        if p.type in FLOATS:
            return encode(raw, p.type, order)
        return encode(round(raw), p.type, order)

    async def _interrupted(self, cid: str, payload: bytes) -> tuple[CommandResult, Target | None]:
        """A command whose write started before the gateway stopped: report, never write again.
        It may have taken, so it counts as this point's last write (the minimum interval)."""
        cmd: Command | None = None
        read: float | bool | None = None
        target: Target | None = None
        try:
            cmd = parse_signed_command(payload).command
            t = (cmd.device, cmd.point, cmd.building, cmd.household)
            found = self.targets.get(t)
            if found is not None:
                target = t
                dev, p = found
                async with dev.link.lock:
                    read = await self._read_value(dev, p, "the read-back")
        except (PayloadError, _Refused):
            pass
        return self._result(cid, "failed", cmd, reason=Reason.INTERRUPTED, read=read,
                            detail="the gateway stopped between the write and its result; not written "
                                   f"again; the point reads {read}"), target

    async def housekeeping(self) -> None:
        cutoff = int((self.clock() - KEEP_LEDGER_DAYS * 86400) * 1000)
        n = await self._blocking(self.ledger.prune, cutoff)
        if n:
            log.debug("old command ids pruned from the ledger", pruned=n)
