"""Alerts end to end in the collector process, on real mosquitto, influxd and SQLite:
telemetry in → alert in the store (before the PUBACK), in InfluxDB, on the MQTT alert topic and
at a webhook (which fails first, and is retried); the collector SIGKILLed while an alert is
pending → after restart it fires on the original schedule."""

from __future__ import annotations

import http.server
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from alerting.store import Store
from heatwatch.devstack import Influxd, Mosquitto, free_port
from tests.conftest import (
    Processes,
    Subscriber,
    influx_query,
    publish,
    rows,
    wait_for,
    write_collector_config,
)

TOPIC = "heatwatch/v1/station/st001/telemetry"
MIN = 60_000
WHOLE_YEAR = 'season: {start: "01-01", end: "12-31", start_grace_days: 0}'
TEMPS = {"h1": 14.0, "h2": 14.5, "h3": 15.0, "h4": 21.0, "h5": 21.0, "h6": 20.5}


class Webhook:
    """A real HTTP endpoint on loopback that answers 503 to the first ``fail_first`` posts."""

    def __init__(self, fail_first: int) -> None:
        self.posts: list[dict[str, object]] = []
        self.refused = 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                if outer.refused < fail_first:
                    outer.refused += 1
                    self.send_response(503)
                else:
                    outer.posts.append(orjson.loads(body))
                    self.send_response(204)
                self.end_headers()

            def log_message(self, *_: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    w = Webhook(fail_first=2)
    yield w
    w.close()


def _rooms(seq: int, ts: int) -> bytes:
    return orjson.dumps({"schema": 1, "station": "st001", "gateway": "gw-st001", "boot": "0badc0de",
                         "seq": seq, "ts": ts,
                         "values": [{"point": "room_temp", "building": "b01", "household": h,
                                     "value": v, "unit": "°C"} for h, v in TEMPS.items()]})


def _config(tmp_path: Path, mosquitto: Mosquitto, influxd: Influxd, db: str, hook: str,
            metrics_port: int | None = None) -> Path:
    rules = tmp_path / "rules.yaml"
    # every day in the season, so the test judges whatever month CI runs it in
    rules.write_text(f"kind: rules\n{WHOLE_YEAR}\nroom:\n  hold_min: 60\n  building_hold_min: 60\n")
    return write_collector_config(
        tmp_path, mqtt_port=mosquitto.port, influx_url=influxd.url, database=db,
        alerts={"rules": "rules.yaml", "store": f"sqlite:///{tmp_path / 'alerts.sqlite'}",
                "state_path": str(tmp_path / "engine.state"), "tick_s": 0.5, "snapshot_s": 3600,
                "seen_s": 0.5,
                "webhooks": [{"url": hook, "min_severity": "warning"}],
                "webhook_outbox": str(tmp_path / "webhooks.sqlite")},
        stats={"interval_s": 0.5, "metrics_port": metrics_port})


def test_a_cold_building_reaches_store_influxdb_mqtt_and_webhook(
        tmp_path: Path, mosquitto: Mosquitto, influxd: Influxd, influx_db: str, procs: Processes,
        webhook: Webhook) -> None:
    port = free_port()
    cfg = _config(tmp_path, mosquitto, influxd, influx_db, webhook.url, metrics_port=port)
    alerts_topic = Subscriber(mosquitto.port, "heatwatch/v1/alert/#")
    procs.start("collector", "collector", str(cfg))
    procs.wait_log("collector", '"subscribed"')
    t0 = int(time.time() * 1000) - 3 * 3_600_000  # three hours of data, sent in a burst
    publish(mosquitto.port, [(TOPIC, _rooms(i + 1, t0 + i * 10 * MIN)) for i in range(19)])
    store = Store(f"sqlite:///{tmp_path / 'alerts.sqlite'}")
    building = wait_for(lambda: store.query(rule=["building_low"], state=["firing"]).rows, 20,
                        "building_low firing in the store")[0]
    assert building["paged"] and building["since"] == t0 and building["fired_at"] == t0 + 60 * MIN
    rooms = store.query(rule=["room_low"]).rows
    assert {r["household"] for r in rooms} == {"h1", "h2", "h3"}
    # last seen follows the engine's latest true verdict (the last message), not the last change
    last = t0 + 18 * 10 * MIN
    wait_for(lambda: store.query(rule=["building_low"]).rows[0]["last_ts"] == last, 20,
             "building_low last seen at the last message")
    assert all(not r["paged"] for r in rooms if r["state"] == "firing")  # inhibited by the building
    # InfluxDB (Grafana annotations), MQTT, webhook (after two 503s)
    ann = wait_for(lambda: rows(influx_query(influxd, influx_db, "SELECT * FROM alerts")), 20,
                   "alert lines in InfluxDB")
    assert {(a["rule"], a["state"]) for a in ann} >= {("building_low", "firing"), ("room_low", "pending")}
    got = wait_for(lambda: [orjson.loads(p) for _, p in alerts_topic.messages
                            if orjson.loads(p)["rule"] == "building_low"], 20, "alert on MQTT")
    assert got[0]["state"] == "pending" and got[-1]["state"] == "firing"
    posts = wait_for(lambda: webhook.posts, 30, "the webhook page")
    assert webhook.refused == 2 and [(p["rule"], p["state"]) for p in posts] == [("building_low", "firing")]
    log = procs.log("collector")
    assert "webhook unavailable; retrying" in log
    assert '"build": "compiled (mypyc)"' in log  # make built the rules; the collector runs them
    metrics = {line.split(" ")[0]: float(line.split(" ")[1]) for line in
               httpx.get(f"http://127.0.0.1:{port}/metrics").text.splitlines() if line[:1] != "#"}
    assert metrics["heatwatch_collector_rule_samples_total"] == 19 * len(TEMPS)
    assert 0 < metrics["heatwatch_collector_rules_cpu_seconds_total"] < 5
    alerts_topic.close()
    store.close()


def test_sigkill_while_pending_then_fires_on_the_original_schedule(
        tmp_path: Path, mosquitto: Mosquitto, influxd: Influxd, influx_db: str, procs: Processes,
        webhook: Webhook) -> None:
    cfg = _config(tmp_path, mosquitto, influxd, influx_db, webhook.url)
    p = procs.start("collector", "collector", str(cfg))
    procs.wait_log("collector", '"subscribed"')
    t0 = int(time.time() * 1000) - 3 * 3_600_000
    publish(mosquitto.port, [(TOPIC, _rooms(i + 1, t0 + i * 10 * MIN)) for i in range(6)])  # 50 min
    store = Store(f"sqlite:///{tmp_path / 'alerts.sqlite'}")
    pending = wait_for(lambda: store.query(rule=["building_low"], state=["pending"]).rows, 20,
                       "building_low pending")[0]
    p.send_signal(signal.SIGKILL)  # no snapshot was ever written (snapshot_s: 3600)
    p.wait(10)
    assert not (tmp_path / "engine.state").exists()
    procs.start("collector2", "collector", str(cfg))
    procs.wait_log("collector2", '"subscribed"')
    publish(mosquitto.port, [(TOPIC, _rooms(i + 1, t0 + i * 10 * MIN)) for i in range(6, 12)])
    firing = wait_for(lambda: store.query(rule=["building_low"], state=["firing"]).rows, 20,
                      "building_low firing after the restart")[0]
    # the same episode (the store's pending alert was adopted), firing an hour after it began
    assert firing["id"] == pending["id"] and firing["since"] == pending["since"]
    assert firing["fired_at"] == pending["since"] + 60 * MIN
    store.close()


def _retain(port: int, messages: list[tuple[str, bytes]]) -> None:
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"retain-{time.monotonic_ns()}")
    c.connect("127.0.0.1", port)
    c.loop_start()
    try:
        for topic, payload in messages:
            c.publish(topic, payload, qos=1, retain=True).wait_for_publish(10)
    finally:
        c.disconnect()
        c.loop_stop()


