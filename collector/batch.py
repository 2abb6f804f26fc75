"""Ingest stage batch: deliveries → validate → taps → lines → batches for InfluxDB, in arrival order.

Takes deliveries and control items from the ``Inbox``; for each delivery calls the validate
stage, then every tap (the rule engine; whatever else wants validated messages), then the lines
stage, and adds the lines and the delivery's message id to the current batch. Emits a ``Batch``
on ``out`` (a bounded queue: when the writes fall behind, this stage waits, the inbox fills and the
receive stage stops reading) once it holds ``batch.max_lines`` lines or ``batch.max_bytes`` of
them, or is ``batch.max_delay_s`` old. ``Batch.receipts`` collects the (station, gateway, boot,
seq) of every telemetry message in it that is stored or rejected for good: the receipt stage
receipts them once the batch is durable. Every message, good or rejected, rides in the same
batches in arrival order, so the acknowledgements can go out in the order the messages came (MQTT
requires it).

A command result (``CommandResult``) rides in ``Batch.results`` too, and its batch goes out at
once, whatever its size or age: results are rare and an engineer waits for the answer.

Control items: ``StatsLines`` ride with the current batch; ``AlertsDue`` (the ticker found
transitions) takes the rule engine's pending transitions into it. Transitions a message caused
always ride in that message's batch, so they are recorded before its PUBACK goes out.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from collector.stages import AlertsDue, Batch, Inbox, Rejected, Trimmed, Validated
from contract.alerts import Transition
from contract.commands import CommandResult
from contract.config import BatchSettings
from contract.payload import Frame

# Deliveries handled between two looks at the event loop (the writes, the acknowledgements and
# the MQTT socket run in between): ~100 × ~0.1 ms for 200-value messages. Once a batch is open
# the stage sleeps until a chunk's worth is waiting or the batch is due, instead of waking for
# every message: the batch is written no sooner either way, and a wake-up per message costs a
# task switch and a timer. At 500 messages/s (bench, two alternating pairs) the collector's CPU
# per value went from 1.46 and 1.24 µs to 1.16 and 1.05 µs.
CHUNK = 100

Tap = Callable[[Validated, int], None]


class PendingAlerts(Protocol):
    pending: list[Transition]

    def take(self) -> tuple[list[Transition], list[str]]: ...


class Batcher:
    def __init__(self, cfg: BatchSettings, inbox: Inbox, out: asyncio.Queue[Batch], *,
                 validate: Callable[[str, bytes, int, int], Validated], taps: Sequence[Tap],
                 lines: Callable[[Validated], list[str]], alerts: PendingAlerts | None,
                 clock: Callable[[], float]) -> None:
        self.cfg, self.inbox, self.out = cfg, inbox, out
        self.validate, self.taps, self.lines, self.alerts, self.clock = validate, taps, lines, alerts, clock

    def handle(self, topic: str, payload: bytes, now_ms: int, b: Batch, size: int = -1) -> None:
        """One message through validate → taps → lines, into ``b``; what to receipt once durable."""
        item = self.validate(topic, payload, now_ms, size)
        for tap in self.taps:
            tap(item, now_ms)
        lines = self.lines(item)
        b.lines += lines
        b.bytes += sum(map(len, lines))
        if type(item) is Trimmed:
            item = item.frame  # stored without its refused readings: receipted like the rest
        if type(item) is Frame:
            if not item.backfill:
                b.sample_ts.append(item.ts)
            got = b.receipts.get(key := (item.station, item.gateway, item.boot))
            if got is None:
                b.receipts[key] = [item.seq]
            else:
                got.append(item.seq)
        elif type(item) is Rejected:
            if item.receipt is not None and item.station is not None:
                gateway, boot, seq = item.receipt
                b.receipts.setdefault((item.station, gateway, boot), []).append(seq)
        elif type(item) is CommandResult:
            b.results.append(item)

    @staticmethod
    def _take_alerts(alerts: PendingAlerts, b: Batch) -> None:
        trs, lines = alerts.take()
        b.transitions.extend(trs)
        b.lines.extend(lines)

    async def run(self) -> None:
        inbox, cfg, alerts = self.inbox, self.cfg, self.alerts
        max_lines, max_bytes, max_delay = cfg.max_lines, cfg.max_bytes, cfg.max_delay_s
        b = Batch()
        while True:
            if b.empty:  # the first delivery starts the batch's clock
                await inbox.wait(None)
                b.started = time.monotonic()
            else:  # then wake for a chunk's worth, or when the batch is due
                await inbox.wait(max(0.0, b.started + max_delay - time.monotonic()), CHUNK)
            while inbox.control:
                c = inbox.control.popleft()
                if isinstance(c, AlertsDue):
                    if alerts is not None and alerts.pending:
                        self._take_alerts(alerts, b)
                else:
                    b.lines.extend(c.lines)
            now_ms = int(self.clock() * 1000)
            for mid, topic, payload, size in inbox.take(CHUNK):
                self.handle(topic, payload, now_ms, b, size)
                if mid:
                    b.mids.append(mid)
                if alerts is not None and alerts.pending:  # with the batch of what caused them
                    self._take_alerts(alerts, b)
                # a result: an engineer waits for it
                if len(b.lines) >= max_lines or b.bytes >= max_bytes or b.results:
                    await self.out.put(b)
                    b = Batch(started=time.monotonic())
            if not b.empty and time.monotonic() >= b.started + max_delay:
                await self.out.put(b)
                b = Batch()
            elif len(inbox.deliveries) >= CHUNK:
                await asyncio.sleep(0)  # let the writes, acknowledgements and the socket in
