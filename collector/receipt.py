"""Ingest stage receipt: a durable batch → its gateways' receipts, QoS 1 (issue #16).

Takes a ``Batch`` from the acknowledge stage once its write is durable (InfluxDB answered 2xx or
refused the lines for good, or the spool's fsync returned) — the moment its PUBACKs go out — and
publishes ``contract.receipt`` receipts on ``heatwatch/v1/station/{station}/receipt``: one per
(station, gateway boot) per batch (split past ``MAX_RANGES`` ranges), listing exactly the seqs of
that batch's telemetry messages. The broker's PUBACK is not durability (mosquitto killed with -9
loses what it acknowledged since its last autosave); the receipt is, so a gateway keeps a row in
its outbox until one covers it.

What ``Batch.receipts`` holds (the batch stage fills it): every telemetry message stored, whole
or without refused readings (``Trimmed``), and every one rejected for a reason that can never
change (``Rejected.receipt``: re-sending it would be rejected again, forever). Never a message
that was lost or is not yet durable (it is in no durable batch), one from a station outside the
inventory (the station may be added) or of a schema version this collector does not read (it may
be upgraded). A message stamped ahead of our clock is stored re-stamped, and receipted.

In flight: at most ``room()`` receipts await the broker's PUBACK (the broker's Receive Maximum,
which MQTT 5 forbids exceeding); while the window is full, receipts wait here per (station,
gateway, boot) and merge, so a slow broker gets fewer, longer receipts rather than a queue. A
pending receipt goes out at the next batch or within ``RETRY_S``. Bounded: past
``MAX_PENDING`` (station, boot) pairs the oldest is dropped and counted (``receipts_dropped``):
its gateway re-sends those messages after its timeout, and they are stored (same timestamps:
overwritten) and receipted again. Each collector receipts what it stored: members of a shared
subscription receipt their own shares.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import structlog

from collector.metrics import Stats
from collector.stages import Batch
from contract.receipt import receipt_topic, receipts

log = structlog.get_logger("heatwatch.collector")

# (station, gateway, boot) pairs whose receipts may wait for room: a site's stations, twice over
MAX_PENDING = 100_000
RETRY_S = 0.2  # a pending receipt's next try when no batch comes

Publish = Callable[[list[tuple[str, bytes]]], int]  # (topic, payload) QoS 1 → how many were taken
Key = tuple[str, str, str]


class Receipts:
    def __init__(self, publish: Publish, room: Callable[[], int], stats: Stats) -> None:
        self.publish, self.room, self.stats = publish, room, stats
        self.pending: dict[Key, list[int]] = {}  # oldest first
        self._topics: dict[str, str] = {}
        self._waiting = False  # logged: receipts wait for room

    def __call__(self, b: Batch) -> None:
        """Take a durable batch's seqs; publish what the window has room for."""
        pending = self.pending
        for key, seqs in b.receipts.items():
            got = pending.get(key)
            if got is None:
                pending[key] = seqs
            else:
                got += seqs
        if len(pending) > MAX_PENDING:
            self._drop(len(pending) - MAX_PENDING)
        self.flush()

    def flush(self) -> None:
        pending, st = self.pending, self.stats
        room = self.room()
        out: list[tuple[str, bytes]] = []
        covered: list[int] = []  # messages each receipt covers
        while pending and room > 0:
            key = next(iter(pending))
            seqs = pending.pop(key)
            station, gateway, boot = key
            topic = self._topics.get(station)
            if topic is None:
                if len(self._topics) > MAX_PENDING:
                    self._topics.clear()
                topic = self._topics[station] = receipt_topic(station)
            for r in receipts(station, gateway, boot, seqs):
                out.append((topic, r.encode()))
                covered.append(sum([last - first + 1 for first, last in r.seqs]))
                room -= 1
        if out:
            taken = self.publish(out)  # one write for all of them
            st.receipts += taken
            st.receipted += sum(covered[:taken])
            st.receipts_dropped += len(out) - taken  # paho's own bound: their gateways re-send
        if pending and not self._waiting:
            log.warning("the broker acknowledges receipts slower than they come; they wait and merge",
                        waiting=len(pending))
        elif not pending and self._waiting:
            log.info("receipts flow again", dropped=st.receipts_dropped)
        self._waiting = bool(pending)

    def _drop(self, n: int) -> None:
        for key in list(self.pending)[:n]:
            del self.pending[key]
        self.stats.receipts_dropped += n
        log.error("receipts dropped: too many stations wait for the broker (their gateways re-send)",
                  dropped=n, total=self.stats.receipts_dropped)

    async def run(self) -> None:
        """Send what waited for room when no batch comes to do it."""
        while True:
            await asyncio.sleep(RETRY_S)
            if self.pending:
                self.flush()
