"""The latest value of every point per entity: the alerter's tap (``alerter/latest.py``) writing
the store's ``latest`` table (``alerting/latest.py``) on real SQLite and PostgreSQL, and the
alerter process keeping it while the collector ingests, read back by the API's lookup."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import sqlalchemy as sa
import sqlalchemy.exc
from fastapi.testclient import TestClient

from alerter.latest import LatestValues
from alerting import schema
from alerting.assets import parse
from alerting.database import Database
from alerting.latest import NOT_KEPT, LatestTable, day_means
from alerting.registry import SiteRegistry
from alerting.rows import HouseholdNow
from alerting.store import Store
from api.app import create_app
from api.influx import InfluxReader
from api.rooms import RoomHistory
from contract.config import ApiConfig, InfluxSettings, MetricsSettings
from contract.influx import telemetry_lines
from contract.payload import Frame, decode_telemetry, parse_gateway_status, parse_station_status
from heatwatch.devstack import Influxd, Mosquitto, free_port
from tests.conftest import (
    Processes,
    influx_query,
    publish,
    wait_for,
    write_alerter_config,
    write_collector_config,
)
from tests.integration.test_metrics import scrape, value

T = 1_796_832_000_000
CSV = """station,station_name,building,address,household,unit,room,sensor
st001,幸福里换热站,b01,幸福里小区3号楼,HH-0001,2,301,b01-0301
st001,幸福里换热站,b02,幸福里小区5号楼,HH-0003,1,101,
"""


@pytest.fixture
def store(site_db: Database) -> Store:
    SiteRegistry(site_db).import_assets(parse(CSV), actor="t", now=T)
    return Store(site_db)


def frame(ts: int, values: list[dict[str, Any]], *, seq: int = 1, backfill: bool = False) -> Frame:
    return decode_telemetry(orjson.dumps({"schema": 1, "station": "st001", "gateway": "gw1",
                                          "boot": "0badc0de", "seq": seq, "ts": ts, "backfill": backfill,
                                          "values": values}))


def v(point: str, value: Any, unit: str, building: str | None = None, household: str | None = None,
      quality: str = "good") -> dict[str, Any]:
    out = {"point": point, "value": value, "unit": unit, "quality": quality}
    if building:
        out["building"] = building
    if household:
        out["household"] = household
    return out


def rows(store: Store) -> dict[tuple[str, str], dict[str, Any]]:
    with store.engine.connect() as conn:
        return {(r.station, r.building): dict(r._mapping) for r in conn.execute(sa.select(schema.latest))}


FAST = [v("secondary_supply_temp", 55.0, "°C"), v("circ_pump_running", True, ""),
        v("building_valve_position", 40.0, "%", "b01"), v("room_temp", 19.5, "°C", "b01", "b01-0301")]


def test_newest_value_per_point_and_entity_a_row_per_station_and_building(store: Store) -> None:
    lv = LatestValues(store.latest, clock=lambda: T / 1000)
    lv.observe(frame(T, FAST))
    lv.observe(frame(T - 600_000, [v("outdoor_temp", -4.0, "°C")], seq=2))  # slower group, older
    lv.observe(frame(T + 10_000, [v("secondary_supply_temp", 56.0, "°C"),  # newer, and a bad reading
                                  v("room_temp", None, "°C", "b01", "b01-0301", quality="bad")], seq=3))
    lv.observe(frame(T - 3_600_000, [v("secondary_supply_temp", 40.0, "°C"),  # a backfill from an
                                     v("tank_level", 1.2, "m")], seq=0, backfill=True))  # hour ago
    assert asyncio.run(lv.flush()) == 2 and asyncio.run(lv.flush()) == 0  # only what changed is written
    got = rows(store)
    st = got[("st001", "")]
    assert st["points"] == {"secondary_supply_temp": 56.0, "circ_pump_running": True, "outdoor_temp": -4.0,
                            "tank_level": 1.2}  # the backfill only added the point it alone had
    assert st["ts"] == T + 10_000 and st["written_at"] == T and st["households"] is None
    b01 = got[("st001", "b01")]
    assert b01["points"] == {"building_valve_position": 40.0}
    # the room's bad reading kept its value and its time, and is not in its 24 h
    assert b01["households"] == {"b01-0301": {"ts": T, "points": {"room_temp": 19.5}, "day": {
        "since": T, "last": T, "bucket": T // 1_800_000, "sum": 19.5, "n": 1, "means": [19.5]}}}
    one = store.latest.household("HH-0001")
    assert one is not None
    assert (one.station_ts, one.building_ts, one.room_ts) == (T + 10_000, T, T)
    assert one.room_points == {"room_temp": 19.5} and one.address == "幸福里小区3号楼"
    assert (one.station_name, one.unit, one.room, one.sensor) == ("幸福里换热站", "2", "301", "b01-0301")
    quiet = store.latest.household("HH-0003")  # a building that never reported, no sensor
    assert quiet is not None and quiet.building_ts is None and quiet.room_ts is None
    assert quiet.station_points == st["points"]
    assert store.latest.household("HH-9999") is None


def test_station_and_gateway_state(store: Store) -> None:
    lv = LatestValues(store.latest)
    status = {"schema": 1, "station": "st001", "gateway": "gw1", "state": "degraded", "devices": {}, "ts": T}
    lv.station_status(parse_station_status(orjson.dumps(status)))
    lv.station_status(parse_station_status(orjson.dumps(status | {"state": "online", "ts": T - 1})))  # late
    asyncio.run(lv.flush())
    st = rows(store)[("st001", "")]
    assert (st["state"], st["state_ts"], st["ts"], st["points"]) == ("degraded", T, None, {})
    gone = {"schema": 1, "gateway": "gw1", "state": "offline", "boot": "0badc0de", "stations": ["st001"],
            "ts": T}
    lv.gateway_status(parse_gateway_status(orjson.dumps(gone)))
    asyncio.run(lv.flush())
    assert rows(store)[("st001", "")]["gateway_state"] == "offline"


def test_a_takeover_loads_the_table_so_rows_stay_whole(store: Store) -> None:
    lv = LatestValues(store.latest)
    lv.observe(frame(T, FAST))
    asyncio.run(lv.flush())
    lv.forget(lambda station: station == "st001")  # the partition handed over: its places go
    assert lv.stats.entities == 0 and not lv.places
    again = LatestValues(store.latest)  # the member taking it over (or the same after a restart)
    again.adopt(store.latest.load())
    assert again.stats.entities == 3  # the station, b01 and its household
    again.observe(frame(T + 60_000, [v("secondary_supply_temp", 57.0, "°C")], seq=5))  # by exception
    asyncio.run(again.flush())
    st = rows(store)[("st001", "")]
    assert st["points"] == {"secondary_supply_temp": 57.0, "circ_pump_running": True}
    assert st["ts"] == T + 60_000


def test_a_failed_write_keeps_the_entities_for_the_next_round(store: Store) -> None:
    lv = LatestValues(store.latest)
    lv.observe(frame(T, FAST))
    schema.latest.drop(store.engine)  # the table is gone: the write fails
    assert asyncio.run(lv.flush()) == 0 and lv.stats.write_errors == 1 and len(lv.dirty) == 2
    schema.latest.create(store.engine)
    assert asyncio.run(lv.flush()) == 2 and lv.stats.written == 2 and not lv.dirty


def test_entities_beyond_the_bound_are_counted_not_kept(store: Store) -> None:
    lv = LatestValues(store.latest, max_entities=2)
    lv.observe(frame(T, FAST))
    assert lv.stats.entities == 2 and lv.stats.refused == 1
    asyncio.run(lv.flush())
    assert {k: r["households"] for k, r in rows(store).items()} == {("st001", ""): None, ("st001", "b01"): {}}


def test_the_alerter_keeps_the_latest_values_and_the_lookup_reads_them(
        tmp_path: Path, mosquitto: Mosquitto, influxd: Influxd, influx_db: str, procs: Processes) -> None:
    url = f"sqlite:///{tmp_path / 'alerts.sqlite'}"
    store = Store(url)
    store.migrate()
    registry = SiteRegistry(store.db)
    registry.import_assets(parse(CSV), actor="t", now=T)
    cfg = write_collector_config(tmp_path, mqtt_port=mosquitto.port, influx_url=influxd.url,
                                 database=influx_db)
    alerter = write_alerter_config(tmp_path, mqtt_port=mosquitto.port, store=url, alerts={"latest_s": 0.2})
    procs.start("collector", "collector", str(cfg))
    procs.start("alerter", "alerter", str(alerter))
    wait_for(lambda: '"subscribed"' in procs.log("collector"), 20, "the collector's subscription")
    procs.wait_log("alerter", '"partitions taken over"')
    now = int(time.time() * 1000)
    msgs = [("heatwatch/v1/station/st001/telemetry", orjson.dumps({
        "schema": 1, "station": "st001", "gateway": "gw1", "boot": "0badc0de", "seq": i,
        "ts": now - (3 - i) * 60_000, "values": [
            v("secondary_supply_temp", 50.0 + i, "°C"), v("building_valve_position", 30.0 + i, "%", "b01"),
            v("room_temp", 18.0 + i / 10, "°C", "b01", "b01-0301")]})) for i in range(4)]
    msgs.append(("heatwatch/v1/station/st001/status", orjson.dumps({
        "schema": 1, "station": "st001", "gateway": "gw1", "state": "online", "devices": {}, "ts": now})))
    publish(mosquitto.port, msgs)
    got = wait_for(lambda: [r for r in rows(store).values() if r["station"] == "st001" and r["state"]
                            and r["ts"] == now], 20, "the station's latest row")
    assert got[0]["points"] == {"secondary_supply_temp": 53.0}
    # the latest table is kept before the write to InfluxDB completes; the lookup's 24 h is asked
    # once InfluxDB holds the four room readings (an empty answer would be cached for a minute)
    wait_for(lambda: (r := influx_query(influxd, influx_db, 'SELECT count("room_temp") FROM "household"'))
             and r[0]["values"][0][1] == 4, 20, "the room readings in InfluxDB")
    settings = InfluxSettings(url=influxd.url, database=influx_db)
    token = registry.add_token(name="disp", role="dispatcher", actor="t", now=now)
    with TestClient(create_app(ApiConfig(kind="api", influx=settings, store=url))) as client:
        def lookup() -> Any:
            r = client.get("/v1/lookup", params={"household": "HH-0001"},
                           headers={"Authorization": f"Bearer {token}"})
            return r.json()

        # asked again if InfluxDB took longer than the lookup waits for the 24 h (a busy machine)
        body = wait_for(lambda: (b := lookup())["room"]["last_24h_complete"] and b, 20, "a complete 24 h")
        # the gateway dies: its will says offline, and so does the station's state
        publish(mosquitto.port, [("heatwatch/v1/gateway/gw1/status", orjson.dumps({
            "schema": 1, "gateway": "gw1", "state": "offline", "boot": "0badc0de", "stations": ["st001"],
            "ts": now}))])
        gone = wait_for(lambda: (b := lookup())["station"]["state"] == "offline" and b, 20,
                        "the station offline with its gateway")
        assert gone["station"]["values"] == {"secondary_supply_temp": 53.0}  # its last values stay
    assert body["station"] == {"state": "online", "last_seen": now, "values": {"secondary_supply_temp": 53.0}}
    assert body["building"] == {"state": None, "last_seen": now, "values": {"building_valve_position": 33.0}}
    assert body["room"]["now"] == pytest.approx(18.3) and body["room"]["at"] == now
    # the 24 h from InfluxDB: clock-aligned 30-minute means of what the collector wrote there
    buckets: dict[int, list[float]] = {}
    for i in range(4):
        t = now - (3 - i) * 60_000
        buckets.setdefault(t - t % 1_800_000, []).append(18.0 + i / 10)
    means = [[t, pytest.approx(sum(x) / len(x))] for t, x in sorted(buckets.items())]
    assert body["room"]["last_24h"] == means
    store.close()


def stop(pid: int) -> None:
    """SIGSTOP, and wait until the process is stopped (the signal is delivered asynchronously)."""
    os.kill(pid, signal.SIGSTOP)
    wait_for(lambda: Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T", 5,
             f"process {pid} stopped")


def test_the_lookup_answers_without_waiting_for_a_stalled_or_absent_influxdb(tmp_path: Path) -> None:
    """The screen's current state comes from the store; InfluxDB stopped (SIGSTOP: a stall) costs
    the 24 h only, for 0.1 s, and the query finishing later fills the cache; InfluxDB gone too."""
    db = Influxd(tmp_path / "influxd", free_port())
    db.start()
    url = f"sqlite:///{tmp_path / 'alerts.sqlite'}"
    store = Store(url)
    store.migrate()
    registry = SiteRegistry(store.db)
    registry.import_assets(parse(CSV.replace(",101,\n", ",101,b02-0101\n")), actor="t", now=T)
    now = int(time.time() * 1000)
    lv = LatestValues(store.latest)
    lines = []
    for sensor, b in (("b01-0301", "b01"), ("b02-0101", "b02")):
        f = frame(now - 60_000, [v("room_temp", 17.5, "°C", b, sensor)])
        lv.observe(f)
        lines += telemetry_lines(f)
    asyncio.run(lv.flush())
    httpx.post(f"{db.url}/query", params={"q": "CREATE DATABASE hw"}).raise_for_status()
    httpx.post(f"{db.url}/write", params={"db": "hw", "precision": "ms"},
               content="\n".join(lines)).raise_for_status()
    token = registry.add_token(name="disp", role="dispatcher", actor="t", now=now)
    settings = InfluxSettings(url=db.url, database="hw", timeout_s=5)

    def lookup(client: TestClient, code: str) -> tuple[dict[str, Any], float]:
        t0 = time.monotonic()
        r = client.get("/v1/lookup", params={"household": code}, headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 200, r.text
        return r.json()["room"], time.monotonic() - t0

    metrics = MetricsSettings(port=free_port())
    cfg = ApiConfig(kind="api", influx=settings, store=url, metrics=metrics)
    try:
        with TestClient(create_app(cfg)) as client:
            assert client.get("/ready").status_code == 200  # the API's connection to InfluxDB is open
            assert db.proc is not None
            stop(db.proc.pid)
            try:
                room, took = lookup(client, "HH-0001")
            finally:
                os.kill(db.proc.pid, signal.SIGCONT)
            assert took < 1.0 and room["now"] == 17.5 and room["at"] == now - 60_000
            assert room["last_24h"] == [] and room["last_24h_complete"] is False
            # the query went on after the answer: the next lookup has the history from the cache
            room = wait_for(lambda: (r := lookup(client, "HH-0001")[0])["last_24h_complete"] and r, 10,
                            "the stalled query's answer in the cache")
            assert [m for _t, m in room["last_24h"]] == [17.5]
            # a stalled InfluxDB gets at most max_running queries: the next room answers at once
            assert asyncio.run(_shed(settings, db)) == ([], False, [], False)
            db.stop()
            room, took = lookup(client, "HH-0003")  # never asked for: nothing cached
            assert room["now"] == 17.5 and room["last_24h"] == [] and room["last_24h_complete"] is False
            room, _ = lookup(client, "HH-0001")  # cached a moment ago
            assert room["last_24h_complete"] is True and len(room["last_24h"]) == 1
            # what an operator sees: the stalled lookup and HH-0003's, at least (the waits between
            # may add more)
            left_out = value(scrape(metrics.port), "heatwatch_api_lookup_history_incomplete_total")
            assert left_out is not None and left_out >= 2
    finally:
        db.stop()
        store.close()


class _Counting(InfluxReader):
    """The real reader, counting the statements it sends."""

    asked = 0

    async def query(self, q: str, bind: dict[str, str | int | float] | None = None) -> list[dict[str, Any]]:
        self.asked += 1
        return await super().query(q, bind)


async def _shed(settings: InfluxSettings, db: Influxd) -> tuple[Any, ...]:
    reader = _Counting(settings)
    incomplete: list[None] = []
    rooms = RoomHistory(reader, max_running=1, incomplete=lambda: incomplete.append(None))
    assert await reader.ping()
    assert db.proc is not None
    stop(db.proc.pid)
    try:
        first = await rooms.last_24h("st001", "b01", "b01-0301")  # waits 0.1 s, goes on running
        second = await rooms.last_24h("st001", "b02", "b02-0101")  # nothing asked of InfluxDB
        assert reader.asked == 1 and len(incomplete) == 2
    finally:
        os.kill(db.proc.pid, signal.SIGCONT)
    await reader.close()
    return (*first, *second)


def test_the_rooms_24h_from_the_store_is_what_influxdb_answers(store: Store, influxd: Influxd,
                                                                influx_db: str) -> None:
    """26 hours of a room sensor every ~20 minutes (a gap of two hours, a bad reading, a
    redelivery), the alerter restarting half-way (its rings read back from the table): the 24 h
    the lookup now reads from the store is, bucket for bucket, what InfluxDB's ``GROUP BY
    time(30m)`` gives for the readings the collector wrote; only the oldest bucket differs, which
    the store keeps whole and InfluxDB cuts at now - 24 h."""
    now = int(time.time() * 1000)
    frames, i, ts = [], 0, now - 26 * 3_600_000
    while ts < now - 60_000:
        i += 1
        if not 14 * 3_600_000 < now - ts < 16 * 3_600_000:  # the sensor silent for two hours
            value = None if i % 17 == 0 else round(17.0 + (i % 9) * 0.37, 2)
            frames.append(frame(ts, [v("room_temp", value, "°C", "b01", "b01-0301",
                                       quality="good" if value is not None else "bad")], seq=len(frames)))
        ts += 1_200_000 + (i * 7_919) % 300_000 - 150_000
    half = len(frames) // 2
    first = LatestValues(store.latest)
    for f in frames[:half]:
        first.observe(f)
    asyncio.run(first.flush())
    again = LatestValues(store.latest)  # a restart: what the table holds, and the broker's redelivery
    again.adopt(store.latest.load())
    for f in frames[half - 3:]:
        again.observe(f)
    asyncio.run(again.flush())
    httpx.post(f"{influxd.url}/query", params={"q": f"CREATE DATABASE {influx_db}"}).raise_for_status()
    lines = [ln for f in frames for ln in telemetry_lines(f)]
    httpx.post(f"{influxd.url}/write", params={"db": influx_db, "precision": "ms"},
               content="\n".join(lines)).raise_for_status()

    async def from_influxdb() -> Any:
        reader = InfluxReader(InfluxSettings(url=influxd.url, database=influx_db, timeout_s=10))
        asked: list[None] = []
        try:
            got = await RoomHistory(reader, timeout_s=10, asked=lambda: asked.append(None)).last_24h(
                "st001", "b01", "b01-0301")
        finally:
            await reader.close()
        assert asked == [None]
        return got

    while True:  # InfluxDB's now() and ours in the same window (a bucket edge may pass between)
        t0 = int(time.time() * 1000)
        influx, complete = asyncio.run(from_influxdb())
        t1 = int(time.time() * 1000)
        if (t0 - 86_400_000) // 1_800_000 == (t1 - 86_400_000) // 1_800_000:
            break
    row = store.latest.household("HH-0001")
    assert row is not None and row.room_day is not None
    assert row.station_gap_at == frames[0].ts  # the first message of a station new to the table
    ring = day_means(row.room_day, t1, row.station_gap_at, row.station_written_at)
    assert complete and ring is not None and len(ring) >= 40
    ring_t, influx_t = [tuple(m) for m in ring], [tuple(m) for m in influx]
    oldest = (t1 - 86_400_000) // 1_800_000 * 1_800_000  # the bucket holding now - 24 h
    assert ring_t[0][0] == oldest  # the sensor reported in it (every ~20 min)
    if influx_t[0][0] == oldest:  # and after now - 24 h: InfluxDB has it, the mean of a part
        influx_t = influx_t[1:]
    assert ring_t[1:] == influx_t
    # the lookup's RoomHistory answers from the ring, InfluxDB not asked
    assert asyncio.run(_from_the_ring(row, t1)) == (ring, True)


async def _from_the_ring(row: HouseholdNow, now: int) -> tuple[Any, bool]:
    reader = InfluxReader(InfluxSettings(url=f"http://127.0.0.1:{free_port()}", database="none"))
    asked: list[None] = []
    try:
        rooms = RoomHistory(reader, asked=lambda: asked.append(None), clock=lambda: now / 1000)
        got = await rooms.last_24h("st001", "b01", "b01-0301", row.room_day, row.station_gap_at,
                                   row.station_written_at)
    finally:
        await reader.close()
    assert asked == []
    return got


def test_the_lookup_takes_a_rooms_24h_from_the_store_with_influxdb_stalled(tmp_path: Path) -> None:
    """HH-0001's sensor has reported for a day: its 24 h comes from the store, complete, with
    InfluxDB stopped (SIGSTOP) for the whole lookup; HH-0003's sensor is new today: only its 24 h
    is asked of InfluxDB (counted), and left out while InfluxDB stalls."""
    db = Influxd(tmp_path / "influxd", free_port())
    db.start()
    url = f"sqlite:///{tmp_path / 'alerts.sqlite'}"
    store = Store(url)
    store.migrate()
    registry = SiteRegistry(store.db)
    registry.import_assets(parse(CSV.replace(",101,\n", ",101,b02-0101\n")), actor="t", now=T)
    now = int(time.time() * 1000)
    lv = LatestValues(store.latest)
    for i in range(75):  # every 20 minutes for 25 hours
        ts = now - 25 * 3_600_000 + i * 1_200_000
        lv.observe(frame(ts, [v("room_temp", 18.0 + i % 4, "°C", "b01", "b01-0301")], seq=i))
    lv.observe(frame(now - 60_000, [v("room_temp", 17.5, "°C", "b02", "b02-0101")], seq=75))
    asyncio.run(lv.flush())
    token = registry.add_token(name="disp", role="dispatcher", actor="t", now=now)
    metrics = MetricsSettings(port=free_port())
    cfg = ApiConfig(kind="api", influx=InfluxSettings(url=db.url, database="hw", timeout_s=5), store=url,
                    metrics=metrics)

    def lookup(client: TestClient, code: str) -> dict[str, Any]:
        r = client.get("/v1/lookup", params={"household": code}, headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 200, r.text
        room: dict[str, Any] = r.json()["room"]
        return room

    try:
        with TestClient(create_app(cfg)) as client:
            assert client.get("/ready").status_code == 200
            assert db.proc is not None
            stop(db.proc.pid)
            try:
                t0 = int(time.time() * 1000)
                day = lookup(client, "HH-0001")
                t1 = int(time.time() * 1000)
                young = lookup(client, "HH-0003")
            finally:
                os.kill(db.proc.pid, signal.SIGCONT)
            asked = value(scrape(metrics.port), "heatwatch_api_lookup_history_influxdb_total")
    finally:
        db.stop()
        store.close()
    row_day = store.latest.household("HH-0001")
    assert row_day is not None
    assert day["last_24h_complete"] is True and len(day["last_24h"]) >= 48  # now's bucket may have none yet
    # the window of the lookup's own clock, between t0 and t1 (a bucket edge may pass between)
    assert day["last_24h"] in ([list(m) for m in day_means(row_day.room_day, t, row_day.station_gap_at,
                                                           row_day.station_written_at) or []]
                               for t in (t0, t1))
    assert young["now"] == 17.5 and young["last_24h"] == [] and young["last_24h_complete"] is False
    assert asked == 1


def test_a_gap_in_a_stations_messages_keeps_its_rooms_24h_from_the_store_for_a_day(store: Store) -> None:
    """The rooms' 24 h in the table is only as complete as the messages the alerter saw: a gap
    in a station's sequence (a message missed: the latest values off for a while, a broker queue
    overflowing, a member killed before its flush, an older version's row) sends the lookup to
    InfluxDB until the gap is a day old; a restart that carries on where it stopped, a
    redelivery do not. A gateway's restart (a new boot) is a gap: the old boot's last messages
    may be the ones missed; an old boot's message sent late never moves the sequence back."""
    step = 1_200_000
    n = 0

    def msg(seq: int, boot: str = "0badc0de") -> Frame:
        nonlocal n
        n += 1
        return decode_telemetry(orjson.dumps({
            "schema": 1, "station": "st001", "gateway": "gw1", "boot": boot, "seq": seq, "ts": T + n * step,
            "values": [v("room_temp", 18.0 + n % 3, "°C", "b01", "b01-0301")]}))

    def gap_at() -> int | None:
        row = store.latest.household("HH-0001")
        assert row is not None
        return row.station_gap_at

    def restart() -> LatestValues:  # the alerter again, with what its last flush left in the table
        asyncio.run(lv.flush())
        again = LatestValues(store.latest)
        again.adopt(store.latest.load())
        return again

    lv = LatestValues(store.latest)
    first = msg(0)
    day1 = [first] + [msg(s) for s in range(1, 80)]  # 26 h, a message every 20 minutes
    for f in day1:
        lv.observe(f)
    lv = restart()
    assert gap_at() == first.ts  # a station new to the table: nothing before its first message
    day = store.latest.household("HH-0001").room_day  # type: ignore[union-attr]
    now = T + n * step
    assert day_means(day, now, gap_at(), now) not in (None, [])  # a day of rooms, no gap since

    for f in (day1[-1], msg(80), msg(81)):  # a restart carrying on, the last message redelivered
        lv.observe(f)
    lv = restart()
    assert gap_at() == first.ts
    reboot = msg(0, boot="f2e5b001")  # the gateway restarted: its first message
    lv.observe(reboot)
    lv = restart()
    assert gap_at() == reboot.ts

    missed = msg(1, boot="f2e5b001")  # acknowledged, then the member was killed before its flush
    lv.observe(missed)
    lv = LatestValues(store.latest)
    lv.adopt(store.latest.load())
    after = msg(2, boot="f2e5b001")
    lv.observe(after)
    lv = restart()
    assert gap_at() == after.ts
    now = T + n * step
    day = store.latest.household("HH-0001").room_day  # type: ignore[union-attr]
    assert day_means(day, now, gap_at(), now) is None and day_means(day, now, None, now) not in (None, [])
    a_day_later = after.ts + 86_400_000
    assert day_means(day, a_day_later, gap_at(), a_day_later) is not None  # complete again

    lv.observe(missed)  # the missed message late (its gateway sends it again): nothing changes
    for seq in (3, 4):
        lv.observe(msg(seq, boot="f2e5b001"))
    lv = restart()
    assert gap_at() == after.ts

    for seq in (5, 6, 7):  # the latest values switched off for an hour: nobody saw these
        msg(seq, boot="f2e5b001")
    back = msg(8, boot="f2e5b001")
    lv.observe(back)
    lv = restart()
    assert gap_at() == back.ts

    late_boot = msg(4, boot="07e2b002")  # a restarted gateway whose first messages were lost
    lv.observe(late_boot)
    lv.observe(back)  # the old boot's message sent again late: the gap does not move back
    lv.observe(msg(5, boot="07e2b002"))  # and the sequence is still the new boot's
    lv = restart()
    assert gap_at() == late_boot.ts

    with store.engine.begin() as conn:  # the row as an older version wrote it: no sequence
        conn.execute(sa.update(schema.latest).where(schema.latest.c.building == "").values(boot=None,
                                                                                          seq=None))
    lv = LatestValues(store.latest)
    lv.adopt(store.latest.load())
    old = msg(6, boot="07e2b002")
    lv.observe(old)
    lv = restart()
    assert gap_at() == old.ts

    # a member with the latest values off takes the station over: its row is kept by nobody,
    # and stays so (whatever time passes) until a member keeping it sees a message again
    assert store.latest.not_kept(lambda st: st == "st001") == 1
    far = T + 1000 * 86_400_000
    assert day_means(store.latest.household("HH-0001").room_day, far, gap_at(), far) is None  # type: ignore[union-attr]
    lv = LatestValues(store.latest)
    lv.adopt(store.latest.load())
    kept = msg(7, boot="07e2b002")  # the next in sequence: nothing missed that the row can tell
    lv.observe(kept)
    lv = restart()
    assert gap_at() == kept.ts