def _station_msg(station: str, seq: int, ts: int) -> tuple[str, bytes]:
    return (f"heatwatch/v1/station/{station}/telemetry", orjson.dumps({
        "schema": 1, "station": station, "gateway": f"gw-{station}", "boot": "0badc0de", "seq": seq,
        "ts": ts, "values": [{"point": "secondary_supply_temp", "value": 55.0, "unit": "°C"}]}))


def test_a_restarted_collector_does_not_page_stations_it_has_not_heard_from_yet(
        tmp_path: Path, mosquitto: Mosquitto, influxd: Influxd, influx_db: str, procs: Processes) -> None:
    """Three stations report; the collector stops (its snapshot remembers their last data) and
    comes back after more than station_after_s. st001 and st002 report again at once: no
    station_offline for them, neither raised nor resolved. st003 stays silent: judged, and
    paged, once the start-up grace (station_after_s) is over."""
    rules = tmp_path / "rules.yaml"
    rules.write_text(f"kind: rules\n{WHOLE_YEAR}\noffline: {{station_after_s: 4}}\n")
    cfg = write_collector_config(
        tmp_path, mqtt_port=mosquitto.port, influx_url=influxd.url, database=influx_db,
        alerts={"rules": "rules.yaml", "store": f"sqlite:///{tmp_path / 'alerts.sqlite'}",
                "state_path": str(tmp_path / "engine.state"), "tick_s": 0.5, "snapshot_s": 3600})
    procs.start("collector", "collector", str(cfg))
    wait_for(lambda: '"subscribed"' in procs.log("collector"), 30, "the collector subscribed")
    seq = {"st001": 0, "st002": 0, "st003": 0}

    def report(*stations: str) -> None:
        now = int(time.time() * 1000)
        for s in stations:
            seq[s] += 1
        publish(mosquitto.port, [_station_msg(s, seq[s], now) for s in stations])

    report("st001", "st002", "st003")
    # like the gateways: each station's status, retained, so a collector gets it when it subscribes
    # (before the fix that alone judged the snapshot's old last data and paged every station)
    _retain(mosquitto.port, [(f"heatwatch/v1/station/{s}/status", orjson.dumps({
        "schema": 1, "station": s, "gateway": f"gw-{s}", "state": "online",
        "devices": {"plc": {"state": "online"}}, "ts": int(time.time() * 1000)})) for s in seq])
    wait_for(lambda: len(rows(influx_query(influxd, influx_db, 'SELECT * FROM "station"'))) == 3, 20,
             "the three stations' data in InfluxDB")
    last = time.time()
    procs.procs["collector"].terminate()  # SIGTERM: the snapshot is written on the way out
    procs.procs["collector"].wait(20)
    assert (tmp_path / "engine.state").exists()
    wait_for(lambda: time.time() - last > 5, 10, "the last data older than station_after_s (4 s)")

    procs.start("collector2", "collector", str(cfg))
    wait_for(lambda: '"subscribed"' in procs.log("collector2"), 30, "the collector subscribed again")
    store = Store(f"sqlite:///{tmp_path / 'alerts.sqlite'}")

    def st003_offline() -> list[dict[str, object]]:
        report("st001", "st002")  # every 0.2 s while we wait
        return store.query(rule=["station_offline"]).rows

    fired = wait_for(st003_offline, 30, "station_offline for the silent st003")
    assert [(a["station"], a["state"], a["paged"]) for a in fired] == [("st003", "firing", True)]
    # no page came and went for the two that report (the store keeps every episode)
    assert store.query(rule=["station_offline"], station="st001").total == 0
    assert store.query(rule=["station_offline"], station="st002").total == 0
    store.close()
