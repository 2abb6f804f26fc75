"""Wiring of the collector: MQTT receive → validate → batch → write InfluxDB → PUBACK.

paho-mqtt (MQTT 5, persistent session, fixed client id, manual acknowledgement) runs its
network loop in its own thread; received messages are handed to the event loop with
``call_soon_threadsafe``. Memory is bounded: at most ``receive_maximum`` messages wait between
paho and the batcher (paho's thread blocks, TCP pushes back, the broker keeps the rest), two
batches wait for InfluxDB, ``batch.concurrency`` are being written, and we acknowledge only
after the write. Writes may finish out of order; acknowledgements go out in batch order.

Every message, good or rejected, travels through the same batches in arrival order, so the
PUBACKs go out in the order the PUBLISHes came in (MQTT requires it). A rejected message is
"stored" as a line of the ``rejects`` measurement, then acknowledged: bad input is never
redelivered forever, and never silently dropped.

Durable means one of two things before a PUBACK goes out: InfluxDB answered 204 (or refused
the lines for good, which is counted), or the batch is in the on-disk spool
(``durable.queue.DiskQueue``, fsync'd). A write that keeps failing for ``spool.after_s``
switches the collector to spooling, so an InfluxDB outage does not stop consumption and the
broker's queue does not grow; a drainer writes the spool back oldest first as soon as InfluxDB
answers, while live batches go straight to InfluxDB again.

Counters: ``Stats``, served on a Prometheus ``/metrics`` endpoint and written every
``stats.interval_s`` to InfluxDB (measurements ``collector`` and, per station, ``ingest``).
"""

from __future__ import annotations

import asyncio
import gc
import sqlite3
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
import structlog
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from collector import lifecycle, metrics
from collector.alerts import AlertStage
from collector.commands import ResultStage
from collector.influx import BACKOFF_MIN_S, InfluxWriter
from collector.latest import LatestValues
from contract import topics
from contract.alerts import AlertRules, Transition
from contract.commands import CommandResult
from contract.config import CollectorConfig
from contract.errors import CannotOpen, DatabaseUnavailable, InvalidInput, PayloadError
from contract.influx import escape_string_field, reject_line, telemetry_lines
from contract.payload import decode_telemetry, parse_gateway_status, parse_station_status
from durable.queue import DiskQueue, QueueUnavailable, oldest

log = structlog.get_logger("heatwatch.collector")
DRAIN_RETRY_MAX_S = 5.0


@dataclass
class Stats:
    received: int = 0
    accepted: int = 0  # telemetry messages that passed validation
    values: int = 0  # readings in accepted telemetry
    rejected: Counter[str] = field(default_factory=Counter)  # by reason
    written: int = 0  # lines InfluxDB took
    write_rejected: int = 0  # lines InfluxDB refused
    acked: int = 0
    spooled: int = 0  # lines put in the disk spool
    drained: int = 0  # lines written from the spool to InfluxDB
    messages: Counter[str] = field(default_factory=Counter)  # accepted telemetry by station
    seq_gaps: Counter[str] = field(default_factory=Counter)  # by station
    restarts: Counter[str] = field(default_factory=Counter)  # by station (new boot id)


@dataclass
class _Batch:
    lines: list[str] = field(default_factory=list)
    mids: list[int] = field(default_factory=list)
    transitions: list[Transition] = field(default_factory=list)  # alert changes these messages caused
    results: list[CommandResult] = field(default_factory=list)  # command results these messages carry
    started: float = 0.0
    sample_ts: list[int] = field(default_factory=list)  # live telemetry's sample times (ms)


