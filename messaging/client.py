"""One MQTT 5 client for every heatwatch process, on the process's asyncio loop.

paho-mqtt runs on the event loop through its external-loop interface: the socket is watched by
the loop's epoll, ``loop_read``/``loop_write`` run when it is ready and ``loop_misc`` every
second, so paho's callbacks, the map of in-flight message ids and the inbox all live on the
loop. Only the blocking TCP connect runs in a worker thread. No network thread per client:
paho's own loop uses ``select()``, which cannot watch a descriptor above 1023, so a gateway
process polling ~140 stations (7 descriptors each) lost the MQTT sessions of the rest; one
thread per station also cost CPU.

What it gives its owner:

- connect, keep alive, reconnect with capped backoff (1 s doubling to 30 s); the first failure
  is logged loudly, repeats quietly, the recovery once;
- a will (the broker publishes it when the connection dies without a DISCONNECT) and retained
  "birth" messages re-sent at every connect (a broker may have lost them);
- ``publish_nowait`` → a future that resolves on the PUBACK (or fails with ``PublishRefused``
  when the broker answers with an MQTT 5 failure reason code, or at once when the packet is
  larger than the broker's Maximum Packet Size), and ``await publish()`` that
  waits for room in the window and then for the PUBACK. The in-flight window is ours
  (``max_inflight``), far below paho's 65,535 message-id wrap where paho silently overwrites
  QoS 1 messages. A message published while the connection is down stays with paho and goes
  out (and resolves) after the reconnect;
- MQTT 5 message expiry per publish (``expiry_s``);
- subscriptions re-made at every connect, and an async iterator of received messages with
  manual acknowledgement: ``ack(msg)`` once the consumer has made the message durable. A
  message not acknowledged when the connection drops is delivered again by the broker after
  the reconnect (persistent session): its late ``ack`` is dropped, never sent on the new
  connection, where its packet id may already name another message;
- backpressure on receipt: at ``receive_maximum`` unacknowledged messages the client stops
  reading its socket (TCP pushes back; the broker keeps the rest, persisted) until the
  consumer acknowledges. mosquitto 2.0.11 does not always hold to the Receive Maximum a client
  asks for (7,000 unacknowledged messages were seen with 2,000 asked), so the bound is kept
  here too. A consumer that holds messages unacknowledged for longer than the keepalive loses
  the connection (no PINGRESP is read) and gets them again.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
import structlog
from paho.mqtt.client import PUBACK
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from contract.config import MqttSettings
from contract.errors import BrokerUnavailable, HeatwatchError
from messaging.security import apply_security

log = structlog.get_logger("heatwatch.messaging")

RECONNECT_MIN_S, RECONNECT_MAX_S = 1.0, 30.0
# paho's own in-flight cap sits above ours: room for the retained birth messages re-sent at a
# connect, so paho never queues (it sends everything we hand it at once)
_PAHO_SLACK = 50
_PUBACK = struct.Struct("!BBH")


class PublishRefused(HeatwatchError):
    """The broker answered the PUBLISH with an MQTT 5 failure reason code (not authorised, quota
    exceeded, topic name invalid …): sending it again will not help until someone acts."""

    def __init__(self, topic: str, reason: str) -> None:
        super().__init__(f"broker refused a message on {topic}: {reason}")
        self.topic, self.reason = topic, reason


# a PUBLISH's fixed header (≤ 5), topic length (2), packet id (2) and properties length (≤ 4),
# plus the properties heatwatch sends (message expiry: 5): what a packet adds to topic + payload
_PUBLISH_OVERHEAD = 18


class WindowFull(HeatwatchError):
    """``publish_nowait`` with ``max_inflight`` messages already awaiting their PUBACK."""


@dataclass(frozen=True, slots=True)
class Will:
    topic: str
    payload: bytes
    retain: bool = True


@dataclass(frozen=True, slots=True)
class Message:
    """One received message. ``generation`` is the connection it arrived on (see ``ack``)."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    dup: bool
    mid: int
    expiry_s: int | None  # MQTT 5 message expiry left when the broker sent it
    generation: int


def _secure(client: mqtt.Client, settings: MqttSettings) -> None:
    """TLS and credentials for the broker connection: the one place they are applied."""
    apply_security(client, settings)


