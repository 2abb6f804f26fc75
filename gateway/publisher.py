"""Publish from the outbox at QoS 1; delete a row only when its PUBACK arrives.

paho-mqtt runs on the asyncio loop (its external-loop interface: the socket is watched by the
loop's epoll, ``loop_read``/``loop_write`` when it is ready, ``loop_misc`` every second), so its
callbacks and the map of in-flight message ids to outbox rows live on the event loop. Only the
blocking TCP connect runs in a worker thread. No network thread per client: paho's own loop uses
``select()``, which cannot watch a descriptor above 1023, so a process polling ~140 stations
(7 descriptors each) lost the MQTT sessions of the rest; one thread per station also cost CPU.

The in-flight window is ours (``outbox.max_inflight``), far below paho's 65,535 message-id
wrap, where paho silently overwrites QoS 1 messages.

After a reconnect paho re-sends what was in flight (persistent session, fixed client id); after
a restart everything still in the outbox is published again, oldest first. Duplicates are
allowed: the collector overwrites by sample time.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
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
RECONNECT_MIN_S, RECONNECT_MAX_S = 1.0, 30.0
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
        self._loop_thread = threading.get_ident()
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
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_publish = self._on_publish
        c.on_socket_open = self._socket_open
        c.on_socket_close = self._socket_close
        c.on_socket_register_write = self._want_write
        c.on_socket_unregister_write = self._no_write
        self.client = c
        self._fd: int | None = None  # the MQTT socket the loop watches
        self._writing = False

    # -- paho's socket on the loop's selector ----------------------------------------------------
    def _on_loop(self, fn: Callable[..., None], *args: Any) -> None:
        """Run now if on the loop, else (the connect thread) on the loop, in order."""
        if threading.get_ident() == self._loop_thread:
            fn(*args)
        else:
            self.loop.call_soon_threadsafe(fn, *args)

    def _socket_open(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        self._on_loop(self._watch, sock.fileno())

    def _socket_close(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        self._on_loop(self._unwatch)

    def _want_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        self._on_loop(self._set_writing, True)

    def _no_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        self._on_loop(self._set_writing, False)

    def _watch(self, fd: int) -> None:
        self._unwatch()
        self._fd = fd
        self.loop.add_reader(fd, self.client.loop_read)
        if self._writing:
            self.loop.add_writer(fd, self.client.loop_write)

    def _unwatch(self) -> None:
        if self._fd is not None:
            self.loop.remove_reader(self._fd)
            self.loop.remove_writer(self._fd)
            self._fd = None

    def _set_writing(self, on: bool) -> None:
        self._writing = on
        if self._fd is None:
            return
        if on:
            self.loop.add_writer(self._fd, self.client.loop_write)
        else:
            self.loop.remove_writer(self._fd)

    # -- paho callbacks (on the loop) ------------------------------------------------------------
    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        if rc.is_failure:
            self._connect_failed(str(rc))
            return
        self._set_connected(True)

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        self._set_connected(False)

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, rc: Any, props: Any) -> None:
        self._ack(mid)

    def _connect_failed(self, why: str) -> None:
        if not self._ever_failed:
            log.warning("cannot connect to the broker; keeping data in the outbox", reason=why,
                        station=self.cfg.station)
        self._ever_failed = True

    def _set_connected(self, up: bool) -> None:
        if up:  # the retained topics are re-sent at every connect (a broker may have lost them)
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
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._connection())
                tg.create_task(self._pump())
        finally:
            self.client.disconnect()  # a clean DISCONNECT: no last will
            with contextlib.suppress(Exception):
                self.client.loop_write()
            self._unwatch()

    async def _connection(self) -> None:
        """Connect, keep alive (``loop_misc`` each second), reconnect with capped backoff."""
        delay = RECONNECT_MIN_S
        while True:
            try:
                # the blocking part (DNS, TCP connect) off the loop; paho's socket callbacks hop back
                await asyncio.to_thread(self.client.reconnect)
            except OSError as exc:
                self._connect_failed(f"{type(exc).__name__}: {exc}")
                await asyncio.sleep(delay)
                delay = min(delay * 2, RECONNECT_MAX_S)
                continue
            while self.client.loop_misc() == MQTTErrorCode.MQTT_ERR_SUCCESS:
                if self.connected:
                    delay = RECONNECT_MIN_S
                await asyncio.sleep(1.0)
            self._set_connected(False)
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX_S)

    async def _pump(self) -> None:
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
