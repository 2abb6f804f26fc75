"""The takeover report's remote-control part from commands the system really ran: the API with
``control:`` (uvicorn) → mosquitto → the gateway → the simulator's Modbus server → read-back →
result → the alerter records it in the store (the collector in InfluxDB); then the API's report
and ``heatwatch report`` read them.

The gateway announces one writable entrance valve (st001's b01, tests/control_helpers.py): the
API's report takes the controllable buildings from that announcement (``source: announced``), the
command line, which holds no gateway status, from the same gateway's config (``source: config``),
and both show b01 proven by the first confirmed command and every command by its outcome."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import yaml

from alerting.registry import SiteRegistry
from contract.alerts import AlertRules
from contract.config import load_gateway_config
from heatwatch.devstack import Influxd, Mosquitto, SimThread, free_port, port_open
from tests.conftest import (
    Processes,
    influx_query,
    rows,
    wait_for,
    write_alerter_config,
    write_collector_config,
)
from tests.control_helpers import DEVICE, STATION, write_control_gateway, write_keys

FINAL = {"confirmed", "mismatch", "rejected", "failed", "expired"}


@dataclass
class Site:
    http: httpx.Client
    auth: dict[str, dict[str, str]]
    sim: SimThread
    api_config: Path
    influxd: Influxd
    database: str

    def command(self, who: str, point: str, value: float, building: str | None = None) -> dict[str, Any]:
        r = self.http.post("/v1/commands", headers=self.auth[who], json={
            "station": STATION, "device": DEVICE, "point": point, "building": building, "value": value,
            "reason": "rooms at 16 °C", "ticket": "T-20261210-0042"})
        assert r.status_code == 201, r.text
        return r.json()  # type: ignore[no-any-return]

    def until_final(self, cid: str) -> dict[str, Any]:
        def final() -> dict[str, Any] | None:
            c = self.http.get(f"/v1/commands/{cid}", headers=self.auth["eng1"]).json()
            return c if c["state"] in FINAL else None
        return wait_for(final, 20, f"command {cid}'s result")  # type: ignore[no-any-return]

    def reads(self, value: float) -> None:
        """Wait until InfluxDB's latest reading of b01's valve is ``value``: the API checks the next
        command's step from it."""
        q = ('SELECT last("building_valve_setpoint") AS v FROM "building" '
             f"WHERE \"station\" = '{STATION}' AND \"building\" = 'b01'")
        wait_for(lambda: [r["v"] for r in rows(influx_query(self.influxd, self.database, q))] == [value], 20,
                 f"the valve reading {value}")


@pytest.fixture
def site(tmp_path: Path, mosquitto: Mosquitto, influxd: Influxd, influx_db: str,
         procs: Processes) -> Iterator[Site]:
    _, private, public = write_keys(tmp_path / "keys")
    gw_path = write_control_gateway(tmp_path / "gw", mqtt_port=mosquitto.port, plc_port=free_port(),
                                    public_key=public)
    sim = SimThread([load_gateway_config(gw_path)])
    store_url = f"sqlite:///{tmp_path / 'site.sqlite'}"
    registry = SiteRegistry(store_url).open()
    now = int(time.time() * 1000)
    auth = {who: {"Authorization": "Bearer " + registry.add_token(name=who, role="engineer", actor="test",
                                                                  now=now)} for who in ("eng1", "eng2")}
    registry.close()
    col = write_collector_config(tmp_path / "col", mqtt_port=mosquitto.port, influx_url=influxd.url,
                                 database=influx_db)
    alerter = write_alerter_config(tmp_path / "alerter", mqtt_port=mosquitto.port, store=store_url)
    (tmp_path / "report.yaml").write_text(yaml.safe_dump(
        {"kind": "report", "company": "幸福热力公司", "gateways": [str(gw_path)]}, allow_unicode=True))
    port = free_port()
    api = tmp_path / "api.yaml"
    api.write_text(yaml.safe_dump({
        "kind": "api", "listen": {"port": port}, "store": store_url, "report": "report.yaml",
        "influx": {"url": influxd.url, "database": influx_db},
        "control": {"signing_key": str(private), "mqtt": {"port": mosquitto.port, "keepalive_s": 5},
                    "unknown_grace_s": 2}}))
    procs.start("collector", "collector", str(col))
    procs.start("alerter", "alerter", str(alerter))  # it records the commands' results in the store
    procs.wait_log("alerter", '"member registered"')  # its session exists before results are published
    procs.start("gateway", "gateway", str(gw_path))
    procs.start("api", "api", str(api))
    http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60)
    try:
        wait_for(lambda: port_open(port), 120, "the API")
        writable = f"/v1/commands/writable/{STATION}"
        wait_for(lambda: http.get(writable, headers=auth["eng1"]).status_code == 200, 30,
                 "the gateway status at the API")
        s = Site(http, auth, sim, api, influxd, influx_db)
        s.reads(60.0)  # the valve's first reading
        yield s
    finally:
        http.close()
        sim.stop()


