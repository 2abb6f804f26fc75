"""Ingest stage acknowledge: durable batches → PUBACKs and receipts, in batch order.

Takes (batch, its write) pairs in batch order from the write-or-spool stage and waits for each write
in turn, so a batch whose write finished early still waits for the batches before it: the PUBACKs go
out in the order the PUBLISHes came in (MQTT requires it). Beside the PUBACKs, the receipt stage
(``collector/receipt.py``) gets the batch: durable now, its gateways may let go. Then it gives the
batch's slot back to the write stage and observes the live samples' latency (sample time at the
gateway → durable here).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from collector.metrics import Histogram, Stats
from collector.stages import Batch
from collector.store import Written


class Acknowledge:
    def __init__(self, ack: Callable[[list[int]], None], stats: Stats, latency: Histogram,
                 clock: Callable[[], float], receipt: Callable[[Batch], None] | None = None) -> None:
        self.ack, self.stats, self.latency, self.clock = ack, stats, latency, clock
        self.receipt = receipt  # the receipt stage (collector/receipt.py)

    async def run(self, written: asyncio.Queue[Written], slots: asyncio.Semaphore) -> None:
        while True:
            b, task = await written.get()
            await task  # the batches before it are acknowledged already
            await self.done(b)
            slots.release()

    async def done(self, b: Batch) -> None:
        if b.mids:
            self.ack(b.mids)  # durable now: let the broker forget them, in arrival order
            self.stats.acked += len(b.mids)
        if b.receipts and self.receipt is not None:
            self.receipt(b)  # and the gateways their outbox rows
        if b.sample_ts:
            self.latency.observe_since(b.sample_ts, self.clock())