def test_an_alerter_with_the_latest_values_off_marks_its_stations_rows_kept_by_nobody(
        tmp_path: Path, mosquitto: Mosquitto, procs: Processes) -> None:
    url = f"sqlite:///{tmp_path / 'alerts.sqlite'}"
    store = Store(url)
    store.migrate()
    lv = LatestValues(store.latest)
    lv.observe(frame(T, FAST))
    asyncio.run(lv.flush())
    assert rows(store)[("st001", "")]["gap_at"] == T
    alerter = write_alerter_config(tmp_path, mqtt_port=mosquitto.port, store=url, alerts={"latest_s": None})
    procs.start("alerter", "alerter", str(alerter))
    procs.wait_log("alerter", '"partitions taken over"')
    assert rows(store)[("st001", "")]["gap_at"] == NOT_KEPT
    store.close()


class _Held(LatestTable):
    """The real table, whose writes wait for ``go`` (a slow disk) and are recorded in order."""

    def __init__(self, engine: sa.Engine) -> None:
        super().__init__(engine)
        self.go, self.writing, self.written = threading.Event(), threading.Event(), []  # type: ignore[var-annotated]
        self.fail = False

    def upsert(self, rows: Any, now: int, chunk: int = 2000) -> None:
        self.writing.set()
        assert self.go.wait(20)
        if self.fail:
            raise sqlalchemy.exc.OperationalError("upsert", {}, Exception("disk I/O error"))
        super().upsert(rows, now, chunk)
        self.written.append([(r[0], r[1], r[2]) for r in rows])


