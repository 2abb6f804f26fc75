"""The alerter's commit: what a batch of judging produced → the alert store, in one transaction.

Stage: judge → **commit** → acknowledge. Blocking (the caller runs it in a worker thread). In one
transaction: the lease rows of the partitions involved are locked and checked (``Leases.fence``);
for the partitions still held, the transitions are recorded (``Store.apply_in``), the command
results too, the identities of the messages judged are noted (a taker replays them quietly), and
the outbox rows for what was recorded are written (the alert topic, and the pages each webhook
wants). Partitions lost since (another member holds them now) write nothing: their new owner
judges those messages from its standby.

A store outage leaves as the contract's DatabaseUnavailable (``alerting.database.connected``):
the caller holds the batch unacknowledged and retries.

Also here, fenced the same way: a partition's snapshot (``save_snapshot``), and the
re-notification of critical alerts nobody acknowledged (``renotify``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from alerter.judge import Pending
from alerting import schema
from alerting.commands import CommandStore
from alerting.database import connected
from alerting.outbox import MQTT, WEBHOOK, Outbox
from alerting.partitions import Leases
from alerting.store import Store
from contract.alerts import Transition

RENOTIFIED = "renotified"  # the alert_events kind of a re-notification (its time: the next is due from it)


@dataclass
class Committed:
    recorded: int = 0  # transitions that changed an alert row
    pages: list[Transition] = field(default_factory=list)
    results: int = 0
    lost: set[int] = field(default_factory=set)  # partitions another member holds now
    judged: dict[int, int] = field(default_factory=dict)  # partition → its judged row written


@dataclass(frozen=True)
class Snapshot:
    """A partition's engine snapshot taken between commits, to be written (``save_snapshot``)."""

    part: int
    epoch: int
    blob: bytes
    recent: list[int]
    taken_at: int  # ms, the member's clock
    upto: int  # the partition's newest judged row committed when it was taken


class Recorder:
    def __init__(self, store: Store, leases: Leases, owner: str, *, publish: bool,
                 wants_page: Callable[[Transition], bool]) -> None:
        self.store, self.leases, self.owner = store, leases, owner
        self.commands = CommandStore(store.engine)
        self.publish, self.wants_page = publish, wants_page

    def commit(self, pending: Pending, epochs: Mapping[int, int], now: int) -> Committed:
        out = Committed()
        parts = pending.parts()
        if not parts:
            return out
        with connected(self.store.engine, self.store.WHAT, write=True) as conn:
            held = {p: epochs[p] for p in parts if p in epochs}
            kept = self.leases.fence(conn, self.owner, held)
            out.lost = parts - kept
            trs: list[Transition] = []
            part_of: dict[int, int] = {}  # id(transition) → its partition
            for p in sorted(kept):
                for t in pending.transitions.get(p, ()):
                    trs.append(t)
                    part_of[id(t)] = p
            recorded = self.store.apply_in(conn, trs) if trs else []
            out.recorded = len(recorded)
            by_part: dict[int, list[Transition]] = {}
            for t in recorded:
                by_part.setdefault(part_of[id(t)], []).append(t)
            for p, ts in by_part.items():
                if self.publish:
                    Outbox.add(conn, p, MQTT, ts, now)
                pages = [t for t in ts if t.page]
                out.pages += pages
                Outbox.add(conn, p, WEBHOOK, [t for t in pages if self.wants_page(t)], now)
            for p in sorted(kept):
                results = pending.results.get(p)
                if results:
                    out.results += self.commands.record_results_in(conn, results, now)
            out.judged = self.leases.note_judged(conn, {p: epochs[p] for p in kept},
                                                 {p: v for p, v in pending.judged.items() if p in kept})
        return out

    def save_snapshot(self, s: Snapshot) -> bool:
        """The partition's snapshot, if it is still ours (False: lost, nothing written)."""
        with connected(self.store.engine, self.store.WHAT, write=True) as conn:
            if s.part not in self.leases.fence(conn, self.owner, {s.part: s.epoch}):
                return False
            self.leases.save_state(conn, self.owner, s.part, s.epoch, s.blob, s.recent, taken_at=s.taken_at,
                                   upto=s.upto)
        return True

    def renotify(self, epochs: Mapping[int, int], part_of: Callable[[dict[str, Any]], int], now: int,
                 every_ms: float) -> list[Transition]:
        """Page again every critical alert of ``epochs``' partitions still firing, paged and not
        acknowledged, ``every_ms`` after it fired or was last re-notified (an ``alert_events`` row,
        so a member taking the partition over knows when). One transaction: the events and the
        outbox rows together."""
        a, ev = schema.alerts, schema.alert_events
        due: list[tuple[int, int, Transition]] = []
        with connected(self.store.engine, self.store.WHAT, write=True) as conn:
            last = (sa.select(ev.c.alert_id, sa.func.max(ev.c.ts).label("at"))
                    .where(ev.c.kind == RENOTIFIED).group_by(ev.c.alert_id).subquery())
            rows = conn.execute(
                sa.select(a, last.c.at.label("renotified_at")).outerjoin(last, last.c.alert_id == a.c.id)
                .where(a.c.state == "firing", a.c.severity == "critical", a.c.resolved_at.is_(None),
                       a.c.ack_at.is_(None), a.c.paged.is_(True))).mappings().all()
            mine = [(part_of(dict(r)), r) for r in rows]
            mine = [(p, r) for p, r in mine if p in epochs]
            if not mine:
                return []
            kept = self.leases.fence(conn, self.owner, {p: epochs[p] for p, _ in mine})
            for p, r in mine:
                since = r["renotified_at"] or r["fired_at"] or r["since"]
                if p not in kept or now - since < every_ms:
                    continue
                due.append((p, int(r["id"]), Transition(
                    key=r["key"], rule=r["rule"], state="firing", severity=r["severity"],
                    station=r["station"], building=r["building"], household=r["household"],
                    gateway=r["gateway"], subject=r["subject"], ts=now, since=r["since"], value=r["value"],
                    summary=f"{r['rule']} still firing, not acknowledged (re-notified)",
                    context=dict(r["context"] or {}), page=True)))
            if due:
                conn.execute(ev.insert(), [dict(alert_id=i, ts=now, kind=RENOTIFIED, state="firing",
                                                severity=t.severity, value=t.value, quiet="")
                                           for _, i, t in due])
                for p, _, t in due:
                    Outbox.add(conn, p, WEBHOOK, [t] if self.wants_page(t) else [], now)
        return [t for _, _, t in due]
