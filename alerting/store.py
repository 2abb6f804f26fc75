"""The alert store: one data-access layer over SQLite (WAL, embedded default) or PostgreSQL.

Stage: alerter → record alerts (``apply``: the engine's transitions, in one transaction, before
the messages that caused them are acknowledged); api → read, acknowledge, note, resolve, silence.
The schema is ``alerting.schema``, created and evolved by the Alembic migrations in
``alerting/migrations`` (``migrate()``; ``heatwatch store migrate CONFIG`` from the command line).

URLs: ``sqlite:////var/lib/heatwatch/alerts.sqlite`` or
``postgresql+psycopg://user:pass@host/heatwatch``. Calls are synchronous; async callers wrap
them in one ``asyncio.to_thread``.
"""

from __future__ import annotations

import functools
import hashlib
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import sqlalchemy as sa
from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.util import exc as alembic_exc
from sqlalchemy.engine import Connection, Engine

from alerting import schema
from alerting.assets import Assets
from alerting.latest import LatestTable
from contract.alerts import Silence, Transition, severity_rank
from contract.errors import CannotOpen, InvalidInput
from durable.queue import why_unopenable

_MIGRATIONS = Path(__file__).parent / "migrations"
ROLES = ("dispatcher", "engineer", "admin")  # each has the rights of the ones before it


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
def _household_stmt() -> sa.Select[Any]:
    h, b, st = schema.households, schema.buildings, schema.stations
    return (sa.select(h, b.c.address, st.c.name.label("station_name"), st.c.gateway)
            .join(b, sa.and_(b.c.station == h.c.station, b.c.building == h.c.building))
            .join(st, st.c.station == h.c.station, isouter=True).where(h.c.code == sa.bindparam("code")))


def _chain_stmt(with_gateway: bool) -> sa.Select[Any]:
    a = schema.alerts
    on_chain = sa.and_(a.c.station == sa.bindparam("station"), sa.or_(
        a.c.building.is_(None), sa.and_(a.c.building == sa.bindparam("building"), sa.or_(
            a.c.household.is_(None), a.c.household == sa.bindparam("household")))))
    cond = sa.or_(on_chain, a.c.gateway == sa.bindparam("gateway")) if with_gateway else on_chain
    return sa.select(a).where(a.c.resolved_at.is_(None), cond)


