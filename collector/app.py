"""The collector's ingest, wired in one place (``Collector.__init__`` builds the stages and the
queues between them, ``Collector.run`` starts them): receive → validate → lines → batch → write or
spool → acknowledge (→ receipt).

    stage          module                   takes                          emits
    receive        collector/receive.py     MQTT PUBLISHes                 Delivery → Inbox
    validate       collector/validate.py    topic, payload, now            Frame | status | result
                                                                           | transition | Rejected
    lines          collector/lines.py       what validate made             line protocol
    batch          collector/batch.py       Inbox (deliveries, control)    Batch → batches (≤ 2)
    write or spool collector/store.py       batches                        (Batch, write) → written
    acknowledge    collector/acknowledge.py written, in order              PUBACKs
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

The collector stores what is on the bus and nothing else: telemetry, statuses, the gateways'
command results (``commands``) and the alerters' transitions (``alerts``, Grafana's
annotations). It needs no alert store: the rules, the latest-value table and the recording of
command results are the alerter's (``alerter/``), so collectors scale freely on a shared
subscription (``subscription_group``).

Start-up order: the ``/metrics`` endpoint, InfluxDB's database, the custom points' kinds it holds
(read into the validate stage), then the tasks.

Beside the stages: the stats reporter, which reaches the batch stage through the inbox's control
path; the spool drainer; InfluxDB's retention and rollup set-up when ``influx.lifecycle`` asks
(``collector/lifecycle.py``: logs, never stops ingest); the garbage-collector keeper; the
``/metrics`` endpoint. Counters: ``collector/metrics.py``.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Callable

import structlog

from collector import lifecycle, metrics
from collector.acknowledge import Acknowledge
from collector.batch import Batcher
from collector.influx import InfluxWriter
from collector.lines import lines
from collector.metrics import Stats
from collector.receipt import Receipts
from collector.receive import MqttReceive
from collector.stages import Batch, Inbox, StatsLines
from collector.store import WriteOrSpool, Written
from collector.validate import Validate
from contract.config import CollectorConfig
from contract.influx import TELEMETRY_MEASUREMENTS
from durable.queue import DiskQueue

log = structlog.get_logger("heatwatch.collector")


class Collector:
    def __init__(self, cfg: CollectorConfig, *, clock: Callable[[], float] = time.time) -> None:
        self.cfg, self.clock = cfg, clock
        self.stats = Stats()
        metrics.GC_CLOCK.install()
        self.latency = metrics.Histogram(metrics.LATENCY_BUCKETS_S)  # sample time → durable
        self.metrics_port: int | None = None
        self.connected = asyncio.Event()
        self.writer = InfluxWriter(cfg.influx)
        # the room sensors' plausible range of the site's rule file (``rules:``, the alerter's): the
        # 1-hour rollup's plausible room means (a rule file's error raises here, at start-up)
        self.plausible = lifecycle.plausible_of(cfg.rules)

        # -- the ingest stages, in order, and the bounded queues between them -----------------
        self.inbox = Inbox(cfg.receive_maximum, cfg.receive_max_bytes)  # receive → batch (+ control)
        self.receive = MqttReceive(cfg, self.inbox, self.connected)
        self.validate = Validate(cfg.ingest, self.stats)
        # batch → write: two batches wait at most, so a slow InfluxDB slows the batch stage
        self.batches: asyncio.Queue[Batch] = asyncio.Queue(maxsize=2)
        self.batcher = Batcher(cfg.batch, self.inbox, self.batches, validate=self.validate, lines=lines,
                               clock=clock)
        # a spool it cannot open: CannotOpen (one line at start-up)
        self.store = WriteOrSpool(cfg.spool, self.writer, self.stats)
        self.written: asyncio.Queue[Written] = asyncio.Queue()  # write → acknowledge, ≤ slots long
        self.slots = asyncio.Semaphore(cfg.batch.concurrency)
        self.receipts = Receipts(self.receive.publish, self.receive.room, self.stats)  # beside the PUBACKs
        self.acknowledge = Acknowledge(self.receive.ack, self.stats, self.latency, clock,
                                       receipt=self.receipts)

    @property
    def spool(self) -> DiskQueue:
        return self.store.spool

    @property
    def spooling(self) -> bool:
        return self.store.spooling

    async def run(self) -> None:
        try:
            st = self.cfg.stats
            if st.metrics_port is not None:
                self.metrics_port = metrics.serve(self, st.metrics_host, st.metrics_port)
                log.info("metrics", url=f"http://{st.metrics_host}:{self.metrics_port}/metrics")
            await self.writer.ensure_database_retrying()
            # the custom points' kinds InfluxDB holds already, before the first message
            seeded = self.validate.seed_kinds(await self.writer.field_types(TELEMETRY_MEASUREMENTS))
            log.info("custom point kinds read from InfluxDB", points=seeded)
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
                tg.create_task(lifecycle.setup_at_start(self.cfg.influx, self.plausible))
        finally:
            await self.writer.close()
            self.spool.close()

    async def _gc_keeper(self, first_s: float = 5.0, every_s: float = 300.0,
                         full_every_s: float = 3600.0) -> None:
        """Keep the long-lived state out of the garbage collector's full collections.

        Since the rules moved to the alerter the collector holds little that lives long (the
        decoder's caches, the per-station counters); this stays for them and because it is cheap.
        When the rule engine ran here it held ~100,000 sensor objects for 5,000 stations (one full
        collection of them took ~240 ms) and messages in flight got promoted to the oldest
        generation, so full collections kept coming: 7 a minute, 10 % of the CPU. So whatever has lived
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
