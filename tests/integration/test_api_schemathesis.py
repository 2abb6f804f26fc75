"""schemathesis against the API's own OpenAPI document: no generated input gets a 5xx.

Runs on a real alert store (with assets, alerts and tokens) and a real influxd; requests carry an
admin token so they reach every handler, not just the 401 in front of it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

from alerting.assets import parse
from alerting.registry import SiteRegistry
from alerting.store import Store
from api.app import create_app
from contract.alerts import Transition
from contract.commands import generate_keypair
from contract.config import ApiConfig, ApiControl, InfluxSettings, MqttSettings
from heatwatch.devstack import Influxd, free_port

CSV = """station,station_name,building,address,household,unit,room,sensor
st001,幸福里换热站,b01,幸福里小区3号楼,HH-0001,2,301,b01-0301
st001,幸福里换热站,b02,幸福里小区5号楼,HH-0002,1,101,
"""
TOKEN: dict[str, str] = {}


@pytest.fixture(scope="module")
def api_app(tmp_path_factory: pytest.TempPathFactory, influxd: Influxd) -> Iterator[FastAPI]:
    url = f"sqlite:///{tmp_path_factory.mktemp('schemathesis') / 'alerts.sqlite'}"
    store = Store(url)
    store.migrate()
    now = int(time.time() * 1000)
    registry = SiteRegistry(store.db)
    registry.import_assets(parse(CSV), actor="t", now=now)
    store.apply([Transition(key="room_low:st001/b01/b01-0301", rule="room_low", state="firing",
                            severity="major", station="st001", building="b01", household="b01-0301",
                            ts=now, since=now, page=True),
                 Transition(key="makeup_daily:st001/secondary", rule="makeup_daily", state="firing",
                            severity="major", station="st001", subject="secondary", ts=now, since=now)])
    TOKEN["Authorization"] = "Bearer " + registry.add_token(name="fuzz", role="admin", actor="t", now=now)
    store.close()
    httpx.post(f"{influxd.url}/query", params={"q": "CREATE DATABASE fuzz"}).raise_for_status()
    httpx.post(f"{influxd.url}/write", params={"db": "fuzz", "precision": "ms"},
               content=f"station,station=st001 secondary_supply_temp=52.0 {now}").raise_for_status()
    folder = tmp_path_factory.mktemp("keys")
    (folder / "control.key").write_bytes(generate_keypair()[0])
    # remote control on, with no broker to reach: commands are checked and refused (no gateway
    # status), never sent
    control = ApiControl(signing_key=str(folder / "control.key"), mqtt=MqttSettings(port=free_port()))
    app = create_app(ApiConfig(kind="api", influx=InfluxSettings(url=influxd.url, database="fuzz"),
                               store=url, control=control))
    with TestClient(app):  # runs the lifespan: the stores and InfluxDB reader (api.deps.Services)
        yield app


def test_no_generated_input_gets_a_server_error(api_app: FastAPI) -> None:
    schema = schemathesis.openapi.from_asgi("/openapi.json", api_app)
    operations = [r.ok() for r in schema.get_all_operations()]
    assert len(operations) >= 10
    for op in operations:

        @given(case=op.as_strategy())
        @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck),
                  database=None)
        def run(case: Any) -> None:
            case.call_and_validate(headers=dict(TOKEN), checks=[not_a_server_error])

        try:
            run()
        except Exception as exc:
            raise AssertionError(f"{op.method.upper()} {op.path}: {exc}") from exc
