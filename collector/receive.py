"""Ingest stage receive: the broker → deliveries in the inbox; acknowledgements back to the broker.

paho-mqtt (MQTT 5, persistent session, fixed client id, manual acknowledgement) subscribes to
telemetry (shared with the group's other members when ``subscription_group`` is set), to the
gateway and station status topics, command results and the alerters' transitions.
TLS and the broker identity come from ``messaging.security.apply_security``, as for every other
MQTT client of heatwatch. Emits each message as a ``Delivery`` into the ``Inbox``; takes
``ack(mids)`` from the acknowledge stage. The inbox holds at most ``receive_maximum`` deliveries:
while it is full nothing more is read from the socket, so TCP pushes back and the backlog stays
queued at the broker, where it is persisted anyway.

paho runs on the event loop through its external-loop interface, as the gateway's publisher
does (``gateway/publisher.py``): the loop watches the socket, ``loop_read``/``loop_write`` run
when it is ready, ``loop_misc`` every second; only the blocking TCP connect runs in a worker
thread. No network thread: with paho's own thread, handing each message to the loop (a
semaphore per message for the bound, ``call_soon_threadsafe``, the two threads taking turns at
the GIL) cost ~0.3 µs per value at 200 values a message, ~1/5 of the collector's CPU (py-spy
under ``bench/collector_bench.py --rate 1500``: ``threading.Semaphore.release`` alone was 11 % of
the samples, paho's thread 17 %).

Four of paho's per-message paths are replaced (``_Client``), because measured they were the
collector's largest cost after the lines themselves: see the figures there.

This is the seam to a shared MQTT client: the rest of the collector sees only the ``Inbox``,
``ack``, ``publish`` and ``room`` (the receipt stage's way out), ``connected`` and ``client``
(the alert stage publishes transitions with it).
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import threading
import time
from collections.abc import Callable
from typing import Any, Literal

import paho.mqtt.client as mqtt
import structlog
from paho.mqtt.client import PUBACK, PUBLISH, mqtt_ms_publish, mqtt_ms_wait_for_puback
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from collector.stages import Delivery, Inbox
from contract import topics
from contract.config import CollectorConfig
from contract.payload import MAX_PAYLOAD_BYTES
from messaging.security import apply_security

log = structlog.get_logger("heatwatch.collector")

RECONNECT_MIN_S, RECONNECT_MAX_S = 1.0, 30.0
# packets read per wake-up of the socket: paho's loop_read handles one packet a call when
# nothing of ours is in flight, and a wake-up of the loop per message would cost more than
# the message's own read
READ_BURST = 64
_OK = MQTTErrorCode.MQTT_ERR_SUCCESS
# QoS 1 messages we publish (receipts, alert transitions) held by paho until the broker's PUBACK,
# each ~150 bytes: a broker that stops acknowledging costs at most ~1.5 MB here
MAX_OUTSTANDING = 10_000
# QoS 1 messages of ours in flight when the broker names no Receive Maximum (MQTT 5 allows 65,535;
# mosquitto says its max_inflight_messages, 1,000 as shipped)
RECEIVE_MAXIMUM = 1000
_PUBACK = struct.Struct("!BBH")
_U16 = struct.Struct("!H")


def _varint(n: int) -> bytes:
    """MQTT's variable byte integer (a remaining length)."""
    out = bytearray()
    while True:
        n, b = n >> 7, n & 0x7F
        out.append(b | 0x80 if n else b)
        if not n:
            return bytes(out)  # PUBACK, remaining length 2, packet id: success, no properties


