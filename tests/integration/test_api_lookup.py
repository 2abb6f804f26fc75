"""The hotline lookup and the asset import, on a real alert store and a real influxd holding
collector-written telemetry (InfluxDB through the collector's line encoder, the store's
``latest`` table through the collector's latest-value stage): one call answers the hotline
screen."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient

from alerter.latest import LatestValues
from alerting.registry import SiteRegistry
from alerting.store import Store
from api.app import create_app
from api.lookup import Lookup
from collector.influx import InfluxWriter
from contract.alerts import Quiet, Transition
from contract.config import ApiConfig, InfluxSettings
from contract.influx import telemetry_lines
from contract.payload import decode_telemetry, parse_station_status
from heatwatch.devstack import Influxd
from tests.conftest import wait_for

CSV = """station,station_name,building,address,household,unit,room,sensor
st001,幸福里换热站,b01,幸福里小区3号楼,HH-0001,2,301,b01-0301
st001,幸福里换热站,b01,幸福里小区3号楼,HH-0002,2,302,b01-0302
st001,,b02,幸福里小区5号楼,HH-0003,1,101,
st002,和平路换热站,b01,和平路8号院1号楼,HH-1001,1,501,b01-0501
"""


class Api:
    def __init__(self, client: TestClient, store: Store) -> None:
        self.client, self.store, self.registry = client, store, SiteRegistry(store.db)
        now = int(time.time() * 1000)
        self.h = {r: {"Authorization": "Bearer " + self.registry.add_token(name=f"{r}-1", role=r, actor="t",
                                                                           now=now)}
                  for r in ("dispatcher", "admin")}

    def lookup(self, params: dict[str, str]) -> Any:
        """A lookup's answer with the room's complete 24 h: asked again while InfluxDB is slower
        than the lookup waits for it (api/rooms.py), as a dispatcher would on a busy machine."""
        def ask() -> Any:
            r = self.client.get("/v1/lookup", params=params, headers=self.h["dispatcher"])
            assert r.status_code == 200, r.text
            # serialised by the route, not by FastAPI (#20): the bytes are the model's own JSON
            assert r.headers["content-type"] == "application/json"
            assert Lookup.model_validate_json(r.content).model_dump_json().encode() == r.content
            body = r.json()
            return body if body["room"] is None or body["room"]["last_24h_complete"] else None

        return wait_for(ask, 20, "a lookup with the complete 24 h")

    def import_csv(self, text: str | bytes, role: str = "admin") -> Any:
        body = text.encode() if isinstance(text, str) else text
        return self.client.post("/v1/assets/import", content=body,
                                headers={**self.h[role], "content-type": "text/csv"})


@pytest.fixture
def api(tmp_path: Path, influxd: Influxd, influx_db: str) -> Iterator[Api]:
    url = f"sqlite:///{tmp_path / 'alerts.sqlite'}"
    store = Store(url)
    store.migrate()
    settings = InfluxSettings(url=influxd.url, database=influx_db)
    now = int(time.time() * 1000)
    lines: list[str] = []
    latest = LatestValues(store.latest)
    for i in range(12):  # 12 readings, 10 minutes apart; the room cools from 19 to 15.7 °C
        ts = now - (11 - i) * 600_000
        msg = {"schema": 1, "station": "st001", "gateway": "gw1", "boot": "0badc0de", "seq": i + 1,
               "ts": ts, "values": [
                   {"point": "secondary_supply_temp", "value": 52.0, "unit": "°C"},
                   {"point": "building_valve_position", "building": "b01", "value": 35.0, "unit": "%"},
                   {"point": "room_temp", "building": "b01", "household": "b01-0301",
                    "value": 19.0 - 0.3 * i, "unit": "°C"}]}
        frame = decode_telemetry(orjson.dumps(msg))
        lines += telemetry_lines(frame)
        latest.observe(frame)
    # a slower poll group: the outdoor temperature and the building's heat meter, 30 minutes ago
    # (InfluxDB's last(*) over fields of different times answers time 0: the old last_seen)
    slow = decode_telemetry(orjson.dumps({
        "schema": 1, "station": "st001", "gateway": "gw1", "boot": "0badc0de", "seq": 99,
        "ts": now - 1_800_000, "values": [
            {"point": "outdoor_temp", "value": -3.0, "unit": "°C"},
            {"point": "building_heat_total", "building": "b01", "value": 812.5, "unit": "GJ"}]}))
    lines += telemetry_lines(slow)
    latest.observe(slow)
    latest.station_status(parse_station_status(orjson.dumps({
        "schema": 1, "station": "st001", "gateway": "gw1", "state": "online", "devices": {}, "ts": now})))
    lines.append(f'station_status,station=st001 state="online",devices_not_online=0i {now}')
    asyncio.run(latest.flush())

    async def write() -> None:
        w = InfluxWriter(settings)
        await w.ensure_database()
        assert (await w.write(lines)).written == len(lines)
        await w.close()

    asyncio.run(write())
    with TestClient(create_app(ApiConfig(kind="api", influx=settings, store=url))) as client:
        yield Api(client, store)
    store.close()


def test_import_is_all_or_nothing_reports_lines_and_reimport_updates(api: Api) -> None:
    bad = CSV + ("st001,,b01,幸福里小区3号楼X,HH-0009,2,309,\n"
                 "st/9,,b01,x,HH-0010,,,\n"
                 "st001,,b01,幸福里小区3号楼,HH-0001,,,\n")
    r = api.import_csv(bad)
    assert r.status_code == 422
    problems = r.json()["detail"]["problems"]
    assert problems == [
        "line 6: building st001/b01 has address '幸福里小区3号楼X' here but '幸福里小区3号楼' on line 2",
        "line 7: station 'st/9' must be 1-64 letters, digits, '_', '.' or '-'",
        "line 8: household 'HH-0001' already on line 2"]
    assert api.registry.find_households("幸福里") == []  # nothing of the failed import was applied
    assert api.import_csv(CSV, role="dispatcher").status_code == 403
    r = api.import_csv(CSV)
    assert r.json() == {"stations": 2, "buildings": 3, "households": 4, "households_new": 4}
    again = CSV.replace("HH-0002,2,302", "HH-0002,3,302")  # the flat moved unit in the records
    r = api.import_csv(again.encode("gb18030"))  # as a Chinese Excel saves it
    assert r.json()["households_new"] == 0
    assert [(h.code, h.unit) for h in api.registry.find_households("HH-0002")] == [("HH-0002", "3")]
    assert len(api.registry.find_households("幸福里")) == 3  # updated, not duplicated
    assert api.import_csv("household,address\n").status_code == 422


def test_lookup_by_code_answers_the_hotline_screen(api: Api) -> None:
    api.import_csv(CSV)
    now = int(time.time() * 1000)
    api.store.apply([Transition(key="building_low:st001/b01", rule="building_low", state="firing",
                                severity="major", station="st001", building="b01", ts=now - 600_000,
                                since=now - 4_000_000, value=15.8, page=True),
                     Transition(key="room_low:st002/b01/b01-0501", rule="room_low", state="firing",
                                severity="warning", station="st002", building="b01", household="b01-0501",
                                ts=now, since=now, page=True)])
    aid = api.store.alerts(rule=["building_low"]).rows[0].id
    api.store.acknowledge(aid, actor="disp-wang", now=now, note="3 calls from b01", ticket="HL-77")
    body = api.lookup({"household": "HH-0001"})
    assert body["household"]["address"] == "幸福里小区3号楼" and body["household"]["room"] == "301"
    assert body["verdict"] == "known fault: the whole building is cold (supply or hydraulics)"
    assert body["room"]["now"] == pytest.approx(15.7)
    # 110 minutes of readings in clock-aligned 30-minute means
    assert 4 <= len(body["room"]["last_24h"]) <= 5 and body["room"]["last_24h"][0][1] > 18
    assert body["building"]["values"]["building_valve_position"] == 35.0
    assert body["station"]["state"] == "online" and body["station"]["values"]["secondary_supply_temp"] == 52.0
    assert body["station"]["values"]["outdoor_temp"] == -3.0  # the slow group's point is there too
    assert body["building"]["values"]["building_heat_total"] == 812.5
    # last seen is the newest reading's time, also when the points of a place differ in age
    newest = body["room"]["at"]
    assert newest > 0 and body["station"]["last_seen"] == newest and body["building"]["last_seen"] == newest
    assert [a["rule"] for a in body["alerts"]] == ["building_low"]  # not st002's household
    assert [(x["actor"], x["ticket"]) for x in body["acknowledgements"]] == [("disp-wang", "HL-77")]
    r = api.client.get("/v1/lookup", params={"household": "HH-0003"}, headers=api.h["dispatcher"])
    assert r.json()["verdict"] == "no alert on this household, its building or station: a new case"
    assert r.json()["room"] is None  # no room sensor in that flat


def test_lookup_by_address_words_in_any_order(api: Api) -> None:
    api.import_csv(CSV)
    get = lambda q: api.client.get("/v1/lookup", params={"q": q}, headers=api.h["dispatcher"])  # noqa: E731
    two = get("3号楼 幸福里").json()
    assert [c["code"] for c in two["candidates"]] == ["HH-0001", "HH-0002"] and two["household"] is None
    one = get("幸福里 302").json()
    assert one["household"]["code"] == "HH-0002" and one["verdict"] is not None
    assert get("%").json()["candidates"] == []  # a LIKE wildcard is a character, not a pattern
    assert get("' OR '1'='1").json()["candidates"] == []
    assert get("和平路 hh-1001").json()["household"]["station"] == "st002"
    assert api.client.get("/v1/lookup", headers=api.h["dispatcher"]).status_code == 422
    r = api.client.get("/v1/lookup", params={"household": "HH-404"}, headers=api.h["dispatcher"])
    assert r.status_code == 404
    assert api.client.get("/v1/lookup", params={"q": "幸福里"}).status_code == 401


def test_an_address_typed_another_way_finds_its_household_and_a_typo_gets_a_did_you_mean(api: Api) -> None:
    api.import_csv(CSV)
    get = lambda q: api.client.get("/v1/lookup", params={"q": q}, headers=api.h["dispatcher"]).json()  # noqa: E731
    for typed in ("幸福里3号楼301", "幸福里 3栋 2单元 301室", "幸福里３号楼３０１"):
        one = get(typed)
        assert one["household"]["code"] == "HH-0001", typed
        assert one["did_you_mean"] == [] and one["hint"] is None
    typo = get("幸富里 3号楼 301")
    assert typo["candidates"] == [] and typo["household"] is None
    assert [h["code"] for h in typo["did_you_mean"]][:2] == ["HH-0001", "HH-0002"]
    assert typo["hint"] == "nothing matches '幸富里 3号楼 301': did you mean one of these?"
    far = get("长江路 9号楼 101")
    assert far["did_you_mean"] == [] and "search by the household code" in far["hint"]


def test_station_detail_and_point_history(api: Api) -> None:
    h = api.h["dispatcher"]
    r = api.client.get("/v1/stations/st001", headers=h).json()
    assert r["values"]["secondary_supply_temp"] == 52.0 and r["state"] == "online" and r["alerts"] == []
    assert api.client.get("/v1/stations/st999", headers=h).status_code == 404
    api.import_csv(CSV)
    r = api.client.get("/v1/stations/st001/buildings", headers=h).json()
    assert r["count"] == 2
    assert [(b["building"], b["address"]) for b in r["data"]] == [
        ("b01", "幸福里小区3号楼"), ("b02", "幸福里小区5号楼")]
    assert r["data"][0]["values"] == {"building_valve_position": 35.0, "building_heat_total": 812.5}
    assert r["data"][1]["values"] == {}
    now = int(time.time() * 1000)
    r = api.client.get("/v1/stations/st001/history", headers=h, params={
        "point": "room_temp", "building": "b01", "household": "b01-0301", "start": now - 3_600_000 * 3,
        "end": now, "max_points": 20}).json()
    assert r["bucket_s"] == 540 and 12 <= len(r["values"]) <= 14
    assert r["values"][0][1] == pytest.approx(19.0) and r["values"][-1][1] == pytest.approx(15.7)
    for bad, why in (({"point": "room_temp"}, "household point"), ({"point": 'x"; DROP'}, "point name"),
                     ({"point": "secondary_supply_temp", "start": now, "end": now - 1}, "start < end")):
        r = api.client.get("/v1/stations/st001/history", headers=h, params=bad)
        assert r.status_code == 422 and why in r.text, bad


def test_lookup_lists_the_gateway_alert_of_a_dead_station(api: Api) -> None:
    """The asset register names no gateway (the demo's does not): the station's gateway is known
    from its open gateway_offline alert (its context names the stations behind it), and that
    alert is on the chain with the station's own station_offline (quiet: inhibited under it)."""
    api.import_csv(CSV)
    now = int(time.time() * 1000)
    api.store.apply([
        Transition(key="gateway_offline:gw1", rule="gateway_offline", state="firing", severity="major",
                   gateway="gw1", ts=now - 60_000, since=now - 120_000, page=True,
                   context={"stations": ["st001"], "offline_since": now - 120_000,
                            "reason": "will (offline)"}),
        Transition(key="gateway_offline:gw9", rule="gateway_offline", state="firing", severity="major",
                   gateway="gw9", ts=now - 60_000, since=now - 120_000, page=True,
                   context={"stations": ["st002"], "offline_since": now - 120_000,
                            "reason": "will (offline)"}),
        Transition(key="station_offline:st001", rule="station_offline", state="firing", severity="major",
                   station="st001", ts=now - 30_000, since=now - 30_000, quiet=Quiet.INHIBITED,
                   context={"reason": "no telemetry"})])
    body = api.lookup({"household": "HH-0003"})  # st001's b02: no room sensor
    assert sorted((a["rule"], a["gateway"]) for a in body["alerts"]) == [
        ("gateway_offline", "gw1"), ("station_offline", None)]
    assert body["verdict"] == "known fault: the station's gateway is offline"
    other = api.lookup({"household": "HH-1001"})  # st002: behind gw9 only
    assert [(a["rule"], a["gateway"]) for a in other["alerts"]] == [("gateway_offline", "gw9")]


def test_a_station_whose_devices_stopped_answering_is_said_so_before_it_pages(api: Api) -> None:
    """station_offline from the gateway's status is held offline.status_hold_s before it pages;
    meanwhile a caller may be the first to notice, and the verdict says what the station reports
    rather than "a new case"."""
    api.import_csv(CSV)
    now = int(time.time() * 1000)
    assert api.lookup({"household": "HH-0003"})["verdict"].endswith("a new case")
    api.store.apply([
        Transition(key="station_offline:st001", rule="station_offline", state="pending", severity="major",
                   station="st001", ts=now - 20_000, since=now - 20_000,
                   context={"reason": "status offline", "last_data": now - 25_000})])
    body = api.lookup({"household": "HH-0003"})
    assert [(a["rule"], a["state"]) for a in body["alerts"]] == [("station_offline", "pending")]
    assert body["verdict"] == "the station reports offline, not yet confirmed (its devices stopped answering)"
