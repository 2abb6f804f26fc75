"""The collector's counters: one table (``TABLE``) that both ``/metrics`` and the stats lines are
made from.

The hot path only bumps plain ints in ``Stats`` (and the writer's and spool's own counters);
nothing is locked or copied per message. Each row of the table names a figure once: Prometheus
serves it as ``heatwatch_collector_<name>`` (``_total`` for counters), read at scrape time by a
custom prometheus_client collector; every ``stats.interval_s`` the same rows become InfluxDB lines
(``stats_lines``): unlabelled figures are fields of the ``collector`` measurement, a labelled
family is a field of its own measurement with the label as a tag (``collector_rejects`` by
reason, ``ingest`` by station, ``collector_gc`` by generation) and, where ``total`` is set, its
sum is a ``collector`` field too. The latency histogram is stored as its count and sum.
Integers are stored as InfluxDB integers, clamped to int64 so a counter can never make its line
unwritable.
"""

from __future__ import annotations

import gc
import time
from bisect import bisect_left
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Protocol

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector as _PromCollector

from contract.influx import (
    MEASUREMENT_COLLECTOR,
    MEASUREMENT_COLLECTOR_GC,
    MEASUREMENT_COLLECTOR_REJECTS,
    MEASUREMENT_INGEST,
)

if TYPE_CHECKING:
    from collector.influx import InfluxWriter
    from collector.receipt import Receipts
    from collector.receive import MqttReceive
    from collector.stages import Inbox
    from contract.config import CollectorConfig
    from durable.queue import DiskQueue

P = "heatwatch_collector_"


@dataclass
class Stats:
    received: int = 0
    accepted: int = 0  # telemetry messages that passed validation
    values: int = 0  # readings in accepted telemetry
    rejected: Counter[str] = field(default_factory=Counter)  # by reason
    written: int = 0  # lines InfluxDB took
    write_rejected: int = 0  # lines InfluxDB refused
    influx_rejects: Counter[str] = field(default_factory=Counter)  # the same, by reason
    acked: int = 0
    spooled: int = 0  # lines put in the disk spool
    drained: int = 0  # lines written from the spool to InfluxDB
    messages: Counter[str] = field(default_factory=Counter)  # accepted telemetry by station
    seq_gaps: Counter[str] = field(default_factory=Counter)  # by station
    restarts: Counter[str] = field(default_factory=Counter)  # by station (new boot id)
    restamped: Counter[str] = field(default_factory=Counter)  # by station: stored at receipt time
    receipts: int = 0  # receipts published
    receipted: int = 0  # messages they cover
    receipts_dropped: int = 0  # receipts not published: too many awaiting the broker


class GcClock:
    """Time the interpreter spends in garbage collection, per generation (``gc.callbacks``).

    The rule engine keeps ~100,000 long-lived sensor objects; a full collection walks all of
    them, so this is the figure that says whether GC is what the engine costs end to end."""

    def __init__(self) -> None:
        self.seconds = [0.0, 0.0, 0.0]
        self.collections = [0, 0, 0]
        self._t0 = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._t0 = time.perf_counter()
        else:
            g = info["generation"]
            self.seconds[g] += time.perf_counter() - self._t0
            self.collections[g] += 1

    def install(self) -> GcClock:
        if self not in gc.callbacks:
            gc.callbacks.append(self)
        return self


GC_CLOCK = GcClock()  # one per process: the collections it counts are the process's

# seconds from a reading's sample time at the gateway to durable at the collector
LATENCY_BUCKETS_S = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0)


class Histogram:
    """A Prometheus histogram filled a batch at a time from the event loop.

    Plain counts, no lock: the scrape thread reads a list of ints, at worst one batch behind.
    (prometheus_client's Histogram takes a lock per observation: 1,500 of them a second here.)"""

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.sum = 0.0
        self.count = 0

    def observe_since(self, sample_ts_ms: list[int], now_s: float) -> None:
        """One observation per sample time: ``now`` − sample time (a clock behind us counts 0)."""
        counts, bounds, now_ms = self.counts, self.bounds, now_s * 1000
        total = 0.0
        for ts in sample_ts_ms:
            d = (now_ms - ts) / 1000 if now_ms > ts else 0.0
            counts[bisect_left(bounds, d)] += 1
            total += d
        self.sum += total
        self.count += len(sample_ts_ms)

    def buckets(self) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        cum = 0
        for bound, c in zip((*self.bounds, float("inf")), self.counts, strict=True):
            cum += c
            out.append(("+Inf" if bound == float("inf") else repr(bound), cum))
        return out


