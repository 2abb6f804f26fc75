"""The hotline API's alert endpoints on a real alert store (SQLite) and a real influxd:
credentials and roles, filters and paging, acknowledgement, notes, manual resolution, silences,
the audit trail, and clear 4xx answers for bad input."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from alerting.registry import SiteRegistry
from alerting.store import Store
from api.alerts import AlertList
from api.app import create_app
from api.auth import CACHE_S
from contract.alerts import Transition
from contract.config import ApiConfig, InfluxSettings
from heatwatch.devstack import Influxd

T = int(time.time() * 1000) - 3_600_000


def _tr(key: str, state: str, severity: str = "major", **kw: Any) -> Transition:
    kw.setdefault("station", "st001")
    return Transition(key=key, rule=key.split(":")[0], state=state, severity=severity,
                      ts=T, since=T, value=1.0, summary="x", page=True, **kw)


class Api:
    def __init__(self, client: TestClient, store: Store) -> None:
        self.client, self.store, self.registry = client, store, SiteRegistry(store.db)
        now = int(time.time() * 1000)
        self.auth = {role: {"Authorization": "Bearer " + self.registry.add_token(
            name=f"{role}-1", role=role, actor="test", now=now)}
            for role in ("dispatcher", "engineer", "admin")}


@pytest.fixture
def api(tmp_path: Path, influxd: Influxd, influx_db: str) -> Iterator[Api]:
    url = f"sqlite:///{tmp_path / 'alerts.sqlite'}"
    store = Store(url)
    store.migrate()
    store.apply([_tr("makeup_daily:st001/secondary", "firing", subject="secondary"),
                 _tr("room_low:st001/b01/h1", "firing", "warning", building="b01", household="h1"),
                 _tr("room_low:st001/b01/h2", "pending", "warning", building="b01", household="h2"),
                 _tr("station_offline:st002", "firing", station="st002")])
    cfg = ApiConfig(kind="api", influx=InfluxSettings(url=influxd.url, database=influx_db), store=url)
    with TestClient(create_app(cfg)) as client:
        yield Api(client, store)
    store.close()


def test_every_endpoint_but_health_needs_a_valid_token(api: Api) -> None:
    c = api.client
    assert c.get("/health").status_code == 200
    assert c.get("/v1/alerts", headers=api.auth["dispatcher"]).status_code == 200
    for method, path in (("get", "/v1/alerts"), ("get", "/v1/alerts/1"), ("post", "/v1/alerts/1/ack"),
                         ("post", "/v1/silences"), ("get", "/v1/stations")):
        assert getattr(c, method)(path).status_code == 401, path
        r = getattr(c, method)(path, headers={"Authorization": "Bearer hw_not-a-token"})
        assert r.status_code == 401 and r.json()["detail"] == "unknown or revoked token"
    # ten failures from one address: unknown tokens now wait (429), a token in use does not
    # (api/auth.py: a bad screen behind a control room's NAT must not lock out the others)
    r = c.get("/v1/alerts", headers={"Authorization": "Bearer hw_not-a-token"})
    assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
    assert c.get("/v1/alerts", headers=api.auth["dispatcher"]).status_code == 200
    api.registry.revoke_tokens(name="dispatcher-1", actor="test", now=T)  # elsewhere: `heatwatch token`
    later = time.monotonic() + CACHE_S  # this process's cached answer has expired
    api.client.app.state.services.tokens.clock = lambda: later  # type: ignore[attr-defined]
    assert c.get("/v1/alerts", headers=api.auth["dispatcher"]).status_code == 401


def test_list_filters_and_pages(api: Api) -> None:
    c, h = api.client, api.auth["dispatcher"]
    whole = c.get("/v1/alerts", headers=h)
    # serialised by the route, not by FastAPI (#20): the bytes are the model's own JSON
    assert whole.headers["content-type"] == "application/json"
    assert AlertList.model_validate_json(whole.content).model_dump_json().encode() == whole.content
    body = whole.json()
    assert body["count"] == 4
    r = c.get("/v1/alerts", params={"rule": "room_low", "state": "firing"}, headers=h).json()
    assert [a["household"] for a in r["data"]] == ["h1"]
    r = c.get("/v1/alerts", params={"severity": ["major", "critical"], "limit": 1}, headers=h).json()
    assert r["count"] == 2 and len(r["data"]) == 1
    assert c.get("/v1/alerts", params={"station": "st002"}, headers=h).json()["count"] == 1
    for bad, where in (({"limit": 0}, "limit"), ({"limit": 501}, "limit"), ({"state": "burning"}, "state"),
                       ({"station": "st001' OR 1=1 --"}, "station"), ({"since": -1}, "since")):
        r = c.get("/v1/alerts", params=bad, headers=h)
        assert r.status_code == 422, bad
        assert r.json()["detail"].startswith(f"query.{where}"), r.text  # query.state.0: a list's first


def test_acknowledge_and_note_are_recorded_with_the_actor(api: Api) -> None:
    c, h = api.client, api.auth["dispatcher"]
    firing = c.get("/v1/alerts", params={"rule": "room_low", "state": "firing"}, headers=h).json()
    aid = firing["data"][0]["id"]
    r = c.post(f"/v1/alerts/{aid}/ack", json={"note": "caller at b01-0301", "ticket": "HL-20261210-42"},
               headers=h)
    assert r.status_code == 200
    a = r.json()
    assert (a["ack_by"], a["ack_ticket"]) == ("dispatcher-1", "HL-20261210-42") and a["ack_at"] > T
    c.post(f"/v1/alerts/{aid}/notes", json={"note": "engineer sent"}, headers=h)
    events = c.get(f"/v1/alerts/{aid}", headers=h).json()["events"]
    assert [(e["kind"], e["actor"]) for e in events] == [("firing", None), ("ack", "dispatcher-1"),
                                                         ("note", "dispatcher-1")]
    assert [x.action for x in api.registry.audit_log(limit=2)] == ["alert.note", "alert.ack"]
    assert c.post(f"/v1/alerts/{aid}/notes", json={"note": ""}, headers=h).status_code == 422
    assert c.post(f"/v1/alerts/{aid}/ack", json={"nte": "typo"}, headers=h).status_code == 422
    assert c.post("/v1/alerts/999999/ack", json={}, headers=h).status_code == 404
    assert c.get("/v1/alerts/0", headers=h).status_code == 422


def test_roles_resolve_and_silence(api: Api) -> None:
    c = api.client
    rows = {a["rule"]: a["id"] for a in c.get("/v1/alerts", headers=api.auth["dispatcher"]).json()["data"]}
    body = {"note": "valve closed, meter read"}
    r = c.post(f"/v1/alerts/{rows['makeup_daily']}/resolve", json=body, headers=api.auth["dispatcher"])
    assert r.status_code == 403 and "needs role engineer" in r.json()["detail"]
    r = c.post(f"/v1/alerts/{rows['makeup_daily']}/resolve", json=body, headers=api.auth["engineer"])
    assert r.status_code == 200
    assert (r.json()["state"], r.json()["resolved_by"]) == ("resolved", "engineer-1")
    r = c.post(f"/v1/alerts/{rows['makeup_daily']}/resolve", json=body, headers=api.auth["admin"])
    assert r.status_code == 409
    r = c.post(f"/v1/alerts/{rows['station_offline']}/resolve", json=body, headers=api.auth["engineer"])
    assert r.status_code == 409 and "resolves itself" in r.json()["detail"]
    silence = {"station": "st001", "start": "2026-12-01T08:00:00+08:00", "end": "2026-12-01T17:00:00+08:00",
               "reason": "secondary pressure test"}
    assert c.post("/v1/silences", json=silence, headers=api.auth["dispatcher"]).status_code == 403
    r = c.post("/v1/silences", json=silence, headers=api.auth["engineer"])
    assert r.status_code == 201
    start = int(dt.datetime.fromisoformat(silence["start"]).timestamp() * 1000)
    assert [(s.station, s.start, s.reason) for s in api.store.active_silences(start)] == [
        ("st001", start, "secondary pressure test")]
    for bad in ({**silence, "end": silence["start"]}, {**silence, "start": "2026-12-01T08:00:00"},
                {**silence, "station": "st/001"}, {**silence, "end": "2027-03-01T00:00:00+08:00"}):
        assert c.post("/v1/silences", json=bad, headers=api.auth["engineer"]).status_code == 422, bad


def test_admin_issues_lists_and_revokes_credentials_and_reads_the_audit_trail(api: Api) -> None:
    c, admin = api.client, api.auth["admin"]
    body = {"name": "hotline-system", "role": "dispatcher"}
    assert c.post("/v1/tokens", json=body, headers=api.auth["engineer"]).status_code == 403
    r = c.post("/v1/tokens", json=body, headers=admin)
    assert r.status_code == 201
    new = {"Authorization": "Bearer " + r.json()["token"]}
    assert c.get("/v1/alerts", headers=new).status_code == 200
    listed = c.get("/v1/tokens", headers=admin).json()["data"]
    newest = listed[0]
    assert (newest["name"], newest["created_by"], newest["revoked_at"]) == ("hotline-system", "admin-1", None)
    assert all("token" not in t and "token_sha256" not in t for t in listed)
    # revoked here: refused at once, without waiting for the token cache
    assert c.delete("/v1/tokens/hotline-system", headers=admin).json() == {"name": "hotline-system",
                                                                          "revoked": 1}
    assert c.get("/v1/alerts", headers=new).status_code == 401
    assert c.delete("/v1/tokens/hotline-system", headers=admin).status_code == 404
    r = c.delete("/v1/tokens/admin-1", headers=admin)
    assert r.status_code == 409 and "calling with" in r.json()["detail"]
    for bad in ({"name": "x", "role": "root"}, {"name": "bad name", "role": "admin"}, {"name": "x"},
                {"name": "x", "role": "admin", "extra": 1}):
        assert c.post("/v1/tokens", json=bad, headers=admin).status_code == 422, bad
    trail = c.get("/v1/audit", params={"actor": "admin-1"}, headers=admin).json()["data"]
    assert [(e["action"], e["target"]) for e in trail[:2]] == [("token.revoke", "hotline-system"),
                                                               ("token.add", "hotline-system")]
    assert c.get("/v1/audit", headers=api.auth["dispatcher"]).status_code == 403


def test_silences_are_listed_cancelled_and_need_a_known_station(api: Api) -> None:
    c, eng, disp = api.client, api.auth["engineer"], api.auth["dispatcher"]
    now = dt.datetime.now(dt.UTC)
    def iso(hours: float) -> str:
        return (now + dt.timedelta(hours=hours)).isoformat()

    body = {"station": "st001", "start": iso(-1), "end": iso(2), "reason": "secondary pressure test"}
    running = c.post("/v1/silences", json=body, headers=eng).json()["id"]
    coming = c.post("/v1/silences", json={**body, "start": iso(24), "end": iso(26), "building": "b01"},
                    headers=eng).json()["id"]
    # unknown station: the alert store knows st001 and st002 (they raised alerts)
    r = c.post("/v1/silences", json={**body, "station": "st009"}, headers=eng)
    assert r.status_code == 422 and "station 'st009' is unknown" in r.json()["detail"]

    listed = c.get("/v1/silences", headers=disp).json()
    assert listed["count"] == 2
    assert [(s["id"], s["state"], s["building"]) for s in listed["data"]] == [
        (coming, "future", "b01"), (running, "active", None)]
    assert listed["data"][1]["reason"] == "secondary pressure test"
    assert listed["data"][1]["created_by"] == "engineer-1"

    assert c.delete(f"/v1/silences/{running}", headers=disp).status_code == 403
    r = c.delete(f"/v1/silences/{running}", headers=eng)
    assert r.status_code == 200
    assert (r.json()["state"], r.json()["cancelled_by"]) == ("cancelled", "engineer-1")
    assert c.delete(f"/v1/silences/{running}", headers=eng).status_code == 409
    assert c.delete("/v1/silences/999999", headers=eng).status_code == 404
    assert [s["id"] for s in c.get("/v1/silences", headers=disp).json()["data"]] == [coming]
    past = c.get("/v1/silences", params={"all": "true"}, headers=disp).json()["data"]
    assert [(s["id"], s["state"]) for s in past] == [(coming, "future"), (running, "cancelled")]
    assert api.registry.audit_log(limit=1)[0].action == "silence.cancel"
    # what the collector re-reads every alerts.silences_s no longer holds the cancelled one
    assert [s.building for s in api.store.active_silences(int(now.timestamp() * 1000))] == ["b01"]


def test_a_later_ack_without_a_ticket_keeps_the_ticket(api: Api) -> None:
    c, h = api.client, api.auth["dispatcher"]
    aid = c.get("/v1/alerts", params={"rule": "station_offline"}, headers=h).json()["data"][0]["id"]
    c.post(f"/v1/alerts/{aid}/ack", json={"note": "first caller", "ticket": "HL-1"}, headers=h)
    a = c.post(f"/v1/alerts/{aid}/ack", json={"note": "second caller"}, headers=api.auth["engineer"]).json()
    assert (a["ack_by"], a["ack_note"], a["ack_ticket"], a["tickets"]) == (
        "engineer-1", "second caller", "HL-1", ["HL-1"])
    listed = c.get("/v1/alerts", params={"rule": "station_offline"}, headers=h).json()["data"][0]
    assert listed["ack_ticket"] == "HL-1"


def test_a_request_the_api_cannot_read_is_one_detail_naming_the_field_and_what_was_expected(api: Api) -> None:
    """A 422 for a wrong type, a missing or unknown field or a body that is not JSON answers like
    every other error: one ``detail`` string (before: FastAPI's list of loc/msg/type objects, the
    only answer of the API a client had to parse differently); the OpenAPI document says so."""
    c, h = api.client, api.auth["dispatcher"]
    aid = c.get("/v1/alerts", params={"state": "firing"}, headers=h).json()["data"][0]["id"]
    cases = [
        (c.get("/v1/alerts", params={"limit": "ten"}, headers=h),
         'query.limit: expected a valid integer, unable to parse string as an integer (got "ten")'),
        (c.post(f"/v1/alerts/{aid}/ack", json={"note": 5}, headers=h),
         "body.note: expected a valid string (got 5)"),
        (c.post(f"/v1/alerts/{aid}/ack", json={"nte": "typo"}, headers=h),
         'body.nte: unknown field (got "typo")'),
        (c.post(f"/v1/alerts/{aid}/notes", json={}, headers=h), "body.note: required"),
        (c.get("/v1/alerts/x1", headers=h),
         'path.alert_id: expected a valid integer, unable to parse string as an integer (got "x1")'),
        (c.post(f"/v1/alerts/{aid}/ack", content=b'{"note": ',
                headers={**h, "Content-Type": "application/json"}),
         "body: not valid JSON (Expecting value at position 9)"),
    ]
    for r, detail in cases:
        assert r.status_code == 422 and r.json() == {"detail": detail}, r.text
    two = c.get("/v1/alerts", params={"limit": "ten", "since": "yesterday"}, headers=h).json()["detail"]
    assert two.startswith("query.since: ") and "; query.limit: " in two
    schema = c.get("/openapi.json").json()
    assert schema["components"]["schemas"]["HTTPValidationError"]["properties"]["detail"]["type"] == "string"
    assert "ValidationError" not in schema["components"]["schemas"]
