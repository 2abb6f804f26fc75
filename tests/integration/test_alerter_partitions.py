"""Partition leases and handovers with state, on real PostgreSQL (and SQLite where one member):

- leases: one winner when members race for a partition; an expired lease is free, a live one is
  not; renewing finds a partition taken; a fenced write by a member that lost its partition
  writes nothing; a taker's acquisition waits for a commit in progress and then sees it;
- a scenario from the scenario library judged by three members that share 8 partitions, one of
  them killed mid-scenario (its partitions taken over from their snapshot and the others'
  standby after its leases expire) and a fourth joining later (graceful handovers), leaves the
  store exactly as one member judging everything: the same alert rows and transitions, the
  same pages, none twice.

The members here are the alerter's parts driven in-process, message by message on the
scenario's clock (``alerter.judge.Judge``, ``alerter.record.Recorder``, ``alerting.partitions``);
tests/e2e/test_alerter_members.py runs the processes.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from alerter.judge import Judge
from alerter.record import Recorder, Snapshot
from alerter.standby import Standby
from alerting import schema
from alerting.outbox import WEBHOOK
from alerting.partitions import Leases, owner_name, owners, plan
from alerting.store import Store
from contract import topics
from contract.config import IngestSettings
from heatwatch import scenarios
from heatwatch.devstack import Postgres, free_port
from tests.conftest import wait_for

COUNT = 8


@pytest.fixture(scope="module")
def postgres() -> Iterator[Postgres]:
    pg = Postgres(free_port())
    pg.start()
    yield pg
    pg.stop()


def _clean(pg: Postgres) -> Store:
    s = Store(pg.url)
    with s.engine.begin() as conn:  # a clean schema per test
        conn.execute(sa.text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
    s.migrate()
    return s


@pytest.fixture
def pg_store(postgres: Postgres) -> Iterator[Store]:
    s = _clean(postgres)
    yield s
    s.close()


# -- leases ---------------------------------------------------------------------------------------
def test_racing_members_one_wins_and_an_expired_lease_is_free(pg_store: Store) -> None:
    leases = Leases(pg_store.engine, COUNT, lease_ms=800)
    leases.ensure()
    won: list[tuple[str, int | None]] = []
    start = threading.Barrier(6)

    def race(name: str) -> None:
        start.wait()
        won.append((name, leases.acquire(name, 3)))

    threads = [threading.Thread(target=race, args=(f"m{i}#x",)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [(n, e) for n, e in won if e is not None]
    assert len(winners) == 1 and winners[0][1] == 1
    winner = winners[0][0]
    assert leases.acquire("late#x", 3) is None  # held
    assert leases.renew(winner, {3: 1}) == set()
    # the winner stops renewing: after the lease, another member takes it with a new epoch
    wait_for(lambda: leases.view().free(3), 5, "the lease to expire")
    assert leases.acquire("late#x", 3) == 2
    assert leases.renew(winner, {3: 1}) == {3}  # the old owner learns it lost it
    assert owners(leases.view()) == {"late#x": [3]}


def test_a_member_that_lost_its_partition_cannot_write_for_it(pg_store: Store) -> None:
    leases = Leases(pg_store.engine, COUNT, lease_ms=500)
    leases.ensure()
    e1 = leases.acquire("a#1", 5)
    assert e1 is not None
    wait_for(lambda: leases.view().free(5), 5, "the lease to expire")
    e2 = leases.acquire("b#1", 5)
    with pg_store.engine.begin() as conn:
        assert leases.fence(conn, "a#1", {5: e1}) == set()  # a paused member woke up: refused
        assert leases.fence(conn, "b#1", {5: e2 or 0}) == {5}


def test_a_takeover_waits_for_the_commit_in_progress_and_sees_it(pg_store: Store) -> None:
    """The fence's FOR SHARE lock: the taker's acquiring UPDATE blocks until the old owner's
    commit, so the open alerts it then reads include what that commit recorded."""
    leases = Leases(pg_store.engine, COUNT, lease_ms=300)
    leases.ensure()
    e1 = leases.acquire("a#1", 1)
    assert e1 is not None
    wait_for(lambda: leases.view().free(1), 5, "the lease to expire")
    locked, taken = threading.Event(), threading.Event()
    seen: list[int] = []

    def taker() -> None:
        locked.wait()
        assert leases.acquire("b#1", 1) == 2
        taken.set()
        seen.append(len(pg_store.query(open_only=True).rows))

    t = threading.Thread(target=taker)
    t.start()
    with pg_store.engine.begin() as conn:
        assert leases.fence(conn, "a#1", {1: e1}) == {1}  # expired, but not taken: still ours
        locked.set()
        assert not taken.wait(0.5)  # the taker waits on the lock
        pg_store.apply_in(conn, [_tr()])
    t.join(5)
    assert taken.is_set() and seen == [1]


def test_a_snapshot_written_late_never_replaces_a_newer_one(pg_store: Store) -> None:
    """Snapshot writes run on their own task: one still in flight at a stop may finish after the
    stop's final snapshot; the older one changes nothing, and its judged rows stay covered."""
    leases = Leases(pg_store.engine, COUNT, lease_ms=10_000)
    leases.ensure()
    epoch = leases.acquire("a#1", 2) or 0
    with pg_store.engine.begin() as conn:
        j1 = leases.note_judged(conn, {2: epoch}, {2: [11, 12]})[2]
        j2 = leases.note_judged(conn, {2: epoch}, {2: [13]})[2]
    with pg_store.engine.begin() as conn:
        leases.save_state(conn, "a#1", 2, epoch, b"newer", [11, 12, 13], taken_at=2000, upto=j2)
    with pg_store.engine.begin() as conn:
        leases.save_state(conn, "a#1", 2, epoch, b"older", [11, 12], taken_at=1000, upto=j1)
    st = leases.load_states([2])[2]
    assert (st.snapshot, st.written_at, st.recent, st.after) == (b"newer", 2000, {11, 12, 13}, set())
    # the next owner's first snapshot replaces it, whatever the clocks say
    wait_for(lambda: leases.view().free(2) or leases.release("a#1", 2, epoch), 5, "the lease free")
    e2 = leases.acquire("b#1", 2) or 0
    with pg_store.engine.begin() as conn:
        leases.save_state(conn, "b#1", 2, e2, b"taker's", [13], taken_at=1500, upto=0)
    assert leases.load_states([2])[2].snapshot == b"taker's"


