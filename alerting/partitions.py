"""Stations in partitions, and alerter members owning partitions through leases in the store.

Stage: alerter → **who judges which station** (``alerter/app.py`` runs the rounds; this module is
the data access and the pure assignment). Every alerter member receives every message; a member
judges the stations of the partitions it holds a lease on and keeps the rest in standby.

    partition_of(name, count)    crc32 of a station (or gateway) id modulo ``count``: the same in
                                 every process and every run
    assign(members, count)       the owner each partition should have: rendezvous hashing with
                                 bounded loads (no member above ceil(count / members)), so every
                                 member computes the same answer from the same member list
    Leases                       membership, the leases (acquire, renew, release, fence), each
                                 partition's snapshot and the messages judged since it

Leases live in ``partition_leases`` (one row per partition, created once: the count is fixed for
a store), members in ``partition_members``; both carry ``expires_at`` on the database's clock,
so members' clocks do not matter. A member renews its leases and its member row every
``renew_s``; a member that stops (killed, cut off) loses them ``lease_s`` after its last renewal,
and the others share its partitions out at their next round.

Fencing: ``epoch`` rises at every acquisition. Every write that depends on owning a partition
(its transitions, the judged identities, its snapshot, its outbox rows) runs in a transaction that
first locks the partition's lease row (``FOR SHARE`` on PostgreSQL) and checks owner and epoch
(``fence``): a member that lost a partition while paused cannot write for it, and a taker's
acquiring UPDATE waits for a commit in progress, so what it then reads (open alerts, judged
identities) includes that commit. SQLite serialises all writers anyway and holds one member.
"""

from __future__ import annotations

import hashlib
import zlib
from array import array
from collections.abc import Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from alerting import schema
from alerting.database import connected, serialise

DEFAULT_COUNT = 64


def partition_of(name: str, count: int) -> int:
    """The partition of a station (or of a gateway's own alerts): stable across processes."""
    return zlib.crc32(name.encode()) % count


def _score(part: int, member: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"{part}/{member}".encode(), digest_size=8).digest(), "big")