class MqttClient:
    def __init__(self, settings: MqttSettings, *, client_id: str, persistent: bool = True,
                 session_expiry_s: int | None = None, receive_maximum: int | None = None,
                 max_inflight: int = 100, will: Will | None = None,
                 subscriptions: Sequence[tuple[str, int]] = ()) -> None:
        """``persistent``: a fixed client id whose session (subscriptions, queued messages, the
        messages in flight both ways) the broker keeps for ``session_expiry_s`` across
        disconnects; otherwise a clean session that ends with the connection."""
        self.settings = settings
        self.client_id = client_id
        self.persistent = persistent
        self.session_expiry_s = (settings.session_expiry_s if session_expiry_s is None
                                 else session_expiry_s) if persistent else 0
        self.receive_maximum = receive_maximum or settings.receive_maximum
        self.max_inflight = max_inflight
        self.loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self.connected = False
        self.up = asyncio.Event()  # set while connected
        self.generation = 0  # counts successful connects
        self._ever_failed = False
        self._closing = False
        self._listeners: list[Callable[[bool], None]] = []
        # outgoing
        self._pending: dict[int, tuple[str, asyncio.Future[None]]] = {}  # mid → (topic, future)
        self._room = asyncio.Event()
        self._room.set()
        self.retained: dict[str, bytes] = {}
        # incoming
        self._subs: dict[str, int] = dict(subscriptions)
        self._inbox: deque[Message] = deque()
        self._inbox_wake = asyncio.Event()
        self._unacked = 0  # delivered on this connection, not yet acknowledged
        self._paused = False
        # the broker's Maximum Packet Size (CONNACK): a larger packet would get this client
        # disconnected, and paho sends it again after every reconnect, so it is refused here
        self.max_packet: int | None = None
        # counters
        self.published = self.acked = self.refused = 0
        self.received = self.acks_sent = self.stale_acks = 0

        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5,
                        manual_ack=True)
        _secure(c, settings)
        if will is not None:
            c.will_set(will.topic, will.payload, qos=1, retain=will.retain)
        c.max_inflight_messages_set(max_inflight + _PAHO_SLACK)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_publish = self._on_publish
        c.on_message = self._on_message
        c.on_subscribe = self._on_subscribe
        c.on_socket_open = self._socket_open
        c.on_socket_close = self._socket_close
        c.on_socket_register_write = self._want_write
        c.on_socket_unregister_write = self._no_write
        self._paho = c
        self._fd: int | None = None  # the MQTT socket the loop watches
        self._writing = False

    # -- what owners call ---------------------------------------------------------------------
    def on_change(self, fn: Callable[[bool], None]) -> None:
        """Call ``fn(connected)`` on the loop at every connect and disconnect."""
        self._listeners.append(fn)

    @property
    def inflight(self) -> int:
        return len(self._pending)

    @property
    def room(self) -> int:
        return self.max_inflight - len(self._pending)

    def publish_nowait(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False,
                       expiry_s: float | None = None) -> asyncio.Future[None]:
        """Hand one message to the broker connection; the future resolves on its PUBACK.

        Raises WindowFull when ``max_inflight`` messages are awaiting theirs (check ``room``).
        """
        if qos not in (0, 1):
            raise ValueError("heatwatch publishes at QoS 0 or 1")
        if qos and len(self._pending) >= self.max_inflight:
            raise WindowFull(f"{self.max_inflight} messages already await their PUBACK")
        size = len(topic.encode()) + len(payload) + _PUBLISH_OVERHEAD
        if self.max_packet is not None and size > self.max_packet:
            self.refused += 1
            refused: asyncio.Future[None] = self.loop.create_future()
            refused.set_exception(PublishRefused(topic, f"a packet of {size:,} bytes is over the broker's "
                                                        f"maximum packet size of {self.max_packet:,}"))
            return refused
        props = None
        if expiry_s is not None:
            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            props.MessageExpiryInterval = max(1, int(expiry_s))
        info = self._paho.publish(topic, payload, qos=qos, retain=retain, properties=props)
        # NO_CONN: paho keeps it and sends it after the reconnect
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            raise BrokerUnavailable(f"paho did not take a message on {topic}: {mqtt.error_string(info.rc)}")
        fut: asyncio.Future[None] = self.loop.create_future()
        self.published += 1
        if qos == 0:
            fut.set_result(None)
        else:
            self._pending[info.mid] = (topic, fut)
            if len(self._pending) >= self.max_inflight:
                self._room.clear()
        return fut

    async def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False,
                      expiry_s: float | None = None) -> None:
        """Publish and return once the broker has acknowledged it (waits for room first)."""
        while qos and len(self._pending) >= self.max_inflight:
            await self._room.wait()
        await self.publish_nowait(topic, payload, qos=qos, retain=retain, expiry_s=expiry_s)

    def publish_retained(self, topic: str, payload: bytes) -> None:
        """A retained status: the latest value only, re-sent at every (re)connect."""
        self.retained[topic] = payload
        if self.connected:
            self._paho.publish(topic, payload, qos=1, retain=True)

    def subscribe(self, topic_filter: str, qos: int = 1) -> None:
        """Add a subscription (made now if connected, and at every connect)."""
        self._subs[topic_filter] = qos
        if self.connected:
            self._paho.subscribe([(topic_filter, SubscribeOptions(qos=qos))])

    async def messages(self) -> AsyncIterator[Message]:
        """Every received message, in arrival order. One consumer per client."""
        while True:
            while self._inbox:
                yield self._inbox.popleft()
            self._inbox_wake.clear()
            await self._inbox_wake.wait()

    async def receive(self, most: int) -> list[Message]:
        """Wait for a message; return it with those already waiting, up to ``most``, oldest first
        (for a consumer that makes a batch durable at once; ``messages()`` gives them one by one).
        One consumer per client."""
        while not self._inbox:
            self._inbox_wake.clear()
            await self._inbox_wake.wait()
        inbox = self._inbox
        return [inbox.popleft() for _ in range(min(most, len(inbox)))]

    def ack_many(self, msgs: Sequence[Message]) -> None:
        """``ack`` for a batch, in this order, as one socket write (a write per PUBACK is a system
        call each: a tenth of the alerter's CPU at 100 messages/s here). Messages from an earlier
        connection are dropped as ``ack`` drops them."""
        if not self.connected:
            self.stale_acks += sum(1 for m in msgs if m.qos)
            return
        mids = [m.mid for m in msgs if m.qos and m.generation == self.generation]
        self.stale_acks += sum(1 for m in msgs if m.qos and m.generation != self.generation)
        if not mids:
            return
        # PUBACK, remaining length 2, packet id: success, no properties (MQTT 5 §3.4.2.1)
        self._paho._packet_queue(PUBACK, b"".join([_PUBACK.pack(PUBACK, 2, m) for m in mids]), 0, 0)
        self.acks_sent += len(mids)
        self._unacked -= len(mids)
        if self._paused and self._unacked < self.receive_maximum:
            self._paused = False
            self._resume_reading()

    def ack(self, msg: Message) -> None:
        """The consumer has made ``msg`` durable: the broker may forget it.

        Dropped when the message came on an earlier connection: the broker delivers it again on
        this one (persistent session), and that copy is the one to acknowledge."""
        if msg.qos == 0:
            return
        if msg.generation != self.generation or not self.connected:
            self.stale_acks += 1
            return
        self._paho.ack(msg.mid, msg.qos)
        self.acks_sent += 1
        self._unacked -= 1
        if self._paused and self._unacked < self.receive_maximum:
            self._paused = False
            self._resume_reading()

    async def run(self) -> None:
        """Connect and stay connected until cancelled; then a clean DISCONNECT (no will)."""
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = self.session_expiry_s
        props.ReceiveMaximum = self.receive_maximum
        s = self.settings
        self._paho.connect_async(s.host, s.port, s.keepalive_s, clean_start=not self.persistent,
                                 properties=props)
        try:
            await self._connection()
        finally:
            self._closing = True
            if self.connected:
                self._paho.disconnect()
                with contextlib.suppress(Exception):
                    self._paho.loop_write()
            self._unwatch()
            self._set_connected(False)
            for topic, fut in self._pending.values():
                if not fut.done():
                    fut.set_exception(BrokerUnavailable(f"client stopped before the PUBACK for {topic}"))
            self._pending.clear()

    # -- connection -----------------------------------------------------------------------------
    async def _connection(self) -> None:
        """Connect, keep alive (``loop_misc`` each second), reconnect with capped backoff."""
        delay = RECONNECT_MIN_S
        while True:
            try:
                # the blocking part (DNS, TCP connect) off the loop; paho's socket callbacks hop back
                await asyncio.to_thread(self._paho.reconnect)
            except OSError as exc:
                self._connect_failed(f"{type(exc).__name__}: {exc}")
                await asyncio.sleep(delay)
                delay = min(delay * 2, RECONNECT_MAX_S)
                continue
            while self._paho.loop_misc() == MQTTErrorCode.MQTT_ERR_SUCCESS:
                if self.connected:
                    delay = RECONNECT_MIN_S
                await asyncio.sleep(1.0)
            self._set_connected(False)
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX_S)

    def _connect_failed(self, why: str) -> None:
        if not self._ever_failed:
            log.warning("cannot connect to the broker", reason=why, client=self.client_id,
                        broker=f"{self.settings.host}:{self.settings.port}")
        else:
            log.debug("still cannot connect to the broker", reason=why, client=self.client_id)
        self._ever_failed = True

    def _set_connected(self, up: bool) -> None:
        was = self.connected
        if up and not was:
            (log.info if self._ever_failed else log.debug)("broker connected", client=self.client_id)
        elif not up and was and not self._closing:
            log.warning("broker connection lost", client=self.client_id, awaiting_puback=len(self._pending))
            self._ever_failed = True
        self.connected = up
        if up:
            self.up.set()
        else:
            self.up.clear()
        if up != was:
            for fn in self._listeners:
                fn(up)

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
        if not self._paused:
            self.loop.add_reader(fd, self._readable)
        if self._writing:
            self.loop.add_writer(fd, self._paho.loop_write)

    def _unwatch(self) -> None:
        if self._fd is not None:
            self.loop.remove_reader(self._fd)
            self.loop.remove_writer(self._fd)
            self._fd = None

    def _readable(self) -> None:
        self._paho.loop_read()
        # TLS: loop_read reads a bounded number of packets (one, for a client with nothing in
        # flight); the rest of a TLS record stays decrypted inside the SSL object, where epoll
        # cannot see it, until the next bytes arrive (a PINGRESP, up to a keepalive later). So
        # read on while the SSL object holds bytes, one turn of the loop per packet. mosquitto
        # 2.0.11 sends one record per packet, but a TLS terminator in front of it packs many:
        # without this, 2,807 of a 3,000-message burst arrived in 10 s
        # (tests/e2e/test_tls_pipeline.py).
        sock = self._paho.socket()
        pending = getattr(sock, "pending", None)
        if pending is not None and not self._paused and pending() > 0:
            self.loop.call_soon(self._readable)

    def _resume_reading(self) -> None:
        if self._fd is not None:
            self.loop.add_reader(self._fd, self._readable)
            self.loop.call_soon(self._readable)

    def _set_writing(self, on: bool) -> None:
        self._writing = on
        if self._fd is None:
            return
        if on:
            self.loop.add_writer(self._fd, self._paho.loop_write)
        else:
            self.loop.remove_writer(self._fd)

    # -- paho callbacks (on the loop) ------------------------------------------------------------
    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        if rc.is_failure:
            self._connect_failed(f"refused: {rc}")
            return
        self.generation += 1
        self.max_packet = getattr(props, "MaximumPacketSize", None) if props is not None else None
        # what arrived on the old connection and was not taken yet comes again on this one
        self._inbox.clear()
        self._unacked = 0
        if self._paused:
            self._paused = False
            self._resume_reading()
        if self._subs:
            client.subscribe([(f, SubscribeOptions(qos=q)) for f, q in self._subs.items()])
        for topic, payload in self.retained.items():
            client.publish(topic, payload, qos=1, retain=True)
        if self.persistent and not getattr(flags, "session_present", False) and self.generation > 1:
            log.warning("the broker kept no session for this client: messages queued for it while it "
                        "was away are gone", client=self.client_id)
        self._set_connected(True)

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        self._set_connected(False)

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, rc: Any, props: Any) -> None:
        entry = self._pending.pop(mid, None)
        if entry is None:
            return  # a retained status, not tracked
        topic, fut = entry
        if not self._room.is_set() and len(self._pending) < self.max_inflight:
            self._room.set()
        if fut.done():
            return
        if rc.is_failure:
            self.refused += 1
            fut.set_exception(PublishRefused(topic, str(rc)))
        else:
            self.acked += 1
            fut.set_result(None)

    def _on_message(self, client: mqtt.Client, userdata: Any, m: mqtt.MQTTMessage) -> None:
        expiry = getattr(m.properties, "MessageExpiryInterval", None) if m.properties else None
        self._inbox.append(Message(m.topic, bytes(m.payload), m.qos, bool(m.retain), bool(m.dup), m.mid,
                                   expiry, self.generation))
        self.received += 1
        self._inbox_wake.set()
        if m.qos:
            self._unacked += 1
            if self._unacked >= self.receive_maximum and not self._paused and self._fd is not None:
                self._paused = True
                self.loop.remove_reader(self._fd)

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, codes: Any, props: Any) -> None:
        bad = [str(rc) for rc in codes if rc.is_failure]
        if bad:
            log.error("broker refused a subscription", reasons=bad, client=self.client_id,
                      filters=list(self._subs))
        else:
            log.debug("subscribed", filters=list(self._subs), client=self.client_id)

