"""Ingest stage receive: the broker → deliveries in the inbox; acknowledgements back to the broker.

paho-mqtt (MQTT 5, persistent session, fixed client id, manual acknowledgement) subscribes to
telemetry (shared with the group's other members when ``subscription_group`` is set) and to the
gateway and station status topics. Emits each message as a ``Delivery`` into the ``Inbox``; takes
``ack(mids)`` from the acknowledge stage. The inbox holds at most ``receive_maximum`` deliveries:
while it is full nothing more is read from the socket, so TCP pushes back and the backlog stays
queued at the broker, where it is persisted anyway.

This is the seam to a shared MQTT client: the rest of the collector sees only ``Inbox``,
``ack``, ``connected`` and ``client`` (the alert stage publishes transitions with it).
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from typing import Any

import paho.mqtt.client as mqtt
import structlog
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from collector.stages import Delivery, Inbox
from contract import topics
from contract.config import CollectorConfig

log = structlog.get_logger("heatwatch.collector")


class MqttReceive:
    def __init__(self, cfg: CollectorConfig, inbox: Inbox, connected: asyncio.Event) -> None:
        self.cfg, self.inbox = cfg, inbox
        self.connected = connected  # set while the broker session is up
        self._stopping = False
        # messages received and not yet taken by the batch stage (paho's thread blocks on it)
        self._slots = threading.Semaphore(inbox.capacity)
        inbox.on_take = self._taken
        self.client = self._mqtt_client(asyncio.get_running_loop())

    def _taken(self, n: int) -> None:
        self._slots.release(n)

    def ack(self, mids: list[int]) -> None:
        ack = self.client.ack
        for mid in mids:
            ack(mid, 1)

    def subscriptions(self) -> list[tuple[str, int]]:
        """Telemetry, shared with the group's other members if there is a group (each message to
        one of them); gateway and station status always whole, since retained messages are not
        sent to shared subscriptions and every member keeps its own view of who is online."""
        telemetry = topics.TELEMETRY_FILTER
        if self.cfg.subscription_group is not None:
            telemetry = f"$share/{self.cfg.subscription_group}/{telemetry}"
        return [(telemetry, 1)] + [(f, 1) for f in topics.STATUS_FILTERS]

    def _mqtt_client(self, loop: asyncio.AbstractEventLoop) -> mqtt.Client:
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.cfg.client_id,
                        protocol=mqtt.MQTTv5, manual_ack=True)
        if self.cfg.mqtt.username:
            pw = self.cfg.mqtt.password.get_secret_value() if self.cfg.mqtt.password else None
            c.username_pw_set(self.cfg.mqtt.username, pw)
        c.reconnect_delay_set(min_delay=1, max_delay=30)
        state = {"failed": False}
        inbox = self.inbox

        def on_connect(client: mqtt.Client, _u: Any, flags: Any, rc: Any, _p: Any) -> None:
            if rc.is_failure:
                if not state["failed"]:
                    log.warning("broker refused the connection", reason=str(rc))
                state["failed"] = True
                return
            client.subscribe(self.subscriptions())
            (log.info if state["failed"] else log.debug)(
                "broker connected", session_present=bool(getattr(flags, "session_present", False)))
            loop.call_soon_threadsafe(self.connected.set)

        def on_disconnect(_c: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
            if rc.is_failure:
                if not state["failed"]:
                    log.warning("broker connection lost", reason=str(rc))
                state["failed"] = True
            loop.call_soon_threadsafe(self.connected.clear)

        # Messages cross to the loop through a deque; the loop is woken only when it is not
        # already due to look (one self-pipe write per burst instead of one per message: the
        # wake-ups were ~7 % of the loop's time at 1,500 messages/s).
        pending: deque[Delivery] = deque()
        wake = {"due": False}

        def move() -> None:
            wake["due"] = False
            while pending:
                inbox.put(pending.popleft())

        def on_message(_c: mqtt.Client, _u: Any, m: mqtt.MQTTMessage) -> None:
            # Our own bound on what waits in memory: mosquitto 2.0.11 does not always hold to
            # the Receive Maximum we ask for (7,000 unacknowledged messages seen with 2,000
            # asked). Blocking here stops paho reading the socket, so TCP pushes back and the
            # backlog stays queued at the broker, which is where it is persisted anyway.
            while not self._slots.acquire(timeout=0.5):
                if self._stopping:
                    return  # never acknowledged: the broker delivers it again next time
            pending.append(Delivery(m.mid if m.qos else 0, m.topic, bytes(m.payload)))
            if not wake["due"]:
                wake["due"] = True
                loop.call_soon_threadsafe(move)

        def on_subscribe(_c: mqtt.Client, _u: Any, _mid: int, codes: Any, _p: Any) -> None:
            bad = [str(rc) for rc in codes if rc.is_failure]
            if bad:
                log.error("broker refused a subscription", reasons=bad)
            else:
                log.info("subscribed", filters=[f for f, _ in self.subscriptions()])

        c.on_connect, c.on_disconnect, c.on_message = on_connect, on_disconnect, on_message
        c.on_subscribe = on_subscribe
        return c

    async def run(self) -> None:
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = self.cfg.session_expiry_s
        props.ReceiveMaximum = self.cfg.receive_maximum
        self.client.connect_async(self.cfg.mqtt.host, self.cfg.mqtt.port, self.cfg.mqtt.keepalive_s,
                                  clean_start=False, properties=props)
        self.client.loop_start()
        try:
            await asyncio.Event().wait()  # paho's thread does the work until we are cancelled
        finally:
            self._stopping = True
            self.client.disconnect()
            self.client.loop_stop()