def _tr() -> Any:
    from contract.alerts import Transition
    return Transition(key="room_low:st001/b01/h1", rule="room_low", state="firing", severity="warning",
                      station="st001", building="b01", household="h1", ts=1, since=1, page=True)


# -- handovers with state -------------------------------------------------------------------------
SCENARIO = {
    "description": "six stations behind three gateways: a cold building, a leak, a gateway outage",
    "start": "2026-12-10T00:00:00+08:00",
    "duration": "9h",
    "stations": 6,
    "stations_per_gateway": 2,
    "buildings": 3,
    "households": 6,
    "events": [
        {"at": "1h", "event": "cold_building", "station": "st002", "building": "b02", "for": "5h"},
        {"at": "2h", "event": "leak", "station": "st004", "for": "3h"},
        {"at": "4h", "event": "link_down", "station": "st003", "for": "1h"},
        {"at": "4h", "event": "link_down", "station": "st004", "for": "1h"},
    ],
    "status": [
        {"at": "4h0m45s", "gateway": "gw02", "state": "offline"},
        {"at": "5h", "gateway": "gw02", "state": "online"},
    ],
}


class Member:
    """One alerter member's parts, driven in step with the scenario's clock."""

    def __init__(self, store: Store, name: str, spec: scenarios.ScenarioSpec, lease_ms: int) -> None:
        self.store, self.name = store, name
        self.leases = Leases(store.engine, COUNT, lease_ms)
        self.owner = owner_name(name, "i1")
        self.judge = Judge(spec.rules, COUNT, IngestSettings(max_future_s=spec.max_future_s),
                           Standby(window_ms=3 * 3_600_000, max_bytes=1 << 30), recent_ms=3 * 3_600_000)
        self.recorder = Recorder(store, self.leases, self.owner, publish=True, wants_page=lambda t: True)
        self.alive = True
        self.upto: dict[int, int] = {}  # partition → its newest judged row committed

    def commit(self, now: int) -> None:
        out = self.recorder.commit(self.judge.take(), self.judge.epochs(), now)
        assert not out.lost, f"{self.name} lost {out.lost}"
        self.upto.update(out.judged)

    def join(self) -> None:
        assert self.leases.heartbeat(self.name, "i1", 0) is None

    def renew(self) -> None:
        self.join()
        assert self.leases.renew(self.owner, self.judge.epochs()) == set()

    def round(self, now: int, rounds: dict[int, int]) -> None:
        """A lease round, as alerter/app.py runs it (takeovers and handovers done at once)."""
        self.renew()
        moves = plan(self.leases.view(), self.name, set(self.judge.parts), COUNT, rounds)
        for p in moves.handover:
            part = self.judge.parts[p]
            self.snapshot(p, now)
            self.judge.drop(p)
            assert self.leases.release(self.owner, p, part.epoch)
        gained = {p: e for p in moves.acquire if (e := self.leases.acquire(self.owner, p)) is not None}
        if gained:
            states = self.leases.load_states(gained)
            open_alerts = self.store.query(open_only=True, limit=100_000).rows
            for p, e in sorted(gained.items()):
                self.upto[p] = states[p].upto
                self.judge.gain(p, e, states[p], open_alerts, now)
            self.commit(now)
            for p in gained:
                self.snapshot(p, now)

    def snapshot(self, p: int, now: int) -> None:
        part = self.judge.parts[p]
        blob, recent = self.judge.snapshot(p, now)
        assert self.recorder.save_snapshot(Snapshot(p, part.epoch, blob, recent, now, self.upto.get(p, 0)))


