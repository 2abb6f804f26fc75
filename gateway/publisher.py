"""Publish from the outbox at QoS 1; delete a row only when its PUBACK arrives.

The MQTT connection is the shared client (``messaging.client``: paho on the asyncio loop, one
persistent MQTT 5 session with a fixed client id, birth and will); this module is the pump that
feeds it from the outbox within its in-flight window (``outbox.max_inflight``) and deletes each
row once the broker has acknowledged it.

A message handed over while the connection is down stays with the client and goes out after the
reconnect; after a restart everything still in the outbox is published again, oldest first.
Duplicates are allowed: the collector overwrites by sample time, command results are recorded
by command id. A message the broker refuses outright (an MQTT 5 failure reason code: not
authorised, quota) stays in the outbox and is offered again every ``REFUSED_RETRY_S``, logged
once, counted: someone must fix the broker's ACL, and nothing is dropped meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import structlog

from contract.config import GatewayConfig
from durable.queue import DiskQueue
from gateway.metrics import Histogram
from messaging.client import MqttClient, PublishRefused, Will

log = structlog.get_logger("heatwatch.gateway.publisher")

# seconds from handing a message to the client to its PUBACK: ~1 ms on a LAN, 0.1–1 s over
# 4G; a message handed over while the broker is away waits for the reconnect
PUBLISH_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BACKFILL_AFTER_S = 30.0  # a message older than this when published is marked backfill
REFUSED_RETRY_S = 30.0
_LIVE, _BACKFILL = b'"backfill":false', b'"backfill":true'


def mark_backfill(payload: bytes) -> bytes:
    # The envelope is serialised with "backfill" before "values", and a JSON string can never
    # contain an unescaped quote, so the first match is the envelope's own key.
    return payload.replace(_LIVE, _BACKFILL, 1)


class Publisher:
    def __init__(self, cfg: GatewayConfig, outbox: DiskQueue, *,
                 blocking: Callable[..., Any], birth: bytes, will: bytes, will_topic: str,
                 subscriptions: Sequence[tuple[str, int]] = ()) -> None:
        self.cfg, self.outbox, self._blocking = cfg, outbox, blocking
        self.client = MqttClient(cfg.mqtt, client_id=cfg.gateway, persistent=True,
                                 max_inflight=cfg.outbox.max_inflight, will=Will(will_topic, will),
                                 subscriptions=subscriptions)
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
            fut.add_done_callback(partial(self._done, row_id, time.monotonic()))
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

    def _done(self, row_id: int, handed_at: float, fut: asyncio.Future[None]) -> None:
        self._direct.discard(row_id)
        if fut.cancelled():
            return
        exc = fut.exception()
        if exc is None:
            self.latency.observe(time.monotonic() - handed_at)
            self._acked.append(row_id)
            self.acked += 1
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
                fut.add_done_callback(partial(self._done, row.id, handed_at))
                self.cursor = row.id
                self.published += 1
            if len(rows) == limit:
                self._wake.set()
