"""The alert store on real databases: SQLite (WAL) and a real PostgreSQL, same code, same tests."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from alerting import schema
from alerting.assets import parse
from alerting.database import Database
from alerting.registry import SiteRegistry
from alerting.store import Store
from contract.alerts import Transition
from contract.errors import Conflict, NotFound, UnknownReference

T = 1_796_832_000_000


@pytest.fixture
def store(site_db: Database) -> Store:
    return Store(site_db)


@pytest.fixture
def registry(site_db: Database) -> SiteRegistry:
    return SiteRegistry(site_db)


def tr(state: str, ts: int, *, key: str = "room_low:st001/b01/h1", severity: str = "warning",
       page: bool = False, since: int = T) -> Transition:
    rule = key.split(":")[0]
    return Transition(key=key, rule=rule, state=state, severity=severity, station="st001",
                      building="b01", household="h1", ts=ts, since=since, value=15.2,
                      summary=f"{rule} {state}", context={"median": 15.2}, page=page)


def test_migrations_match_the_schema_and_rerun_cleanly(store: Store) -> None:
    store.migrate()  # idempotent
    def ours(obj: object, name: str | None, type_: str, _reflected: bool, _compare_to: object) -> bool:
        # the address-search index is dialect-specific (FTS5 tables / a pg_trgm GIN index)
        return not (name or "").startswith(("households_fts", "households_search_trgm"))

    with store.engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"include_object": ours})
        diff = compare_metadata(ctx, schema.metadata)
    assert diff == []


def test_an_episode_from_pending_to_resolved_with_its_history(store: Store) -> None:
    assert store.apply([tr("pending", T)]) == 1
    assert store.apply([tr("firing", T + 7_200_000, page=True)]) == 1
    assert store.apply([tr("firing", T + 7_300_000, severity="major", page=True)]) == 1
    assert store.apply([tr("firing", T + 7_300_000, severity="major", page=True)]) == 0  # replay
    store.apply([tr("resolved", T + 9_000_000, severity="major", page=True)])
    page = store.alerts(station="st001")
    assert page.total == 1
    a = store.alert(page.rows[0].id)
    assert (a.state, a.severity, a.since, a.fired_at, a.resolved_at, a.paged) == (
        "resolved", "major", T, T + 7_200_000, T + 9_000_000, True)
    assert [e.kind for e in a.events] == ["pending", "firing", "severity", "resolved"]
    assert a.context == {"median": 15.2}
    # the same rows as plain dicts, for the rule engine's adopt and the alerter
    assert store.query(station="st001").rows[0]["id"] == a.id
    plain = store.get(a.id)
    assert (plain["state"], plain["context"], [e["kind"] for e in plain["events"]]) == (
        "resolved", {"median": 15.2}, ["pending", "firing", "severity", "resolved"])


def test_one_open_episode_per_key_and_a_new_one_after_resolving(store: Store) -> None:
    store.apply([tr("firing", T, page=True), tr("resolved", T + 1000)])
    store.apply([tr("resolved", T + 2000)])  # nothing open: ignored
    store.apply([tr("pending", T + 3000, since=T + 3000)])
    assert store.alerts().total == 2
    assert store.alerts(open_only=True).rows[0].since == T + 3000
    with store.engine.begin() as conn, pytest.raises(sa.exc.IntegrityError):
        conn.execute(schema.alerts.insert().values(
            key="room_low:st001/b01/h1", rule="room_low", state="firing", severity="warning",
            since=T, last_ts=T, context={}))


def test_last_seen_moves_forward_on_open_episodes_only(store: Store) -> None:
    other = "building_low:st001/b01"
    store.apply([tr("firing", T, page=True), tr("firing", T, key=other, page=True),
                 tr("resolved", T + 1000, key=other)])
    store.touch([("room_low:st001/b01/h1", T + 600_000), (other, T + 600_000), ("room_low:nowhere", T)])
    store.touch([("room_low:st001/b01/h1", T + 300_000)])  # an older verdict never moves it back
    rows = {r.key: r for r in store.alerts().rows}
    assert rows["room_low:st001/b01/h1"].last_ts == T + 600_000
    assert rows[other].last_ts == T + 1000  # closed: its last seen is its resolution
    assert store.alerts(since=T + 500_000).total == 1  # "seen since" filters on it


def test_acknowledge_note_resolve_are_recorded_and_audited(store: Store, registry: SiteRegistry) -> None:
    store.apply([tr("firing", T, key="makeup_daily:st001/secondary", page=True)])
    aid = store.alerts().rows[0].id
    a = store.acknowledge(aid, actor="disp-li", now=T + 60_000, note="caller at b01-0301",
                          ticket="HL-20261210-0042")
    assert (a.ack_by, a.ack_at, a.ack_ticket) == ("disp-li", T + 60_000, "HL-20261210-0042")
    store.add_note(aid, actor="eng-wang", now=T + 120_000, note="valve found open, closed")
    a = store.resolve(aid, actor="eng-wang", now=T + 180_000, note="repaired")
    assert (a.state, a.resolved_by) == ("resolved", "eng-wang")
    assert [(e.kind, e.actor) for e in a.events] == [
        ("firing", None), ("ack", "disp-li"), ("note", "eng-wang"), ("resolved", "eng-wang")]
    with pytest.raises(Conflict):
        store.resolve(aid, actor="eng-wang", now=T + 190_000)
    with pytest.raises(NotFound):
        store.acknowledge(999_999, actor="x", now=T)
    assert [x.action for x in registry.audit_log()] == ["alert.resolved", "alert.note", "alert.ack"]


def test_filters_and_paging_are_bound_parameters(store: Store) -> None:
    trs = [tr("firing", T + i, key=f"room_low:st001/b01/h{i}", severity=("warning", "major")[i % 2])
           for i in range(30)]
    store.apply(trs)
    assert store.alerts(severity=["major"]).total == 15
    p1, p2 = store.alerts(limit=20), store.alerts(limit=20, offset=20)
    assert len(p1.rows) == 20 and len(p2.rows) == 10 and p1.total == 30
    assert {r.id for r in p1.rows}.isdisjoint({r.id for r in p2.rows})
    assert store.alerts(station="st001' OR '1'='1").total == 0  # data, not SQL
    assert store.alerts(since=T + 25).total == 5


def test_silences_feed_the_engine(store: Store) -> None:
    sid = store.add_silence(station="st001", building=None, start=T, end=T + 3_600_000,
                            reason="pressure test", actor="eng-wang", now=T)
    store.add_silence(station="st002", building="b01", start=T - 7_200_000, end=T - 3_600_000,
                      reason="past", actor="eng-wang", now=T)
    act = store.active_silences(T)
    assert sid > 0 and [(s.station, s.reason) for s in act] == [("st001", "pressure test")]


def test_a_whole_lifecycle_and_a_second_episode_in_one_batch(store: Store) -> None:
    """The set-wise apply gives the same rows and history as one transition at a time."""
    k2 = "building_low:st001/b01"
    batch = [tr("pending", T), tr("firing", T + 10, page=True), tr("resolved", T + 20, page=True),
             tr("pending", T + 30, since=T + 30), tr("pending", T + 5, key=k2)]
    assert store.apply(batch) == 5
    k1_rows = sorted(store.alerts(rule=["room_low"]).rows, key=lambda r: r.since)
    assert [(r.state, r.since, r.resolved_at) for r in k1_rows] == [
        ("resolved", T, T + 20), ("pending", T + 30, None)]
    assert [e.kind for e in store.alert(k1_rows[0].id).events] == ["pending", "firing", "resolved"]
    assert [e.kind for e in store.alert(k1_rows[1].id).events] == ["pending"]
    assert store.alerts(rule=["building_low"]).total == 1


def test_a_second_ack_keeps_the_first_acks_ticket(store: Store) -> None:
    store.apply([tr("firing", T, page=True)])
    aid = store.alerts().rows[0].id
    store.acknowledge(aid, actor="disp-li", now=T + 1, note="caller at 301", ticket="HL-0042")
    a = store.acknowledge(aid, actor="disp-zhao", now=T + 2, note="second caller")  # no ticket
    assert (a.ack_by, a.ack_note, a.ack_ticket, a.tickets) == (
        "disp-zhao", "second caller", "HL-0042", ["HL-0042"])
    store.add_note(aid, actor="disp-zhao", now=T + 3, note="third caller", ticket="HL-0050")
    a = store.acknowledge(aid, actor="disp-li", now=T + 4, ticket="HL-0042")
    assert (a.ack_ticket, a.tickets) == ("HL-0042", ["HL-0042", "HL-0050"])
    assert store.alerts().rows[0].tickets == ["HL-0042", "HL-0050"]


def test_silences_list_cancel_and_the_engine_stops_honouring_a_cancelled_one(
        store: Store, registry: SiteRegistry) -> None:
    hour = 3_600_000
    running = store.add_silence(station="st001", building=None, start=T - hour, end=T + hour,
                                reason="pressure test", actor="eng-wang", now=T - hour)
    coming = store.add_silence(station="st001", building="b01", start=T + hour, end=T + 2 * hour,
                               reason="valve swap", actor="eng-wang", now=T - hour)
    ended = store.add_silence(station="st002", building=None, start=T - 3 * hour, end=T - 2 * hour,
                              reason="filling", actor="eng-wang", now=T - 3 * hour)
    page = store.silences(now=T)
    assert page.total == 2 and [(r.id, r.state) for r in page.rows] == [
        (coming, "future"), (running, "active")]
    assert [r.state for r in store.silences(now=T, past=True).rows] == ["future", "active", "ended"]
    assert store.silences(now=T, station="st002").total == 0
    assert [s.reason for s in store.active_silences(T)] == ["pressure test", "valve swap"]

    got = store.cancel_silence(running, actor="eng-li", now=T + 5)
    assert (got.state, got.cancelled_by, got.cancelled_at) == ("cancelled", "eng-li", T + 5)
    assert [s.reason for s in store.active_silences(T + 5)] == ["valve swap"]  # what the collector reads
    assert [(r.id, r.state) for r in store.silences(now=T + 5, past=True).rows] == [
        (coming, "future"), (running, "cancelled"), (ended, "ended")]
    with pytest.raises(Conflict, match="cancelled already by eng-li"):
        store.cancel_silence(running, actor="eng-li", now=T + 6)
    with pytest.raises(Conflict, match="over already"):
        store.cancel_silence(ended, actor="eng-li", now=T + 6)
    with pytest.raises(NotFound):
        store.cancel_silence(999_999, actor="eng-li", now=T)
    audit = registry.audit_log(limit=1)[0]
    assert (audit.action, audit.actor, audit.target) == ("silence.cancel", "eng-li", "st001")


def test_a_silence_needs_a_station_the_site_knows(store: Store, registry: SiteRegistry) -> None:
    hour = 3_600_000
    # a new site knows no station yet: nothing to judge against
    store.add_silence(station="st-new", building=None, start=T, end=T + hour, reason="x", actor="e", now=T)
    store.apply([tr("firing", T)])  # st001 b01 raised an alert: known from now on
    store.add_silence(station="st001", building="b09", start=T, end=T + hour, reason="x", actor="e", now=T)
    with pytest.raises(UnknownReference, match="station 'st009' is unknown: not in the asset register and "
                                               "never in an alert"):
        store.add_silence(station="st009", building=None, start=T, end=T + hour, reason="x", actor="e",
                          now=T)
    assets = parse("station,station_name,building,address,household\n"
                   "st002,和平路换热站,b01,和平路8号院1号楼,HH-1\n")
    registry.import_assets(assets, actor="admin", now=T)
    store.add_silence(station="st002", building="b01", start=T, end=T + hour, reason="x", actor="e", now=T)
    with pytest.raises(UnknownReference, match="building 'b07' of station 'st002' is unknown"):
        store.add_silence(station="st002", building="b07", start=T, end=T + hour, reason="x", actor="e",
                          now=T)


# -- the database's errors, as the contract's -------------------------------------------------------
def test_refused_rows_are_the_requests_fault_not_a_crash(site_db: Database, store: Store) -> None:
    """IntegrityError and DataError leave the store as InvalidInput subclasses that name the store
    and the constraint (the API answers 409 / 422), on both databases."""
    from alerting.database import connected
    from contract.errors import InvalidInput

    insert = schema.alert_events.insert().values(alert_id=999_999, ts=T, kind="ack", state="firing",
                                                 severity="warning")
    with pytest.raises(UnknownReference, match=r"^alert store: refers to something not stored") as ref, \
            connected(site_db.engine, "alert store", write=True) as conn:
        conn.execute(insert)
    assert ref.value.reason == "unknown_reference"
    store.apply([tr("firing", T)])
    row = store.alerts().rows[0]
    twice = schema.alerts.insert().values(key=row.key, rule=row.rule, state="firing", severity="warning",
                                          since=T, last_ts=T, context={})
    with pytest.raises(Conflict, match=r"^alert store: already stored") as dup, \
            connected(site_db.engine, "alert store", write=True) as conn:
        conn.execute(twice)  # a second open episode of one key (the partial unique index)
    assert dup.value.reason == "duplicate"
    # PostgreSQL text holds no NUL character; SQLite stores it
    if site_db.sqlite:
        assert store.acknowledge(row.id, actor="disp-li", now=T + 1, note="a\x00b").ack_note == "a\x00b"
    else:
        with pytest.raises(InvalidInput, match=r"^alert store cannot store a value: .*NUL") as bad:
            store.acknowledge(row.id, actor="disp-li", now=T + 1, note="a\x00b")
        assert bad.value.reason == "bad_value"
        assert store.alert(row.id).ack_by is None  # nothing of it was written


def test_the_row_types_read_every_column_the_api_shows(store: Store) -> None:
    """A typed row is built positionally from the columns its fields name: these are the
    tables' columns, nothing missing that the API's models show."""
    from dataclasses import fields

    from alerting.rows import AlertEvent, AlertRow, SilenceRow
    from api.alerts import AlertEvent as EventPublic
    from api.alerts import AlertPublic, SilencePublic

    assert set(AlertPublic.model_fields) <= {f.name for f in fields(AlertRow)}
    assert set(EventPublic.model_fields) <= {f.name for f in fields(AlertEvent)}
    shown = {f.validation_alias or n for n, f in SilencePublic.model_fields.items()}
    assert shown <= {f.name for f in fields(SilenceRow)}


def test_open_of_rule_reads_only_that_rules_open_alerts(store: Store) -> None:
    """The hotline finds a station's gateway from the open gateway_offline alerts: only those,
    whatever other rules' keys sort next to them (gateway_offline_x is not gateway_offline)."""
    store.apply([tr("firing", T, key="gateway_offline:gw1"), tr("firing", T, key="gateway_offline:gw2"),
                 tr("firing", T, key="gateway_offline:gw3"), tr("firing", T, key="gateway_offlinez:gw4"),
                 tr("firing", T, key="room_low:st001/b01/h1"), tr("firing", T, key="gateway_offline;gw5")])
    store.apply([tr("resolved", T + 1, key="gateway_offline:gw3")])
    assert sorted(a.key for a in store.open_of_rule("gateway_offline")) == [
        "gateway_offline:gw1", "gateway_offline:gw2"]
    assert [a.key for a in store.open_of_rule("room_low")] == ["room_low:st001/b01/h1"]
    assert store.open_of_rule("station_offline") == []