def _deliver(m: Member, i: scenarios.Input) -> None:
    if i.kind == "frame":
        m.judge.receive(str(topics.telemetry(i.msg.station)), scenarios.frame_payload(i.msg), i.now)
    elif i.kind == "gateway":
        m.judge.receive(str(topics.gateway_status(i.msg.gateway)), i.msg.model_dump_json(by_alias=True)
                        .encode(), i.now)
    elif i.kind == "station":
        m.judge.receive(str(topics.station_status(i.msg.station)), i.msg.model_dump_json(by_alias=True)
                        .encode(), i.now)
    elif i.kind == "tick":
        m.judge.tick(i.now)
    elif i.kind == "silences":
        m.judge.set_silences(i.msg)


def _run(spec: scenarios.ScenarioSpec, members: dict[str, Member],
         events: dict[int, Any] | None = None) -> None:
    """Play the scenario into every live member; each commits every five minutes (a batch);
    ``events``: at the n-th minute, a function of the members (kill one, add one)."""
    minute = {"n": 0, "now": 0}
    events = events or {}

    def feed(i: scenarios.Input) -> list[Any]:
        if i.kind == "tick":
            n = minute["n"] = minute["n"] + 1
            minute["now"] = i.now
            for m in members.values():
                if m.alive:
                    _deliver(m, i)
                    if n % 5 == 0 or n in events:  # a batch: five minutes of the scenario
                        m.commit(i.now)
                        m.renew()  # the real members renew on their own clock, every renew_s
            if n in events:
                events[n](members, i.now)
            return []
        for m in members.values():
            if m.alive:
                _deliver(m, i)
        return []

    scenarios.play(spec, feed)
    for m in members.values():
        if m.alive:
            m.commit(minute["now"])


