"""The Grafana dashboards (``dashboards/``): the committed JSON is what ``dashboards/build.py``
makes, and every query in them — panels, annotations, variables — runs on a real influxd holding
what the pipeline writes (telemetry through the collector's decoder and line encoder, the
collector's own counters, alert transitions) and finds data. A renamed point or measurement
fails here, not in front of an operator."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import yaml

from collector.app import Collector
from contract.alerts import Transition
from contract.config import AlertSettings, CollectorConfig, InfluxSettings, SpoolSettings
from contract.influx import alert_line, telemetry_lines
from contract.payload import decode_telemetry
from contract.points import Kind, lookup
from dashboards import build
from heatwatch.devstack import DEPLOY, Influxd
from tests.conftest import influx_query

STATION_POINTS = ["primary_supply_temp", "primary_return_temp", "secondary_supply_temp",
                  "secondary_return_temp", "secondary_supply_pressure", "secondary_return_pressure",
                  "outdoor_temp", "primary_valve_position", "primary_valve_setpoint", "secondary_flow",
                  "makeup_flow", "makeup_total", "tank_level", "makeup_pump_running", "circ_pump_running"]
BUILDING_POINTS = ["building_valve_position", "building_return_temp"]


def _value(point: str, i: int) -> Any:
    d = lookup(point)
    assert d is not None, point
    if d.kind is Kind.BOOL:
        return i % 2 == 0
    lo, hi = d.lo or 0.0, d.hi if d.hi is not None else 1000.0
    return round(lo + (hi - lo) * (0.3 + 0.01 * (i % 10)), 3) if point != "makeup_total" else 100.0 + i


def _telemetry(station: str, seq: int, ts: int) -> bytes:
    values: list[dict[str, Any]] = []
    for p in STATION_POINTS:
        values.append({"point": p, "value": _value(p, seq), "unit": lookup(p).unit})  # type: ignore[union-attr]
    for b in ("b01", "b02"):
        for p in BUILDING_POINTS:
            values.append({"point": p, "building": b, "value": _value(p, seq),
                           "unit": lookup(p).unit})  # type: ignore[union-attr]
        for h in range(3):
            values.append({"point": "room_temp", "building": b, "household": f"{b}-0{h}01",
                           "value": 17.0 + h + seq % 3 / 10, "unit": "°C"})
    return orjson.dumps({"schema": 1, "station": station, "gateway": f"gw-{station}", "boot": "0badc0de",
                         "seq": seq, "ts": ts, "values": values})


@pytest.fixture
def pipeline_data(tmp_path: Path, influxd: Influxd, influx_db: str) -> str:
    now = int(time.time() * 1000)
    lines: list[str] = []
    for k in range(36):  # three hours, every 5 minutes
        ts = now - (36 - k) * 300_000
        for st in ("st001", "st002"):
            lines += telemetry_lines(decode_telemetry(_telemetry(st, k + 1, ts)))
    lines.append(alert_line(Transition(key="room_low:st001/b01/b01-0101", rule="room_low", state="firing",
                                       severity="warning", station="st001", building="b01",
                                       household="b01-0101", ts=now - 600_000, since=now - 8_000_000,
                                       value=16.9, summary="room 16.9 °C", page=True)))
    cfg = CollectorConfig(kind="collector", influx=InfluxSettings(url=influxd.url, database=influx_db),
                          spool=SpoolSettings(path=str(tmp_path / "spool.sqlite")),
                          alerts=AlertSettings(store=f"sqlite:///{tmp_path / 'a.sqlite'}",
                                               state_path=str(tmp_path / "engine.state")))
    c = Collector(cfg)
    for k in range(12):  # the collector's counters, once a minute, rising
        c.stats.received = c.stats.accepted = c.stats.acked = 100 * k
        c.stats.values = c.stats.written = 2000 * k
        c.stats.rejected["bad_json"] = k
        c.stats.messages["st001"], c.stats.seq_gaps["st001"], c.stats.restarts["st001"] = 50 * k, k, k // 4
        c.alerts.stats.transitions = c.alerts.stats.pages = c.alerts.stats.webhook_sent = k  # type: ignore[union-attr]
        lines += c.stats_lines(now - (12 - k) * 60_000)
    c.spool.close()
    httpx.post(f"{influxd.url}/query", params={"q": f"CREATE DATABASE {influx_db}"}).raise_for_status()
    httpx.post(f"{influxd.url}/write", params={"db": influx_db, "precision": "ms"},
               content="\n".join(lines)).raise_for_status()
    return influx_db


def _queries(board: dict[str, Any]) -> list[tuple[str, str]]:
    out = [(f"variable {v['name']}", v["query"]) for v in board["templating"]["list"]]
    out += [(f"annotation {a['name']}", a["query"]) for a in board["annotations"]["list"]]
    for p in board["panels"]:
        out += [(f"{p['title']} / {t['refId']}", t["query"]) for t in p.get("targets", [])]
    return out


def _fill(q: str) -> str:
    """What Grafana sends: macros and variables filled in."""
    return (q.replace("$timeFilter", "time > now() - 6h").replace("$__interval", "5m")
            .replace("/^$station$/", "/^st001$/"))


def test_the_committed_dashboards_are_what_build_makes() -> None:
    for name, make in build.BOARDS.items():
        path = build.HERE / name
        assert path.exists() and path.read_bytes() == build.render(make), (
            f"dashboards/{name} is stale: run `.venv/bin/python -m dashboards.build`")


@pytest.mark.parametrize("name", sorted(build.BOARDS))
def test_every_dashboard_query_finds_pipeline_data(name: str, influxd: Influxd, pipeline_data: str) -> None:
    board = build.BOARDS[name]()
    queries = _queries(board)
    assert len(queries) >= 3
    empty = [what for what, q in queries if not influx_query(influxd, pipeline_data, _fill(q))]
    assert not empty, f"{name}: no data for {empty}"
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"


def test_the_provisioned_data_source_is_the_one_the_dashboards_name() -> None:
    provisioned = yaml.safe_load((DEPLOY / "grafana" / "datasources.yaml").read_text())["datasources"]
    assert [(d["uid"], d["type"]) for d in provisioned] == [(build.DS["uid"], build.DS["type"])]
    providers = yaml.safe_load((DEPLOY / "grafana" / "dashboards.yaml").read_text())["providers"]
    assert [p["type"] for p in providers] == ["file"]