def _acks_stmt() -> sa.Select[Any]:
    ev = schema.alert_events
    return (sa.select(ev).where(ev.c.alert_id.in_(sa.bindparam("ids", expanding=True)),
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
            sa.select(a).where(where).order_by(a.c.since.desc(), a.c.id.desc())
            .limit(sa.bindparam("limit")).offset(sa.bindparam("offset")))


@functools.cache
def _find_stmt(sqlite: bool, n_long: int, n_short: int) -> sa.Select[Any]:
    """Address search with ``n_long`` words of 3+ characters (bound as ``l0``…) and ``n_short``
    shorter ones (``s0``…), each a LIKE pattern."""
    h, b = schema.households, schema.buildings
    longs: list[sa.BindParameter[Any]] = [sa.bindparam(f"l{i}") for i in range(n_long)]
    cond: Any = sa.and_(sa.true(), *[h.c.search.like(sa.bindparam(f"s{i}")) for i in range(n_short)])
    if sqlite and longs:
        # Only words of 3+ characters go to FTS5: SQLite 3.40's trigram LIKE crashed the
        # process (segfault) when a shorter pattern was combined with others. Shorter words
        # filter the few rows the index found.
        fts = sa.table("households_fts", sa.column("rowid"), sa.column("search"))
        sub = sa.select(fts.c.rowid).where(*[fts.c.search.like(p) for p in longs])
        cond = sa.and_(sa.literal_column("households.rowid").in_(sub), cond)
    else:
        cond = sa.and_(cond, *[h.c.search.like(p) for p in longs])
    return (sa.select(h, b.c.address)
            .join(b, sa.and_(b.c.station == h.c.station, b.c.building == h.c.building))
            .where(cond).order_by(h.c.code).limit(sa.bindparam("limit")))


_HOUSEHOLD = _household_stmt()
_CHAIN = {False: _chain_stmt(False), True: _chain_stmt(True)}
_ACKS = _acks_stmt()


def _sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class NotFound(InvalidInput):
    """No such alert (or silence): the API answers 404."""


class Conflict(InvalidInput):
    """The alert is not in a state that allows this (e.g. resolving a resolved one): 409."""


class Unknown(InvalidInput):
    """The request names a station or building the site does not know: 422."""


@dataclass(frozen=True)
class Page:
    rows: list[dict[str, Any]]
    total: int


MIGRATE_LOCK = 0x68656174  # "heat": the advisory lock schema changes take on PostgreSQL


def serialise(conn: Connection) -> None:
    """Inside a transaction: wait for any other process changing the schema (PostgreSQL; SQLite
    serialises writers anyway). Released at the transaction's end."""
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": MIGRATE_LOCK})


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=FULL")  # a PUBACK follows the commit: it must be on disk
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.close()


class Store:
    def __init__(self, url: str, *, setting: str = "store") -> None:
        """``setting``: where the URL is set in the process's config file, for CannotOpen."""
        self.url, self.setting = url, setting
        try:
            # a pre-ping finds PostgreSQL connections a restart or a firewall dropped; a SQLite file
            # has no such thing and the ping would cost a round through the pool on every checkout
            self.engine: Engine = sa.create_engine(
                url, future=True, pool_pre_ping=not url.startswith("sqlite"),
                json_serializer=lambda v: orjson.dumps(v).decode(), json_deserializer=orjson.loads)
        except (sa.exc.ArgumentError, sa.exc.NoSuchModuleError, ImportError) as exc:
            raise CannotOpen("alert store", self._shown(), f"not a store URL heatwatch can use ({exc})",
                             setting) from None
        if self.engine.dialect.name == "sqlite":
            sa.event.listen(self.engine, "connect", _sqlite_pragmas)
        self.latest = LatestTable(self.engine)  # the latest value per entity (its own module)

    def _shown(self) -> str:
        try:
            return sa.engine.make_url(self.url).render_as_string(hide_password=True)
        except sa.exc.ArgumentError:
            return self.url.partition("://")[0] + "://…"

    def open(self) -> Store:
        """Connect and bring the schema up to date, at a process's start. Whatever stops that
        raises CannotOpen: one line naming the URL, the cause and the setting, not a traceback."""
        try:
            self.migrate()
        except (sa.exc.SQLAlchemyError, OSError, alembic_exc.CommandError) as exc:
            self.engine.dispose()
            orig = getattr(exc, "orig", None) or exc
            if self.engine.dialect.name == "sqlite" and self.engine.url.database:
                reason = why_unopenable(Path(self.engine.url.database), orig)
            elif isinstance(exc, alembic_exc.CommandError):
                reason = f"its schema is from another heatwatch version ({exc})"
            else:
                text = str(orig).strip()
                reason = f"unable to open ({text.splitlines()[0][:200] if text else type(orig).__name__})"
            raise CannotOpen("alert store", self._shown(), reason, self.setting) from None
        return self

    def close(self) -> None:
        self.engine.dispose()

    def migrate(self) -> None:
        """Bring the schema to the newest migration (idempotent). Processes starting together on
        one PostgreSQL store (alerter members, API workers) take turns: the first migrates, the
        others find it done (without the lock two CREATE TABLEs raced: a unique violation)."""
        cfg = AlembicConfig()
        cfg.set_main_option("script_location", str(_MIGRATIONS))
        with self.engine.begin() as conn:
            serialise(conn)
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")

    def ping(self) -> None:
        with self.engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))

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
        with self.engine.begin() as conn:
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
        with self.engine.begin() as conn:
            conn.execute(stmt, [{"k": k, "t": t} for k, t in seen])

    def active_silences(self, now: int) -> list[Silence]:
        """Silences not over and not cancelled (the alerter re-reads them every silences_s)."""
        s = schema.silences
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(s).where(s.c.end_ms > now, s.c.cancelled_at.is_(None))).all()
        return [Silence(r.station, r.building, r.start_ms, r.end_ms, r.reason) for r in rows]

    # -- the dispatcher's side ----------------------------------------------------------------
    def get(self, alert_id: int) -> dict[str, Any]:
        a, ev = schema.alerts, schema.alert_events
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(a).where(a.c.id == alert_id)).mappings().first()
            if row is None:
                raise NotFound(f"alert {alert_id} does not exist", "not_found")
            events = conn.execute(sa.select(ev).where(ev.c.alert_id == alert_id)
                                  .order_by(ev.c.ts, ev.c.id)).mappings().all()
        return {**row, "events": [dict(e) for e in events]}

    def query(self, *, state: Iterable[str] | None = None, severity: Iterable[str] | None = None,
              rule: Iterable[str] | None = None, station: str | None = None,
              building: str | None = None, household: str | None = None, open_only: bool = False,
              since: int | None = None, until: int | None = None, limit: int = 50,
              offset: int = 0) -> Page:
        """Alerts matching every given filter, newest first (bound parameters only)."""
        given: dict[str, Any] = {k: v for k, v in (
            ("state", list(state or ())), ("severity", list(severity or ())), ("rule", list(rule or ())),
            ("station", station), ("building", building), ("household", household),
            ("since", since), ("until", until)) if v is not None and v != []}
        count, page = _query_stmts(frozenset(given), open_only)
        with self.engine.connect() as conn:
            total = conn.execute(count, given).scalar_one()
            rows = conn.execute(page, {**given, "limit": limit, "offset": offset}).mappings().all()
        return Page([dict(r) for r in rows], total)

    def _event(self, conn: Connection, alert_id: int, kind: str, now: int, actor: str,
               note: str | None, ticket: str | None) -> dict[str, Any]:
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
        conn.execute(schema.audit.insert().values(at=now, actor=actor, action=f"alert.{kind}",
                                                  target=row.key,
                                                  detail={"alert": alert_id, "note": note,
                                                          "ticket": ticket}))
        return {"state": row.state, "tickets": tickets}

    def acknowledge(self, alert_id: int, *, actor: str, now: int, note: str | None = None,
                    ticket: str | None = None) -> dict[str, Any]:
        """``ack_by``/``ack_at``/``ack_note`` are the latest acknowledgement's; its ticket
        replaces ``ack_ticket`` only when it gives one (a later "me too" ack must not unlink the
        hotline ticket), and every ticket stays in ``tickets``."""
        a = schema.alerts
        with self.engine.begin() as conn:
            cur = self._event(conn, alert_id, "ack", now, actor, note, ticket)
            values: dict[str, Any] = dict(ack_by=actor, ack_at=now, ack_note=note, tickets=cur["tickets"])
            if ticket is not None:
                values["ack_ticket"] = ticket
            conn.execute(a.update().where(a.c.id == alert_id).values(**values))
        return self.get(alert_id)

    def add_note(self, alert_id: int, *, actor: str, now: int, note: str,
                 ticket: str | None = None) -> dict[str, Any]:
        a = schema.alerts
        with self.engine.begin() as conn:
            cur = self._event(conn, alert_id, "note", now, actor, note, ticket)
            if ticket is not None:
                conn.execute(a.update().where(a.c.id == alert_id).values(tickets=cur["tickets"]))
        return self.get(alert_id)

    def resolve(self, alert_id: int, *, actor: str, now: int, note: str | None = None) -> dict[str, Any]:
        """By hand, for episodic rules the engine judges once a day or hour (the API allows which).
        The engine is not told: its next change for this key starts a new episode."""
        a = schema.alerts
        with self.engine.begin() as conn:
            cur = self._event(conn, alert_id, "resolved", now, actor, note, None)
            if cur["state"] == "resolved":
                raise Conflict(f"alert {alert_id} is already resolved", "already_resolved")
            conn.execute(a.update().where(a.c.id == alert_id)
                         .values(state="resolved", resolved_at=now, resolved_by=actor, last_ts=now))
        return self.get(alert_id)

    def _check_known(self, conn: Connection, station: str, building: str | None) -> None:
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
                raise Unknown(f"station {station!r} is unknown: not in the asset register and never "
                              "in an alert (import it: POST /v1/assets/import)", "unknown_station")
            return
        if building is None:
            return
        if any_row(sa.select(b.c.building).where(b.c.station == station, b.c.building == building)) or \
                any_row(sa.select(a.c.id).where(a.c.station == station, a.c.building == building)):
            return
        if any_row(sa.select(b.c.building).where(b.c.station == station)):
            raise Unknown(f"building {building!r} of station {station!r} is unknown: not in the asset "
                          "register and never in an alert", "unknown_building")

    def add_silence(self, *, station: str, building: str | None, start: int, end: int, reason: str,
                    actor: str, now: int) -> int:
        if end <= start:
            raise InvalidInput("a silence must end after it starts", "bad_silence")
        s = schema.silences
        with self.engine.begin() as conn:
            self._check_known(conn, station, building)
            sid = conn.execute(s.insert().values(
                station=station, building=building, start_ms=start, end_ms=end, reason=reason,
                created_by=actor, created_at=now).returning(s.c.id)).scalar_one()
            conn.execute(schema.audit.insert().values(
                at=now, actor=actor, action="silence.add",
                target=f"{station}/{building}" if building else station,
                detail={"silence": sid, "start": start, "end": end, "reason": reason}))
        return int(sid)

    def silences(self, *, now: int, past: bool = False, station: str | None = None, limit: int = 100,
                 offset: int = 0) -> Page:
        """Silences, latest start first: those still to come or running, or (``past``) all of
        them, cancelled and ended ones included. Each row carries its ``state`` at ``now``."""
        s = schema.silences
        conds: list[Any] = [] if past else [s.c.end_ms > now, s.c.cancelled_at.is_(None)]
        if station is not None:
            conds.append(s.c.station == station)
        where = sa.and_(sa.true(), *conds)
        with self.engine.connect() as conn:
            total = conn.execute(sa.select(sa.func.count()).select_from(s).where(where)).scalar_one()
            rows = [dict(r) for r in conn.execute(
                sa.select(s).where(where).order_by(s.c.start_ms.desc(), s.c.id.desc())
                .limit(limit).offset(offset)).mappings()]
        for r in rows:
            r["state"] = ("cancelled" if r["cancelled_at"] is not None else "ended" if r["end_ms"] <= now
                          else "active" if r["start_ms"] <= now else "future")
        return Page(rows, int(total))

    def cancel_silence(self, sid: int, *, actor: str, now: int) -> dict[str, Any]:
        """Stop a silence now (audited). The alerter stops honouring it at its next re-read of
        silences (``alerts.silences_s``). A cancelled or ended silence is a Conflict."""
        s = schema.silences
        with self.engine.begin() as conn:
            row = conn.execute(sa.select(s).where(s.c.id == sid).with_for_update()).mappings().first()
            if row is None:
                raise NotFound(f"silence {sid} does not exist", "not_found")
            if row["cancelled_at"] is not None:
                raise Conflict(f"silence {sid} was cancelled already by {row['cancelled_by']}",
                               "already_cancelled")
            if row["end_ms"] <= now:
                raise Conflict(f"silence {sid} is over already", "already_ended")
            conn.execute(s.update().where(s.c.id == sid).values(cancelled_at=now, cancelled_by=actor))
            target = f"{row['station']}/{row['building']}" if row["building"] else row["station"]
            conn.execute(schema.audit.insert().values(
                at=now, actor=actor, action="silence.cancel", target=target,
                detail={"silence": sid, "start": row["start_ms"], "end": row["end_ms"],
                        "reason": row["reason"]}))
        return {**row, "cancelled_at": now, "cancelled_by": actor, "state": "cancelled"}

    # -- credentials (the API's) ---------------------------------------------------------------
    def add_token(self, *, name: str, role: str, actor: str, now: int) -> str:
        """Create a credential; returns the token, which is shown once and stored only hashed
        (SHA-256 of 256 random bits: no salt or slow hash needed for a random secret)."""
        if role not in ROLES:
            raise InvalidInput(f"role must be one of {', '.join(ROLES)}, got {role!r}", "bad_role")
        token = "hw_" + secrets.token_urlsafe(32)
        with self.engine.begin() as conn:
            conn.execute(schema.api_tokens.insert().values(
                name=name, role=role, token_sha256=_sha256(token), created_at=now, created_by=actor))
            conn.execute(schema.audit.insert().values(at=now, actor=actor, action="token.add",
                                                      target=name, detail={"role": role}))
        return token

    def principal(self, token: str) -> tuple[str, str] | None:
        """(name, role) of a valid token, or None."""
        t = schema.api_tokens
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(t.c.name, t.c.role).where(
                t.c.token_sha256 == _sha256(token), t.c.revoked_at.is_(None))).first()
        return (row.name, row.role) if row is not None else None

    def list_tokens(self) -> list[dict[str, Any]]:
        """Every credential (never its hash), newest first; revoked ones carry ``revoked_at``."""
        t = schema.api_tokens
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(
                sa.select(t.c.id, t.c.name, t.c.role, t.c.created_at, t.c.created_by, t.c.revoked_at)
                .order_by(t.c.id.desc())).mappings()]

    def revoke_tokens(self, *, name: str, actor: str, now: int) -> int:
        """Revoke every live token of ``name``; how many (0: nothing changed, nothing audited)."""
        t = schema.api_tokens
        with self.engine.begin() as conn:
            n = conn.execute(t.update().where(t.c.name == name, t.c.revoked_at.is_(None))
                             .values(revoked_at=now)).rowcount
            if n:
                conn.execute(schema.audit.insert().values(at=now, actor=actor, action="token.revoke",
                                                          target=name, detail={"revoked": n}))
        return int(n)

    def audit(self, *, actor: str, action: str, target: str, detail: dict[str, Any], now: int) -> None:
        with self.engine.begin() as conn:
            conn.execute(schema.audit.insert().values(at=now, actor=actor, action=action, target=target,
                                                      detail=detail))

    # -- assets -------------------------------------------------------------------------------
    def _upsert(self, conn: Connection, table: sa.Table, rows: list[dict[str, Any]],
                keys: list[str]) -> None:
        if not rows:
            return
        if self.engine.dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as pg_insert
            ins: Any = pg_insert(table)
        else:
            from sqlalchemy.dialects.sqlite import insert as sqlite_insert
            ins = sqlite_insert(table)
        cols = [c for c in rows[0] if c not in keys]
        stmt = ins.on_conflict_do_update(index_elements=keys,
                                         set_={c: getattr(ins.excluded, c) for c in cols})
        for i in range(0, len(rows), 2000):
            conn.execute(stmt, rows[i:i + 2000])

    def import_assets(self, assets: Assets, *, actor: str, now: int) -> dict[str, int]:
        """Insert or update every station, building and household in one transaction."""
        h = schema.households
        with self.engine.begin() as conn:
            known = {r.code for r in conn.execute(sa.select(h.c.code))}
            self._upsert(conn, schema.stations, list(assets.stations.values()), ["station"])
            self._upsert(conn, schema.buildings, list(assets.buildings.values()), ["station", "building"])
            self._upsert(conn, h, list(assets.households.values()), ["code"])
            if self.engine.dialect.name == "sqlite":  # the search index follows its content table
                conn.execute(sa.text("INSERT INTO households_fts(households_fts) VALUES ('rebuild')"))
            counts = {"stations": len(assets.stations), "buildings": len(assets.buildings),
                      "households": len(assets.households),
                      "households_new": sum(1 for c in assets.households if c not in known)}
            conn.execute(schema.audit.insert().values(at=now, actor=actor, action="assets.import",
                                                      target="assets", detail=counts))
        return counts

    def find_households(self, text: str, limit: int = 20) -> list[dict[str, Any]]:
        """Households whose address, unit, room or code contain every word of ``text``.

        Words are matched as substrings through a trigram index (FTS5 on SQLite, pg_trgm on
        PostgreSQL); LIKE wildcards are dropped from them, so a word only ever matches itself.
        """
        words = [w for w in (x.replace("%", "").replace("_", "") for x in text.lower().split()[:8]) if w]
        if not words:
            return []
        long = [w for w in words if len(w) >= 3]  # what a trigram index can look up
        short = [w for w in words if len(w) < 3]
        stmt = _find_stmt(self.engine.dialect.name == "sqlite", len(long), len(short))
        params: dict[str, Any] = {f"l{i}": f"%{w}%" for i, w in enumerate(long)}
        params.update({f"s{i}": f"%{w}%" for i, w in enumerate(short)})
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(stmt, {**params, "limit": limit}).mappings()]

    def building_addresses(self, station: str) -> dict[str, str]:
        b = schema.buildings
        with self.engine.connect() as conn:
            return {r.building: r.address for r in conn.execute(
                sa.select(b.c.building, b.c.address).where(b.c.station == station))}

    def household(self, code: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(_HOUSEHOLD, {"code": code}).mappings().first()
        return dict(row) if row is not None else None

    def chain_alerts(self, station: str, building: str, household: str | None,
                     gateway: str | None) -> list[dict[str, Any]]:
        """Open alerts on gateway → station → building → household, worst first."""
        with self.engine.connect() as conn:
            rows = [dict(r) for r in conn.execute(_CHAIN[gateway is not None], {
                "station": station, "building": building, "household": household,
                "gateway": gateway}).mappings()]
        return sorted(rows, key=lambda r: (-severity_rank(r["severity"]), -r["since"]))

    def recent_acks(self, alert_ids: list[int], since: int, limit: int = 20) -> list[dict[str, Any]]:
        if not alert_ids:
            return []
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(_ACKS, {"ids": alert_ids[:1000], "since": since,
                                                          "limit": limit}).mappings()]

    def audit_log(self, limit: int = 100, offset: int = 0, actor: str | None = None) -> list[dict[str, Any]]:
        """Who did what when, newest first; optionally one actor's entries only."""
        au = schema.audit
        q = sa.select(au).order_by(au.c.id.desc()).limit(limit).offset(offset)
        if actor is not None:
            q = q.where(au.c.actor == actor)
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(q).mappings()]
