"""Remote control end to end, every part real and a process of its own: the API (uvicorn) →
mosquitto → the gateway → the simulator's Modbus server (in this process: the test sees every
write request) → read-back → result → the alerter records it in the store (the collector in
InfluxDB) → the API shows it."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from alerting.registry import SiteRegistry
from contract.config import load_gateway_config
from heatwatch.devstack import Influxd, Mosquitto, SimThread, free_port, port_open
from tests.conftest import Processes, Subscriber, wait_for, write_alerter_config, write_collector_config
from tests.control_helpers import DEVICE, STATION, WRITES, write_control_gateway, write_keys

ROLES = {"disp": "dispatcher", "eng1": "engineer", "eng2": "engineer", "admin": "admin"}


@dataclass
class Stack:
    http: httpx.Client
    auth: dict[str, dict[str, str]]
    sim: SimThread
    procs: Processes
    gateway_config: Path
    broker: Mosquitto

    def writes(self) -> list[tuple[int, int, list[int]]]:
        out = self.sim.call(self.sim.sim.writes, STATION, DEVICE)
        assert isinstance(out, list)
        return out

    def post(self, who: str, path: str, body: dict[str, Any] | None = None) -> httpx.Response:
        return self.http.post(path, json=body, headers=self.auth[who])

    def get(self, path: str, who: str = "disp") -> Any:
        r = self.http.get(path, headers=self.auth[who])
        assert r.status_code == 200, r.text
        return r.json()

    def command(self, who: str, point: str, value: float | bool, building: str | None = None,
                **extra: Any) -> httpx.Response:
        body = {"station": STATION, "device": DEVICE, "point": point, "building": building, "value": value,
                "reason": "rooms at 16 °C in b01", "ticket": "T-20261210-0042", **extra}
        return self.post(who, "/v1/commands", body)

    def until(self, cid: str, states: set[str], timeout: float = 20) -> dict[str, Any]:
        return wait_for(lambda: (c := self.get(f"/v1/commands/{cid}"))["state"] in states and c, timeout,
                        f"command {cid} to be {states}")  # type: ignore[no-any-return]

    def stop_gateway(self) -> None:
        p = self.procs.procs["gateway"]
        p.terminate()
        p.wait(15)


@pytest.fixture
def stack(tmp_path: Path, mosquitto: Mosquitto, influxd: Influxd, influx_db: str,
          procs: Processes) -> Iterator[Stack]:
    _, private, public = write_keys(tmp_path / "keys")
    gw_path = write_control_gateway(tmp_path / "gw", mqtt_port=mosquitto.port, plc_port=free_port(),
                                    public_key=public)
    sim = SimThread([load_gateway_config(gw_path)])
    store_url = f"sqlite:///{tmp_path / 'site.sqlite'}"
    registry = SiteRegistry(store_url).open()
    now = int(time.time() * 1000)
    auth = {who: {"Authorization": "Bearer " + registry.add_token(name=who, role=role, actor="test", now=now)}
            for who, role in ROLES.items()}
    registry.close()
    col = write_collector_config(tmp_path / "col", mqtt_port=mosquitto.port, influx_url=influxd.url,
                                 database=influx_db)
    alerter = write_alerter_config(tmp_path / "alerter", mqtt_port=mosquitto.port, store=store_url)
    port = free_port()
    api = tmp_path / "api.yaml"
    api.write_text(yaml.safe_dump({
        "kind": "api", "listen": {"port": port}, "store": store_url,
        "influx": {"url": influxd.url, "database": influx_db},
        "control": {"signing_key": str(private), "mqtt": {"port": mosquitto.port, "keepalive_s": 5},
                    "unknown_grace_s": 2, "late_report_s": 60}}))
    procs.start("collector", "collector", str(col))
    procs.start("alerter", "alerter", str(alerter))
    procs.wait_log("alerter", '"member registered"')  # its session exists before results are published
    procs.start("gateway", "gateway", str(gw_path))
    procs.start("api", "api", str(api))
    http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10)
    try:
        wait_for(lambda: port_open(port), 120, "the API")
        s = Stack(http, auth, sim, procs, gw_path, mosquitto)
        # ready when the API holds the gateway's status and InfluxDB has a reading of the valve
        writable = f"/v1/commands/writable/{STATION}"
        wait_for(lambda: http.get(writable, headers=auth["disp"]).status_code == 200, 30,
                 "the gateway status at the API")
        wait_for(lambda: http.get(f"/v1/stations/{STATION}", headers=auth["disp"]).status_code == 200, 30,
                 "the first telemetry in InfluxDB")
        yield s
    finally:
        http.close()
        sim.stop()


def test_every_writable_type_through_the_api_confirmed_and_checked_on_the_wire(stack: Stack) -> None:
    assert stack.command("disp", "building_valve_setpoint", 65.0, "b01").status_code == 403
    assert stack.writes() == []
    for point, building, _typ, _extra, value, fc, words in WRITES:
        before = len(stack.writes())
        r = stack.command("eng1", point, value, building)
        assert r.status_code == 201, r.text
        c = r.json()
        if building is None:  # station-wide: a second engineer, not the issuer, confirms
            assert c["state"] == "awaiting_confirmation" and c["needs_confirmation"]
            assert stack.post("eng1", f"/v1/commands/{c['id']}/confirm").status_code == 403
            assert stack.post("eng2", f"/v1/commands/{c['id']}/confirm").status_code == 200
        else:
            assert c["state"] in ("requested", "sent", "confirmed") and not c["needs_confirmation"]
        done = stack.until(c["id"], {"confirmed", "mismatch", "rejected", "failed", "expired"})
        assert done["state"] == "confirmed", done
        assert [(f, w) for f, _, w in stack.writes()[before:]] == [(fc, words)], point
    valve = stack.get(f"/v1/commands?station={STATION}&building=b01")
    assert valve["count"] == 1
    detail = stack.get(f"/v1/commands/{valve['data'][0]['id']}")
    assert detail["old_value"] == pytest.approx(60.0) and detail["result"]["read_back"] == pytest.approx(65.0)
    # the result can be recorded before the API has handled the broker's PUBACK
    assert sorted(e["kind"] for e in detail["events"]) == ["requested", "result", "sent"]
    audit = stack.get("/v1/audit?limit=500", "admin")["data"]
    mine = [a for a in audit if a["detail"].get("command") == detail["id"]]
    requested = next(a for a in mine if a["action"] == "command.requested")
    assert requested["actor"] == "eng1"
    assert {"old": 60.0, "new": 65.0, "reason": "rooms at 16 °C in b01",
            "ticket": "T-20261210-0042"}.items() <= requested["detail"].items()
    assert {a["action"] for a in mine} == {"command.requested", "command.sent", "command.result"}


def test_out_of_bounds_at_the_api_is_422_naming_the_bound_and_nothing_is_sent(stack: Stack) -> None:
    cases = [("secondary_supply_temp_setpoint", 95.0, None,
              "value 95 above max 85 of secondary_supply_temp_setpoint"),
             ("building_valve_setpoint", 3.0, "b01", "value 3 below min 5 of building_valve_setpoint"),
             ("building_valve_setpoint", 75.0, "b01", "above max_step 10 of building_valve_setpoint"),
             ("x_pump_enable", 1.0, None, "x_pump_enable takes true or false"),
             ("primary_valve_setpoint", 50.0, None, "has no writable point primary_valve_setpoint")]
    for point, value, building, words in cases:
        r = stack.command("eng1", point, value, building)
        assert r.status_code == 422 and words in r.json()["detail"], (point, r.text)
    assert stack.get(f"/v1/commands?station={STATION}")["count"] == 0
    assert stack.writes() == []


@pytest.mark.slow
def test_an_unconfirmed_station_setpoint_is_never_sent(stack: Stack) -> None:
    seen = Subscriber(stack.broker.port, f"heatwatch/v1/station/{STATION}/command/+")
    try:
        r = stack.command("eng1", "secondary_supply_temp_setpoint", 61.0, deadline_s=10)
        cid = r.json()["id"]
        assert r.json()["state"] == "awaiting_confirmation"
        c = stack.until(cid, {"expired"}, 20)
        assert c["result"]["reason"] == "not_confirmed"
        assert stack.post("eng2", f"/v1/commands/{cid}/confirm").status_code == 409
        assert seen.messages == []  # never on the broker
        assert stack.writes() == []
    finally:
        seen.close()


@pytest.mark.slow
def test_a_gateway_offline_past_the_deadline_shows_unknown_then_expired_with_no_write(stack: Stack) -> None:
    stack.stop_gateway()
    r = stack.command("eng1", "building_valve_setpoint", 64.0, "b01", deadline_s=10)
    cid = r.json()["id"]
    stack.until(cid, {"sent"}, 10)  # the broker has it (the gateway's persistent session)
    stack.until(cid, {"unknown"}, 20)  # deadline + unknown_grace_s (2 s) passed, no result
    stack.procs.start("gateway", "gateway", str(stack.gateway_config))
    c = stack.until(cid, {"expired"}, 30)
    assert "nothing written" in c["result"]["detail"]
    assert stack.writes() == []
