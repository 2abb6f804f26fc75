"""Wiring of the collector: MQTT receive → validate → batch → write InfluxDB → PUBACK.

paho-mqtt (MQTT 5, persistent session, fixed client id, manual acknowledgement) runs its
network loop in its own thread; received messages are handed to the event loop with
``call_soon_threadsafe``. Memory is bounded by the broker, not by us: it sends at most
``receive_maximum`` unacknowledged QoS 1 messages, and we acknowledge only after the write.

Every message, good or rejected, travels through the same batches in arrival order, so the
PUBACKs go out in the order the PUBLISHes came in (MQTT requires it). A rejected message is
"stored" as a line of the ``rejects`` measurement, then acknowledged: bad input is never
redelivered forever, and never silently dropped.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
import structlog
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from collector.influx import InfluxWriter
from contract import topics
from contract.config import CollectorConfig
from contract.errors import InvalidInput, PayloadError
from contract.influx import escape_string_field, reject_line, telemetry_lines
from contract.payload import decode_telemetry, parse_gateway_status, parse_station_status

log = structlog.get_logger("heatwatch.collector")


@dataclass
class Stats:
    received: int = 0
    accepted: int = 0  # telemetry messages that passed validation
    values: int = 0  # readings in accepted telemetry
    rejected: Counter[str] = field(default_factory=Counter)  # by reason
    written: int = 0  # lines InfluxDB took
    write_rejected: int = 0  # lines InfluxDB refused
    acked: int = 0
    seq_gaps: Counter[str] = field(default_factory=Counter)  # by station
    restarts: Counter[str] = field(default_factory=Counter)  # by station (new boot id)


@dataclass
class _Batch:
    lines: list[str] = field(default_factory=list)
    mids: list[int] = field(default_factory=list)
    started: float = 0.0


class Collector:
    def __init__(self, cfg: CollectorConfig, *, clock: Callable[[], float] = time.time) -> None:
        self.cfg, self.clock = cfg, clock
        self.stats = Stats()
        self.writer = InfluxWriter(cfg.influx)
        self._logged: set[tuple[str, str]] = set()
        self._last_seq: dict[str, tuple[str, int]] = {}
        self._last_reject_ms = 0
        self.connected = asyncio.Event()
        self._client: mqtt.Client | None = None

    # -- validation (pure apart from counters) -------------------------------------------------
    def handle(self, topic: str, payload: bytes) -> list[str]:
        """The lines that store one message: its data, or its reject record."""
        self.stats.received += 1
        station: str | None = None
        try:
            t = topics.parse_topic(topic)
            station = t.subject if t.kind is not topics.TopicKind.GATEWAY_STATUS else None
            if t.kind is topics.TopicKind.TELEMETRY:
                return self._telemetry(t.subject, payload)
            if t.kind is topics.TopicKind.STATION_STATUS:
                st = parse_station_status(payload)
                if st.station != t.subject:
                    raise PayloadError(f"payload station {st.station!r} ≠ topic {t.subject!r}",
                                       "station_mismatch")
                offline = sum(1 for d in st.devices.values() if d.state != "online")
                return [f'station_status,station={st.station} state="{st.state.value}",'
                        f"devices_not_online={offline}i {st.ts}"]
            if t.kind is topics.TopicKind.GATEWAY_STATUS:
                gs = parse_gateway_status(payload)
                now = int(self.clock() * 1000)  # a will's own ts is when it was registered
                return [f'gateway_status,gateway={gs.gateway} state="{gs.state}",'
                        f'boot="{escape_string_field(gs.boot)}" {now}']
            raise PayloadError(f"the collector does not take {t.kind} messages", "unexpected_topic")
        except InvalidInput as exc:
            return [self._reject(exc.reason, station, topic, str(exc))]

    def _telemetry(self, station: str, payload: bytes) -> list[str]:
        msg = decode_telemetry(payload)
        if msg.station != station:
            raise PayloadError(f"payload station {msg.station!r} ≠ topic station {station!r}",
                               "station_mismatch")
        now_ms = self.clock() * 1000
        if msg.ts > now_ms + self.cfg.ingest.max_future_s * 1000:
            raise PayloadError(f"ts {msg.ts} is {(msg.ts - now_ms) / 1000:.0f} s in the future "
                               "(gateway clock?)", "ts_future")
        if msg.ts < now_ms - self.cfg.ingest.max_past_days * 86400_000:
            raise PayloadError(f"ts {msg.ts} is older than {self.cfg.ingest.max_past_days} days",
                               "ts_too_old")
        last = self._last_seq.get(station)
        if last is not None:
            if last[0] != msg.boot:
                self.stats.restarts[station] += 1
            elif msg.seq > last[1] + 1:
                self.stats.seq_gaps[station] += msg.seq - last[1] - 1
        if last is None or last[0] != msg.boot or msg.seq > last[1]:
            self._last_seq[station] = (msg.boot, msg.seq)
        self.stats.accepted += 1
        self.stats.values += len(msg.samples)
        return telemetry_lines(msg)

    def _reject(self, reason: str, station: str | None, topic: str, detail: str) -> str:
        self.stats.rejected[reason] += 1
        key = (reason, station or topic[:80])
        if key not in self._logged:  # once per reason and source; the counters keep the rest
            self._logged.add(key)
            log.warning("message rejected", reason=reason, station=station, topic=topic[:200],
                        detail=detail[:300])
        # rejects share a series per (reason, station): keep their timestamps distinct
        ts = max(int(self.clock() * 1000), self._last_reject_ms + 1)
        self._last_reject_ms = ts
        return reject_line(reason, station, topic, detail, ts)

    # -- MQTT (paho thread → loop) -------------------------------------------------------------
    def _mqtt_client(self, loop: asyncio.AbstractEventLoop, inbox: asyncio.Queue[Any]) -> mqtt.Client:
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.cfg.client_id,
                        protocol=mqtt.MQTTv5, manual_ack=True)
        if self.cfg.mqtt.username:
            pw = self.cfg.mqtt.password.get_secret_value() if self.cfg.mqtt.password else None
            c.username_pw_set(self.cfg.mqtt.username, pw)
        c.reconnect_delay_set(min_delay=1, max_delay=30)
        state = {"failed": False}

        def on_connect(client: mqtt.Client, _u: Any, flags: Any, rc: Any, _p: Any) -> None:
            if rc.is_failure:
                if not state["failed"]:
                    log.warning("broker refused the connection", reason=str(rc))
                state["failed"] = True
                return
            subs = [(topics.TELEMETRY_FILTER, 1)] + [(f, 1) for f in topics.STATUS_FILTERS]
            client.subscribe(subs)
            (log.info if state["failed"] else log.debug)(
                "broker connected", session_present=bool(getattr(flags, "session_present", False)))
            loop.call_soon_threadsafe(self.connected.set)

        def on_disconnect(_c: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
            if rc.is_failure:
                if not state["failed"]:
                    log.warning("broker connection lost", reason=str(rc))
                state["failed"] = True
            loop.call_soon_threadsafe(self.connected.clear)

        def on_message(_c: mqtt.Client, _u: Any, m: mqtt.MQTTMessage) -> None:
            loop.call_soon_threadsafe(inbox.put_nowait, (m.mid if m.qos else 0, m.topic, m.payload))

        def on_subscribe(_c: mqtt.Client, _u: Any, _mid: int, codes: Any, _p: Any) -> None:
            bad = [str(rc) for rc in codes if rc.is_failure]
            if bad:
                log.error("broker refused a subscription", reasons=bad)
            else:
                log.info("subscribed", filters=[topics.TELEMETRY_FILTER, *topics.STATUS_FILTERS])

        c.on_connect, c.on_disconnect, c.on_message = on_connect, on_disconnect, on_message
        c.on_subscribe = on_subscribe
        return c

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        # Bounded by the broker: at most receive_maximum unacknowledged QoS 1 messages are in
        # flight to us, plus QoS 0 status traffic, which heatwatch does not send.
        inbox: asyncio.Queue[tuple[int, str, bytes]] = asyncio.Queue()
        batches: asyncio.Queue[_Batch] = asyncio.Queue(maxsize=2)  # a slow InfluxDB slows us
        client = self._mqtt_client(loop, inbox)
        self._client = client
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = self.cfg.session_expiry_s
        props.ReceiveMaximum = self.cfg.receive_maximum
        await self.writer.ensure_database_retrying()
        client.connect_async(self.cfg.mqtt.host, self.cfg.mqtt.port, self.cfg.mqtt.keepalive_s,
                             clean_start=False, properties=props)
        client.loop_start()
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._batcher(inbox, batches))
                tg.create_task(self._writer(batches, client))
        finally:
            client.disconnect()
            client.loop_stop()
            await self.writer.close()

    async def _batcher(self, inbox: asyncio.Queue[tuple[int, str, bytes]],
                       batches: asyncio.Queue[_Batch]) -> None:
        b = _Batch()
        max_lines, max_delay = self.cfg.batch.max_lines, self.cfg.batch.max_delay_s
        while True:
            empty = not b.mids and not b.lines
            timeout = None if empty else max(0.0, b.started + max_delay - time.monotonic())
            try:
                mid, topic, payload = await asyncio.wait_for(inbox.get(), timeout)
            except TimeoutError:
                await batches.put(b)
                b = _Batch()
                continue
            if not b.mids and not b.lines:
                b.started = time.monotonic()
            b.lines.extend(self.handle(topic, payload))
            if mid:
                b.mids.append(mid)
            if len(b.lines) >= max_lines:
                await batches.put(b)
                b = _Batch()

    async def _writer(self, batches: asyncio.Queue[_Batch], client: mqtt.Client) -> None:
        while True:
            b = await batches.get()
            if b.lines:
                out = await self.writer.write(b.lines)
                self.stats.written += out.written
                self.stats.write_rejected += out.rejected
            for mid in b.mids:  # durable now: let the broker forget them, in arrival order
                client.ack(mid, 1)
            self.stats.acked += len(b.mids)
