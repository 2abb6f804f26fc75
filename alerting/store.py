"""The alert store: alerts, their history (``alert_events``) and silences.

Stage: alerter → record alerts (``apply``/``apply_in``: the engine's transitions, in one
transaction, before the messages that caused them are acknowledged; ``touch``; ``active_silences``);
api → read (``alerts``, ``alert``, ``chain_alerts``, ``recent_acks``), acknowledge, note, resolve,
silence; report → ``between`` and ``ticket_events``. Tokens, the audit trail's reading and the
asset register are the site registry's (``alerting.registry``), remote commands the command
store's (``alerting.commands``), the latest values the ``latest`` table's (``alerting.latest``,
``Store.latest``): the same database and Alembic chain, split by what changes together.

Database errors leave as the contract's (``alerting.database``): a store outage is
DatabaseUnavailable naming the alert store, never an SQLAlchemy exception.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from dataclasses import asdict, fields
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from alerting import schema
from alerting.database import Database, OnDatabase, columns
from alerting.latest import LatestTable
from alerting.registry import write_audit
from alerting.rows import AlertDetail, AlertEvent, AlertRow, Page, SilenceRow, TicketEvent
from contract.alerts import Silence, Transition, severity_rank
from contract.errors import Conflict, InvalidInput, NotFound, UnknownReference

_ALERT = columns(schema.alerts, AlertRow)
_EVENT = columns(schema.alert_events, AlertEvent)
_SILENCE = [schema.silences.c[f.name] for f in fields(SilenceRow) if f.name != "state"]  # computed


def _episode(tr: Transition) -> dict[str, Any]:
    """The alerts row that a transition opens."""
    return dict(key=tr.key, rule=tr.rule, state=tr.state, severity=tr.severity, station=tr.station,
                building=tr.building, household=tr.household, gateway=tr.gateway, subject=tr.subject,
                since=tr.since, last_ts=tr.ts, fired_at=tr.ts if tr.state == "firing" else None,
                value=tr.value, summary=tr.summary[:300], context=tr.context, quiet=tr.quiet,
                paged=tr.page)


# The hotline's read paths, built once: building a Core statement costs more Python than running
# it on SQLite (measured: ~12 operator calls and a cache-key walk per call, most of a lookup's
# store time), and a prebuilt statement memoizes its cache key. Values travel as bind parameters.
def _chain_stmt(with_gateway: bool) -> sa.Select[Any]:
    a = schema.alerts
    on_chain = sa.and_(a.c.station == sa.bindparam("station"), sa.or_(
        a.c.building.is_(None), sa.and_(a.c.building == sa.bindparam("building"), sa.or_(
            a.c.household.is_(None), a.c.household == sa.bindparam("household")))))
    cond = sa.or_(on_chain, a.c.gateway == sa.bindparam("gateway")) if with_gateway else on_chain
    return sa.select(*_ALERT).where(a.c.resolved_at.is_(None), cond)


def _acks_stmt() -> sa.Select[Any]:
    ev = schema.alert_events
    return (sa.select(*_EVENT).where(ev.c.alert_id.in_(sa.bindparam("ids", expanding=True)),
                                     ev.c.kind.in_(["ack", "note"]), ev.c.ts >= sa.bindparam("since"))
            .order_by(ev.c.ts.desc()).limit(sa.bindparam("limit")))


@functools.cache
def _query_stmts(given: frozenset[str], open_only: bool) -> tuple[sa.Select[Any], sa.Select[Any]]:
    """The count and page statements of an alert list, one pair per combination of filters."""
    a = schema.alerts
    conds: list[Any] = []
    for name in ("state", "severity", "rule"):
        if name in given:
            conds.append(a.c[name].in_(sa.bindparam(name, expanding=True)))
    for name in ("station", "building", "household"):
        if name in given:
            conds.append(a.c[name] == sa.bindparam(name))
    if open_only:
        conds.append(a.c.resolved_at.is_(None))
    if "since" in given:
        conds.append(a.c.last_ts >= sa.bindparam("since"))
    if "until" in given:
        conds.append(a.c.since <= sa.bindparam("until"))
    where = sa.and_(sa.true(), *conds)
    return (sa.select(sa.func.count()).select_from(a).where(where),
            sa.select(*_ALERT).where(where).order_by(a.c.since.desc(), a.c.id.desc())
            .limit(sa.bindparam("limit")).offset(sa.bindparam("offset")))


def _open_of_rule_stmt(key_range: bool) -> sa.Select[Any]:
    # keys are "rule:subject": on SQLite a range over the partial index of open keys
    # (alerts_open_key) reads only the rule's open alerts; an alert-list query by rule read every
    # alert: 100 ms a lookup with 50,000 alerts in the store (bench/api_bench.py), most of the
    # lookup's cost (1.2 ms with the range). Not on PostgreSQL: a site database's collation may
    # order ':' and ';' otherwise (glibc locales skip punctuation), and its planner reads the
    # partial index for "resolved_at IS NULL" without help.
    a = schema.alerts
    cond = [a.c.resolved_at.is_(None), a.c.rule == sa.bindparam("rule")]
    if key_range:
        cond += [a.c.key >= sa.bindparam("lo"), a.c.key < sa.bindparam("hi")]
    return sa.select(*_ALERT).where(*cond)


_CHAIN = {False: _chain_stmt(False), True: _chain_stmt(True)}
_ACKS = _acks_stmt()
_OPEN_OF_RULE = {True: _open_of_rule_stmt(True), False: _open_of_rule_stmt(False)}


def _silence_state(cancelled_at: int | None, start: int, end: int, now: int) -> str:
    return ("cancelled" if cancelled_at is not None else "ended" if end <= now
            else "active" if start <= now else "future")


def _silence(r: Any, now: int) -> SilenceRow:
    return SilenceRow(**r._mapping, state=_silence_state(r.cancelled_at, r.start_ms, r.end_ms, now))


class Store(OnDatabase):
    """The alert store. ``Store(url)`` opens its own database (``.open()`` migrates it);
    ``Store(database)`` shares one with the site registry and the command store."""

    WHAT = "alert store"

    def __init__(self, db: str | Database, *, setting: str = "store") -> None:
        super().__init__(db, setting=setting)
        self.latest = LatestTable(self.engine)  # the latest value per entity (its own module)

    # -- the alerter's side -------------------------------------------------------------------
    def apply(self, transitions: Sequence[Transition]) -> int:
        """Record transitions (one transaction); returns how many changed an alert row.

        Replays are harmless: a transition for an alert already in that state updates nothing
        but its last-seen time, and a resolution of an alert not open is ignored. Set-wise: one
        SELECT for the open rows of all keys, then bulk INSERTs (a season start raises tens of
        thousands at once; row by row cost 0.5 ms each).
        """
        if not transitions:
            return 0
        with self._write() as conn:
            return len(self.apply_in(conn, transitions))

    def apply_in(self, conn: Connection, transitions: Sequence[Transition]) -> list[Transition]:
        """``apply`` inside the caller's transaction; returns the transitions that changed an
        alert row (the rest were replays: the alerter pages and publishes only these).

        Several alerter partitions may judge one gateway's alerts (its stations are spread over
        them): a partition that sees the gateway later never moves the row back, so a pending
        transition for a firing alert and a lower severity change nothing but the last seen."""
        a, ev = schema.alerts, schema.alert_events
        recorded: list[Transition] = []
        keys = list({t.key for t in transitions})
        open_rows: dict[str, Any] = {}
        for i in range(0, len(keys), 500):
            for r in conn.execute(sa.select(a.c.id, a.c.key, a.c.state, a.c.severity, a.c.paged)
                                  .where(a.c.key.in_(keys[i:i + 500]), a.c.resolved_at.is_(None))):
                open_rows[r.key] = {"id": r.id, "state": r.state, "severity": r.severity,
                                    "paged": r.paged}
        # new episodes first, in one INSERT … RETURNING (SQLAlchemy batches it)
        first: dict[str, Transition] = {}
        for tr in transitions:
            if tr.key not in open_rows and tr.key not in first and tr.state != "resolved":
                first[tr.key] = tr
        inserted: set[int] = set()
        if first:
            res = conn.execute(a.insert().returning(a.c.id, a.c.key, sort_by_parameter_order=True),
                               [_episode(tr) for tr in first.values()])
            for r in res:
                tr = first[r.key]
                open_rows[r.key] = {"id": r.id, "state": tr.state, "severity": tr.severity,
                                    "paged": tr.page}
                inserted.add(id(tr))
        events: list[dict[str, Any]] = []
        for tr in transitions:
            row = open_rows.get(tr.key)
            if id(tr) in inserted:
                alert_id, kind = row["id"], tr.state  # type: ignore[index]
            elif row is None:
                if tr.state == "resolved":
                    continue
                alert_id = conn.execute(  # a second episode of one key in one batch
                    a.insert().values(**_episode(tr)).returning(a.c.id)).scalar_one()
                open_rows[tr.key] = {"id": alert_id, "state": tr.state, "severity": tr.severity,
                                     "paged": tr.page}
                kind = tr.state
            else:
                alert_id = row["id"]
                same = tr.state == row["state"] and tr.severity == row["severity"]
                backwards = tr.state != "resolved" and (
                    (tr.state == "pending" and row["state"] == "firing")
                    or severity_rank(tr.severity) < severity_rank(row["severity"]))
                if backwards or (same and tr.page <= row["paged"]):
                    conn.execute(a.update().where(a.c.id == alert_id)
                                 .values(last_ts=tr.ts, value=tr.value))
                    continue
                kind = tr.state if tr.state != row["state"] else "severity"
                values: dict[str, Any] = dict(state=tr.state, severity=tr.severity, last_ts=tr.ts,
                                              value=tr.value, context=tr.context, quiet=tr.quiet,
                                              summary=tr.summary[:300], paged=row["paged"] or tr.page)
                if tr.state == "firing" and row["state"] == "pending":
                    values["fired_at"] = tr.ts
                if tr.state == "resolved":
                    values["resolved_at"] = tr.ts
                    del open_rows[tr.key]
                else:
                    row.update(state=tr.state, severity=tr.severity, paged=values["paged"])
                conn.execute(a.update().where(a.c.id == alert_id).values(**values))
            events.append(dict(alert_id=alert_id, ts=tr.ts, kind=kind, state=tr.state,
                               severity=tr.severity, value=tr.value, quiet=tr.quiet))
            recorded.append(tr)
        if events:
            conn.execute(ev.insert(), events)
        return recorded

    def touch(self, seen: Sequence[tuple[str, int]]) -> None:
        """Move the open alerts' last seen (``last_ts``) forward to the engine's latest true verdict.

        Never backwards, never on a closed episode; a key with no open row is skipped.
        """
        if not seen:
            return
        a = schema.alerts
        stmt = (a.update().where(a.c.key == sa.bindparam("k"), a.c.resolved_at.is_(None),
                                 a.c.last_ts < sa.bindparam("t"))
                .values(last_ts=sa.bindparam("t")))
        with self._write() as conn:
            conn.execute(stmt, [{"k": k, "t": t} for k, t in seen])

    def active_silences(self, now: int) -> list[Silence]:
        """Silences not over and not cancelled (the alerter re-reads them every silences_s)."""
        s = schema.silences
        with self._read() as conn:
            rows = conn.execute(sa.select(s).where(s.c.end_ms > now, s.c.cancelled_at.is_(None))).all()
        return [Silence(r.station, r.building, r.start_ms, r.end_ms, r.reason) for r in rows]

    # -- reading --------------------------------------------------------------------------------
    def alert(self, alert_id: int) -> AlertDetail:
        """One alert with its history, oldest step first; NotFound when there is no such alert."""
        a, ev = schema.alerts, schema.alert_events
        with self._read() as conn:
            row = conn.execute(sa.select(*_ALERT).where(a.c.id == alert_id)).first()
            if row is None:
                raise NotFound(f"alert {alert_id} does not exist", "not_found")
            events = [AlertEvent(*e) for e in conn.execute(
                sa.select(*_EVENT).where(ev.c.alert_id == alert_id).order_by(ev.c.ts, ev.c.id))]
        return AlertDetail(**row._mapping, events=events)

    def get(self, alert_id: int) -> dict[str, Any]:
        """``alert`` as a plain dict (its events too), for callers that take mappings."""
        return asdict(self.alert(alert_id))

    def _page(self, state: Iterable[str] | None, severity: Iterable[str] | None,
              rule: Iterable[str] | None, station: str | None, building: str | None,
              household: str | None, open_only: bool, since: int | None, until: int | None,
              limit: int, offset: int) -> tuple[int, Sequence[Any]]:
        given: dict[str, Any] = {k: v for k, v in (
            ("state", list(state or ())), ("severity", list(severity or ())), ("rule", list(rule or ())),
            ("station", station), ("building", building), ("household", household),
            ("since", since), ("until", until)) if v is not None and v != []}
        count, page = _query_stmts(frozenset(given), open_only)
        with self._read() as conn:
            total = conn.execute(count, given).scalar_one()
            rows = conn.execute(page, {**given, "limit": limit, "offset": offset}).all()
        return int(total), rows

    def alerts(self, *, state: Iterable[str] | None = None, severity: Iterable[str] | None = None,
               rule: Iterable[str] | None = None, station: str | None = None,
               building: str | None = None, household: str | None = None, open_only: bool = False,
               since: int | None = None, until: int | None = None, limit: int = 50,
               offset: int = 0) -> Page[AlertRow]:
        """Alerts matching every given filter, newest first (bound parameters only)."""
        total, rows = self._page(state, severity, rule, station, building, household, open_only, since,
                                 until, limit, offset)
        return Page([AlertRow(*r) for r in rows], total)

    def query(self, *, state: Iterable[str] | None = None, severity: Iterable[str] | None = None,
              rule: Iterable[str] | None = None, station: str | None = None,
              building: str | None = None, household: str | None = None, open_only: bool = False,
              since: int | None = None, until: int | None = None, limit: int = 50,
              offset: int = 0) -> Page[dict[str, Any]]:
        """``alerts`` as plain dicts: the rule engine adopts open alerts as mappings
        (``Engine.adopt``) and the alerter re-notifies from them."""
        total, rows = self._page(state, severity, rule, station, building, household, open_only, since,
                                 until, limit, offset)
        return Page([dict(r._mapping) for r in rows], total)

    def chain_alerts(self, station: str, building: str, household: str | None,
                     gateway: str | None) -> list[AlertRow]:
        """Open alerts on gateway → station → building → household, worst first."""
        with self._read() as conn:
            rows = [AlertRow(*r) for r in conn.execute(_CHAIN[gateway is not None], {
                "station": station, "building": building, "household": household, "gateway": gateway})]
        return sorted(rows, key=lambda r: (-severity_rank(r.severity), -r.since))

    def open_of_rule(self, rule: str) -> list[AlertRow]:
        """The open alerts of one rule (e.g. every gateway_offline), read through the open keys."""
        with self._read() as conn:
            return [AlertRow(*r) for r in conn.execute(_OPEN_OF_RULE[self.db.sqlite], {
                "lo": f"{rule}:", "hi": f"{rule};", "rule": rule})]  # ';' sorts right after ':'

    def recent_acks(self, alert_ids: list[int], since: int, limit: int = 20) -> list[AlertEvent]:
        """Acknowledgements and notes on these alerts since ``since``, newest first."""
        if not alert_ids:
            return []
        with self._read() as conn:
            return [AlertEvent(*r) for r in conn.execute(_ACKS, {"ids": alert_ids[:1000], "since": since,
                                                                 "limit": limit})]

    def between(self, start: int, end: int) -> list[AlertRow]:
        """Alerts open at any time in [start, end), oldest first (the takeover report)."""
        a = schema.alerts
        with self._read() as conn:
            return [AlertRow(*r) for r in conn.execute(sa.select(*_ALERT).where(
                a.c.since < end, sa.or_(a.c.resolved_at.is_(None), a.c.resolved_at >= start))
                .order_by(a.c.since, a.c.id))]

    def ticket_events(self, start: int, end: int) -> list[TicketEvent]:
        """Acknowledgements and notes in [start, end) that gave a hotline ticket, oldest first."""
        a, ev = schema.alerts, schema.alert_events
        with self._read() as conn:
            return [TicketEvent(*r) for r in conn.execute(
                sa.select(ev.c.alert_id, ev.c.ts, ev.c.kind, ev.c.actor, ev.c.ticket, ev.c.note, a.c.station,
                          a.c.rule).join(a, a.c.id == ev.c.alert_id)
                .where(ev.c.ticket.is_not(None), ev.c.kind.in_(["ack", "note"]), ev.c.ts >= start,
                       ev.c.ts < end)
                .order_by(ev.c.ts))]

    # -- the dispatcher's side ----------------------------------------------------------------
    def _event(self, conn: Connection, alert_id: int, kind: str, now: int, actor: str,
               note: str | None, ticket: str | None) -> tuple[str, list[str]]:
        """Record a person's event on an alert (and audit it); the alert's state, and its ticket
        list with ``ticket`` added where it is new (the caller writes it)."""
        a = schema.alerts
        # FOR UPDATE (PostgreSQL; SQLite serialises writers anyway): two acks at once must not
        # each add their ticket to the list the other read
        row = conn.execute(sa.select(a.c.state, a.c.severity, a.c.value, a.c.key, a.c.tickets)
                           .where(a.c.id == alert_id).with_for_update()).first()
        if row is None:
            raise NotFound(f"alert {alert_id} does not exist", "not_found")
        tickets = list(row.tickets or [])
        if ticket is not None and ticket not in tickets:
            tickets.append(ticket)
        conn.execute(schema.alert_events.insert().values(
            alert_id=alert_id, ts=now, kind=kind, state=row.state, severity=row.severity,
            value=row.value, actor=actor, note=note, ticket=ticket))
        write_audit(conn, now, actor, f"alert.{kind}", row.key,
                    {"alert": alert_id, "note": note, "ticket": ticket})
        return row.state, tickets

    def acknowledge(self, alert_id: int, *, actor: str, now: int, note: str | None = None,
                    ticket: str | None = None) -> AlertDetail:
        """``ack_by``/``ack_at``/``ack_note`` are the latest acknowledgement's; its ticket
        replaces ``ack_ticket`` only when it gives one (a later "me too" ack must not unlink the
        hotline ticket), and every ticket stays in ``tickets``."""
        a = schema.alerts
        with self._write() as conn:
            _, tickets = self._event(conn, alert_id, "ack", now, actor, note, ticket)
            values: dict[str, Any] = dict(ack_by=actor, ack_at=now, ack_note=note, tickets=tickets)
            if ticket is not None:
                values["ack_ticket"] = ticket
            conn.execute(a.update().where(a.c.id == alert_id).values(**values))
        return self.alert(alert_id)

    def add_note(self, alert_id: int, *, actor: str, now: int, note: str,
                 ticket: str | None = None) -> AlertDetail:
        a = schema.alerts
        with self._write() as conn:
            _, tickets = self._event(conn, alert_id, "note", now, actor, note, ticket)
            if ticket is not None:
                conn.execute(a.update().where(a.c.id == alert_id).values(tickets=tickets))
        return self.alert(alert_id)

    def resolve(self, alert_id: int, *, actor: str, now: int, note: str | None = None) -> AlertDetail:
        """By hand, for episodic rules the engine judges once a day or hour (the API allows which).
        The engine is not told: its next change for this key starts a new episode."""
        a = schema.alerts
        with self._write() as conn:
            state, _ = self._event(conn, alert_id, "resolved", now, actor, note, None)
            if state == "resolved":
                raise Conflict(f"alert {alert_id} is already resolved", "already_resolved")
            conn.execute(a.update().where(a.c.id == alert_id)
                         .values(state="resolved", resolved_at=now, resolved_by=actor, last_ts=now))
        return self.alert(alert_id)

    @staticmethod
    def _check_known(conn: Connection, station: str, building: str | None) -> None:
        """Refuse a station (or building) the site does not know. Known: in the asset register,
        or named by an alert ever raised. While neither knows any station (a new site), nothing
        can be judged and everything is accepted; a building is judged only where its station
        has known buildings."""
        st, b, a = schema.stations, schema.buildings, schema.alerts

        def any_row(q: sa.Select[Any]) -> bool:
            return conn.execute(q.limit(1)).first() is not None

        if not (any_row(sa.select(st.c.station).where(st.c.station == station))
                or any_row(sa.select(b.c.station).where(b.c.station == station))
                or any_row(sa.select(a.c.id).where(a.c.station == station))):
            if any_row(sa.select(st.c.station)) or any_row(sa.select(a.c.id).where(a.c.station.is_not(None))):
                raise UnknownReference(f"station {station!r} is unknown: not in the asset register and "
                                       "never in an alert (import it: POST /v1/assets/import)",
                                       "unknown_station")
            return
        if building is None:
            return
        if any_row(sa.select(b.c.building).where(b.c.station == station, b.c.building == building)) or \
                any_row(sa.select(a.c.id).where(a.c.station == station, a.c.building == building)):
            return
        if any_row(sa.select(b.c.building).where(b.c.station == station)):
            raise UnknownReference(f"building {building!r} of station {station!r} is unknown: not in the "
                                   "asset register and never in an alert", "unknown_building")

    def add_silence(self, *, station: str, building: str | None, start: int, end: int, reason: str,
                    actor: str, now: int) -> int:
        if end <= start:
            raise InvalidInput("a silence must end after it starts", "bad_silence")
        s = schema.silences
        with self._write() as conn:
            self._check_known(conn, station, building)
            sid = conn.execute(s.insert().values(
                station=station, building=building, start_ms=start, end_ms=end, reason=reason,
                created_by=actor, created_at=now).returning(s.c.id)).scalar_one()
            write_audit(conn, now, actor, "silence.add", f"{station}/{building}" if building else station,
                        {"silence": sid, "start": start, "end": end, "reason": reason})
        return int(sid)

    def silences(self, *, now: int, past: bool = False, station: str | None = None, limit: int = 100,
                 offset: int = 0) -> Page[SilenceRow]:
        """Silences, latest start first: those still to come or running, or (``past``) all of
        them, cancelled and ended ones included. Each row carries its ``state`` at ``now``."""
        s = schema.silences
        conds: list[Any] = [] if past else [s.c.end_ms > now, s.c.cancelled_at.is_(None)]
        if station is not None:
            conds.append(s.c.station == station)
        where = sa.and_(sa.true(), *conds)
        with self._read() as conn:
            total = conn.execute(sa.select(sa.func.count()).select_from(s).where(where)).scalar_one()
            rows = [_silence(r, now) for r in conn.execute(
                sa.select(*_SILENCE).where(where).order_by(s.c.start_ms.desc(), s.c.id.desc())
                .limit(limit).offset(offset))]
        return Page(rows, int(total))

    def cancel_silence(self, sid: int, *, actor: str, now: int) -> SilenceRow:
        """Stop a silence now (audited). The alerter stops honouring it at its next re-read of
        silences (``alerts.silences_s``). A cancelled or ended silence is a Conflict."""
        s = schema.silences
        with self._write() as conn:
            row = conn.execute(sa.select(*_SILENCE).where(s.c.id == sid).with_for_update()).first()
            if row is None:
                raise NotFound(f"silence {sid} does not exist", "not_found")
            if row.cancelled_at is not None:
                raise Conflict(f"silence {sid} was cancelled already by {row.cancelled_by}",
                               "already_cancelled")
            if row.end_ms <= now:
                raise Conflict(f"silence {sid} is over already", "already_ended")
            conn.execute(s.update().where(s.c.id == sid).values(cancelled_at=now, cancelled_by=actor))
            write_audit(conn, now, actor, "silence.cancel",
                        f"{row.station}/{row.building}" if row.building else row.station,
                        {"silence": sid, "start": row.start_ms, "end": row.end_ms, "reason": row.reason})
            after = conn.execute(sa.select(*_SILENCE).where(s.c.id == sid)).one()
        return _silence(after, now)