def test_flushes_run_one_at_a_time_to_their_end_even_when_cancelled(store: Store) -> None:
    """A round never overtakes another (it would write older rows over newer ones, and a
    station's sequence ahead of its rooms): a second flush waits for the first's write, also
    when the first was cancelled (the alerter stopping) while its thread writes on."""
    table = _Held(store.engine)
    lv = LatestValues(table)

    async def run() -> None:
        lv.observe(frame(T, FAST, seq=0))
        first = asyncio.create_task(lv.flush())
        await asyncio.to_thread(table.writing.wait, 20)
        lv.observe(frame(T + 1000, FAST, seq=1))
        second = asyncio.create_task(lv.flush())
        await asyncio.sleep(0)
        first.cancel()
        done, _ = await asyncio.wait([first, second], timeout=0.5)
        assert not done and table.written == []  # both wait for the first's thread
        table.go.set()
        assert await second == 2
        with contextlib.suppress(asyncio.CancelledError):
            await first

    asyncio.run(run())
    assert [[ts for _s, _b, ts in w] for w in table.written] == [[T, T], [T + 1000, T + 1000]]


def test_a_failed_flush_does_not_bring_back_places_given_up_meanwhile(store: Store) -> None:
    table = _Held(store.engine)
    table.fail = True
    lv = LatestValues(table)

    async def run() -> None:
        lv.observe(frame(T, FAST, seq=0))
        flushing = asyncio.create_task(lv.flush())
        await asyncio.to_thread(table.writing.wait, 20)
        lv.forget(lambda st: st == "st001")  # the partition given up while the write fails
        table.go.set()
        assert await flushing == 0
        assert await lv.flush() == 0  # nothing to write, and no KeyError

    asyncio.run(run())
    assert lv.stats.write_errors == 1 and lv.places == {}
