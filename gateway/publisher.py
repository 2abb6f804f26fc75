"""Publish from the outbox at QoS 1; delete a row once it is safe: receipted by the collector.

The MQTT connection is the shared client (``messaging.client``: paho on the asyncio loop, one
persistent MQTT 5 session with a fixed client id, birth and will); this module is the pump that
feeds it from the outbox within its in-flight window (``outbox.max_inflight``).

The broker's PUBACK is not durability: mosquitto killed with SIGKILL loses every message it
acknowledged since its last autosave (311 messages in one run, issue #16). So a telemetry row
stays in the outbox after its PUBACK until the collector, after its own durable write, receipts
its (boot, seq) on the station's receipt topic (contract/receipt.py; ``outbox.receipts``, on by
default). A row still unreceipted ``outbox.receipt_timeout_s`` after it went out is moved to the
outbox's tail and so sent again, but only once the collector has receipted a row sent after it:
a collector that is away or working through a backlog receipts nothing newer, and copies would
only lengthen the broker's queue for it. A message lost on the way (the broker killed, a queue
overflow) is exactly one whose successors get receipted. Redelivery is harmless: the collector
overwrites by sample time. The outbox bounds (bytes, age) hold as before: a row dropped by them
is counted, receipted or not. With receipts off, and for rows without a sequence number (command
results: recorded by command id, and a repeated command id is answered from the gateway's
ledger), the PUBACK deletes the row.

A receipt that cannot be one (not JSON, another station or gateway, a seq of this boot not yet
sent) is refused with a reason, counted, logged once per reason, and deletes nothing.

A message handed over while the connection is down stays with the client and goes out after the
reconnect; after a restart everything still in the outbox is published again, oldest first.
A message the broker refuses outright (an MQTT 5 failure reason code: not authorised, quota,
larger than its message_size_limit) stays in the outbox and is offered again every
``REFUSED_RETRY_S``, logged once, counted: someone must fix the broker's ACL, and nothing is
dropped meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import structlog

from contract.config import GatewayConfig
from contract.errors import PayloadError
from contract.receipt import parse_receipt, receipt_topic
from durable.queue import REQUEUE_CHUNK, DiskQueue
from gateway.metrics import Histogram
from messaging.client import Message, MqttClient, PublishRefused, Will

log = structlog.get_logger("heatwatch.gateway.publisher")

# seconds from handing a message to the client to its PUBACK: ~1 ms on a LAN, 0.1–1 s over
# 4G; a message handed over while the broker is away waits for the reconnect
PUBLISH_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BACKFILL_AFTER_S = 30.0  # a message older than this when published is marked backfill
REFUSED_RETRY_S = 30.0
MARK_EVERY_S = 1.0  # how finely hand-over times are remembered (a deque of ~timeout marks)
_LIVE, _BACKFILL = b'"backfill":false', b'"backfill":true'


def mark_backfill(payload: bytes) -> bytes:
    # The envelope is serialised with "backfill" before "values", and a JSON string can never
    # contain an unescaped quote, so the first match is the envelope's own key.
    return payload.replace(_LIVE, _BACKFILL, 1)


class Publisher:
    def __init__(self, cfg: GatewayConfig, outbox: DiskQueue, *,
                 blocking: Callable[..., Any], birth: bytes, will: bytes, will_topic: str,
                 subscriptions: Sequence[tuple[str, int]] = (), boot: str = "") -> None:
        """``boot``: the gateway's current boot (a receipt for a seq of it not yet sent is refused)."""
        self.cfg, self.outbox, self._blocking, self.boot = cfg, outbox, blocking, boot
        self.receipts = cfg.outbox.receipts
        self.receipt_topic = receipt_topic(cfg.station)
        subs = [*subscriptions, (self.receipt_topic, 1)] if self.receipts else list(subscriptions)
        self.client = MqttClient(cfg.mqtt, client_id=cfg.gateway, persistent=True,
                                 max_inflight=cfg.outbox.max_inflight, will=Will(will_topic, will),
                                 subscriptions=subs)
        self.client.publish_retained(will_topic, birth)
        self.client.on_change(self._changed)
        self.cursor = 0  # highest row id handed to the client
        self._acked: list[int] = []
        self._wake = asyncio.Event()
        self._rewind: tuple[float, int] | None = None  # (when, row id to go back before)
        self._direct: set[int] = set()  # rows handed over by publish_now, not yet acknowledged
        self._refused_logged = False
        self.published = self.acked = self.backfilled = self.refused = 0
        self.latency = Histogram(PUBLISH_BUCKETS_S)
        # receipts
        self.timeout = cfg.outbox.receipt_timeout_s
        self._marks: deque[tuple[float, int]] = deque()  # (monotonic time, cursor then), oldest first
        self._cut = 0  # rows up to this id went out at least ``timeout`` ago
        self.receipted_top = 0  # the highest row id a receipt deleted (this process)
        self._swept = 0  # rows up to this id have been requeued or receipted
        self._next_sweep = 0.0
        self.sent_seq = -1  # the highest seq of this boot handed to the client
        self._last_receipt: float | None = None
        self._silence_logged = False
        self.receipts_received = self.rows_receipted = self.resent = 0
        self.receipts_refused: Counter[str] = Counter()  # by reason

    @property
    def connected(self) -> bool:
        return self.client.connected

    def _changed(self, up: bool) -> None:
        if not up:
            log.warning("keeping data in the outbox until the broker is back", station=self.cfg.station,
                        backlog=self.outbox.count)
        self._wake.set()

    def notify(self) -> None:
        """Something was appended to the outbox."""
        self._wake.set()

    def publish_now(self, row_id: int, topic: str, payload: bytes) -> None:
        """A row just appended that someone waits for (a command's result): hand it to the client
        at once instead of when the pump next reads the outbox; the pump skips it, and it is
        deleted on its PUBACK like any row (or published again after a restart)."""
        if row_id <= self.cursor:
            return  # the pump has read it from the outbox and handed it over already
        if self.client.connected and self.client.room > 0:
            self._direct.add(row_id)
            fut = self.client.publish_nowait(topic, payload)
            fut.add_done_callback(partial(self._done, row_id, time.monotonic(), False))
            self.published += 1
        else:
            self._wake.set()

    def publish_retained(self, topic: str, payload: bytes) -> None:
        """Retained status: the latest value only, re-sent at every (re)connect."""
        self.client.publish_retained(topic, payload)

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self.client.run())
            tg.create_task(self._pump())

    def _done(self, row_id: int, handed_at: float, tracked: bool, fut: asyncio.Future[None]) -> None:
        self._direct.discard(row_id)
        if fut.cancelled():
            return
        exc = fut.exception()
        if exc is None:
            self.latency.observe(time.monotonic() - handed_at)
            self.acked += 1
            if not (tracked and self.receipts):  # else it waits for its receipt
                self._acked.append(row_id)
                self._wake.set()
        elif isinstance(exc, PublishRefused):
            self.refused += 1
            if not self._refused_logged:
                log.error("the broker refuses a message; it stays in the outbox and is offered again",
                          topic=exc.topic, reason=exc.reason, retry_s=REFUSED_RETRY_S)
                self._refused_logged = True
            when = time.monotonic() + REFUSED_RETRY_S
            self._rewind = (when, min(row_id, self._rewind[1]) if self._rewind else row_id)
        # else: the client stopped; the row stays in the outbox for the next start

    async def _pump(self) -> None:
        client = self.client
        while True:
            # asyncio.timeout, not wait_for: Python 3.11's wait_for returns the inner result when
            # a cancellation arrives just as the inner wait completes, swallowing the cancellation;
            # this loop then ran on and Ctrl-C left the gateway hanging (1 stop in ~40 hung here)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await self._wake.wait()
            self._wake.clear()
            if self._acked:
                done, self._acked = self._acked, []
                await self._blocking(self.outbox.delete, done)
            if self._rewind is not None and time.monotonic() >= self._rewind[0]:
                self.cursor = min(self.cursor, self._rewind[1] - 1)
                self._rewind = None
            if self.receipts:
                await self._sweep(time.monotonic())
            if not client.connected:
                continue
            room = client.room
            if room <= 0:
                continue
            limit = min(room, 500)
            rows = await self._blocking(self.outbox.fetch_after, self.cursor, limit)
            now_ms = time.time() * 1000
            handed_at = time.monotonic()
            for row in rows:
                if row.id in self._direct:  # already with the client (publish_now)
                    self.cursor = row.id
                    continue
                payload = row.payload
                if now_ms - row.created_ms > BACKFILL_AFTER_S * 1000:
                    payload = mark_backfill(payload)
                    self.backfilled += 1
                fut = client.publish_nowait(row.key, payload)
                fut.add_done_callback(partial(self._done, row.id, handed_at, row.boot is not None))
                self.cursor = row.id
                self.published += 1
                if row.boot == self.boot and row.seq is not None and row.seq > self.sent_seq:
                    self.sent_seq = row.seq
            if rows and self.receipts:  # (the marks are popped by the sweep, which runs with receipts)
                self._mark(handed_at)
            if len(rows) == limit:
                self._wake.set()

    # -- receipts --------------------------------------------------------------------------------
    def _mark(self, now: float) -> None:
        """Remember that rows up to the cursor had gone out by ``now`` (one mark a second)."""
        if self._marks and now - self._marks[-1][0] < MARK_EVERY_S:
            self._marks[-1] = (self._marks[-1][0], self.cursor)
        else:
            self._marks.append((now, self.cursor))

    async def _sweep(self, now: float) -> None:
        """Send again what stayed unreceipted past the timeout while the collector receipted a
        row sent after it: move those rows to the outbox's tail, where the pump finds them."""
        while self._marks and self._marks[0][0] <= now - self.timeout:
            self._cut = self._marks.popleft()[1]
        if now < self._next_sweep:
            return
        # a look every few seconds: a lost row goes again within timeout + this
        self._next_sweep = now + min(5.0, self.timeout / 4)
        due = min(self._cut, self.receipted_top)
        if due > self._swept:
            moved = 0
            while True:
                n = await self._blocking(self.outbox.requeue, due)
                moved += n
                if n < REQUEUE_CHUNK:
                    break
            self._swept = due
            if moved:
                self.resent += moved
                log.warning("messages unreceipted past the timeout are sent again", station=self.cfg.station,
                            messages=moved, timeout_s=self.timeout, total_resent=self.resent)
                self._wake.set()
        quiet_since = self._last_receipt
        if (not self._silence_logged and self._cut > self.receipted_top
                and (quiet_since is None or now - quiet_since > self.timeout)
                and await self._blocking(self.outbox.count_tracked, self._cut)):
            self._silence_logged = True
            log.warning("no receipt from the collector for the receipt timeout: messages stay in the "
                        "outbox (bounded by outbox.max_bytes and max_age_h) until it receipts them; a "
                        "site whose collector sends no receipts sets outbox.receipts: false",
                        station=self.cfg.station, timeout_s=self.timeout, topic=self.receipt_topic)

    def unreceipted(self) -> int:
        """Rows handed to the broker and not receipted yet (blocking: one count; for a scrape)."""
        return self.outbox.count_tracked(self.cursor) if self.receipts else 0

    async def take_receipt(self, msg: Message) -> int:
        """Delete the rows a receipt covers; return how many. A bad receipt deletes nothing."""
        self.receipts_received += 1
        try:
            r = parse_receipt(msg.payload)
        except PayloadError as exc:
            return self._refuse("bad_payload", str(exc))
        if msg.topic != self.receipt_topic or r.station != self.cfg.station:
            return self._refuse("wrong_station", f"a receipt for station {r.station} on {msg.topic}; "
                                                 f"this gateway serves {self.cfg.station}")
        if r.gateway != self.cfg.gateway:
            return self._refuse("wrong_gateway",
                                f"a receipt for gateway {r.gateway}; this is {self.cfg.gateway}")
        if r.boot == self.boot and r.seqs[-1][1] > self.sent_seq:
            return self._refuse("ahead", f"receipts seq {r.seqs[-1][1]} of this boot; the highest sent is "
                                         f"{self.sent_seq}")
        ids = await self._blocking(self.outbox.receipted, r.boot, r.seqs)
        self.rows_receipted += len(ids)
        if ids:
            self.receipted_top = max(self.receipted_top, max(ids))
        if self._silence_logged:
            log.info("receipts from the collector again", station=self.cfg.station)
            self._silence_logged = False
        self._last_receipt = time.monotonic()
        return len(ids)

    def _refuse(self, reason: str, detail: str) -> int:
        self.receipts_refused[reason] += 1
        if self.receipts_refused[reason] == 1:
            log.error("receipt refused: nothing deleted", station=self.cfg.station, reason=reason,
                      detail=detail[:300])
        return 0