def assign(members: Sequence[str], count: int) -> dict[int, str]:
    """The owner each partition should have among ``members``: each partition goes to its
    highest-ranked member (rendezvous hashing: a member's arrival or departure moves few
    partitions) that still has room under ceil(count / members). Deterministic: every member
    computes the same from the same list."""
    if not members:
        return {}
    ms = sorted(set(members))
    cap = -(-count // len(ms))
    load = dict.fromkeys(ms, 0)
    out: dict[int, str] = {}
    for p in range(count):
        for m in sorted(ms, key=lambda m: _score(p, m), reverse=True):
            if load[m] < cap:
                out[p] = m
                load[m] += 1
                break
    return out


@dataclass
class Plan:
    acquire: list[int] = field(default_factory=list)  # free now, and ours to take
    handover: list[int] = field(default_factory=list)  # ours, but another member alive should have it


def plan(view: View, member: str, mine: set[int], count: int, free_rounds: dict[int, int], *,
         settled: bool = True, patience: int = 3) -> Plan:
    """One member's moves after a look at the leases: take the free partitions ``assign`` gives it
    (or any left free for more than ``patience`` rounds: their member is not taking them; a later
    round hands them over), hand over those it holds that ``assign`` gives another member.
    ``free_rounds`` counts, per partition, the rounds it was seen free (kept by the caller).
    ``settled`` False: only look (the first round after joining, so members started together see
    each other before taking shares they would hand over a round later)."""
    want = assign(view.members, count)
    out = Plan()
    for p in range(count):
        if p in mine:
            free_rounds.pop(p, None)
            if want.get(p, member) != member:
                out.handover.append(p)
            continue
        if not view.free(p):
            free_rounds.pop(p, None)
            continue
        free_rounds[p] = free_rounds.get(p, 0) + 1
        if settled and (want.get(p) == member or free_rounds[p] > patience):
            out.acquire.append(p)
    return out


def pack_ids(ids: Iterable[int]) -> bytes:
    """Message identities (unsigned 64-bit) as bytes for the store."""
    return array("Q", ids).tobytes()


def unpack_ids(blob: bytes) -> list[int]:
    a = array("Q")
    a.frombytes(blob)
    return a.tolist()


class PartitionCountMismatch(Exception):
    """The store's partitions were made with another count (it is fixed for a store)."""

    def __init__(self, have: int, want: int) -> None:
        super().__init__(f"the alert store has {have} partitions, the config asks for {want} (the count is "
                         "fixed once members have run: set partitions.count to the store's)")
        self.have, self.want = have, want


@dataclass(frozen=True)
class Lease:
    owner: str | None
    epoch: int
    expires_at: int


@dataclass(frozen=True)
class View:
    """One look at the leases and the members alive, at ``now`` (the database's clock)."""

    now: int
    leases: dict[int, Lease]
    members: list[str]  # alive (row not expired), sorted

    def free(self, part: int) -> bool:
        lease = self.leases[part]
        return lease.owner is None or lease.expires_at <= self.now


@dataclass
class PartState:
    """What a taker restores a partition from: its latest snapshot (None: never written), the
    identities judged in the window before it, and those judged and committed since."""

    part: int
    snapshot: bytes | None = None
    written_at: int = 0
    recent: set[int] = field(default_factory=set)
    after: set[int] = field(default_factory=set)
    upto: int = 0  # the newest judged row of the partition (a later snapshot replaces those up to it)


def owner_name(member: str, instance: str) -> str:
    """A lease's owner: the member and this run of it (a restarted member is another owner)."""
    return f"{member}#{instance}"


class Leases:
    WHAT = "alert store"  # its tables: how an outage is named (alerting/database.py)

    def __init__(self, engine: Engine, count: int, lease_ms: int) -> None:
        self.engine, self.count, self.lease_ms = engine, count, lease_ms
        self.pg = engine.dialect.name == "postgresql"
        self._now = sa.text("SELECT CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)" if self.pg
                            else "SELECT CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)")

    def _read(self) -> AbstractContextManager[Connection]:
        return connected(self.engine, self.WHAT)

    def _write(self) -> AbstractContextManager[Connection]:
        return connected(self.engine, self.WHAT, write=True)

    def now(self, conn: Connection) -> int:
        """The database's clock (ms): every expiry is on it."""
        return int(conn.execute(self._now).scalar_one())

    # -- set-up ---------------------------------------------------------------------------------
    def ensure(self) -> None:
        """The lease rows, once; a store made with another count raises PartitionCountMismatch."""
        t = schema.partition_leases
        with self._write() as conn:
            serialise(conn)  # members starting together: one makes the rows
            have = int(conn.execute(sa.select(sa.func.count()).select_from(t)).scalar_one())
            if have == 0:
                conn.execute(t.insert(), [{"part": p, "owner": None, "epoch": 0, "expires_at": 0}
                                          for p in range(self.count)])
            elif have != self.count:
                raise PartitionCountMismatch(have, self.count)

    # -- members --------------------------------------------------------------------------------
    def heartbeat(self, member: str, instance: str, started_at: int) -> str | None:
        """Register or renew this run of ``member``; returns the instance of another run of the same
        member whose row has not expired yet (nothing written then), else None."""
        m = schema.partition_members
        with self._write() as conn:
            now = self.now(conn)
            row = conn.execute(sa.select(m.c.instance, m.c.expires_at).where(m.c.member == member)
                               .with_for_update()).first()
            if row is not None and row.instance != instance and row.expires_at > now:
                return str(row.instance)
            values = {"instance": instance, "started_at": started_at, "expires_at": now + self.lease_ms}
            if row is None:
                conn.execute(m.insert().values(member=member, **values))
            else:
                conn.execute(m.update().where(m.c.member == member).values(**values))
        return None

    def leave(self, member: str, instance: str) -> None:
        """A clean stop: the member row goes at once (the others rebalance at their next round)."""
        m = schema.partition_members
        with self._write() as conn:
            conn.execute(m.delete().where(m.c.member == member, m.c.instance == instance))

    def others_alive(self, member: str) -> list[str]:
        m = schema.partition_members
        with self._write() as conn:
            now = self.now(conn)
            return [r.member for r in conn.execute(
                sa.select(m.c.member).where(m.c.member != member, m.c.expires_at > now))]

    # -- leases ---------------------------------------------------------------------------------
    def view(self) -> View:
        t, m = schema.partition_leases, schema.partition_members
        with self._read() as conn:
            now = self.now(conn)
            leases = {r.part: Lease(r.owner, int(r.epoch), int(r.expires_at))
                      for r in conn.execute(sa.select(t.c.part, t.c.owner, t.c.epoch, t.c.expires_at))}
            members = sorted(r.member for r in conn.execute(
                sa.select(m.c.member).where(m.c.expires_at > now)))
        return View(now, leases, members)

    def acquire(self, owner: str, part: int) -> int | None:
        """Take a partition that nobody holds (or whose lease expired): its new epoch, or None
        when someone else holds it (compare-and-set on the row)."""
        t = schema.partition_leases
        with self._write() as conn:
            now = self.now(conn)
            row = conn.execute(
                t.update().where(t.c.part == part, sa.or_(t.c.owner.is_(None), t.c.expires_at <= now))
                .values(owner=owner, epoch=t.c.epoch + 1, expires_at=now + self.lease_ms)
                .returning(t.c.epoch)).first()
        return int(row.epoch) if row is not None else None

    def take_all(self, owner: str) -> dict[int, int]:
        """Every partition to ``owner`` at once, held or not: the single member of a SQLite store,
        which need not wait for its previous run's leases to expire."""
        t = schema.partition_leases
        with self._write() as conn:
            now = self.now(conn)
            rows = conn.execute(t.update().values(owner=owner, epoch=t.c.epoch + 1,
                                                  expires_at=now + self.lease_ms)
                                .returning(t.c.part, t.c.epoch)).all()
        return {int(r.part): int(r.epoch) for r in rows}

    def renew(self, owner: str, held: Mapping[int, int]) -> set[int]:
        """Extend the leases of ``held`` (partition → epoch); returns those lost (taken by
        another member after they expired, or released)."""
        if not held:
            return set()
        t = schema.partition_leases
        with self._write() as conn:
            now = self.now(conn)
            rows = conn.execute(t.update().where(t.c.owner == owner, t.c.part.in_(list(held)))
                                .values(expires_at=now + self.lease_ms)
                                .returning(t.c.part, t.c.epoch)).all()
        kept = {int(r.part) for r in rows if held.get(int(r.part)) == int(r.epoch)}
        return set(held) - kept

    def release(self, owner: str, part: int, epoch: int) -> bool:
        """Give a partition up (its final snapshot written): free for the next owner at once."""
        t = schema.partition_leases
        with self._write() as conn:
            n = conn.execute(t.update().where(t.c.part == part, t.c.owner == owner, t.c.epoch == epoch)
                             .values(owner=None, expires_at=0)).rowcount
        return bool(n)

    def fence(self, conn: Connection, owner: str, held: Mapping[int, int]) -> set[int]:
        """Inside a writing transaction: lock the lease rows of ``held`` until the commit and
        return the partitions still held with those epochs (write only for these)."""
        if not held:
            return set()
        t = schema.partition_leases
        q = sa.select(t.c.part, t.c.epoch).where(t.c.part.in_(list(held)), t.c.owner == owner)
        if self.pg:
            q = q.with_for_update(read=True)
        return {int(r.part) for r in conn.execute(q) if held.get(int(r.part)) == int(r.epoch)}

    # -- state ----------------------------------------------------------------------------------
    def note_judged(self, conn: Connection, epochs: Mapping[int, int],
                    ids: Mapping[int, list[int]]) -> dict[int, int]:
        """Inside the transaction that commits their transitions: the messages judged per partition.
        Returns each partition's new row id (a snapshot taken after this commit replaces up to it)."""
        j = schema.partition_judged
        out: dict[int, int] = {}
        for p, v in ids.items():
            if v:
                out[p] = int(conn.execute(j.insert().values(part=p, epoch=epochs[p], ids=pack_ids(v))
                                          .returning(j.c.id)).scalar_one())
        return out

    def save_state(self, conn: Connection, owner: str, part: int, epoch: int, snapshot: bytes,
                   recent: Iterable[int], *, taken_at: int, upto: int) -> None:
        """Inside a fenced transaction: the partition's snapshot, taken at ``taken_at`` (ms, the
        owner's clock: a taker's standby is compared with it) after the commit that wrote its judged
        row ``upto``; the judged rows up to that one are covered by it and go. A snapshot older than
        the one stored (a write that finished late) changes nothing."""
        s, j = schema.partition_state, schema.partition_judged
        values = {"epoch": epoch, "owner": owner, "written_at": taken_at, "snapshot": snapshot,
                  "recent": pack_ids(recent)}
        newer = sa.or_(s.c.epoch < epoch, sa.and_(s.c.epoch == epoch, s.c.written_at <= taken_at))
        if conn.execute(s.update().where(s.c.part == part, newer).values(**values)).rowcount == 0:
            if conn.execute(sa.select(s.c.part).where(s.c.part == part)).first() is not None:
                return  # a newer one is there
            conn.execute(s.insert().values(part=part, **values))
        conn.execute(j.delete().where(j.c.part == part, j.c.id <= upto))

    def load_states(self, parts: Iterable[int]) -> dict[int, PartState]:
        """What takers restore: the snapshot and both identity sets of each partition."""
        want = sorted(set(parts))
        out = {p: PartState(p) for p in want}
        if not want:
            return out
        s, j = schema.partition_state, schema.partition_judged
        with self._read() as conn:
            for r in conn.execute(sa.select(s.c.part, s.c.written_at, s.c.snapshot, s.c.recent)
                                  .where(s.c.part.in_(want))):
                st = out[int(r.part)]
                st.snapshot, st.written_at = bytes(r.snapshot), int(r.written_at)
                st.recent = set(unpack_ids(bytes(r.recent)))
            for rj in conn.execute(sa.select(j.c.id, j.c.part, j.c.ids).where(j.c.part.in_(want))
                                   .order_by(j.c.id)):
                st = out[int(rj.part)]
                st.after.update(unpack_ids(bytes(rj.ids)))
                st.upto = int(rj.id)
        return out

    def snapshot_ages(self) -> dict[int, int]:
        """Each partition's snapshot time (database clock, ms), for the operator's view."""
        s = schema.partition_state
        with self._read() as conn:
            return {int(r.part): int(r.written_at) for r in conn.execute(sa.select(s.c.part, s.c.written_at))}


def owners(view: View) -> dict[str, list[int]]:
    """Who holds what now (expired leases left out): for logs and tests."""
    out: dict[str, list[int]] = {}
    for p, lease in sorted(view.leases.items()):
        if lease.owner is not None and lease.expires_at > view.now:
            out.setdefault(lease.owner, []).append(p)
    return out