Number = int | float


class Collector(Protocol):
    """What the table reads (``collector.app.Collector``)."""

    @property
    def cfg(self) -> CollectorConfig: ...
    @property
    def stats(self) -> Stats: ...
    @property
    def writer(self) -> InfluxWriter: ...
    @property
    def spool(self) -> DiskQueue: ...
    @property
    def spooling(self) -> bool: ...
    @property
    def inbox(self) -> Inbox: ...
    @property
    def latency(self) -> Histogram: ...
    @property
    def receipts(self) -> Receipts: ...
    @property
    def receive(self) -> MqttReceive: ...


@dataclass(frozen=True)
class Row:
    """One figure of the collector. ``read`` gets it from the running collector: a number, or for
    a labelled family (``label`` set) a mapping of label value → number."""

    name: str
    doc: str
    read: Callable[[Collector], Number | Mapping[str, Number]]
    kind: Literal["counter", "gauge"] = "counter"
    label: str | None = None
    measurement: str = MEASUREMENT_COLLECTOR  # a labelled family's own measurement
    field: str | None = None  # its field there (default: name)
    total: bool = False  # a labelled family whose sum is also a ``collector`` field
    member_tag: bool = True  # tagged with the collector's client_id in InfluxDB


_PER_GEN = ("0", "1", "2")

TABLE: tuple[Row, ...] = (
    Row("received", "MQTT messages received", lambda c: c.stats.received),
    Row("accepted", "telemetry messages that passed validation", lambda c: c.stats.accepted),
    Row("values", "readings in accepted telemetry", lambda c: c.stats.values),
    Row("rejected", "messages rejected, by reason", lambda c: c.stats.rejected, label="reason",
        measurement=MEASUREMENT_COLLECTOR_REJECTS, field="count", total=True),
    Row("written", "lines InfluxDB accepted", lambda c: c.stats.written),
    Row("write_rejected", "lines InfluxDB refused for good", lambda c: c.stats.write_rejected),
    Row("influx_rejects", "lines InfluxDB refused for good, by reason (unparsable, type_conflict, "
        "refused)", lambda c: c.stats.influx_rejects, label="reason",
        measurement=MEASUREMENT_COLLECTOR_REJECTS, field="lines"),
    Row("retried", "InfluxDB write attempts that failed and were retried", lambda c: c.writer.retries),
    Row("spooled", "lines put in the disk spool while InfluxDB was unavailable", lambda c: c.stats.spooled),
    Row("drained", "lines written from the spool to InfluxDB", lambda c: c.stats.drained),
    Row("spool_dropped", "spooled batches dropped by the spool's byte or age bound",
        lambda c: c.spool.dropped),
    Row("acked", "messages acknowledged to the broker", lambda c: c.stats.acked),
    Row("receipts", "receipts published to gateways (one per station and boot per batch)",
        lambda c: c.stats.receipts),
    Row("receipted", "telemetry messages receipted (stored, or rejected for good)",
        lambda c: c.stats.receipted),
    Row("receipts_dropped", "receipts dropped: too many stations waiting for the broker (their "
        "gateways re-send)", lambda c: c.stats.receipts_dropped),
    Row("receipts_waiting", "stations whose receipts wait for the broker's Receive Maximum",
        lambda c: len(c.receipts.pending), kind="gauge"),
    Row("published_refused", "receipts the broker refused (PUBACK reason, e.g. the ACL)",
        lambda c: c.receive.client.refused),
    Row("inbox_bytes", "payload bytes of the received messages waiting", lambda c: c.inbox.bytes,
        kind="gauge"),
    # the alert on a collector that cannot keep up watches this, not ``inbox``: a healthy busy
    # collector's inbox is rarely empty (deliveries wait up to batch.max_delay_s for their batch)
    Row("inbox_full", "1 while the inbox is at its bound (receive_maximum messages or "
        "receive_max_bytes): the receive stage stops reading and the backlog waits at the broker",
        lambda c: int(c.inbox.full), kind="gauge"),
    Row("messages", "accepted telemetry messages, by station", lambda c: c.stats.messages,
        label="station", measurement=MEASUREMENT_INGEST, member_tag=False),
    Row("seq_gaps", "messages missing from gateways' sequence numbers, by station",
        lambda c: c.stats.seq_gaps, label="station", measurement=MEASUREMENT_INGEST, total=True,
        member_tag=False),
    Row("restarts", "gateway restarts seen (new boot id), by station", lambda c: c.stats.restarts,
        label="station", measurement=MEASUREMENT_INGEST, total=True, member_tag=False),
    Row("restamped", "telemetry messages stamped more than ingest.max_future_s ahead of their "
        "receipt (a gateway clock running fast), stored at their receipt time, by station",
        lambda c: c.stats.restamped, label="station", measurement=MEASUREMENT_INGEST, total=True,
        member_tag=False),
    Row("inbox", "received messages waiting to be validated and batched",
        lambda c: len(c.inbox.deliveries), kind="gauge"),
    Row("spool_rows", "batches waiting in the spool", lambda c: c.spool.count, kind="gauge"),
    Row("spool_bytes", "bytes waiting in the spool", lambda c: c.spool.bytes, kind="gauge"),
    Row("spooling", "1 while InfluxDB is failing and batches are spooled", lambda c: int(c.spooling),
        kind="gauge"),
    Row("gc_seconds", "time in garbage collection, by generation",
        lambda c: dict(zip(_PER_GEN, GC_CLOCK.seconds, strict=True)), label="generation",
        measurement=MEASUREMENT_COLLECTOR_GC, field="seconds"),
    Row("gc_collections", "garbage collections, by generation",
        lambda c: dict(zip(_PER_GEN, GC_CLOCK.collections, strict=True)), label="generation",
        measurement=MEASUREMENT_COLLECTOR_GC, field="collections"),
)
LATENCY = ("latency_seconds", "live telemetry from its sample time at the gateway to durable "
           "(InfluxDB or spool) at the collector")
