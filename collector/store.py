"""Ingest stage write or spool: a batch's lines → durable (InfluxDB, or the on-disk spool).

Takes batches from the batch stage and starts up to ``batch.concurrency`` writes at once (each
write waits out InfluxDB's WAL fsync; with one at a time the collector idles through it), and
hands each batch with its write, in batch order, to the acknowledge stage. ``slots`` bounds what
is between the two: a slot is taken when a write starts and given back by the acknowledge stage
once that batch is acknowledged, so at most ``concurrency`` batches are written or waiting for
their PUBACKs, and the next batch waits for a slot.

Durable means one of two things: InfluxDB answered 204 (or refused the lines for good, which is
counted), or the batch is in the spool (``durable.queue.DiskQueue``, fsync'd). A write that keeps
failing for ``spool.after_s`` switches to spooling, so an InfluxDB outage does not stop
consumption and the broker's queue does not grow; ``drain`` writes the spool back oldest first as
soon as InfluxDB answers, while live batches go straight to InfluxDB again. With the spool itself
broken (disk full) a write never gives up: the messages stay unacknowledged at the broker.
"""

from __future__ import annotations

import asyncio
import sqlite3

import structlog

from collector.influx import BACKOFF_MIN_S, InfluxWriter, WriteOutcome
from collector.metrics import Stats
from collector.stages import Batch
from contract.config import SpoolSettings
from contract.errors import CannotOpen, DatabaseUnavailable
from durable.queue import DiskQueue, QueueUnavailable, oldest

log = structlog.get_logger("heatwatch.collector")
DRAIN_RETRY_MAX_S = 5.0

Written = tuple[Batch, "asyncio.Task[None]"]  # a batch and the write that makes it durable


class WriteOrSpool:
    def __init__(self, cfg: SpoolSettings, writer: InfluxWriter, stats: Stats) -> None:
        self.cfg, self.writer, self.stats = cfg, writer, stats
        try:
            self.spool = DiskQueue(cfg.path, max_bytes=cfg.max_bytes, max_age_s=cfg.max_age_h * 3600)
        except QueueUnavailable as exc:  # one line at start-up, naming the setting that moves it
            raise CannotOpen("collector spool", exc.path, exc.reason, "spool.path") from None
        self.spooling = False  # InfluxDB is failing: batches go to the spool
        self._wake = asyncio.Event()
        self._broken = False

    async def run(self, batches: asyncio.Queue[Batch], written: asyncio.Queue[Written],
                  slots: asyncio.Semaphore, tg: asyncio.TaskGroup) -> None:
        """Start a write per batch once a slot is free; pass it on in batch order."""
        while True:
            b = await batches.get()
            await slots.acquire()
            written.put_nowait((b, tg.create_task(self.store(b.lines))))  # ≤ slots long

    async def store(self, lines: list[str]) -> None:
        """Return once the lines are in InfluxDB (or refused by it for good) or in the spool."""
        if not lines:
            return
        st = self.stats
        if not self.spooling:
            try:
                out = await self.writer.write(lines, give_up_after_s=self.cfg.after_s)
            except DatabaseUnavailable as exc:
                self.spooling = True
                log.warning("InfluxDB unavailable; spooling batches to disk", error=str(exc),
                            spool=self.cfg.path)
            else:
                self.count(out)
                return
        if not self._broken:
            try:
                # always gzip'd on disk (~5× smaller); InfluxDB takes gzip bodies as they are
                body = self.writer.encode(lines, gzipped=True)
                dropped = self.spool.dropped
                await asyncio.to_thread(self.spool.append, str(len(lines)), body)
                st.spooled += len(lines)
                if self.spool.dropped > dropped:
                    log.error("spool full: oldest batches dropped", dropped=self.spool.dropped - dropped,
                              total_dropped=self.spool.dropped, max_bytes=self.cfg.max_bytes)
                self._wake.set()
                return
            except sqlite3.Error as exc:  # disk full, broken file: the broker keeps the data instead
                self._broken = True
                log.error("spool unusable; holding messages unacknowledged until InfluxDB is back",
                          error=str(exc), spool=self.cfg.path)
        out = await self.writer.write(lines)  # never gives up: backpressure to the broker
        self.count(out)
        self.spooling = False

    def count(self, out: WriteOutcome) -> None:
        st = self.stats
        st.written += out.written
        st.write_rejected += out.rejected
        st.influx_rejects.update(out.rejects)

    async def drain(self) -> None:
        """Write the spool back to InfluxDB, oldest batch first, deleting each once written."""
        delay = BACKOFF_MIN_S
        st = self.stats
        while True:
            row = await oldest(self.spool, self._wake)
            try:
                out = await self.writer.write_body(row.payload, int(row.key), True)
            except DatabaseUnavailable:
                await asyncio.sleep(delay)
                delay = min(delay * 2, DRAIN_RETRY_MAX_S)  # short: draining is what ends spooling
                continue
            if delay > BACKOFF_MIN_S or self.spooling:
                log.info("InfluxDB takes writes again; draining the spool", rows=self.spool.count)
            delay = BACKOFF_MIN_S
            self.spooling = False  # live batches go straight to InfluxDB again
            await asyncio.to_thread(self.spool.delete, [row.id])
            self.writer.report(out)
            st.drained += out.written
            self.count(out)
            if not self.spool.count:
                log.info("spool drained", drained=st.drained)

    async def expire(self) -> None:
        """Drop spooled batches past ``spool.max_age_h`` (counted as dropped, logged)."""
        if self.spool.count:
            n = await asyncio.to_thread(self.spool.expire)
            if n:
                log.error("spooled batches older than spool.max_age_h dropped", dropped=n)
