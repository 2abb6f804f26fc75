"""A gateway whose clock runs fast, through the real pipeline (mosquitto, influxd, the collector
process, the alerter process with its rules and SQLite store): its telemetry is stored at its
receipt time, the station is not offline, and clock_skew is raised for the gateway; a gateway a
second fast is stored as stamped. Before, every message stamped past ``ingest.max_future_s`` (300 s)
was refused as ``ts_future``: the station looked offline while it reported, and its data were lost."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import orjson

from alerting.store import Store
from heatwatch.devstack import Influxd, Mosquitto, free_port
from tests.conftest import (
    Processes,
    influx_query,
    publish,
    rows,
    wait_for,
    write_alerter_config,
    write_collector_config,
)

FAST_MS = 6 * 60_000  # 6 min fast, as in scenario clock_fast: past the default 300 s tolerance
RULES = """kind: rules
season: {start: "01-01", end: "12-31", start_grace_days: 0}
offline: {station_after_s: 4, gateway_wait_s: 0}
clock: {hold_min: 0}
inventory: {gw-st001: [st001], gw-st002: [st002, st003]}
"""


def _msg(station: str, seq: int, ts: int) -> tuple[str, bytes]:
    return (f"heatwatch/v1/station/{station}/telemetry", orjson.dumps({
        "schema": 1, "station": station, "gateway": f"gw-{station}", "boot": "0badc0de", "seq": seq,
        "ts": ts, "values": [{"point": "secondary_supply_temp", "value": 50.0 + seq / 100, "unit": "°C"}]}))


def test_a_fast_gateway_clock_is_stored_at_receipt_not_offline_and_raises_clock_skew(
        tmp_path: Path, mosquitto: Mosquitto, influxd: Influxd, influx_db: str, procs: Processes) -> None:
    (tmp_path / "rules.yaml").write_text(RULES)
    port = free_port()
    url = f"sqlite:///{tmp_path / 'alerts.sqlite'}"
    cfg = write_collector_config(
        tmp_path, mqtt_port=mosquitto.port, influx_url=influxd.url, database=influx_db,
        stats={"interval_s": 0.5, "metrics_port": port})
    alerter = write_alerter_config(tmp_path, mqtt_port=mosquitto.port, store=url,
                                   alerts={"rules": "rules.yaml", "snapshot_s": 3600},
                                   partitions={"standby_s": 3700})
    procs.start("collector", "collector", str(cfg))
    procs.start("alerter", "alerter", str(alerter))
    procs.wait_log("collector", '"subscribed"')
    procs.wait_log("alerter", '"partitions taken over"')
    began = int(time.time() * 1000)
    sent: dict[str, list[int]] = {"st001": [], "st002": []}

    def report(fast: int = 1) -> None:
        now = int(time.time() * 1000)
        msgs = []
        for i in range(fast):  # st001's clock 6 min fast; several at once: a backlog, one receipt time
            sent["st001"].append(now + FAST_MS + i)
            msgs.append(_msg("st001", len(sent["st001"]), now + FAST_MS + i))
        sent["st002"].append(now + 1_000)  # st002's a second fast: within the tolerance
        msgs.append(_msg("st002", len(sent["st002"]), now + 1_000))
        publish(mosquitto.port, msgs)

    report(fast=20)
    store = Store(url)
    try:
        # st003 (behind gw-st002) never reports: it is paged once the 4 s grace is over, which
        # says offline is judged here; st001 reports all the while, with its clock 6 min fast
        def judged() -> bool:
            report()
            return bool(store.query(rule=["station_offline"]).rows
                        and store.query(rule=["clock_skew"], state=["firing"]).rows)

        wait_for(judged, 30, "station_offline for the silent st003 and clock_skew firing")
        offline = store.query(rule=["station_offline", "gateway_offline"]).rows
        assert [(a["rule"], a["station"]) for a in offline] == [("station_offline", "st003")]
        [skew] = store.query(rule=["clock_skew"]).rows
        assert skew["gateway"] == "gw-st001" and skew["state"] == "firing" and skew["paged"]
        assert FAST_MS / 1000 - 10 < skew["value"] <= FAST_MS / 1000
        assert skew["context"]["restamped"] is True and skew["context"]["stations"] == ["st001"]
    finally:
        store.close()

    def stored(station: str) -> list[int]:
        got = rows(influx_query(influxd, influx_db, f"SELECT * FROM station WHERE station = '{station}'"))
        return [int(r["time"]) for r in got]

    n1, n2 = len(sent["st001"]), len(sent["st002"])
    fast = wait_for(lambda: (t := stored("st001")) and len(t) == n1 and t, 20, f"{n1} st001 messages")
    # at their receipt times (one point each, the backlog too), none at the gateway's stamps
    assert len(set(fast)) == n1 and began <= min(fast) and max(fast) <= int(time.time() * 1000)
    assert not set(fast) & set(sent["st001"])
    sane = wait_for(lambda: (t := stored("st002")) and len(t) == n2 and t, 20, f"{n2} st002 messages")
    assert sorted(sane) == sorted(sent["st002"])  # as stamped
    assert not influx_query(influxd, influx_db, 'SELECT * FROM "rejects"')

    def restamped() -> dict[str, float]:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
        return {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines()
                if line.startswith("heatwatch_collector_restamped_total")}

    wait_for(lambda: restamped() == {'heatwatch_collector_restamped_total{station="st001"}': n1}, 10,
             f"{n1} re-stamped messages counted")
    ingest = wait_for(lambda: [r for r in rows(influx_query(
        influxd, influx_db, "SELECT last(restamped) FROM ingest GROUP BY station"))
        if r["station"] == "st001" and r["last"] == n1], 10, "the count in the ingest stats line")
    assert ingest
    log = procs.log("collector")
    assert log.count("gateway clock ahead: telemetry stored at its receipt time") == 1
    assert "ts_future" not in log
