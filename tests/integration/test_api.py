"""The API against a real influxd holding collector-written data and a real alert store."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import orjson
from fastapi.testclient import TestClient

from alerting.store import Store
from api.app import create_app
from collector.influx import InfluxWriter
from contract.config import ApiConfig, InfluxSettings
from contract.influx import telemetry_lines
from contract.payload import decode_telemetry
from heatwatch.devstack import Influxd, free_port
from tests.unit.test_payload import GOOD


def _token(store_url: str, name: str = "disp-li", role: str = "dispatcher") -> dict[str, str]:
    s = Store(store_url)
    s.migrate()
    token = s.add_token(name=name, role=role, actor="test", now=int(time.time() * 1000))
    s.close()
    return {"Authorization": f"Bearer {token}"}


def test_health_and_station_list(influxd: Influxd, influx_db: str, tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'alerts.sqlite'}"
    auth = _token(store)
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
    with TestClient(create_app(ApiConfig(kind="api", influx=settings, store=store))) as client:
        assert client.get("/health").json() == {"status": "ok", "influxdb": True, "store": True}
        assert client.get("/ready").status_code == 200
        assert client.get("/v1/stations").status_code == 401
        body = client.get("/v1/stations", headers=auth).json()
    assert body["count"] == 2
    first = body["data"][0]
    assert first["station"] == "st001"
    assert first["state"] == "degraded"
    assert first["last_seen_ms"] == now - 999
    assert first["values"] == {"secondary_supply_temp": 55.2, "circ_pump_running": True,
                               "x_plc_program": "HX-V1"}
    assert body["data"][1]["state"] is None


def test_readiness_says_when_influxdb_is_down(tmp_path: Path) -> None:
    settings = InfluxSettings(url=f"http://127.0.0.1:{free_port()}", database="x")
    store = f"sqlite:///{tmp_path / 'alerts.sqlite'}"
    auth = _token(store)
    with TestClient(create_app(ApiConfig(kind="api", influx=settings, store=store))) as client:
        assert client.get("/health").json() == {"status": "degraded", "influxdb": False, "store": True}
        r = client.get("/ready")
        assert r.status_code == 503
        assert r.json()["detail"] == "not ready: InfluxDB not answering"
        r = client.get("/v1/stations", headers=auth)
        assert r.status_code == 503
        assert "unavailable" in r.json()["detail"]
