"""The alerter process on real mosquitto and SQLite (one member owning every partition, the
default): telemetry in → the alert in the store before the PUBACK, on the MQTT alert topic, in
InfluxDB (the collector stores the alert topic) and at a webhook (which fails first, and is
retried); SIGKILLed while an alert is pending → after the
restart it fires on the original schedule; a restart pages no station before it could hear from
it; command results recorded once, and acknowledged only once the store has them."""

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

from alerting.commands import CommandStore
from alerting.store import Store
from contract.commands import CommandResult
from heatwatch.devstack import Influxd, Mosquitto, free_port
from tests.conftest import (
    Processes,
    Subscriber,
    influx_query,
    publish,
    rows,
    wait_for,
    write_alerter_config,
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


def rooms(seq: int, ts: int) -> bytes:
    return orjson.dumps({"schema": 1, "station": "st001", "gateway": "gw-st001", "boot": "0badc0de",
                         "seq": seq, "ts": ts,
                         "values": [{"point": "room_temp", "building": "b01", "household": h,
                                     "value": v, "unit": "°C"} for h, v in TEMPS.items()]})


def config(tmp_path: Path, mosquitto: Mosquitto, hook: str | None = None, metrics_port: int | None = None,
           **alerts: object) -> Path:
    rules = tmp_path / "rules.yaml"
    # every day in the season, so the test judges whatever month CI runs it in
    rules.write_text(f"kind: rules\n{WHOLE_YEAR}\nroom:\n  hold_min: 60\n  building_hold_min: 60\n")
    extra: dict[str, object] = {"metrics": {"port": metrics_port}} if metrics_port is not None else {}
    return write_alerter_config(
        tmp_path, mqtt_port=mosquitto.port, store=f"sqlite:///{tmp_path / 'alerts.sqlite'}",
        alerts={"rules": "rules.yaml", "snapshot_s": 3600, "seen_s": 0.5,
                "webhooks": [{"url": hook, "min_severity": "warning"}] if hook else [], **alerts},
        partitions={"standby_s": 3700}, **extra)


def metric(port: int, name: str) -> float | None:
    for line in httpx.get(f"http://127.0.0.1:{port}/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split(" ")[1])
    return None


def start(procs: Processes, name: str, cfg: Path) -> None:
    procs.start(name, "alerter", str(cfg))
    procs.wait_log(name, '"partitions taken over"')


def test_a_cold_building_reaches_the_store_the_alert_topic_influxdb_and_the_webhook(
        tmp_path: Path, mosquitto: Mosquitto, influxd: Influxd, influx_db: str, procs: Processes,
        webhook: Webhook) -> None:
    port = free_port()
    alerts_topic = Subscriber(mosquitto.port, "heatwatch/v1/alert/#")
    col = write_collector_config(tmp_path / "col", mqtt_port=mosquitto.port, influx_url=influxd.url,
                                 database=influx_db)
    procs.start("collector", "collector", str(col))
    procs.wait_log("collector", '"subscribed"')
    start(procs, "alerter", config(tmp_path, mosquitto, webhook.url, metrics_port=port))
    t0 = int(time.time() * 1000) - 3 * 3_600_000  # three hours of data, sent in a burst
    publish(mosquitto.port, [(TOPIC, rooms(i + 1, t0 + i * 10 * MIN)) for i in range(19)])
    store = Store(f"sqlite:///{tmp_path / 'alerts.sqlite'}")
    building = wait_for(lambda: store.query(rule=["building_low"], state=["firing"]).rows, 20,
                        "building_low firing in the store")[0]
    assert building["paged"] and building["since"] == t0 and building["fired_at"] == t0 + 60 * MIN
    rooms_ = store.query(rule=["room_low"]).rows
    assert {r["household"] for r in rooms_} == {"h1", "h2", "h3"}
    # last seen follows the engine's latest true verdict (the last message), not the last change
    last = t0 + 18 * 10 * MIN
    wait_for(lambda: store.query(rule=["building_low"]).rows[0]["last_ts"] == last, 20,
             "building_low last seen at the last message")
    assert all(not r["paged"] for r in rooms_ if r["state"] == "firing")  # inhibited by the building
    got = wait_for(lambda: [orjson.loads(p) for _, p in alerts_topic.messages
                            if orjson.loads(p)["rule"] == "building_low"], 20, "alert on MQTT")
    assert got[0]["state"] == "pending" and got[-1]["state"] == "firing"
    # InfluxDB (Grafana annotations): the collector stores what the alerter publishes
    ann = wait_for(lambda: rows(influx_query(influxd, influx_db, "SELECT * FROM alerts")), 20,
                   "alert lines in InfluxDB")
    assert {(a["rule"], a["state"]) for a in ann} >= {("building_low", "firing"), ("room_low", "pending")}
    posts = wait_for(lambda: webhook.posts, 30, "the webhook page")
    assert webhook.refused == 2 and [(p["rule"], p["state"]) for p in posts] == [("building_low", "firing")]
    log = procs.log("alerter")
    assert "webhook unavailable; retrying" in log
    assert metric(port, "heatwatch_alerter_rule_samples_total") == 19 * len(TEMPS)
    assert 0 < (metric(port, "heatwatch_alerter_rules_cpu_seconds_total") or 0) < 5
    assert metric(port, "heatwatch_alerter_partitions_owned") == 64
    alerts_topic.close()
    store.close()


def test_sigkill_while_pending_then_fires_on_the_original_schedule(
        tmp_path: Path, mosquitto: Mosquitto, procs: Processes) -> None:
    port = free_port()
    cfg = config(tmp_path, mosquitto, metrics_port=port)
    p = procs.start("alerter", "alerter", str(cfg))
    procs.wait_log("alerter", '"partitions taken over"')
    t0 = int(time.time() * 1000) - 3 * 3_600_000
    publish(mosquitto.port, [(TOPIC, rooms(i + 1, t0 + i * 10 * MIN)) for i in range(6)])  # 50 min
    store = Store(f"sqlite:///{tmp_path / 'alerts.sqlite'}")
    pending = wait_for(lambda: store.query(rule=["building_low"], state=["pending"]).rows, 20,
                       "building_low pending")[0]
    # all six acknowledged (none comes again: the restart has only the store's pending alert)
    wait_for(lambda: metric(port, "heatwatch_alerter_acked_total") == 6, 20, "six messages acknowledged")
    p.send_signal(signal.SIGKILL)  # its snapshot: the one written at the takeover, before any data
    p.wait(10)
    start(procs, "alerter2", cfg)  # a SQLite store's one member: takes everything back at once
    publish(mosquitto.port, [(TOPIC, rooms(i + 1, t0 + i * 10 * MIN)) for i in range(6, 12)])
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


def test_a_restarted_alerter_does_not_page_stations_it_has_not_heard_from_yet(
        tmp_path: Path, mosquitto: Mosquitto, procs: Processes) -> None:
    """Three stations report; the alerter stops (its snapshots remember their last data) and
    comes back after more than station_after_s. st001 and st002 report again at once: no
    station_offline for them, neither raised nor resolved. st003 stays silent: judged, and
    paged, once the start-up grace (station_after_s) is over."""
    rules = tmp_path / "rules.yaml"
    rules.write_text(f"kind: rules\n{WHOLE_YEAR}\noffline: {{station_after_s: 4}}\n")
    port = free_port()
    cfg = write_alerter_config(tmp_path, mqtt_port=mosquitto.port, store=f"sqlite:///{tmp_path / 'a.sqlite'}",
                               alerts={"rules": "rules.yaml", "snapshot_s": 3600},
                               partitions={"standby_s": 3700}, metrics={"port": port})
    start(procs, "alerter", cfg)
    store = Store(f"sqlite:///{tmp_path / 'a.sqlite'}")
    seq = {"st001": 0, "st002": 0, "st003": 0}

    def report(*stations: str) -> None:
        now = int(time.time() * 1000)
        for s in stations:
            seq[s] += 1
        publish(mosquitto.port, [_station_msg(s, seq[s], now) for s in stations])

    report("st001", "st002", "st003")
    # like the gateways: each station's status, retained, so an alerter gets it when it subscribes
    # (before the fix that alone judged the snapshot's old last data and paged every station)
    _retain(mosquitto.port, [(f"heatwatch/v1/station/{s}/status", orjson.dumps({
        "schema": 1, "station": s, "gateway": f"gw-{s}", "state": "online",
        "devices": {"plc": {"state": "online"}}, "ts": int(time.time() * 1000)})) for s in seq])
    wait_for(lambda: metric(port, "heatwatch_alerter_judged_total") == 6, 20, "reports and statuses judged")
    last = time.time()
    procs.procs["alerter"].terminate()  # SIGTERM: the snapshots are written on the way out
    assert procs.procs["alerter"].wait(20) == 130  # a clean stop, as every heatwatch process
    log = procs.log("alerter")
    assert '"member left; partitions released"' in log and "Traceback" not in log
    wait_for(lambda: time.time() - last > 5, 10, "the last data older than station_after_s (4 s)")

    cfg.write_text(cfg.read_text().replace(f"port: {port}", "port: 0"))
    start(procs, "alerter2", cfg)

    def st003_offline() -> list[dict[str, object]]:
        report("st001", "st002")  # every 0.2 s while we wait
        return store.query(rule=["station_offline"]).rows

    fired = wait_for(st003_offline, 30, "station_offline for the silent st003")
    assert [(a["station"], a["state"], a["paged"]) for a in fired] == [("st003", "firing", True)]
    # no page came and went for the two that report (the store keeps every episode)
    assert store.query(rule=["station_offline"], station="st001").total == 0
    assert store.query(rule=["station_offline"], station="st002").total == 0
    store.close()


def _result(cid: str, state: str = "confirmed", **kw: object) -> bytes:
    return CommandResult.model_validate({
        "id": cid, "station": "st001", "gateway": "gw-st001", "state": state, "device": "plc",
        "point": "building_valve_setpoint", "building": "b01", "value": 70.0, "read_back": 70.0,
        "ts": int(time.time() * 1000), **kw}).to_json()


def test_command_results_are_recorded_once(tmp_path: Path, mosquitto: Mosquitto, procs: Processes) -> None:
    url = f"sqlite:///{tmp_path / 'site.sqlite'}"
    start(procs, "alerter", write_alerter_config(tmp_path, mqtt_port=mosquitto.port, store=url))
    topic = "heatwatch/v1/station/st001/command-result/"
    good = _result("c1")
    publish(mosquitto.port, [(topic + "c1", good), (topic + "c1", good),  # a redelivery
                             (topic + "c2", _result("c3")),  # another command's result on c2's topic
                             (topic + "c4", _result("c4", "failed", reason="modbus_exception", code=2,
                                                    read_back=None))])
    store = Store(url)
    cs = CommandStore(store.engine)
    wait_for(lambda: cs.query(station="st001").total == 2, 20, "two results in the store")
    c1 = cs.get("c1")
    assert (c1.origin, c1.state, c1.read_back) == ("broker", "confirmed", 70.0)
    assert len(c1.events) == 1  # the redelivery changed nothing
    assert (cs.get("c4").state, cs.get("c4").result_code) == ("failed", 2)
    wait_for(lambda: '"reason": "topic_mismatch"' in procs.log("alerter"), 10, "the mismatch logged")
    store.close()


def test_nothing_is_acknowledged_before_the_store_has_it(tmp_path: Path, mosquitto: Mosquitto,
                                                         procs: Processes) -> None:
    """The store locked by another writer: the alerter holds its batch (a command result) and
    acknowledges nothing; once the lock goes, the result is recorded, then acknowledged."""
    import sqlite3

    url_path = tmp_path / "site.sqlite"
    port = free_port()
    start(procs, "alerter", write_alerter_config(tmp_path, mqtt_port=mosquitto.port, store=f"sqlite:///{url_path}",
                                                 metrics={"port": port}))
    lock = sqlite3.connect(url_path, timeout=1)
    lock.execute("BEGIN EXCLUSIVE")  # another writer holds the database
    try:
        publish(mosquitto.port, [("heatwatch/v1/station/st001/command-result/c7", _result("c7"))])
        wait_for(lambda: "alert store unavailable; holding the batch" in procs.log("alerter"), 60,
                 "the alerter holding its batch")
        assert metric(port, "heatwatch_alerter_acked_total") == 0
    finally:
        lock.rollback()
        lock.close()
    store = Store(f"sqlite:///{url_path}")
    cs = CommandStore(store.engine)
    wait_for(lambda: cs.query(station="st001").total == 1, 60, "the result recorded once the lock went")
    wait_for(lambda: metric(port, "heatwatch_alerter_acked_total") == 1, 20, "then acknowledged")
    store.close()
