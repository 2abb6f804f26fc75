"""Publish from the outbox at QoS 1; delete a row only when its PUBACK arrives.

paho-mqtt runs its network loop in its own thread; its callbacks are bridged into the asyncio
loop with ``call_soon_threadsafe``, so the map of in-flight message ids to outbox rows is only
ever touched on the event loop. The in-flight window is ours (``outbox.max_inflight``), far
below paho's 65,535 message-id wrap, where paho silently overwrites QoS 1 messages.

After a reconnect paho re-sends what was in flight (persistent session, fixed client id); after
a restart everything still in the outbox is published again, oldest first. Duplicates are
allowed: the collector overwrites by sample time.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
import structlog
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from contract.config import GatewayConfig
from durable.queue import DiskQueue

log = structlog.get_logger("heatwatch.gateway.publisher")

BACKFILL_AFTER_S = 30.0  # a message older than this when published is marked backfill
_LIVE, _BACKFILL = b'"backfill":false', b'"backfill":true'


def mark_backfill(payload: bytes) -> bytes:
    # The envelope is serialised with "backfill" before "values", and a JSON string can never
    # contain an unescaped quote, so the first match is the envelope's own key.
    return payload.replace(_LIVE, _BACKFILL, 1)


class Publisher:
    def __init__(self, cfg: GatewayConfig, outbox: DiskQueue, *,
                 blocking: Callable[..., Any], birth: bytes, will: bytes, will_topic: str) -> None:
        self.cfg, self.outbox, self._blocking = cfg, outbox, blocking
        self.loop = asyncio.get_running_loop()
        self.max_inflight = cfg.outbox.max_inflight
        self.inflight: dict[int, int] = {}  # mid → outbox row id
        self.cursor = 0  # highest row id handed to paho
        self._acked: list[int] = []
        self._wake = asyncio.Event()
        self.connected = False
        self._ever_failed = False
        self.published = self.acked = self.backfilled = 0
        self.retained: dict[str, bytes] = {will_topic: birth}
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=cfg.gateway, clean_session=False,
                        protocol=mqtt.MQTTv311)
        if cfg.mqtt.username:
            pw = cfg.mqtt.password.get_secret_value() if cfg.mqtt.password else None
            c.username_pw_set(cfg.mqtt.username, pw)
        c.will_set(will_topic, will, qos=1, retain=True)
        c.max_inflight_messages_set(self.max_inflight + 20)  # + room for retained status
        c.reconnect_delay_set(min_delay=1, max_delay=30)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_publish = self._on_publish
        self.client = c

    # -- paho thread → loop --------------------------------------------------------------------
    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        if rc.is_failure:
            self.loop.call_soon_threadsafe(self._connect_failed, str(rc))
            return
        self.loop.call_soon_threadsafe(self._set_connected, True)

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        self.loop.call_soon_threadsafe(self._set_connected, False)

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, rc: Any, props: Any) -> None:
        self.loop.call_soon_threadsafe(self._ack, mid)

    # -- on the loop ---------------------------------------------------------------------------
    def _connect_failed(self, why: str) -> None:
        if not self._ever_failed:
            log.warning("broker refused the connection", reason=why, station=self.cfg.station)
        self._ever_failed = True

    def _set_connected(self, up: bool) -> None:
        if up:  # the retained topics are re-sent here, on the loop, where publish_retained runs:
            # sent from paho's thread, a status added between its connect and this call was lost
            for topic, payload in self.retained.items():
                self.client.publish(topic, payload, qos=1, retain=True)
        if up and not self.connected:
            (log.info if self._ever_failed else log.debug)("broker connected", station=self.cfg.station)
        elif not up and self.connected:
            log.warning("broker connection lost; keeping data in the outbox", station=self.cfg.station,
                        backlog=self.outbox.count)
            self._ever_failed = True
        self.connected = up
        self._wake.set()

    def _ack(self, mid: int) -> None:
        row_id = self.inflight.pop(mid, None)
        if row_id is not None:
            self._acked.append(row_id)
            self.acked += 1
            self._wake.set()

    def notify(self) -> None:
        """Something was appended to the outbox."""
        self._wake.set()

    def publish_retained(self, topic: str, payload: bytes) -> None:
        """Retained status: the latest value only, re-sent at every (re)connect."""
        self.retained[topic] = payload
        if self.connected:
            self.client.publish(topic, payload, qos=1, retain=True)

    async def run(self) -> None:
        self.client.connect_async(self.cfg.mqtt.host, self.cfg.mqtt.port, self.cfg.mqtt.keepalive_s)
        self.client.loop_start()
        try:
            await self._pump()
        finally:
            self.client.disconnect()
            self.client.loop_stop()

    async def _pump(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=1.0)
            self._wake.clear()
            if self._acked:
                done, self._acked = self._acked, []
                await self._blocking(self.outbox.delete, done)
            if not self.connected:
                continue
            room = self.max_inflight - len(self.inflight)
            if room <= 0:
                continue
            limit = min(room, 500)
            rows = await self._blocking(self.outbox.fetch_after, self.cursor, limit)
            now_ms = time.time() * 1000
            for row in rows:
                payload = row.payload
                if now_ms - row.created_ms > BACKFILL_AFTER_S * 1000:
                    payload = mark_backfill(payload)
                    self.backfilled += 1
                info = self.client.publish(row.key, payload, qos=1)
                if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
                    break  # e.g. queue full: retry this row on the next turn
                # NO_CONN: paho queued it and sends it after the reconnect.
                self.inflight[info.mid] = row.id
                self.cursor = row.id
                self.published += 1
            if len(rows) == limit:
                self._wake.set()
