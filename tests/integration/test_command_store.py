"""The command store on SQLite and a real PostgreSQL: the lifecycle with its events and audit,
results recorded idempotently by command id (the first final state stands), a result for an id
never issued kept as origin broker, the second engineer's confirmation, and the sender's claims
that expire what can no longer go."""

from __future__ import annotations

import dataclasses

import pytest
import sqlalchemy as sa

from alerting import schema
from alerting.commands import RECLAIM_AFTER_MS, CommandStore, NewCommand
from alerting.database import Database
from contract.commands import CommandResult
from contract.errors import Conflict, Forbidden

T = 1_796_832_000_000


@pytest.fixture
def cs(site_db: Database) -> CommandStore:
    return CommandStore(site_db.engine)


def new(cid: str, *, station_wide: bool = False, deadline: int = T + 300_000, value: float | bool = 70.0,
        point: str = "building_valve_setpoint", building: str | None = "b01") -> NewCommand:
    return NewCommand(id=cid, station="st001", device="plc", point=point, building=building, household=None,
                      value=value, old_value=60.0, needs_confirmation=station_wide, issuer="eng1",
                      reason="cold", ticket="T-1", created_at=T, deadline=deadline)


def result(cid: str, state: str = "confirmed", **kw: object) -> CommandResult:
    return CommandResult.model_validate({"id": cid, "station": "st001", "gateway": "gw-st001", "state": state,
                                         "device": "plc", "point": "building_valve_setpoint",
                                         "building": "b01", "value": 70.0, "read_back": 70.0,
                                         "ts": T + 1000, **kw})


def test_a_lifecycle_is_recorded_with_its_events_and_audit(cs: CommandStore) -> None:
    c = cs.create(new("c1"))
    assert (c.state, c.value, c.old_value) == ("requested", 70.0, 60.0)
    [claimed] = cs.claim(T + 10)
    assert claimed.id == "c1"
    assert cs.claim(T + 20) == []  # claimed: another worker leaves it
    assert [r.id for r in cs.claim(T + 20 + RECLAIM_AFTER_MS)] == ["c1"]  # its sender died
    cs.set_payload("c1", b"signed")
    cs.mark_sent("c1", T + 50)
    assert cs.record_results([result("c1")], T + 1100) == 1
    got = cs.get("c1")
    assert (got.state, got.read_back, got.sent_at) == ("confirmed", 70.0, T + 50)
    assert [e.kind for e in got.events] == ["requested", "sent", "result"]
    with cs.engine.connect() as conn:
        actions = [r.action for r in conn.execute(sa.select(schema.audit).order_by(schema.audit.c.id))]
    assert actions == ["command.requested", "command.sent", "command.result"]
    assert cs.last_write_at("st001", "plc", "building_valve_setpoint", "b01", None) == T + 50
    assert cs.last_write_at("st001", "plc", "building_valve_setpoint", "b02", None) is None


def test_results_are_idempotent_and_the_first_final_state_stands(cs: CommandStore) -> None:
    cs.create(new("c1"))
    assert cs.record_results([result("c1"), result("c1")], T + 1100) == 1
    assert cs.record_results([result("c1", "mismatch", read_back=60.0)], T + 1200) == 0
    got = cs.get("c1")
    assert got.state == "confirmed" and len([e for e in got.events if e.kind == "result"]) == 1
    cs.mark_sent("c1", T + 1300)  # the PUBACK handled after the result: the result stays
    assert cs.get("c1").state == "confirmed"


def test_a_result_for_a_command_never_issued_is_kept_as_origin_broker(cs: CommandStore) -> None:
    cs.record_results([result("forged", "rejected", reason="bad_signature", read_back=None)], T + 5)
    got = cs.get("forged")
    assert (got.origin, got.state, got.result_reason, got.issuer) == (
        "broker", "rejected", "bad_signature", None)


def test_a_station_setpoint_needs_a_second_engineer_before_its_deadline(cs: CommandStore) -> None:
    cs.create(new("s1", station_wide=True, point="secondary_supply_temp_setpoint", building=None))
    assert cs.claim(T + 10) == []  # not sent while unconfirmed
    with pytest.raises(Forbidden):
        cs.confirm("s1", actor="eng1", now=T + 20)
    assert cs.confirm("s1", actor="eng2", now=T + 30).state == "requested"
    with pytest.raises(Conflict):
        cs.confirm("s1", actor="eng2", now=T + 40)
    assert [r.id for r in cs.claim(T + 50)] == ["s1"]
    cs.create(new("s2", station_wide=True, deadline=T + 1000))
    assert cs.claim(T + 2000) == []
    late = cs.get("s2")
    assert (late.state, late.result_reason) == ("expired", "not_confirmed")
    with pytest.raises(Conflict):
        cs.confirm("s2", actor="eng2", now=T + 2001)


def test_the_sender_expires_only_what_never_reached_the_broker(cs: CommandStore) -> None:
    cs.create(new("never", deadline=T + 1000))
    cs.create(new("handed", deadline=T + 1000))
    cs.set_payload("handed", b"signed")  # published, PUBACK not yet seen: the gateway may have it
    cs.claim(T + 2000)
    assert (cs.get("never").state, cs.get("never").result_reason) == ("expired", "not_sent")
    assert cs.get("handed").state == "requested"
    assert cs.record_results([result("handed")], T + 2100) == 1  # its gateway answered after all
    assert cs.get("handed").state == "confirmed"


def test_bool_and_number_values_round_trip(cs: CommandStore) -> None:
    cs.create(new("b", value=True, point="x_pump_enable", building=None))
    cs.create(new("n", value=1234567.89))
    assert cs.get("b").value is True
    assert cs.get("n").value == 1234567.89
    page = cs.query(station="st001")
    assert page.total == 2 and {r.id for r in page.rows} == {"b", "n"}
    assert cs.query(station="st001", building="b01").total == 1


def test_a_command_id_taken_is_a_conflict_and_nothing_of_it_is_written(cs: CommandStore) -> None:
    cs.create(new("c1"))
    with pytest.raises(Conflict, match=r"^command store: already stored") as dup:
        cs.create(new("c1", value=80.0))
    assert dup.value.reason == "duplicate"
    got = cs.get("c1")
    assert got.value == 70.0 and [e.kind for e in got.events] == ["requested"]


def test_issued_reads_the_commands_created_in_a_period_oldest_first(cs: CommandStore) -> None:
    """The takeover report's read: created in [start, end), by creation then id, typed rows with
    the result (a broker-origin result counts from when it arrived)."""
    for cid, at in (("c-late", T + 2_000), ("c-b", T + 1_000), ("c-a", T + 1_000), ("c-before", T - 1),
                    ("c-end", T + 10_000)):
        cs.create(dataclasses.replace(new(cid), created_at=at, deadline=at + 300_000))
    cs.record_results([result("c-a")], T + 1_500)
    cs.record_results([result("foreign", ts=T + 3_000)], T + 3_100)
    rows = cs.issued(T, T + 10_000)
    assert [r.id for r in rows] == ["c-a", "c-b", "c-late", "foreign"]
    assert (rows[0].state, rows[0].result_at, rows[1].state) == ("confirmed", T + 1000, "requested")
    assert (rows[3].origin, rows[3].created_at) == ("broker", T + 3_000)
    assert cs.issued(T + 10_000, T + 10_001)[0].id == "c-end" and cs.issued(T + 3_001, T + 9_999) == []
