"""The API against a real influxd holding collector-written data."""

from __future__ import annotations

import asyncio
import time

import orjson
from fastapi.testclient import TestClient

from api.app import create_app
from collector.influx import InfluxWriter
from contract.config import ApiConfig, InfluxSettings
from contract.influx import telemetry_lines
from contract.payload import decode_telemetry
from heatwatch.devstack import Influxd, free_port
from tests.unit.test_payload import GOOD


def test_health_and_station_list(influxd: Influxd, influx_db: str) -> None:
    settings = InfluxSettings(url=influxd.url, database=influx_db)
    now = int(time.time() * 1000)
    lines = []
    for i, st in enumerate(("st002", "st001")):
        msg = decode_telemetry(orjson.dumps({**GOOD, "station": st, "ts": now - 1000 + i}))
        lines += telemetry_lines(msg)
    lines.append(f'station_status,station=st001 state="degraded",devices_not_online=1i {now}')

    async def write() -> None:
        w = InfluxWriter(settings)
        await w.ensure_database()
        out = await w.write(lines)
        assert out.written == len(lines)
        await w.close()

    asyncio.run(write())
    with TestClient(create_app(ApiConfig(kind="api", influx=settings))) as client:
        assert client.get("/health").json() == {"status": "ok", "influxdb": True}
        body = client.get("/v1/stations").json()
    assert body["count"] == 2
    first = body["data"][0]
    assert first["station"] == "st001"
    assert first["state"] == "degraded"
    assert first["last_seen_ms"] == now - 999
    assert first["values"] == {"secondary_supply_temp": 55.2, "circ_pump_running": True,
                               "x_plc_program": "HX-V1"}
    assert body["data"][1]["state"] is None


def test_health_says_when_influxdb_is_down() -> None:
    settings = InfluxSettings(url=f"http://127.0.0.1:{free_port()}", database="x")
    with TestClient(create_app(ApiConfig(kind="api", influx=settings))) as client:
        r = client.get("/health")
        assert r.status_code == 503
        assert "InfluxDB" in r.json()["detail"]
        r = client.get("/v1/stations")
        assert r.status_code == 503
        assert "unavailable" in r.json()["detail"]
