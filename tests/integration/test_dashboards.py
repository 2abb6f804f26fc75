"""The Grafana dashboards (``dashboards/``): the committed JSON is what ``dashboards/build.py``
makes, and every query in them — panels, annotations, variables — runs on a real influxd holding
what the pipeline writes (telemetry through the collector's decoder and line encoder, station
and gateway status through the collector's handler, the collector's own counters, alert
transitions) and finds data. A renamed point or measurement fails here, not in front of an
operator. Every panel of vocabulary points shows them in their unit; the open-alerts tables
leave resolved alerts out; the provisioned data source is where the demo's InfluxDB listens.
Grafana itself is not run here (it cannot be installed on this machine)."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import yaml

from collector.app import Collector
from collector.stages import Batch
from contract.alerts import Transition
from contract.config import CollectorConfig, InfluxSettings, SpoolSettings
from contract.influx import alert_line, telemetry_lines
from contract.payload import decode_telemetry
from contract.points import VOCABULARY, Kind, Level, lookup
from dashboards import build
from heatwatch.devstack import DEPLOY, Influxd
from tests.conftest import influx_query, rows

# every point of the vocabulary, as a station would send them
STATION_POINTS = [p for p, d in VOCABULARY.items() if d.level is Level.STATION]
BUILDING_POINTS = [p for p, d in VOCABULARY.items() if d.level is Level.BUILDING]


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


def _handle(c: Collector, topic: str, payload: bytes) -> list[str]:
    """One message through the collector's validate → taps → lines stages (the batch stage's chain)."""
    b = Batch()
    c.batcher.handle(topic, payload, int(c.clock() * 1000), b)
    return b.lines


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
    for state, ts in (("firing", now - 900_000), ("resolved", now - 300_000)):  # over: not open
        lines.append(alert_line(Transition(key="makeup_rate:st002", rule="makeup_rate", state=state,
                                           severity="major", station="st002", ts=ts, since=now - 900_000,
                                           value=2.5, summary=f"make-up {state}", page=True)))
    for rule, sev, state, b in (("station_offline", "critical", "firing", None),  # one of each severity
                                ("building_low", "major", "pending", "b02"),
                                ("makeup_daily", "info", "firing", None)):
        lines.append(alert_line(Transition(key=f"{rule}:st002", rule=rule, state=state, severity=sev,
                                           station="st002", building=b, ts=now - 120_000, since=now - 120_000,
                                           summary=rule, page=sev != "info")))
    cfg = CollectorConfig(kind="collector", influx=InfluxSettings(url=influxd.url, database=influx_db),
                          spool=SpoolSettings(path=str(tmp_path / "spool.sqlite")))
    c = Collector(cfg)
    for st in ("st001", "st002"):  # status messages through the collector's own handler
        lines += _handle(c, f"heatwatch/v1/station/{st}/status", orjson.dumps({
            "schema": 1, "station": st, "gateway": f"gw-{st}", "ts": now - 60_000,
            "state": "degraded" if st == "st002" else "online",
            "devices": {"plc": {"state": "online"}, "meter": {"state": "offline", "error": "timeout"}}}))
        lines += _handle(c, f"heatwatch/v1/gateway/gw-{st}/status", orjson.dumps({
            "schema": 1, "gateway": f"gw-{st}", "state": "online", "boot": "0badc0de", "stations": [st],
            "ts": now - 60_000}))
    assert not any(ln.startswith("rejects") for ln in lines), lines[-4:]
    for k in range(12):  # the collector's counters, once a minute, rising
        c.stats.received = c.stats.accepted = c.stats.acked = 100 * k
        c.stats.values = c.stats.written = 2000 * k
        c.stats.rejected["bad_json"] = k
        c.stats.messages["st001"], c.stats.seq_gaps["st001"], c.stats.restarts["st001"] = 50 * k, k, k // 4
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
            .replace("/^$station$/", "/^st001$/").replace("/^$building$/", "/^(b01|b02)$/"))


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
    # where the shipped collector writes by default, which is where the demo's InfluxDB listens
    collector = (DEPLOY / "collector" / "collector.yaml").read_text()
    default_url = re.search(r"HEATWATCH_INFLUX_URL:-(http://[^}]+)\}", collector)
    assert default_url is not None and provisioned[0]["url"] == default_url.group(1)
    assert provisioned[0]["jsonData"]["dbName"] == yaml.safe_load(collector)["influx"]["database"]
    providers = yaml.safe_load((DEPLOY / "grafana" / "dashboards.yaml").read_text())["providers"]
    assert [p["type"] for p in providers] == ["file"]


def _panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in board["panels"] if p["type"] != "row"]


def test_every_panel_of_points_shows_them_in_their_vocabulary_unit() -> None:
    checked = 0
    for name, make in build.BOARDS.items():
        for p in _panels(make()):
            for t in p["targets"]:
                if " / " in t["query"]:  # a ratio of two points: a share in percent
                    assert p["fieldConfig"]["defaults"]["unit"] == "percent", p["title"]
                    continue
                if t["query"].startswith("SELECT count("):  # how many samples or hours, not the point
                    continue
                for point in set(re.findall(r'"([a-z0-9_]+)"', t["query"])) & set(VOCABULARY):
                    assert p["fieldConfig"]["defaults"]["unit"] == build.unit_of(point), (name, p["title"])
                    checked += 1
    assert checked >= 30
    assert build.unit_of("makeup_flow") == "suffix: m³/h" and build.unit_of("secondary_supply_pressure") == (
        "suffix: MPa")
    assert build.unit_of("circ_pump_fault") == "bool_on_off" and build.unit_of("room_temp") == "celsius"


def test_make_up_and_circulation_flow_are_never_on_one_axis() -> None:
    for make in build.BOARDS.values():
        for p in _panels(make()):
            fields = {f for t in p["targets"] for f in re.findall(r'"([a-z0-9_]+)"', t["query"])}
            if " / " not in " ".join(t["query"] for t in p["targets"]):
                assert not {"makeup_flow", "secondary_flow"} <= fields, p["title"]


def test_open_alerts_leave_the_resolved_out(influxd: Influxd, pipeline_data: str) -> None:
    fleet = build.fleet()
    table = next(p for p in fleet["panels"] if p["title"] == "Open alerts")
    got = rows(influx_query(influxd, pipeline_data, table["targets"][0]["query"]))
    assert sorted((r["rule"], r["station"], r["severity"], r["state"]) for r in got) == [
        ("building_low", "st002", "major", "pending"), ("makeup_daily", "st002", "info", "firing"),
        ("room_low", "st001", "warning", "firing"), ("station_offline", "st002", "critical", "firing")]
    counts = next(p for p in fleet["panels"] if p["title"] == "Open alerts by severity")
    by = {t["alias"]: rows(influx_query(influxd, pipeline_data, t["query"]))[0] for t in counts["targets"]}
    assert {s: r[s] for s, r in by.items()} == {"critical": 1, "major": 1, "warning": 1, "info": 1}
    states = next(p for p in fleet["panels"] if p["title"] == "Stations: state")
    got = rows(influx_query(influxd, pipeline_data, states["targets"][0]["query"]))
    assert {(r["station"], r["state"], r["devices not online"]) for r in got} == {
        ("st001", "online", 1), ("st002", "degraded", 1)}


def test_the_fleet_overview_is_the_landing_page() -> None:
    assert next(iter(build.BOARDS)) == build.LANDING == "fleet.json"
    ini = (DEPLOY / "grafana" / "grafana.ini").read_text()
    assert re.search(r"^default_home_dashboard_path = .*/fleet\.json$", ini, re.M), ini