def _period() -> str:
    """Yesterday to tomorrow in the rules' local time: the commands of this test are inside."""
    tz = dt.timezone(dt.timedelta(hours=AlertRules().timezone_offset_h))
    today = dt.datetime.now(tz).date()
    return f"{today - dt.timedelta(days=1)}..{today + dt.timedelta(days=1)}"


def test_the_report_lists_controllable_and_proven_valves_and_commands_by_outcome(
        site: Site, tmp_path: Path) -> None:
    first = site.command("eng1", "building_valve_setpoint", 65.0, "b01")
    assert site.until_final(first["id"])["state"] == "confirmed"
    site.reads(65.0)
    site.sim.call(site.sim.sim.refuse_writes, STATION, DEVICE, 4)  # the PLC answers "device failure"
    failed = site.command("eng1", "building_valve_setpoint", 70.0, "b01")
    assert site.until_final(failed["id"])["state"] == "failed"
    site.sim.call(site.sim.sim.refuse_writes, STATION, DEVICE, None)
    site.sim.call(site.sim.sim.hold, STATION, DEVICE, ("building_valve_setpoint", "b01", None))
    held = site.command("eng1", "building_valve_setpoint", 72.0, "b01")  # the PLC keeps its own value
    assert site.until_final(held["id"])["state"] == "mismatch"
    supply = site.command("eng1", "secondary_supply_temp_setpoint", 58.0)  # station-wide: a second engineer
    r = site.http.post(f"/v1/commands/{supply['id']}/confirm", headers=site.auth["eng2"])
    assert r.status_code == 200, r.text
    assert site.until_final(supply["id"])["state"] == "confirmed"

    r = site.http.get("/v1/report/remote-control", params={"period": _period()}, headers=site.auth["eng1"])
    assert r.status_code == 200, r.text
    rc = r.json()
    assert rc["wired"] and (rc["controllable"], rc["proven"]) == (1, 1)
    assert rc["commands"] == {"confirmed": 2, "failed": 1, "mismatch": 1}
    [st] = rc["stations"]
    assert (st["station"], st["controllable"], st["source"], st["proven"]) == (STATION, ["b01"], "announced",
                                                                               ["b01"])
    assert st["commands"] == rc["commands"]
    [proof] = rc["proofs"]
    assert (proof["building"], proof["command"], proof["ticket"]) == ("b01", first["id"], "T-20261210-0042")
    whole = site.http.get("/v1/report", params={"period": _period()}, headers=site.auth["eng1"]).json()
    assert whole["remote_control"] == rc
    assert not [m for m in whole["missing"] if "remotely controllable" in m or "commands" in m]

    # the command line holds no gateway status: the same buildings from the gateway's config
    out = tmp_path / "report.json"
    p = subprocess.run([sys.executable, "-m", "heatwatch", "report", "--period", _period(), "--out", str(out),
                        "--config", str(site.api_config)], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    cli = orjson.loads(out.read_bytes())["remote_control"]
    assert cli["stations"][0]["source"] == "config"
    assert {**cli, "stations": [{**cli["stations"][0], "source": "announced"}]} == rc
