"""Command results through the real pipeline (mosquitto, influxd, the collector and the alerter
with SQLite): recorded in the store by command id once however often they arrive (the alerter),
written to InfluxDB's ``commands`` measurement (the collector), a result on another command's
topic rejected and counted by both."""

from __future__ import annotations

import time
from pathlib import Path

from alerting.commands import CommandStore
from alerting.database import Database
from contract.commands import CommandResult
from heatwatch.devstack import Influxd, Mosquitto
from tests.conftest import (
    Processes,
    influx_query,
    publish,
    rows,
    wait_for,
    write_alerter_config,
    write_collector_config,
)


def _result(cid: str, state: str = "confirmed", **kw: object) -> bytes:
    return CommandResult.model_validate({
        "id": cid, "station": "st001", "gateway": "gw-st001", "state": state, "device": "plc",
        "point": "building_valve_setpoint", "building": "b01", "value": 70.0, "read_back": 70.0,
        "ts": int(time.time() * 1000), **kw}).to_json()


def test_results_are_recorded_once_and_written_to_influxdb(
        tmp_path: Path, mosquitto: Mosquitto, influxd: Influxd, influx_db: str, procs: Processes) -> None:
    url = f"sqlite:///{tmp_path / 'site.sqlite'}"
    cfg = write_collector_config(tmp_path / "col", mqtt_port=mosquitto.port, influx_url=influxd.url,
                                 database=influx_db)
    procs.start("collector", "collector", str(cfg))
    alerter = write_alerter_config(tmp_path, mqtt_port=mosquitto.port, store=url)
    procs.start("alerter", "alerter", str(alerter))
    wait_for(lambda: "subscribed" in procs.log("collector"), 30, "the collector's subscription")
    procs.wait_log("alerter", '"partitions taken over"')
    topic = "heatwatch/v1/station/st001/command-result/"
    good = _result("c1")
    publish(mosquitto.port, [(topic + "c1", good), (topic + "c1", good),  # a redelivery
                             (topic + "c2", _result("c3")),  # another command's result on c2's topic
                             (topic + "c4", _result("c4", "failed", reason="modbus_exception", code=2,
                                                    read_back=None))])
    stored = wait_for(lambda: influx_query(influxd, influx_db, "SELECT * FROM commands"), 20, "result lines")
    db = Database(url)
    cs = CommandStore(db.engine)
    wait_for(lambda: cs.query(station="st001").total == 2, 20, "two results in the store")
    c1 = cs.get("c1")
    assert (c1.origin, c1.state, c1.read_back) == ("broker", "confirmed", 70.0)
    assert len(c1.events) == 1  # the redelivery changed nothing
    assert (cs.get("c4").state, cs.get("c4").result_code) == ("failed", 2)
    db.close()
    lines = {(r["id"], r["state"]) for r in rows(stored)}
    assert lines >= {("c1", "confirmed")}
    rejects = wait_for(lambda: influx_query(influxd, influx_db, "SELECT * FROM rejects"), 20, "the reject")
    assert [r["reason"] for r in rows(rejects)] == ["topic_mismatch"]