class _Client(mqtt.Client):
    """paho's client (paho-mqtt 2.2, pinned in requirements.lock) with four per-message paths of
    its own replaced; everything else (connect, subscribe, keep-alive, re-sending after a
    reconnect, ``publish``) is paho's.

    - Receiving a PUBLISH: paho builds an MQTT 5 ``Properties`` object for every message (it
      walks its table of 27 property names twice, even when there are none), copies the payload
      three times and makes an ``MQTTMessage``: 45 µs a message against 4 µs for this parse of
      the same bytes (measured here on 200 loadgen messages of ~10 kB; ~15 % of the collector's
      CPU under ``bench/collector_bench.py``). Topic, packet id and payload are all the collector
      reads; properties are skipped by their length.
    - Acknowledging: one PUBACK per ``ack()`` call is a socket write each (5 % of the collector's
      samples under the bench); ``ack_many`` queues a batch's PUBACKs, in order, as one write.
    - Publishing receipts (a batch's ~one per station): ``publish`` is a socket write (and a
      wake-up byte) each; ``publish_many`` queues them as one write, each held in paho's
      ``_out_messages`` as ``publish`` holds it, so paho sends it again after a reconnect.
    - Their PUBACKs: paho decodes an MQTT 5 ``Properties`` object for each; ``_handle_pubackcomp``
      reads the packet id and reason code and releases the message (a failure reason, e.g. the
      ACL refusing the topic, is counted in ``refused``).
    """

    on_delivery: Callable[[Delivery], None]
    packets = 0  # whole packets read and handled (the receive stage reads while they come)

    def _packet_handle(self) -> MQTTErrorCode:
        self.packets += 1
        return super()._packet_handle()

    def _handle_publish(self) -> MQTTErrorCode:
        header = self._in_packet["command"]
        qos = (header & 0x06) >> 1
        if qos > 1 or self._protocol != mqtt.MQTTv5:  # never asked for (subscribed at QoS 1)
            return super()._handle_publish()
        pkt = self._in_packet["packet"]  # everything after the fixed header
        try:
            n = (pkt[0] << 8) | pkt[1]
            # MQTT requires UTF-8; anything else becomes a topic the validate stage rejects
            topic = bytes(pkt[2:2 + n]).decode("utf-8", "replace")
            i = 2 + n
            mid = 0
            if qos:
                mid = (pkt[i] << 8) | pkt[i + 1]
                i += 2
            props, shift = 0, 0  # the properties' length, a variable byte integer
            while True:
                b = pkt[i]
                i += 1
                props |= (b & 0x7F) << shift
                if not b & 0x80 or shift == 21:
                    break
                shift += 7
            i += props
            if i > len(pkt):
                raise IndexError(i)
        except IndexError:
            return MQTTErrorCode.MQTT_ERR_PROTOCOL  # paho disconnects, as for its own MalformedPacket
        size = len(pkt) - i
        # a payload past the contract's limit cannot be valid: keep none of it (the validate
        # stage rejects it by its size), so it never waits in the inbox or a batch
        payload = bytes(memoryview(pkt)[i:]) if size <= MAX_PAYLOAD_BYTES else b""
        self.on_delivery(Delivery(mid, topic, payload, size))
        return _OK

    def ack_many(self, mids: list[int]) -> None:
        """PUBACK each message id, in this order, in one write."""
        if mids:
            self._packet_queue(PUBACK, b"".join([_PUBACK.pack(PUBACK, 2, m) for m in mids]), 0, 0)

    refused = 0  # our QoS 1 messages the broker answered with a failure reason code
    refused_reason: str | None = None

    def publish_many(self, items: list[tuple[str, bytes]]) -> int:
        """QoS 1 PUBLISHes, not retained, in one write; held in paho's ``_out_messages`` as its
        own ``publish`` holds them (paho sends them again after a reconnect, or sends them then
        when we are not connected now). Returns how many were taken: none past
        ``max_queued_messages``, and none from the first whose packet id is still in use (16-bit
        ids wrap; paho 2.2 refuses such a message too, rather than overwrite it)."""
        taken = 0
        parts: list[bytes] = []
        with self._out_message_mutex:
            if len(self._out_messages) + len(items) > self._max_queued_messages > 0:
                return 0
            connected = self._sock is not None
            for topic, payload in items:
                mid = self._mid_generate()
                if mid in self._out_messages:
                    break
                t = topic.encode()
                m = mqtt.MQTTMessage(mid, t)
                m.payload, m.qos, m.timestamp = payload, 1, time.monotonic()
                self._out_messages[mid] = m
                taken += 1
                if connected:
                    m.state = mqtt_ms_wait_for_puback
                    self._inflight_messages += 1
                    size = 2 + len(t) + 2 + 1 + len(payload)  # topic, packet id, no properties, payload
                    parts.append(b"".join((b"\x32", _varint(size), _U16.pack(len(t)), t, _U16.pack(mid),
                                           b"\x00", payload)))
                else:
                    m.state = mqtt_ms_publish
        if parts:  # qos 1 here: paho treats a written qos 0 PUBLISH as published, we wait for PUBACKs
            self._packet_queue(PUBLISH, b"".join(parts), 0, 1)
        return taken

    def _handle_pubackcomp(self, cmd: Literal["PUBACK", "PUBCOMP"]) -> MQTTErrorCode:
        # paho decodes an MQTT 5 Properties object for every PUBACK (~15 µs); a PUBACK's packet id
        # and reason code are all we read (properties, if any, skipped)
        pkt = self._in_packet["packet"]
        if cmd != "PUBACK" or self._protocol != mqtt.MQTTv5 or len(pkt) < 2:
            return super()._handle_pubackcomp(cmd)
        mid = (pkt[0] << 8) | pkt[1]
        reason = pkt[2] if len(pkt) > 2 else 0
        if reason >= 0x80:  # e.g. 0x87 not authorized: the ACL does not let us publish there
            self.refused += 1
            self.refused_reason = hex(reason)
        with self._out_message_mutex:
            msg = self._out_messages.pop(mid, None)
            if msg is not None:
                msg.info._set_as_published()
                self._inflight_messages -= 1
        return _OK