INT64_MAX = 2**63 - 1


def _rows(c: Collector) -> Iterator[Row]:
    return iter(TABLE)


class _Source(_PromCollector):
    def __init__(self, c: Collector) -> None:
        self.c = c

    def collect(self) -> Iterator[Metric]:
        c = self.c
        for r in _rows(c):
            value = r.read(c)
            family = CounterMetricFamily if r.kind == "counter" else GaugeMetricFamily
            if r.label is None:
                assert not isinstance(value, Mapping)
                yield family(P + r.name, r.doc, value=value)
                continue
            assert isinstance(value, Mapping)
            m = family(P + r.name, r.doc, labels=[r.label])
            for key, n in sorted(value.items()):
                m.add_metric([key], n)
            yield m
        yield HistogramMetricFamily(P + LATENCY[0], LATENCY[1], buckets=c.latency.buckets(),
                                    sum_value=c.latency.sum)


def _field(v: Number) -> str:
    if type(v) is float:
        return repr(v)
    return f"{min(int(v), INT64_MAX)}i"


def stats_lines(c: Collector, now_ms: int) -> list[str]:
    """The table as InfluxDB lines (cumulative since start; Grafana takes the rate)."""
    member = f"client_id={c.cfg.client_id}"
    fields: dict[str, Number] = {}
    labelled: dict[tuple[str, str, bool], dict[str, dict[str, Number]]] = {}  # → label value → fields
    for r in _rows(c):
        value = r.read(c)
        if r.label is None:
            assert not isinstance(value, Mapping)
            fields[r.name] = value
            continue
        assert isinstance(value, Mapping)
        if r.total:
            fields[r.name] = sum(value.values())
        per = labelled.setdefault((r.measurement, r.label, r.member_tag), {})
        for key, n in value.items():
            per.setdefault(key, {})[r.field or r.name] = n
    fields[LATENCY[0] + "_count"] = c.latency.count
    fields[LATENCY[0] + "_sum"] = float(c.latency.sum)
    out = [f"{MEASUREMENT_COLLECTOR},{member} " + ",".join(f"{k}={_field(v)}" for k, v in fields.items())
           + f" {now_ms}"]
    for (measurement, label, tagged), per in labelled.items():
        names = [r.field or r.name for r in TABLE if r.measurement == measurement]  # every field, always
        head = f"{measurement},{member}," if tagged else f"{measurement},"
        out += [f"{head}{label}={key} " + ",".join(f"{f}={_field(fs.get(f, 0))}" for f in names)
                + f" {now_ms}" for key, fs in per.items()]
    return out


def serve(c: Collector, host: str, port: int) -> int:
    """Start the endpoint in a daemon thread; return the port it listens on."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Source(c))
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return int(server.server_port)