def _rows(store: Store) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]], Counter[tuple[str, str]]]:
    a, ev, o = schema.alerts, schema.alert_events, schema.alert_outbox
    with store.engine.connect() as conn:
        alerts = sorted(tuple(r) for r in conn.execute(sa.select(
            a.c.key, a.c.rule, a.c.state, a.c.severity, a.c.since, a.c.fired_at, a.c.resolved_at, a.c.paged,
            a.c.quiet)))
        events = sorted(tuple(r) for r in conn.execute(
            sa.select(a.c.key, a.c.since, ev.c.kind, ev.c.ts, ev.c.state, ev.c.severity)
            .join(a, a.c.id == ev.c.alert_id)))
        pages = Counter((r.key, r.payload.decode()) for r in conn.execute(
            sa.select(o.c.key, o.c.payload).where(o.c.sink == WEBHOOK)))
    return alerts, events, Counter({k: n for k, n in pages.items()})


def test_members_handing_partitions_over_judge_as_one_member(pg_store: Store, tmp_path: Path) -> None:
    spec = scenarios.ScenarioSpec.model_validate(SCENARIO)
    # the reference: one member judging everything (SQLite, the single-member default)
    ref_store = Store(f"sqlite:///{tmp_path / 'one.sqlite'}")
    ref_store.migrate()
    one = Member(ref_store, "one", spec, lease_ms=60_000)
    one.leases.ensure()
    one.join()
    for p, e in one.leases.take_all(one.owner).items():
        one.judge.gain(p, e, one.leases.load_states([p])[p], [], 0)
    _run(spec, {"one": one})
    want = _rows(ref_store)
    assert {k.split(":")[0] for k, *_ in want[0]} >= {"building_low", "makeup_burst", "gateway_offline"}

    # three members on PostgreSQL; b killed at 2h30 (its leases expire while a and c go on), its
    # partitions taken over 20 minutes of data later; d joins at 7h and takes its share
    lease_ms = 3000
    members = {n: Member(pg_store, n, spec, lease_ms) for n in ("a", "b", "c")}
    members["a"].leases.ensure()
    rounds: dict[str, dict[int, int]] = {n: {} for n in "abcd"}
    for m in members.values():
        m.join()

    def all_rounds(ms: dict[str, Member], now: int) -> None:
        for name, m in ms.items():
            if m.alive:
                m.round(now, rounds[name])

    def kill_b(ms: dict[str, Member], now: int) -> None:
        ms["b"].alive = False

    def take_over(ms: dict[str, Member], now: int) -> None:
        def expired() -> bool:
            ms["a"].renew()
            ms["c"].renew()
            v = ms["a"].leases.view()
            return v.members == ["a", "c"] and all(v.free(p) for p in (0, 1, 2))

        wait_for(expired, 10, "b's member row and leases to expire")
        all_rounds(ms, now)

    def join_d(ms: dict[str, Member], now: int) -> None:
        ms["d"] = Member(pg_store, "d", spec, lease_ms)
        ms["d"].join()
        all_rounds(ms, now)  # a and c hand d's share over (snapshot, release) …
        all_rounds(ms, now)  # … and d takes it

    def snapshots(ms: dict[str, Member], now: int) -> None:
        for m in ms.values():
            if m.alive:
                for p in m.judge.parts:
                    m.snapshot(p, now)

    events: dict[int, Any] = {1: lambda ms, now: (all_rounds(ms, now), all_rounds(ms, now))}
    for n in range(10, 540, 10):  # leases renewed, assignment looked at (and snapshots every 30 min)
        events[n] = all_rounds
    for n in range(30, 540, 30):
        events[n] = (lambda f: lambda ms, now: (f(ms, now), snapshots(ms, now)))(events[n])
    events[150] = lambda ms, now: (all_rounds(ms, now), kill_b(ms, now))  # b dies 2h30 in
    events[170] = take_over
    events[420] = join_d
    _run(spec, members, events)

    held = owners(members["a"].leases.view())
    assert set(held) == {"a#i1", "c#i1", "d#i1"} and sum(map(len, held.values())) == COUNT
    got = _rows(pg_store)
    assert got[0] == want[0]  # the same alert rows …
    assert got[1] == want[1]  # … the same transitions …
    assert got[2] == want[2] and max(got[2].values()) == 1  # … the same pages, none twice
    a, c = members["a"].judge.stats, members["c"].judge.stats
    assert a.caught_up + c.caught_up > 0 and a.replayed + c.replayed > 0  # b committed since its snapshot
    ref_store.close()
