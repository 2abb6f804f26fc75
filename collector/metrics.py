"""Prometheus ``/metrics`` for the collector, read from its counters at scrape time.

A custom prometheus_client collector: the hot path only bumps plain ints in ``Stats``; nothing
is locked or copied per message. Names follow Prometheus conventions (``_total`` counters).
"""

from __future__ import annotations

import gc
import time
from bisect import bisect_left
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector as _PromCollector

if TYPE_CHECKING:
    from collector.app import Collector

P = "heatwatch_collector_"


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

    def observe_since(self, sample_ts_ms: list[int], now_s: float) -> None:
        """One observation per sample time: ``now`` − sample time (a clock behind us counts 0)."""
        counts, bounds, now_ms = self.counts, self.bounds, now_s * 1000
        total = 0.0
        for ts in sample_ts_ms:
            d = (now_ms - ts) / 1000 if now_ms > ts else 0.0
            counts[bisect_left(bounds, d)] += 1
            total += d
        self.sum += total

    def buckets(self) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        cum = 0
        for bound, c in zip((*self.bounds, float("inf")), self.counts, strict=True):
            cum += c
            out.append(("+Inf" if bound == float("inf") else repr(bound), cum))
        return out


class _Source(_PromCollector):
    def __init__(self, c: Collector) -> None:
        self.c = c

    def collect(self) -> Iterator[Metric]:
        st, c = self.c.stats, self.c
        for name, doc, value in (
            ("received", "MQTT messages received", st.received),
            ("accepted", "telemetry messages that passed validation", st.accepted),
            ("values", "readings in accepted telemetry", st.values),
            ("written", "lines InfluxDB accepted", st.written),
            ("write_rejected", "lines InfluxDB refused for good", st.write_rejected),
            ("retried", "InfluxDB write attempts that failed and were retried", c.writer.retries),
            ("spooled", "lines put in the disk spool while InfluxDB was unavailable", st.spooled),
            ("drained", "lines written from the spool to InfluxDB", st.drained),
            ("spool_dropped", "spooled batches dropped by the spool's byte or age bound", c.spool.dropped),
            ("acked", "messages acknowledged to the broker", st.acked),
        ):
            yield CounterMetricFamily(P + name, doc, value=value)
        rejected = CounterMetricFamily(P + "rejected", "messages rejected, by reason", labels=["reason"])
        for reason, n in sorted(st.rejected.items()):
            rejected.add_metric([reason], n)
        yield rejected
        per_station = (("messages", "accepted telemetry messages", st.messages),
                       ("seq_gaps", "messages missing from gateways' sequence numbers", st.seq_gaps),
                       ("restarts", "gateway restarts seen (new boot id)", st.restarts))
        for name, doc, counter in per_station:
            m = CounterMetricFamily(P + name, doc + ", by station", labels=["station"])
            for station, n in sorted(counter.items()):
                m.add_metric([station], n)
            yield m
        if c.alerts is not None:
            a = c.alerts
            for name, doc, value in (
                ("alert_transitions", "alert transitions recorded in the store", a.stats.transitions),
                ("alert_pages", "alert transitions paged (MQTT alert topic, webhooks)", a.stats.pages),
                ("alert_store_retries", "alert store writes that failed and were retried",
                 a.stats.store_retries),
                ("webhook_sent", "pages delivered to every webhook", a.stats.webhook_sent),
                ("webhook_failed", "pages a webhook refused for good (4xx)", a.stats.webhook_failed),
                ("webhook_retries", "webhook deliveries that failed and were retried",
                 a.stats.webhook_retries),
                ("rule_samples", "readings the rule engine judged", a.engine.samples_judged),
                ("rule_errors", "messages and ticks the rule engine failed on (their data is stored)",
                 a.stats.rule_errors),
            ):
                yield CounterMetricFamily(P + name, doc, value=value)
            yield CounterMetricFamily(P + "rules_cpu_seconds", "CPU time in the rule engine "
                                      "(observe, status, tick, snapshot)", value=a.stats.rules_cpu_ns / 1e9)
            yield GaugeMetricFamily(P + "alerts_open", "alerts pending or firing in the engine",
                                    value=len(a.engine.lives))
        if c.latest is not None:
            ls = c.latest.stats
            yield GaugeMetricFamily(P + "latest_entities", "stations, buildings and households with "
                                    "latest values held", value=ls.entities)
            yield CounterMetricFamily(P + "latest_written", "latest-value rows upserted in the store",
                                      value=ls.written)
            yield CounterMetricFamily(P + "latest_write_errors", "latest-value flushes that failed "
                                      "(retried next round)", value=ls.write_errors)
            yield CounterMetricFamily(P + "latest_refused", "readings of entities beyond max_entities",
                                      value=ls.refused)
            yield CounterMetricFamily(P + "latest_flush_cpu_seconds", "CPU of the latest-value "
                                      "flushes (copy and write)", value=ls.flush_ns / 1e9)
        gc_s = CounterMetricFamily(P + "gc_seconds", "time in garbage collection, by generation",
                                   labels=["generation"])
        gc_n = CounterMetricFamily(P + "gc_collections", "garbage collections, by generation",
                                   labels=["generation"])
        for g in range(3):
            gc_s.add_metric([str(g)], GC_CLOCK.seconds[g])
            gc_n.add_metric([str(g)], GC_CLOCK.collections[g])
        yield gc_s
        yield gc_n
        yield HistogramMetricFamily(
            P + "latency_seconds", "live telemetry from its sample time at the gateway to durable "
            "(InfluxDB or spool) at the collector", buckets=c.latency.buckets(), sum_value=c.latency.sum)
        yield GaugeMetricFamily(P + "inbox", "received messages waiting to be validated and batched",
                                value=c.inbox.qsize() if c.inbox is not None else 0)
        yield GaugeMetricFamily(P + "spool_rows", "batches waiting in the spool", value=c.spool.count)
        yield GaugeMetricFamily(P + "spool_bytes", "bytes waiting in the spool", value=c.spool.bytes)
        yield GaugeMetricFamily(P + "spooling", "1 while InfluxDB is failing and batches are spooled",
                                value=int(c.spooling))


def serve(c: Collector, host: str, port: int) -> int:
    """Start the endpoint in a daemon thread; return the port it listens on."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Source(c))
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return int(server.server_port)
