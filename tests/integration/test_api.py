"""The API against a real influxd holding collector-written data and a real alert store."""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

import orjson
import pytest
from fastapi.testclient import TestClient

from alerting.latest import Place
from alerting.registry import SiteRegistry
from alerting.store import Store
from api.app import create_app
from api.influx import InfluxReader
from collector.influx import InfluxWriter
from contract.config import ApiConfig, InfluxSettings
from contract.errors import DatabaseUnavailable, QueryRejected
from contract.influx import telemetry_lines
from contract.payload import decode_telemetry
from heatwatch.devstack import Influxd, free_port
from tests.unit.test_payload import GOOD


def _token(store_url: str, name: str = "disp-li", role: str = "dispatcher") -> dict[str, str]:
    r = SiteRegistry(store_url).open()
    token = r.add_token(name=name, role=role, actor="test", now=int(time.time() * 1000))
    r.close()
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

    # st002's gateway dies: its last station status cannot say so, its gateway's status does (the
    # alerter keeps it in the latest table); both station views say offline, as docs/api.md does
    s = Store(store)
    s.latest.upsert([Place("st002", "", gateway_state="offline").row()], now)
    s.close()
    with TestClient(create_app(ApiConfig(kind="api", influx=settings, store=store))) as client:
        body = client.get("/v1/stations", headers=auth).json()
        one = client.get("/v1/stations/st002", headers=auth).json()
    assert [(d["station"], d["state"]) for d in body["data"]] == [("st001", "degraded"), ("st002", "offline")]
    assert one["state"] == "offline"


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


def test_history_of_a_point_influxdb_cannot_average_is_a_client_error_not_an_outage(
        influxd: Influxd, influx_db: str, tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'alerts.sqlite'}"
    auth = _token(store)
    settings = InfluxSettings(url=influxd.url, database=influx_db)
    now = int(time.time() * 1000)
    lines = []
    for i in range(5):
        msg = dict(GOOD, ts=now - 60_000 * (5 - i), seq=i, values=[
            *GOOD["values"], {"point": "x_tank_temp", "value": 40.0 + i, "unit": "°C"}])
        lines += telemetry_lines(decode_telemetry(orjson.dumps(msg)))

    async def write() -> None:
        w = InfluxWriter(settings)
        await w.ensure_database()
        assert (await w.write(lines)).written == len(lines)
        await w.close()

    asyncio.run(write())
    with TestClient(create_app(ApiConfig(kind="api", influx=settings, store=store))) as client:
        # a custom text point: the API cannot know its type, InfluxDB refuses to average it
        r = client.get("/v1/stations/st001/history", headers=auth, params={"point": "x_plc_program"})
        assert r.status_code == 422, r.text
        assert r.json()["detail"].startswith("x_plc_program is not numeric, so its history cannot be "
                                             "averaged (InfluxDB: unsupported mean iterator type")
        # a custom numeric one is averaged as before
        r = client.get("/v1/stations/st001/history", headers=auth, params={"point": "x_tank_temp"})
        assert r.status_code == 200 and len(r.json()["values"]) >= 1
    # InfluxDB's own trouble stays 503: here the database does not exist
    missing = InfluxSettings(url=influxd.url, database="no_such_db")
    with TestClient(create_app(ApiConfig(kind="api", influx=missing, store=store))) as client:
        r = client.get("/v1/stations/st001/history", headers=auth, params={"point": "x_tank_temp"})
        assert r.status_code == 503 and "database not found" in r.json()["detail"]


def test_the_reader_tells_a_refused_query_from_an_unavailable_influxdb(
        influxd: Influxd, influx_db: str) -> None:
    async def run() -> None:
        w = InfluxWriter(InfluxSettings(url=influxd.url, database=influx_db))
        await w.ensure_database()
        await w.close()
        reader = InfluxReader(InfluxSettings(url=influxd.url, database=influx_db))
        gone = InfluxReader(InfluxSettings(url=f"http://127.0.0.1:{free_port()}", database=influx_db))
        nodb = InfluxReader(InfluxSettings(url=influxd.url, database="no_such_db"))
        try:
            with pytest.raises(QueryRejected, match="error parsing query"):
                await reader.query("SELEC x")  # 400 from InfluxDB
            assert await reader.query('SELECT mean("x") FROM "station"') == []
            with pytest.raises(DatabaseUnavailable, match="database not found"):
                await nodb.query('SELECT * FROM "station"')
            with pytest.raises(DatabaseUnavailable):
                await gone.query('SELECT * FROM "station"')
        finally:
            for r in (reader, gone, nodb):
                await r.close()

    asyncio.run(run())


def test_docs_pages_load_everything_from_the_api_itself(tmp_path: Path) -> None:
    """A control room without internet: /docs and /redoc name no other host, and every script,
    style and icon they name is served here (JavaScript that is really Swagger UI / Redoc)."""
    settings = InfluxSettings(url=f"http://127.0.0.1:{free_port()}", database="x")
    store = f"sqlite:///{tmp_path / 'alerts.sqlite'}"
    with TestClient(create_app(ApiConfig(kind="api", influx=settings, store=store))) as client:
        for page, script, marker in (("/docs", "swagger-ui-bundle.js", b"SwaggerUIBundle"),
                                     ("/redoc", "redoc.standalone.js", b"Redoc")):
            html = client.get(page).text
            assert not re.findall(r"""(?:https?:)?//[^\s"'<>]+""", html), re.findall(
                r"""(?:https?:)?//[^\s"'<>]+""", html)
            refs = re.findall(r"""(?:src|href)=["']([^"']+)["']""", html)
            refs += re.findall(r"""(?:url|spec-url)\s*[:=]\s*["']([^"']+)["']""", html)
            assert any(r.endswith(script) for r in refs), refs
            assert "/openapi.json" in refs, refs
            for ref in refs:
                assert ref.startswith("/"), ref
                r = client.get(ref)
                assert r.status_code == 200, ref
                kind = r.headers["content-type"]
                if ref.endswith(".js"):
                    assert "javascript" in kind and marker in r.content, (ref, kind)
                elif ref.endswith(".css"):
                    assert "text/css" in kind, (ref, kind)
                elif ref.endswith(".png"):
                    assert kind == "image/png", (ref, kind)
