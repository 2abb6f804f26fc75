"""Prometheus ``/metrics`` for a gateway process, read from its counters at scrape time.

The poll loops, the publisher and the Modbus links only bump plain ints (and the ``Histogram``
below) on the event loop; the scrape thread reads them, at worst one observation behind. Nothing
is locked per poll or per message; the one scrape-time query is the outbox's oldest row (a
primary-key lookup under the outbox's own lock).

One endpoint per process (``metrics:`` in the gateway config, off by default), whatever the
number of stations it polls: every series carries ``station``. What it shows (all named
``heatwatch_gateway_…``; docs/operations.md lists the alerts built on them):

- the outbox: rows, bytes, age of the oldest row, its age bound, rows dropped by a bound, rows
  sent and awaiting the collector's receipt;
- the broker connection: connected, messages awaiting their PUBACK, published, acknowledged,
  refused by the broker, sent as backfill, and the seconds from hand-over to PUBACK;
- receipts: received, refused by reason, rows they deleted, rows sent again past the timeout;
- per device: its state (online / degraded / offline, one series each, 1 for the current one),
  Modbus round-trip seconds, Modbus exceptions by code, requests that got no answer;
- poll cycles finished per poll group, readings refused at decode (published bad) by reason,
  remote commands by outcome and by refusal reason.
"""

from __future__ import annotations

import contextlib
import time
from bisect import bisect_left
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import structlog
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector as _PromCollector

from contract.payload import DeviceState

if TYPE_CHECKING:
    from gateway.app import Gateway

P = "heatwatch_gateway_"
log = structlog.get_logger("heatwatch.gateway.metrics")


class Histogram:
    """A Prometheus histogram kept as plain ints on the event loop and read by the scrape thread
    (prometheus_client's own takes a lock per observation)."""

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, v: float) -> None:
        self.counts[bisect_left(self.bounds, v)] += 1
        self.sum += v

    def buckets(self) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        cum = 0
        for bound, c in zip((*self.bounds, float("inf")), self.counts, strict=True):
            cum += c
            out.append(("+Inf" if bound == float("inf") else repr(bound), cum))
        return out


