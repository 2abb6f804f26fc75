"""Prometheus ``/metrics`` for the alerter, read from its counters at scrape time (a custom
prometheus_client collector: the hot path only bumps plain ints). Names: ``heatwatch_alerter_*``."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector as _PromCollector

if TYPE_CHECKING:
    from alerter.app import Alerter

P = "heatwatch_alerter_"


class _Source(_PromCollector):
    def __init__(self, a: Alerter) -> None:
        self.a = a

    def collect(self) -> Iterator[Metric]:
        a = self.a
        js, st = a.judge.stats, a.stats
        counters: list[tuple[str, str, float]] = [
            ("received", "MQTT messages received", js.received),
            ("judged", "messages judged by an owned partition's engine", js.judged),
            ("standby", "messages kept for partitions another member judges", js.standby),
            ("replayed", "standby messages judged at a takeover", js.replayed),
            ("caught_up", "standby messages judged again quietly at a takeover (committed before)",
             js.caught_up),
            ("rule_samples", "readings the rule engines judged", a.judge.samples_judged()),
            ("rule_errors", "messages and ticks the rule engine failed on", js.rule_errors),
            ("takeovers", "partitions taken over", js.takeovers),
            ("handovers", "partitions given up (handed over or lost)", js.handovers),
            ("replay_incomplete", "takeovers whose standby did not reach back to the snapshot",
             js.replay_incomplete),
            ("acked", "messages acknowledged to the broker", st.acked),
            ("alert_transitions", "alert transitions recorded in the store", st.transitions),
            ("alert_pages", "alert transitions paged", st.pages),
            ("command_results", "command results recorded in the store", st.results),
            ("store_retries", "alert store commits that failed and were retried", st.store_retries),
            ("snapshots", "partition snapshots written", st.snapshots),
            ("renotified", "unacknowledged critical alerts paged again", st.renotified),
            ("lease_rounds", "lease rounds done", st.rounds),
            ("lease_round_errors", "lease rounds that failed (the store away)", st.round_errors),
            ("partitions_lost", "partitions found taken by another member", st.lost),
            ("standby_dropped", "standby messages dropped for room before their window ended",
             a.standby.dropped),
        ]
        if a.senders is not None:
            ps = a.senders.stats
            counters += [
                ("published", "transitions published on the alert topic", ps.published),
                ("webhook_sent", "pages delivered to every webhook", ps.webhook_sent),
                ("webhook_failed", "pages a webhook refused for good (4xx)", ps.webhook_failed),
                ("webhook_retries", "webhook deliveries that failed and were retried", ps.webhook_retries),
            ]
        for name, doc, value in counters:
            yield CounterMetricFamily(P + name, doc, value=value)
        rejected = CounterMetricFamily(P + "rejected", "messages not judged, by reason", labels=["reason"])
        for reason, n in sorted(js.rejected.items()):
            rejected.add_metric([reason], n)
        yield rejected
        yield CounterMetricFamily(P + "rules_cpu_seconds", "CPU time in the rule engines "
                                  "(observe, status, tick, snapshot)", value=js.rules_cpu_ns / 1e9)
        yield CounterMetricFamily(P + "commit_seconds", "time in store commits", value=st.commit_ns / 1e9)
        yield GaugeMetricFamily(P + "partitions_owned", "partitions this member judges",
                                value=len(a.judge.parts))
        yield GaugeMetricFamily(P + "partitions", "partitions the stations are split into (all members)",
                                value=a.count)
        yield GaugeMetricFamily(P + "alerts_open", "alerts pending or firing in the owned partitions",
                                value=sum(len(p.engine.lives) for p in a.judge.parts.values()))
        yield GaugeMetricFamily(P + "standby_bytes", "bytes of standby messages held",
                                value=a.standby.bytes)
        yield GaugeMetricFamily(P + "takeover_seconds", "the last takeover: lease to judging",
                                value=st.takeover_ms / 1000)
        if a.latest is not None:
            ls = a.latest.stats
            yield GaugeMetricFamily(P + "latest_entities", "stations, buildings and households with "
                                    "latest values held", value=ls.entities)
            yield CounterMetricFamily(P + "latest_written", "latest-value rows upserted in the store",
                                      value=ls.written)
            yield CounterMetricFamily(P + "latest_write_errors", "latest-value flushes that failed "
                                      "(retried next round)", value=ls.write_errors)


def serve(a: Alerter, host: str, port: int) -> int:
    """Start the endpoint in a daemon thread; return the port it listens on."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Source(a))
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return int(server.server_port)
