"""The collector's counters: one table makes both /metrics and the stats lines, so every figure
is in both, under the same name; a counter past int64 still gives a writable line."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import CollectorRegistry

from collector import metrics
from collector.app import Collector
from contract.config import CollectorConfig
from contract.influx import (
    MEASUREMENT_COLLECTOR,
    MEASUREMENT_COLLECTOR_GC,
    MEASUREMENT_COLLECTOR_REJECTS,
    MEASUREMENT_INGEST,
)


@pytest.fixture
def collector(tmp_path: Path) -> Iterator[Collector]:
    c = Collector(CollectorConfig.model_validate({
        "kind": "collector", "client_id": "c1", "spool": {"path": str(tmp_path / "spool.sqlite")}}))
    yield c
    c.spool.close()


def _prometheus(c: Collector) -> dict[str, set[tuple[tuple[str, str], ...]]]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(metrics._Source(c))
    out: dict[str, set[tuple[tuple[str, str], ...]]] = {}
    for fam in text_string_to_metric_families(generate_latest(registry).decode()):
        out[fam.name] = {tuple(sorted(s.labels.items())) for s in fam.samples}
    return out


def _fields(line: str) -> tuple[str, dict[str, str], dict[str, str]]:
    head, fields, _ts = line.split(" ")
    measurement, *tags = head.split(",")
    return (measurement, dict(t.split("=") for t in tags), dict(f.split("=") for f in fields.split(",")))


def test_every_row_is_in_metrics_and_in_the_stats_lines_under_one_name(collector: Collector) -> None:
    c = collector
    c.stats.rejected["bad_json"] = 2
    c.stats.messages["st001"], c.stats.seq_gaps["st001"], c.stats.restarts["st001"] = 5, 1, 1
    c.stats.restamped["st001"] = 2
    prom = _prometheus(c)
    lines = [_fields(x) for x in c.stats_lines(1_763_700_000_000)]
    by_measurement: dict[str, list[tuple[dict[str, str], dict[str, str]]]] = {}
    for m, tags, fields in lines:
        by_measurement.setdefault(m, []).append((tags, fields))
    [(tags, collector_fields)] = by_measurement[MEASUREMENT_COLLECTOR]
    assert tags == {"client_id": "c1"}
    for row in metrics.TABLE:
        assert "heatwatch_collector_" + row.name in prom, row.name  # the family (…_total for counters)
        if row.label is None:
            assert row.name in collector_fields, row.name
        else:
            assert any((row.field or row.name) in f for _t, f in by_measurement[row.measurement]), row.name
            if row.total:
                assert row.name in collector_fields, row.name
    assert collector_fields["rejected"] == "2i" and collector_fields["seq_gaps"] == "1i"
    assert collector_fields["restamped"] == "2i"
    assert by_measurement[MEASUREMENT_COLLECTOR_REJECTS] == [({"client_id": "c1", "reason": "bad_json"},
                                                             {"count": "2i", "lines": "0i"})]
    assert by_measurement[MEASUREMENT_INGEST] == [({"station": "st001"},
                                                   {"messages": "5i", "seq_gaps": "1i", "restarts": "1i",
                                                    "restamped": "2i"})]
    assert {t["generation"] for t, _f in by_measurement[MEASUREMENT_COLLECTOR_GC]} == {"0", "1", "2"}
    assert "heatwatch_collector_latency_seconds" in prom
    assert {"latency_seconds_count", "latency_seconds_sum"} <= collector_fields.keys()


def test_a_counter_past_int64_is_clamped_so_its_line_stays_writable(collector: Collector) -> None:
    collector.stats.seq_gaps["st001"] = 10**19  # a forged sequence number did this
    collector.stats.messages["st001"] = 1
    lines = collector.stats_lines(1)
    assert f"seq_gaps={2**63 - 1}i" in lines[0]
    assert any(x.startswith("ingest,station=st001 ") and f"seq_gaps={2**63 - 1}i" in x for x in lines)
