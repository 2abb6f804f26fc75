"""The collector's ingest, wired in one place (``Collector.__init__`` builds the stages and the
queues between them, ``Collector.run`` starts them): receive → validate → (taps) → lines → batch
→ write or spool → acknowledge.

    stage          module                   takes                          emits
    receive        collector/receive.py     MQTT PUBLISHes                 Delivery → Inbox
    validate       collector/validate.py    topic, payload, now            Frame | status | result
                                                                           | Rejected
    (taps)         here                     what validate made             the rule engine's inputs;
                                                                           latest values (latest.py)
    lines          collector/lines.py       what validate made             line protocol
    batch          collector/batch.py       Inbox (deliveries, control)    Batch → batches (≤ 2)
    write or spool collector/store.py       batches                        (Batch, write) → written
      + results    collector/commands.py    a batch's command results      recorded in the store
    acknowledge    collector/acknowledge.py written, in order              alert records, PUBACKs
    receipt        collector/receipt.py     a durable batch's seqs         receipts to the gateways

``collector/stages.py`` holds what they pass each other. Memory is bounded: at most
``receive_maximum`` deliveries or ``receive_max_bytes`` of payload wait in the inbox (the receive
stage stops reading the socket while it is full; a payload over the contract's 1 MB is not kept at
all), two batches wait for a write, and ``batch.concurrency`` batches are being written or
acknowledged, each at most ``batch.max_lines`` lines and ``batch.max_bytes``. Every message, good or
rejected, rides in the same batches in arrival order, so PUBACKs go out in the order the PUBLISHes
came in, and only once their batch is durable (InfluxDB or the spool). A rejected message is stored
as a ``rejects`` line, then acknowledged: bad input is never redelivered forever, and never silently
dropped. Once durable, a batch's telemetry is receipted to its gateways (``collector/receipt.py``),
so they keep their outbox rows until then and re-send what is never receipted: the broker's PUBACK
is not durability.

With ``alerts:`` (the collector that keeps the alert store) two taps see every validated message in
arrival order: the rule engine and the latest values (``collector/latest.py``, flushed to the
store's ``latest`` table by its own task); and command results are subscribed to, carried like any
message and recorded in the store alongside their batch's write, before their PUBACK.

Start-up order: the alert store is opened first (a store that cannot be opened stops the start
with one line, ``CannotOpen``, before anything waits for InfluxDB or the broker); then the
``/metrics`` endpoint, InfluxDB's database, the latest values read back, and the tasks.

Beside the stages: the alert ticker and the stats reporter, which reach the batch stage through the
inbox's control path; the spool drainer; the latest-value flusher; InfluxDB's retention and rollup
set-up when ``influx.lifecycle`` asks (``collector/lifecycle.py``: logs, never stops ingest); the
garbage-collector keeper; the ``/metrics`` endpoint. Counters: ``collector/metrics.py``.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Callable

import structlog

from collector import lifecycle, metrics
from collector.acknowledge import Acknowledge
from collector.alerts import AlertStage
from collector.batch import Batcher, Tap
from collector.commands import ResultStage
from collector.influx import InfluxWriter
from collector.latest import LatestValues
from collector.lines import lines
from collector.metrics import Stats
from collector.receipt import Receipts
from collector.receive import MqttReceive
from collector.stages import AlertsDue, Batch, GatewaySeen, Inbox, StatsLines, Trimmed, Validated
from collector.store import WriteOrSpool, Written
from collector.validate import Validate
from contract.alerts import AlertRules, Transition
from contract.config import CollectorConfig
from contract.influx import TELEMETRY_MEASUREMENTS
from contract.payload import Frame, StationStatus
from durable.queue import DiskQueue

log = structlog.get_logger("heatwatch.collector")


def alert_tap(alerts: AlertStage) -> Tap:
    """Feed the rule engine every validated message, in arrival order (it keeps its own
    transitions pending; the batch stage takes them into the batch of the message that caused them)."""

    def tap(item: Validated, now_ms: int) -> None:
        if isinstance(item, Trimmed):
            item = item.frame
        if isinstance(item, Frame):
            alerts.observe(item, now_ms)
        elif isinstance(item, StationStatus):
            alerts.station_status(item, now_ms)
        elif isinstance(item, GatewaySeen):
            alerts.gateway_status(item.status, item.received_ms)

    return tap


def latest_tap(latest: LatestValues) -> Tap:
    """Keep the latest value per station, building and household from every validated message."""

    def tap(item: Validated, _now_ms: int) -> None:
        if isinstance(item, Trimmed):
            item = item.frame
        if isinstance(item, Frame):
            latest.observe(item)
        elif isinstance(item, StationStatus):
            latest.station_status(item)
        elif isinstance(item, GatewaySeen):
            latest.gateway_status(item.status)

    return tap


class Collector:
    def __init__(self, cfg: CollectorConfig, *, clock: Callable[[], float] = time.time) -> None:
        self.cfg, self.clock = cfg, clock
        self.stats = Stats()
        metrics.GC_CLOCK.install()
        self.latency = metrics.Histogram(metrics.LATENCY_BUCKETS_S)  # sample time → durable
        self.metrics_port: int | None = None
        self.connected = asyncio.Event()
        self.writer = InfluxWriter(cfg.influx)
        # the rule engine (a config or rule-file error raises here, at start-up)
        self.alerts = AlertStage(cfg.alerts, clock=clock) if cfg.alerts is not None else None
        # command results, recorded in the same store (only with it)
        self.results = ResultStage(self.alerts.store.engine, clock=clock) if self.alerts is not None else None
        # the latest value per entity for the hotline: only where the rules run, which sees every
        # message of its stations (a shared-subscription member sees a part)
        self.latest = (LatestValues(self.alerts.store.latest, interval_s=cfg.alerts.latest_s, clock=clock)
                       if self.alerts is not None and cfg.alerts is not None and cfg.alerts.latest_s
                       else None)

        # -- the ingest stages, in order, and the bounded queues between them -----------------
        self.inbox = Inbox(cfg.receive_maximum, cfg.receive_max_bytes)  # receive → batch (+ control)
        self.receive = MqttReceive(cfg, self.inbox, self.connected, results=self.results is not None)
        self.validate = Validate(cfg.ingest, self.stats, results=self.results is not None)
        self.taps: list[Tap] = []
        if self.alerts is not None:
            self.taps.append(alert_tap(self.alerts))
        if self.latest is not None:
            self.taps.append(latest_tap(self.latest))
        # batch → write: two batches wait at most, so a slow InfluxDB slows the batch stage
        self.batches: asyncio.Queue[Batch] = asyncio.Queue(maxsize=2)
        self.batcher = Batcher(cfg.batch, self.inbox, self.batches, validate=self.validate,
                               taps=self.taps, lines=lines, alerts=self.alerts, clock=clock)
        self.store = WriteOrSpool(cfg.spool, self.writer, self.stats,  # a spool it cannot open: CannotOpen
                                  record_results=self.results.record if self.results is not None else None)
        self.written: asyncio.Queue[Written] = asyncio.Queue()  # write → acknowledge, ≤ slots long
        self.slots = asyncio.Semaphore(cfg.batch.concurrency)
        self.receipts = Receipts(self.receive.publish, self.receive.room, self.stats)  # beside the PUBACKs
        self.acknowledge = Acknowledge(self.receive.ack, self.stats, self.latency,
                                       self._record if self.alerts is not None else None, clock,
                                       receipt=self.receipts)

    async def _record(self, trs: list[Transition]) -> None:
        assert self.alerts is not None
        await self.alerts.record(trs, self.receive.client)

    @property
    def spool(self) -> DiskQueue:
        return self.store.spool

    @property
    def spooling(self) -> bool:
        return self.store.spooling

    def _plausible(self) -> tuple[float, float]:
        """The room sensors' plausible range of the rule file: the 1-hour rollup's room means."""
        rules = self.alerts.rules if self.alerts is not None else AlertRules()
        return rules.sensor.plausible_min, rules.sensor.plausible_max

    async def run(self) -> None:
        alerts, latest = self.alerts, self.latest
        if alerts is not None:
            # first: a store that cannot be opened stops the start-up with one line (CannotOpen),
            # before anything waits for InfluxDB or the broker
            try:
                await asyncio.to_thread(alerts.start)
            except BaseException:
                await self.writer.close()
                self.spool.close()
                raise
        try:
            st = self.cfg.stats
            if st.metrics_port is not None:
                self.metrics_port = metrics.serve(self, st.metrics_host, st.metrics_port)
                log.info("metrics", url=f"http://{st.metrics_host}:{self.metrics_port}/metrics")
            await self.writer.ensure_database_retrying()
            # the custom points' kinds InfluxDB holds already, before the first message
            seeded = self.validate.seed_kinds(await self.writer.field_types(TELEMETRY_MEASUREMENTS))
            log.info("custom point kinds read from InfluxDB", points=seeded)
            if latest is not None:
                await asyncio.to_thread(latest.load)  # before the first message: rows stay whole
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self.receive.run())
                tg.create_task(self.batcher.run())
                tg.create_task(self.store.run(self.batches, self.written, self.slots, tg))
                tg.create_task(self.acknowledge.run(self.written, self.slots))
                tg.create_task(self.receipts.run())
                tg.create_task(self.store.drain())
                tg.create_task(self._reporter())
                tg.create_task(self._gc_keeper())
                # logs, never raises
                tg.create_task(lifecycle.setup_at_start(self.cfg.influx, self._plausible()))
                if alerts is not None:
                    tg.create_task(alerts.ticker(lambda: self.inbox.send(AlertsDue())))
                    tg.create_task(alerts.webhooks())
                if latest is not None:
                    tg.create_task(latest.flusher())
        finally:
            await self.writer.close()
            self.spool.close()
            if latest is not None:
                await latest.close()  # the last changes
            if alerts is not None:
                alerts.close()

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

    # -- counters --------------------------------------------------------------------------------
    def stats_lines(self, now_ms: int) -> list[str]:
        """The counters as InfluxDB lines (``collector/metrics.py``'s table)."""
        return metrics.stats_lines(self, now_ms)

    async def _reporter(self) -> None:
        """Every ``stats.interval_s``: expire the spool's old batches, send the counters' lines."""
        while True:
            await asyncio.sleep(self.cfg.stats.interval_s)
            await self.store.expire()
            self.inbox.send(StatsLines(self.stats_lines(int(self.clock() * 1000))))