class _Source(_PromCollector):
    def __init__(self, gateways: Sequence[Gateway]) -> None:
        self.gateways = gateways

    def collect(self) -> Iterator[Metric]:
        now_ms = time.time() * 1000

        def g(name: str, doc: str) -> GaugeMetricFamily:
            return GaugeMetricFamily(P + name, doc, labels=["station"])

        def c(name: str, doc: str) -> CounterMetricFamily:
            return CounterMetricFamily(P + name, doc, labels=["station"])

        rows, size, age, max_age, dropped = (
            g("outbox_messages", "messages in the outbox (not yet receipted by the collector, or "
              "acknowledged by the broker where no receipt is awaited)"),
            g("outbox_bytes", "bytes in the outbox"),
            g("outbox_oldest_age_seconds", "age of the oldest message in the outbox (0 when empty)"),
            g("outbox_max_age_seconds", "the outbox's age bound: older messages are dropped"),
            c("outbox_dropped", "messages dropped by the outbox's byte or age bound"))
        connected, inflight = (g("mqtt_connected", "1 while connected to the broker"),
                               g("mqtt_inflight", "messages handed to the broker awaiting their PUBACK"))
        published, acked, refused, backfilled, messages = (
            c("published", "messages handed to the broker connection"),
            c("acked", "messages the broker acknowledged (deleted from the outbox then unless they wait "
                       "for a receipt)"),
            c("refused", "messages the broker refused (MQTT 5 reason code; kept, offered again)"),
            c("backfilled", "messages sent late, marked backfill"),
            c("telemetry_messages", "telemetry messages put in the outbox"))
        unreceipted, receipts, receipted, resent = (
            g("outbox_unreceipted", "messages sent and not yet receipted by the collector (kept in the "
              "outbox; 0 with outbox.receipts off)"),
            c("receipts", "receipts received from the collector (refused ones included)"),
            c("receipted", "outbox rows deleted by a receipt"),
            c("resent", "outbox rows sent again: unreceipted past outbox.receipt_timeout_s while later "
              "ones were receipted"))
        receipts_refused = CounterMetricFamily(P + "receipts_refused", "receipts refused (nothing deleted), "
                                               "by reason", labels=["station", "reason"])
        cycles = CounterMetricFamily(P + "poll_cycles", "poll cycles finished", labels=["station", "group"])
        state = GaugeMetricFamily(P + "device_state", "1 for the device's current state",
                                  labels=["station", "device", "state"])
        exceptions = CounterMetricFamily(P + "modbus_exceptions", "Modbus exception answers, by code "
                                         "(2: illegal data address, a wrong map)",
                                         labels=["station", "device", "code"])
        no_answer = CounterMetricFamily(P + "modbus_no_answer", "Modbus requests that got no answer "
                                        "(timeout, no connection)", labels=["station", "device"])
        refused_readings = CounterMetricFamily(
            P + "readings_refused", "readings published as bad instead of a value that must not go out, "
            "by reason (inexact: a 64-bit integer beyond ±2^53; kind: not the point's kind)",
            labels=["station", "reason"])
        commands = CounterMetricFamily(P + "commands", "remote commands, by outcome",
                                       labels=["station", "state"])
        refusals = CounterMetricFamily(P + "command_reasons", "remote commands not confirmed, by outcome "
                                       "and reason", labels=["station", "state", "reason"])
        rtts: list[Metric] = []
        latencies: list[Metric] = []
        for gw in self.gateways:
            st = gw.cfg.station
            q = gw.outbox
            rows.add_metric([st], q.count)
            size.add_metric([st], q.bytes)
            try:
                oldest = q.oldest_ms()
            except Exception:  # the outbox closed under a scrape at shutdown
                oldest = None
            age.add_metric([st], max(0.0, (now_ms - oldest) / 1000) if oldest is not None else 0.0)
            max_age.add_metric([st], q.max_age_s)
            dropped.add_metric([st], q.dropped)
            pub = gw.publisher
            if pub is not None:
                connected.add_metric([st], int(pub.client.connected))
                inflight.add_metric([st], pub.client.inflight)
                for fam, v in ((published, pub.published), (acked, pub.acked), (refused, pub.refused),
                               (backfilled, pub.backfilled)):
                    fam.add_metric([st], v)
                with contextlib.suppress(Exception):  # the outbox closed under a scrape at shutdown
                    unreceipted.add_metric([st], pub.unreceipted())
                for fam, v in ((receipts, pub.receipts_received), (receipted, pub.rows_receipted),
                               (resent, pub.resent)):
                    fam.add_metric([st], v)
                for reason, n in sorted(pub.receipts_refused.items()):
                    receipts_refused.add_metric([st, reason], n)
                h = HistogramMetricFamily(P + "publish_seconds", "seconds from handing a message to the "
                                          "broker connection to its PUBACK", labels=["station"])
                h.add_metric([st], pub.latency.buckets(), pub.latency.sum)
                latencies.append(h)
            messages.add_metric([st], gw.messages)
            for group, n in gw.cycles.items():
                cycles.add_metric([st, group], n)
            for dev in gw.devices:
                name = dev.cfg.name
                for s in DeviceState:
                    state.add_metric([st, name, s.value], int(dev.health.state is s))
                ms = dev.link.stats.get(dev.cfg.device_id)
                if ms is None:
                    continue
                h = HistogramMetricFamily(P + "modbus_rtt_seconds", "Modbus request round trips answered "
                                          "(values or an exception)", labels=["station", "device"])
                h.add_metric([st, name], ms.rtt.buckets(), ms.rtt.sum)
                rtts.append(h)
                for code, n in sorted(ms.exceptions.items()):
                    exceptions.add_metric([st, name, str(code)], n)
                no_answer.add_metric([st, name], ms.no_answer)
            for reason, n in sorted(gw.refused_readings().items()):
                refused_readings.add_metric([st, reason], n)
            if gw.commands is not None:
                for key, n in sorted(gw.commands.counts.items()):
                    state_, _, reason = key.partition(":")
                    if reason:
                        refusals.add_metric([st, state_, reason], n)
                    else:
                        commands.add_metric([st, state_], n)
        yield from (rows, size, age, max_age, dropped, unreceipted, connected, inflight, published, acked,
                    refused, backfilled, receipts, receipted, resent, receipts_refused, messages, cycles,
                    state, exceptions, no_answer, refused_readings, commands, refusals)
        yield from _merge(latencies)
        yield from _merge(rtts)


def _merge(families: list[Metric]) -> Iterator[Metric]:
    """One family per name: each station's and device's histogram was built on its own."""
    if not families:
        return
    first = families[0]
    for other in families[1:]:
        first.samples.extend(other.samples)
    yield first


def serve(gateways: Sequence[Gateway], host: str, port: int) -> int:
    """Start the endpoint in a daemon thread; return the port it listens on."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Source(gateways))
    server, _thread = start_http_server(port, addr=host, registry=registry)
    bound = int(server.server_port)
    log.info("metrics endpoint", url=f"http://{host}:{bound}/metrics",
             stations=[g.cfg.station for g in gateways])
    return bound