class MqttReceive:
    def __init__(self, cfg: CollectorConfig, inbox: Inbox, connected: asyncio.Event) -> None:
        self.cfg, self.inbox = cfg, inbox
        self.connected = connected  # set while the broker session is up
        self.subscribed = asyncio.Event()  # set once the broker granted the subscriptions
        self._loop: asyncio.AbstractEventLoop | None = None  # run()'s: paho is driven from it
        self._loop_thread = 0
        self.received = 0
        self._failed = False  # the connection failed or was lost since we last logged it
        self._fd: int | None = None  # the MQTT socket the loop watches
        self._writing = False
        self._paused = False  # the inbox is full: not reading
        self._resume: asyncio.Task[None] | None = None
        c = _Client(CallbackAPIVersion.VERSION2, client_id=cfg.client_id, protocol=mqtt.MQTTv5,
                    manual_ack=True)
        apply_security(c, cfg.mqtt)  # TLS (site CA, client certificate), username and password
        # What we publish (receipts, alert transitions): QoS 1 messages paho holds until the
        # broker's PUBACK. paho's own in-flight window is off: with it, every PUBACK walks every
        # message paho holds (``_update_inflight``), ~120 µs a receipt with a batch's ~700 of
        # them out against ~30 µs without (measured here). The receipt stage keeps within the
        # broker's Receive Maximum itself (``room``); MAX_OUTSTANDING is paho's hard bound
        # (``publish`` answers MQTT_ERR_QUEUE_SIZE past it; paho 2.2 also refuses, rather than
        # overwrites, a message id still in use).
        c.max_inflight_messages_set(0)
        c.max_queued_messages_set(MAX_OUTSTANDING)
        self._receive_maximum = RECEIVE_MAXIMUM
        c.on_connect, c.on_disconnect = self._on_connect, self._on_disconnect
        c.on_delivery, c.on_subscribe = self._deliver, self._on_subscribe
        c.on_socket_open, c.on_socket_close = self._socket_open, self._socket_close
        c.on_socket_register_write, c.on_socket_unregister_write = self._want_write, self._no_write
        self.client = c

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        assert self._loop is not None, "paho's socket events come only after run() connects"
        return self._loop

    def subscriptions(self) -> list[tuple[str, int]]:
        """Telemetry, command results and alert transitions, shared with the group's other members
        if there is a group (each message to one of them); gateway and station status always
        whole, since retained messages are not sent to shared subscriptions (every member stores
        them: the same point each time)."""
        shared = [topics.TELEMETRY_FILTER, topics.COMMAND_RESULT_FILTER, topics.ALERT_FILTER]
        if self.cfg.subscription_group is not None:
            shared = [f"$share/{self.cfg.subscription_group}/{f}" for f in shared]
        return [(f, 1) for f in shared] + [(f, 1) for f in topics.STATUS_FILTERS]

    # -- the acknowledge stage's way back --------------------------------------------------------
    def ack(self, mids: list[int]) -> None:
        """PUBACK these, in this order (they are durable)."""
        self.client.ack_many(mids)

    def publish(self, items: list[tuple[str, bytes]]) -> int:
        """QoS 1, not retained, in one write (the receipt stage's way out); how many were taken.
        Held by paho while disconnected and sent after the reconnect."""
        return self.client.publish_many(items)

    def room(self) -> int:
        """QoS 1 messages we may still send before the broker's Receive Maximum (a few kept for
        the alert transitions, which go out through the same client)."""
        return self._receive_maximum - 20 - len(self.client._out_messages)

    # -- reading ---------------------------------------------------------------------------------
    def _deliver(self, d: Delivery) -> None:
        self.received += 1
        self.inbox.put(d)

    def _readable(self) -> None:
        client = self.client
        read = client.loop_read
        for _ in range(READ_BURST):
            before = client.packets
            if read() != _OK:
                return  # paho closed the socket and reported the disconnect
            if self.inbox.full:
                self._pause()
                return
            # no whole packet was waiting. (Not "no PUBLISH": the PUBACKs of our receipts come
            # between the PUBLISHes, and stopping at each cost a wake-up of the loop per PUBACK.)
            if client.packets == before:
                break
        # TLS: bytes the TLS layer already took off the socket (and decrypted) are invisible to
        # the selector; left there, the rest of a burst would wait for the next packet to arrive
        pending = getattr(self.client.socket(), "pending", None)
        if pending is not None and pending() > 0:
            self.loop.call_soon(self._readable)

    def _pause(self) -> None:
        """Stop reading until the batch stage has taken from the inbox."""
        if self._fd is not None:
            self.loop.remove_reader(self._fd)
        self._paused = True
        if self._resume is None or self._resume.done():
            self._resume = self.loop.create_task(self._resume_when_taken())

    async def _resume_when_taken(self) -> None:
        await self.inbox.space()
        self._paused = False
        if self._fd is not None:
            self.loop.add_reader(self._fd, self._readable)
            self.loop.call_soon(self._readable)  # TLS may hold whole messages the selector cannot see

    # -- paho's socket on the loop's selector ----------------------------------------------------
    def _on_loop(self, fn: Callable[..., None], *args: Any) -> None:
        """Run now if on the loop, else (the connect thread) on the loop, in order."""
        if threading.get_ident() == self._loop_thread:
            fn(*args)
        else:
            self.loop.call_soon_threadsafe(fn, *args)

    def _socket_open(self, _c: mqtt.Client, _u: Any, sock: Any) -> None:
        self._on_loop(self._watch, sock.fileno())

    def _socket_close(self, _c: mqtt.Client, _u: Any, _sock: Any) -> None:
        self._on_loop(self._unwatch)

    def _want_write(self, _c: mqtt.Client, _u: Any, _sock: Any) -> None:
        self._on_loop(self._set_writing, True)

    def _no_write(self, _c: mqtt.Client, _u: Any, _sock: Any) -> None:
        self._on_loop(self._set_writing, False)

    def _watch(self, fd: int) -> None:
        self._unwatch()
        self._fd = fd
        if not self._paused:
            self.loop.add_reader(fd, self._readable)
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
    def _on_connect(self, client: mqtt.Client, _u: Any, flags: Any, rc: Any, props: Any) -> None:
        if rc.is_failure:
            self._lost("broker refused the connection", str(rc))
            return
        self._receive_maximum = int(getattr(props, "ReceiveMaximum", RECEIVE_MAXIMUM) or RECEIVE_MAXIMUM)
        client.subscribe(self.subscriptions())
        (log.info if self._failed else log.debug)(
            "broker connected", session_present=bool(getattr(flags, "session_present", False)))
        self._failed = False
        self.connected.set()

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        if rc.is_failure:
            self._lost("broker connection lost", str(rc))
        self.connected.clear()

    def _lost(self, what: str, why: str) -> None:
        if not self._failed:  # the first failure loudly, repeats quietly, the recovery once
            log.warning(what, reason=why)
        self._failed = True

    def _on_subscribe(self, _c: mqtt.Client, _u: Any, _mid: int, codes: Any, _p: Any) -> None:
        bad = [str(rc) for rc in codes if rc.is_failure]
        if bad:
            log.error("broker refused a subscription", reasons=bad)
        else:
            log.info("subscribed", filters=[f for f, _ in self.subscriptions()])
            self.subscribed.set()

    # -- the connection --------------------------------------------------------------------------
    async def run(self) -> None:
        self._loop, self._loop_thread = asyncio.get_running_loop(), threading.get_ident()
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = self.cfg.session_expiry_s
        props.ReceiveMaximum = self.cfg.receive_maximum
        self.client.connect_async(self.cfg.mqtt.host, self.cfg.mqtt.port, self.cfg.mqtt.keepalive_s,
                                  clean_start=False, properties=props)
        try:
            await self._connection()
        finally:
            self.client.disconnect()  # unacknowledged messages stay in our session at the broker
            with contextlib.suppress(Exception):
                self.client.loop_write()
            self._unwatch()
            if self._resume is not None:
                self._resume.cancel()

    async def _connection(self) -> None:
        """Connect, keep alive (``loop_misc`` each second), reconnect with capped backoff."""
        delay = RECONNECT_MIN_S
        while True:
            try:
                # the blocking part (DNS, TCP connect) off the loop; paho's socket callbacks hop back
                await asyncio.to_thread(self.client.reconnect)
            except OSError as exc:
                self._lost("cannot connect to the broker", f"{type(exc).__name__}: {exc}")
                await asyncio.sleep(delay)
                delay = min(delay * 2, RECONNECT_MAX_S)
                continue
            # While paused (the inbox full because the writes are stuck) nothing is read, so no
            # PINGRESP could be either: keep-alive is left alone, as paho's blocked thread did.
            while self._paused or self.client.loop_misc() == _OK:
                if self.connected.is_set():
                    delay = RECONNECT_MIN_S
                await asyncio.sleep(1.0)
            self.connected.clear()
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX_S)