class Collector:
    def __init__(self, cfg: CollectorConfig, *, clock: Callable[[], float] = time.time) -> None:
        self.cfg, self.clock = cfg, clock
        self.stats = Stats()
        metrics.GC_CLOCK.install()
        self.writer = InfluxWriter(cfg.influx)
        try:
            self.spool = DiskQueue(cfg.spool.path, max_bytes=cfg.spool.max_bytes,
                                   max_age_s=cfg.spool.max_age_h * 3600)
        except QueueUnavailable as exc:
            raise CannotOpen("collector spool", exc.path, exc.reason, "spool.path") from None
        self.spooling = False  # InfluxDB is failing: batches go to the spool
        self._spool_wake = asyncio.Event()
        self._spool_broken = False
        self._known = set(cfg.ingest.known_stations) if cfg.ingest.known_stations is not None else None
        self._stats_lines: list[str] = []
        self.metrics_port: int | None = None
        self.inbox: asyncio.Queue[tuple[int, str, bytes]] | None = None
        self._slots = threading.Semaphore(cfg.receive_maximum)  # messages received, not yet batched
        self._stopping = False
        self._logged: set[tuple[str, str]] = set()
        self._last_seq: dict[str, tuple[str, int]] = {}
        self._last_reject_ms = 0
        self._live_ts: int | None = None  # sample time of the live message handle() just accepted
        self.latency = metrics.Histogram(metrics.LATENCY_BUCKETS_S)  # sample time → durable
        self.connected = asyncio.Event()
        self._client: mqtt.Client | None = None
        # the rule engine (a config or rule-file error raises here, at start-up)
        self.alerts = AlertStage(cfg.alerts, clock=clock) if cfg.alerts is not None else None
        # command results, recorded in the same store (only with it)
        self.results = ResultStage(self.alerts.store.engine, clock=clock) if self.alerts is not None else None
        # the latest value per entity for the hotline: only where the rules run, which sees every
        # message of its stations (a shared-subscription member sees a part)
        self.latest = (LatestValues(self.alerts.store.latest, interval_s=cfg.alerts.latest_s, clock=clock)
                       if self.alerts is not None and cfg.alerts is not None and cfg.alerts.latest_s
                       else None)

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
                if self.alerts is not None:
                    self.alerts.station_status(st, int(self.clock() * 1000))
                if self.latest is not None:
                    self.latest.station_status(st)
                offline = sum(1 for d in st.devices.values() if d.state != "online")
                return [f'station_status,station={st.station} state="{st.state.value}",'
                        f"devices_not_online={offline}i {st.ts}"]
            if t.kind is topics.TopicKind.GATEWAY_STATUS:
                gs = parse_gateway_status(payload)
                now = int(self.clock() * 1000)  # a will's own ts is when it was registered
                if self.alerts is not None:
                    self.alerts.gateway_status(gs, now)
                if self.latest is not None:
                    self.latest.gateway_status(gs)
                return [f'gateway_status,gateway={gs.gateway} state="{gs.state}",'
                        f'boot="{escape_string_field(gs.boot)}" {now}']
            raise PayloadError(f"the collector does not take {t.kind} messages", "unexpected_topic")
        except InvalidInput as exc:
            return [self._reject(exc.reason, station, topic, str(exc))]

    def command_result(self, topic: str, payload: bytes) -> tuple[list[str], CommandResult | None]:
        """The lines of one command-result message, and the result to record (None if rejected)."""
        self.stats.received += 1
        station: str | None = None
        try:
            t = topics.parse_topic(topic)
            station = t.subject
            if self.results is None or t.kind is not topics.TopicKind.COMMAND_RESULT:
                raise PayloadError(f"the collector does not take {t.kind} messages", "unexpected_topic")
            result, lines = self.results.parse(t, payload)
        except InvalidInput as exc:
            return [self._reject(exc.reason, station, topic, str(exc))], None
        return lines, result

    def _telemetry(self, station: str, payload: bytes) -> list[str]:
        if self._known is not None and station not in self._known:
            raise PayloadError(f"station {station!r} is not in ingest.known_stations", "unknown_station")
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
        self.stats.messages[station] += 1
        self.stats.values += len(msg.samples)
        if self.alerts is not None:
            self.alerts.observe(msg, int(now_ms))
        if self.latest is not None:
            self.latest.observe(msg)
        if not msg.backfill:
            self._live_ts = msg.ts
        return telemetry_lines(msg)

    def _reject(self, reason: str, station: str | None, topic: str, detail: str) -> str:
        self.stats.rejected[reason] += 1
        key = (reason, station or "")
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
            client.subscribe(self._subscriptions())
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
        pending: deque[tuple[int, str, bytes]] = deque()
        wake = {"due": False}

        def move() -> None:
            wake["due"] = False
            while pending:
                inbox.put_nowait(pending.popleft())

        def on_message(_c: mqtt.Client, _u: Any, m: mqtt.MQTTMessage) -> None:
            # Our own bound on what waits in memory: mosquitto 2.0.11 does not always hold to
            # the Receive Maximum we ask for (7,000 unacknowledged messages seen with 2,000
            # asked). Blocking here stops paho reading the socket, so TCP pushes back and the
            # backlog stays queued at the broker, which is where it is persisted anyway.
            while not self._slots.acquire(timeout=0.5):
                if self._stopping:
                    return  # never acknowledged: the broker delivers it again next time
            pending.append((m.mid if m.qos else 0, m.topic, bytes(m.payload)))
            if not wake["due"]:
                wake["due"] = True
                loop.call_soon_threadsafe(move)

        def on_subscribe(_c: mqtt.Client, _u: Any, _mid: int, codes: Any, _p: Any) -> None:
            bad = [str(rc) for rc in codes if rc.is_failure]
            if bad:
                log.error("broker refused a subscription", reasons=bad)
            else:
                log.info("subscribed", filters=[f for f, _ in self._subscriptions()])

        c.on_connect, c.on_disconnect, c.on_message = on_connect, on_disconnect, on_message
        c.on_subscribe = on_subscribe
        return c

    def _subscriptions(self) -> list[tuple[str, int]]:
        """Telemetry, shared with the group's other members if there is a group (each message to
        one of them); gateway and station status always whole, since retained messages are not
        sent to shared subscriptions and every member keeps its own view of who is online."""
        telemetry = topics.TELEMETRY_FILTER
        if self.cfg.subscription_group is not None:
            telemetry = f"$share/{self.cfg.subscription_group}/{telemetry}"
        subs = [(telemetry, 1)] + [(f, 1) for f in topics.STATUS_FILTERS]
        if self.results is not None:  # the collector with the store records command results
            subs.append((topics.COMMAND_RESULT_FILTER, 1))
        return subs

    def _plausible(self) -> tuple[float, float]:
        """The room sensors' plausible range of the rule file: the 1-hour rollup's room means."""
        rules = self.alerts.rules if self.alerts is not None else AlertRules()
        return rules.sensor.plausible_min, rules.sensor.plausible_max

    async def run(self) -> None:
        if self.alerts is not None:
            # first: a store that cannot be opened stops the start-up with one line (CannotOpen),
            # before anything waits for InfluxDB or the broker
            try:
                await asyncio.to_thread(self.alerts.start)
            except BaseException:
                await self.writer.close()
                self.spool.close()
                raise
        loop = asyncio.get_running_loop()
        # Bounded by _slots (receive_maximum messages) and the batches queue.
        inbox: asyncio.Queue[tuple[int, str, bytes]] = asyncio.Queue()
        self.inbox = inbox
        batches: asyncio.Queue[_Batch] = asyncio.Queue(maxsize=2)  # a slow InfluxDB slows us
        client = self._mqtt_client(loop, inbox)
        self._client = client
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = self.cfg.session_expiry_s
        props.ReceiveMaximum = self.cfg.receive_maximum
        if self.cfg.stats.metrics_port is not None:
            self.metrics_port = metrics.serve(self, self.cfg.stats.metrics_host, self.cfg.stats.metrics_port)
            log.info("metrics", url=f"http://{self.cfg.stats.metrics_host}:{self.metrics_port}/metrics")
        await self.writer.ensure_database_retrying()
        if self.latest is not None:
            await asyncio.to_thread(self.latest.load)
        client.connect_async(self.cfg.mqtt.host, self.cfg.mqtt.port, self.cfg.mqtt.keepalive_s,
                             clean_start=False, properties=props)
        client.loop_start()
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._batcher(inbox, batches))
                tg.create_task(self._writer(batches, client, tg))
                tg.create_task(self._drainer())
                tg.create_task(self._reporter(inbox))
                tg.create_task(self._gc_keeper())
                # logs, never raises
                tg.create_task(lifecycle.setup_at_start(self.cfg.influx, self._plausible()))
                if self.alerts is not None:
                    tg.create_task(self.alerts.ticker(lambda: inbox.put_nowait((0, "", b""))))
                    tg.create_task(self.alerts.webhooks())
                if self.latest is not None:
                    tg.create_task(self.latest.flusher())
        finally:
            self._stopping = True
            client.disconnect()
            client.loop_stop()
            await self.writer.close()
            self.spool.close()
            if self.latest is not None:
                await self.latest.close()
            if self.alerts is not None:
                self.alerts.close()

    async def _gc_keeper(self, first_s: float = 5.0, every_s: float = 300.0,
                         full_every_s: float = 3600.0) -> None:
        """Keep the long-lived state out of the garbage collector's full collections.

        The rule engine holds ~100,000 sensor objects for 5,000 stations (370,000 tracked
        objects; one full collection of them takes ~240 ms here). Messages in flight for a second
        or two get promoted to the oldest generation, so full collections keep coming, and each
        walked the whole engine: 7 a minute, 10 % of the collector's CPU. So whatever has lived
        this long is frozen (``gc.freeze``: the collector skips it), first a few seconds after
        start and then at growing intervals up to ``every_s``, and a collection before each
        freeze walks only what is new. Once every ``full_every_s`` everything is unfrozen and
        collected, so cyclic garbage among frozen objects is still found, an hour late at most;
        reference counting frees all other garbage as usual."""
        wait, since_full = first_s, 0.0
        while True:
            await asyncio.sleep(wait)
            since_full += wait
            if since_full >= full_every_s:
                gc.unfreeze()
                since_full = 0.0
            gc.collect()
            gc.freeze()
            wait = min(wait * 2, every_s)

    async def _batcher(self, inbox: asyncio.Queue[tuple[int, str, bytes]],
                       batches: asyncio.Queue[_Batch]) -> None:
        b = _Batch()
        max_lines, max_delay = self.cfg.batch.max_lines, self.cfg.batch.max_delay_s
        while True:
            empty = not b.mids and not b.lines
            timeout = None if empty else max(0.0, b.started + max_delay - time.monotonic())
            try:
                # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancellation that
                # arrives as the get completes, and the collector would not stop (gateway/publisher.py)
                if timeout is not None and timeout <= 0:
                    raise TimeoutError  # the batch is due: send it before taking more (as wait_for did)
                async with asyncio.timeout(timeout):
                    mid, topic, payload = await inbox.get()
            except TimeoutError:
                await batches.put(b)
                b = _Batch()
                continue
            if not b.mids and not b.lines:
                b.started = time.monotonic()
            if self._stats_lines:
                b.lines.extend(self._stats_lines)
                self._stats_lines = []
            flush = False
            if topic and "/command-result/" in topic:
                lines, result = self.command_result(topic, payload)
                b.lines.extend(lines)
                if result is not None:
                    b.results.append(result)
                    flush = True  # an engineer waits for it: no batching delay
                self._slots.release()
                if mid:
                    b.mids.append(mid)
            elif topic:  # else the reporter's or the alert ticker's wake-up
                b.lines.extend(self.handle(topic, payload))
                if self._live_ts is not None:
                    b.sample_ts.append(self._live_ts)
                    self._live_ts = None
                self._slots.release()
                if mid:
                    b.mids.append(mid)
            if self.alerts is not None and self.alerts.pending:
                trs, lines = self.alerts.take()
                b.transitions.extend(trs)
                b.lines.extend(lines)
            if len(b.lines) >= max_lines or flush:
                await batches.put(b)
                b = _Batch()

    async def _writer(self, batches: asyncio.Queue[_Batch], client: mqtt.Client,
                      tg: asyncio.TaskGroup) -> None:
        """Start up to ``batch.concurrency`` writes at once; acknowledge in batch order."""
        slots = asyncio.Semaphore(self.cfg.batch.concurrency)
        writing: asyncio.Queue[tuple[_Batch, asyncio.Task[None]]] = asyncio.Queue()  # ≤ concurrency
        tg.create_task(self._acker(writing, slots, client))
        while True:
            b = await batches.get()
            await slots.acquire()
            writing.put_nowait((b, tg.create_task(self._store_batch(b))))

    async def _store_batch(self, b: _Batch) -> None:
        """The batch's lines, and its command results into the store alongside (an engineer waits
        for those; the InfluxDB write need not come first, the PUBACKs wait for both)."""
        if b.results and self.results is not None:
            await asyncio.gather(self._store(b.lines), self.results.record(b.results))
        else:
            await self._store(b.lines)

    async def _acker(self, writing: asyncio.Queue[tuple[_Batch, asyncio.Task[None]]],
                     slots: asyncio.Semaphore, client: mqtt.Client) -> None:
        while True:
            b, task = await writing.get()
            await task  # the batches before it are acknowledged already
            if b.transitions and self.alerts is not None:
                await self.alerts.record(b.transitions, client)  # in the store before the PUBACKs
            for mid in b.mids:  # durable now: let the broker forget them, in arrival order
                client.ack(mid, 1)
            self.stats.acked += len(b.mids)
            if b.sample_ts:
                self.latency.observe_since(b.sample_ts, self.clock())
            slots.release()

    async def _store(self, lines: list[str]) -> None:
        """Return once the lines are in InfluxDB (or refused by it for good) or in the spool."""
        if not lines:
            return
        if not self.spooling:
            try:
                out = await self.writer.write(lines, give_up_after_s=self.cfg.spool.after_s)
            except DatabaseUnavailable as exc:
                self.spooling = True
                log.warning("InfluxDB unavailable; spooling batches to disk", error=str(exc),
                            spool=self.cfg.spool.path)
            else:
                self.stats.written += out.written
                self.stats.write_rejected += out.rejected
                return
        if not self._spool_broken:
            try:
                # always gzip'd on disk (~5× smaller); InfluxDB takes gzip bodies as they are
                body = self.writer.encode(lines, gzipped=True)
                dropped = self.spool.dropped
                await asyncio.to_thread(self.spool.append, str(len(lines)), body)
                self.stats.spooled += len(lines)
                if self.spool.dropped > dropped:
                    log.error("spool full: oldest batches dropped", dropped=self.spool.dropped - dropped,
                              total_dropped=self.spool.dropped, max_bytes=self.cfg.spool.max_bytes)
                self._spool_wake.set()
                return
            except sqlite3.Error as exc:  # disk full, broken file: the broker keeps the data instead
                self._spool_broken = True
                log.error("spool unusable; holding messages unacknowledged until InfluxDB is back",
                          error=str(exc), spool=self.cfg.spool.path)
        out = await self.writer.write(lines)  # never gives up: backpressure to the broker
        self.stats.written += out.written
        self.stats.write_rejected += out.rejected
        self.spooling = False

    async def _drainer(self) -> None:
        """Write the spool back to InfluxDB, oldest batch first, deleting each once written."""
        delay = BACKOFF_MIN_S
        while True:
            row = await oldest(self.spool, self._spool_wake)
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
            self.stats.drained += out.written
            self.stats.written += out.written
            self.stats.write_rejected += out.rejected
            if not self.spool.count:
                log.info("spool drained", drained=self.stats.drained)

    # -- counters --------------------------------------------------------------------------------
    def stats_lines(self, now_ms: int) -> list[str]:
        """The counters as InfluxDB lines (cumulative since start; Grafana takes the rate)."""
        st = self.stats
        fields = {
            "received": st.received, "accepted": st.accepted, "values": st.values,
            "rejected": sum(st.rejected.values()), "written": st.written,
            "write_rejected": st.write_rejected, "retried": self.writer.retries,
            "spooled": st.spooled, "drained": st.drained, "spool_dropped": self.spool.dropped,
            "spool_rows": self.spool.count, "spool_bytes": self.spool.bytes, "acked": st.acked,
            "seq_gaps": sum(st.seq_gaps.values()), "restarts": sum(st.restarts.values()),
        }
        if self.results is not None:
            fields |= {"command_results": self.results.recorded,
                       "command_results_failed": self.results.failed}
        if self.alerts is not None:
            a = self.alerts.stats
            fields |= {"alert_transitions": a.transitions, "alert_pages": a.pages,
                       "alert_rule_errors": a.rule_errors,
                       "alert_store_retries": a.store_retries, "webhook_sent": a.webhook_sent,
                       "webhook_failed": a.webhook_failed, "webhook_retries": a.webhook_retries}
        client = self.cfg.client_id
        out = [f"collector,client_id={client} " + ",".join(f"{k}={v}i" for k, v in fields.items())
               + f" {now_ms}"]
        out += [f"collector_rejects,client_id={client},reason={reason} count={n}i {now_ms}"
                for reason, n in st.rejected.items()]
        out += [f"ingest,station={s} messages={n}i,seq_gaps={st.seq_gaps[s]}i,"
                f"restarts={st.restarts[s]}i {now_ms}" for s, n in st.messages.items()]
        return out

    async def _reporter(self, inbox: asyncio.Queue[tuple[int, str, bytes]]) -> None:
        while True:
            await asyncio.sleep(self.cfg.stats.interval_s)
            if self.spool.count:
                n = await asyncio.to_thread(self.spool.expire)
                if n:
                    log.error("spooled batches older than spool.max_age_h dropped", dropped=n)
            self._stats_lines = self.stats_lines(int(self.clock() * 1000))
            inbox.put_nowait((0, "", b""))  # wake the batcher so the lines go out now
