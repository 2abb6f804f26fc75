"""A store outage under a running API, on a real PostgreSQL: every endpoint that needs the site
database answers 503 naming the part that is away and why (not a 500, not a 401 for a token it
could not look up), the API keeps running, and when PostgreSQL is back the pool's pre-ping
reconnects and the same requests answer 200 again. A value the database refuses is a 422."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from alerting.assets import parse
from alerting.database import Database
from alerting.registry import SiteRegistry
from alerting.store import Store
from api.app import create_app
from contract.alerts import Transition
from contract.config import ApiConfig, InfluxSettings
from contract.errors import DatabaseUnavailable
from heatwatch.devstack import Influxd, Postgres, free_port

CSV = """station,station_name,building,address,household,unit,room,sensor
st001,幸福里换热站,b01,幸福里小区3号楼,HH-0001,2,301,b01-0301
"""


@pytest.fixture
def pg() -> Iterator[Postgres]:
    """Its own cluster: this test stops it."""
    server = Postgres(free_port())
    server.start()
    yield server
    server.stop()


def test_a_store_outage_is_503_naming_the_store_and_the_api_recovers(pg: Postgres, influxd: Influxd,
                                                                       influx_db: str) -> None:
    now = int(time.time() * 1000)
    db = Database(pg.url).open()
    registry = SiteRegistry(db)
    registry.import_assets(parse(CSV), actor="t", now=now)
    Store(db).apply([Transition(key="building_low:st001/b01", rule="building_low", state="firing",
                                severity="major", station="st001", building="b01", ts=now, since=now,
                                page=True)])
    used, fresh = ({"Authorization": "Bearer " + registry.add_token(name=n, role="dispatcher", actor="t",
                                                                    now=now)} for n in ("disp-1", "disp-2"))
    db.close()
    shown = pg.url.removeprefix("postgresql+psycopg://")
    cfg = ApiConfig(kind="api", influx=InfluxSettings(url=influxd.url, database=influx_db), store=pg.url)
    with TestClient(create_app(cfg)) as c:
        assert c.get("/v1/alerts", headers=used).json()["count"] == 1  # its token is cached now
        aid = c.get("/v1/alerts", headers=used).json()["data"][0]["id"]
        # a value PostgreSQL cannot hold is the request's fault, not the server's
        r = c.post(f"/v1/alerts/{aid}/ack", headers=used, json={"note": "caller at 3\u000001"})
        assert r.status_code == 422 and r.json()["detail"].startswith("alert store cannot store a value: ")

        pg.stop(signal.SIGINT, keep=True)  # "fast" shutdown: the pool's connections are cut
        for method, path, body in (("get", "/v1/alerts", None), ("get", f"/v1/alerts/{aid}", None),
                                   ("post", f"/v1/alerts/{aid}/ack", {"note": "on it"}),
                                   ("get", "/v1/silences", None),
                                   ("get", "/v1/lookup?household=HH-0001", None)):
            r = c.request(method, path, headers=used, json=body)
            assert r.status_code == 503, (path, r.text)
            detail = r.json()["detail"]
            assert detail.startswith("alert store unavailable: ") and shown in detail, detail
            assert "refused" in detail.lower(), detail  # why: the server is not there
        r = c.get("/v1/lookup", params={"q": "幸福里"}, headers=used)  # the register's search
        assert r.status_code == 503 and r.json()["detail"].startswith("site registry unavailable: ")
        r = c.get("/v1/commands", headers=used)
        assert r.status_code == 503 and r.json()["detail"].startswith("command store unavailable: ")
        # a token not looked up before cannot be checked: 503, not 401, and not counted as a failed
        # authentication (eleven of those would be a 429 for this address)
        for _ in range(12):
            r = c.get("/v1/alerts", headers=fresh)
            assert r.status_code == 503 and r.json()["detail"].startswith("site registry unavailable: ")
        assert c.get("/ready").json()["detail"] == "not ready: alert store not answering"
        assert c.get("/health").json() == {"status": "degraded", "influxdb": True, "store": False}

        pg.start()
        assert c.get("/v1/alerts", headers=used).json()["count"] == 1
        assert c.get("/v1/alerts", headers=fresh).status_code == 200
        r = c.post(f"/v1/alerts/{aid}/ack", headers=used, json={"note": "on it"})
        assert r.status_code == 200 and r.json()["ack_by"] == "disp-1"
        assert c.get("/ready").status_code == 200


def test_the_store_itself_raises_database_unavailable_and_recovers(pg: Postgres) -> None:
    store = Store(pg.url).open()
    registry = SiteRegistry(store.db)
    pg.stop(signal.SIGINT, keep=True)
    with pytest.raises(DatabaseUnavailable) as down:
        store.alerts()
    assert down.value.store == "alert store" and "127.0.0.1" in str(down.value)
    with pytest.raises(DatabaseUnavailable) as down:
        registry.principal("hw_x")
    assert down.value.store == "site registry"
    with pytest.raises(DatabaseUnavailable):
        store.apply([Transition(key="station_offline:st001", rule="station_offline", state="firing",
                                severity="critical", station="st001", ts=1, since=1)])
    pg.start()
    assert store.alerts().total == 0 and registry.principal("hw_x") is None
    store.close()
