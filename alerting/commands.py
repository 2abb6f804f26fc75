"""The command store: remote commands and their history, in the site's store (SQLite or
PostgreSQL, the alert store's database; tables ``commands`` and ``command_events``).

Stage: api → create, confirm, send (the store is the API's outbox: a command is committed first,
then its sender claims, signs, publishes and marks it sent); alerter → record the gateways'
results, idempotently by command id, before the result messages are acknowledged. Every step
lands in ``command_events`` and in the ``audit`` table in the same transaction.

Calls are synchronous; async callers wrap them in ``asyncio.to_thread``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from alerting import schema
from alerting.database import columns, connected
from alerting.registry import write_audit
from alerting.rows import CommandDetail, CommandEvent, CommandRecord, Page
from contract.commands import FINAL, CommandResult, Reason, State
from contract.errors import Conflict, Forbidden, NotFound

RECLAIM_AFTER_MS = 10_000  # a claimed command not yet marked sent is offered again (its sender died)
_COMMAND = columns(schema.commands, CommandRecord)
_EVENT = columns(schema.command_events, CommandEvent)


@dataclass(frozen=True)
class NewCommand:
    id: str
    station: str
    device: str
    point: str
    building: str | None
    household: str | None
    value: float | bool
    old_value: float | bool | None
    needs_confirmation: bool
    issuer: str
    reason: str
    ticket: str
    created_at: int
    deadline: int
    # the signed bytes, when the command may go at once (no second engineer): its creator
    # publishes it right after the commit and the sender's claim is only the fallback
    payload: bytes | None = None


def _target(r: Any) -> str:
    where = "/".join(x for x in (r.station, r.building, r.household) if x)
    return f"{where} {r.device}.{r.point}"


class CommandStore:
    WHAT = "command store"  # how an outage is named (alerting/database.py)

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def _read(self) -> AbstractContextManager[Connection]:
        return connected(self.engine, self.WHAT)

    def _write(self) -> AbstractContextManager[Connection]:
        return connected(self.engine, self.WHAT, write=True)

    def _event(self, conn: Connection, cid: str, kind: str, state: str, now: int, actor: str | None,
               detail: dict[str, Any], target: str) -> None:
        conn.execute(schema.command_events.insert().values(command_id=cid, ts=now, kind=kind, state=state,
                                                           actor=actor, detail=detail))
        write_audit(conn, now, actor or "gateway", f"command.{kind}", target, {"command": cid, **detail})

    # -- the API's side ---------------------------------------------------------------------------
    def create(self, c: NewCommand) -> CommandDetail:
        state = State.AWAITING_CONFIRMATION if c.needs_confirmation else State.REQUESTED
        row = asdict(c) | {"state": state.value, "origin": "api",
                           "claimed_at": c.created_at if c.payload is not None else None}
        with self._write() as conn:
            conn.execute(schema.commands.insert().values(**row))
            r = conn.execute(sa.select(schema.commands).where(schema.commands.c.id == c.id)).one()
            self._event(conn, c.id, "requested", state.value, c.created_at, c.issuer,
                        {"old": c.old_value, "new": c.value, "reason": c.reason, "ticket": c.ticket,
                         "deadline": c.deadline, "needs_confirmation": c.needs_confirmation}, _target(r))
        return self.get(c.id)

    def confirm(self, cid: str, *, actor: str, now: int,
                sign: Callable[[CommandRecord], bytes] | None = None) -> CommandDetail:
        """The second engineer's confirmation of a station-wide setpoint. With ``sign`` (the row →
        its signed bytes) the command is claimed for its confirmer to publish at once."""
        t = schema.commands
        with self._write() as conn:
            r = conn.execute(sa.select(*_COMMAND).where(t.c.id == cid)).first()
            if r is None:
                raise NotFound(f"command {cid} does not exist", "not_found")
            if r.state != State.AWAITING_CONFIRMATION:
                raise Conflict(f"command {cid} is {r.state}, not awaiting confirmation", "not_awaiting")
            if r.issuer == actor:
                raise Forbidden(f"{actor} issued command {cid}; a second engineer must confirm it",
                                "same_person")
            if now > r.deadline:
                raise Conflict(f"command {cid} passed its deadline unconfirmed", "deadline_passed")
            signed = {} if sign is None else {"payload": sign(CommandRecord(*r)), "claimed_at": now}
            conn.execute(t.update().where(t.c.id == cid, t.c.state == State.AWAITING_CONFIRMATION)
                         .values(state=State.REQUESTED.value, confirmed_by=actor, confirmed_at=now, **signed))
            self._event(conn, cid, "confirmed", State.REQUESTED.value, now, actor, {}, _target(r))
        return self.get(cid)

    def claim(self, now: int, limit: int = 100) -> list[CommandRecord]:
        """Commands to publish now, claimed for ``RECLAIM_AFTER_MS`` so other API workers leave
        them be. Expires, first, what can no longer go: unconfirmed past the deadline, and
        requested ones past it that were never handed to the broker."""
        t = schema.commands
        with self._write() as conn:
            overdue = conn.execute(sa.select(t).where(
                t.c.deadline < now, sa.or_(t.c.state == State.AWAITING_CONFIRMATION,
                                           sa.and_(t.c.state == State.REQUESTED, t.c.payload.is_(None))))
            ).all()
            for r in overdue:
                why = Reason.NOT_CONFIRMED if r.state == State.AWAITING_CONFIRMATION else Reason.NOT_SENT
                conn.execute(t.update().where(t.c.id == r.id, t.c.state == r.state).values(
                    state=State.EXPIRED.value, result_state=State.EXPIRED.value, result_reason=why.value,
                    result_detail="never sent: " + ("not confirmed by a second engineer"
                                                    if why is Reason.NOT_CONFIRMED else
                                                    "not published before its deadline"),
                    result_at=now))
                self._event(conn, r.id, "expired", State.EXPIRED.value, now, None, {"reason": why.value},
                            _target(r))
            rows = [CommandRecord(*r) for r in conn.execute(sa.select(*_COMMAND).where(
                t.c.state == State.REQUESTED, t.c.deadline >= now,
                sa.or_(t.c.claimed_at.is_(None), t.c.claimed_at < now - RECLAIM_AFTER_MS))
                .order_by(t.c.created_at).limit(limit))]
            for c in rows:
                conn.execute(t.update().where(t.c.id == c.id).values(claimed_at=now))
        return rows

    def set_payload(self, cid: str, payload: bytes) -> None:
        t = schema.commands
        with self._write() as conn:
            conn.execute(t.update().where(t.c.id == cid, t.c.payload.is_(None)).values(payload=payload))

    def mark_sent(self, cid: str, now: int) -> None:
        """The broker acknowledged it. A result may have come first (a quick gateway): it stays."""
        t = schema.commands
        with self._write() as conn:
            r = conn.execute(sa.select(t).where(t.c.id == cid)).first()
            if r is None or r.sent_at is not None:
                return
            conn.execute(t.update().where(t.c.id == cid).values(sent_at=now))
            state = State.SENT.value if r.state == State.REQUESTED else r.state
            if r.state == State.REQUESTED:
                conn.execute(t.update().where(t.c.id == cid, t.c.state == State.REQUESTED)
                             .values(state=state))
            self._event(conn, cid, "sent", state, now, None, {}, _target(r))

    def last_write_at(self, station: str, device: str, point: str, building: str | None,
                      household: str | None) -> int | None:
        """When this point was last sent a command that may have written it."""
        t = schema.commands
        with self._read() as conn:
            v = conn.execute(sa.select(sa.func.max(t.c.sent_at)).where(
                t.c.station == station, t.c.device == device, t.c.point == point,
                t.c.building.is_(None) if building is None else t.c.building == building,
                t.c.household.is_(None) if household is None else t.c.household == household,
                t.c.state.in_([State.SENT, State.CONFIRMED, State.MISMATCH, State.FAILED]))).scalar()
        return int(v) if v is not None else None

    # -- the alerter's side: results from the gateways -------------------------------------------
    def record_results(self, results: Sequence[CommandResult], now: int) -> int:
        """Record gateway results (one transaction); how many changed a command. Idempotent: a
        result already recorded changes nothing; the first final state stands."""
        if not results:
            return 0
        with self._write() as conn:
            return self.record_results_in(conn, results, now)

    def record_results_in(self, conn: Connection, results: Sequence[CommandResult], now: int) -> int:
        """``record_results`` inside the caller's transaction (the alerter's, with its alerts)."""
        t = schema.commands
        changed = 0
        for res in results:
            r = conn.execute(sa.select(t).where(t.c.id == res.id)).first()
            fields = dict(result_state=res.state, result_reason=res.reason.value if res.reason else None,
                          result_detail=res.detail, result_code=res.code,
                          gateway_old_value=res.old_value, read_back=res.read_back, result_at=res.ts)
            detail = {"state": res.state, "reason": fields["result_reason"], "detail": res.detail,
                      "gateway": res.gateway, "old": res.old_value, "new": res.value,
                      "read_back": res.read_back, "code": res.code}
            if r is None:  # never issued here: someone published onto the broker directly
                conn.execute(t.insert().values(
                    id=res.id, origin="broker", station=res.station, device=res.device, point=res.point,
                    building=res.building, household=res.household, value=res.value, state=res.state,
                    created_at=res.ts, deadline=res.ts, **fields))
                r = conn.execute(sa.select(t).where(t.c.id == res.id)).one()
                self._event(conn, res.id, "result", res.state, now, None, detail | {"origin": "broker"},
                            _target(r))
                changed += 1
                continue
            if r.state in FINAL:
                continue  # recorded already (a redelivery), or the first answer stands
            conn.execute(t.update().where(t.c.id == res.id).values(state=res.state, **fields))
            self._event(conn, res.id, "result", res.state, now, None, detail, _target(r))
            changed += 1
        return changed

    # -- reading ----------------------------------------------------------------------------------
    def get(self, cid: str) -> CommandDetail:
        t, ev = schema.commands, schema.command_events
        with self._read() as conn:
            row = conn.execute(sa.select(*_COMMAND).where(t.c.id == cid)).first()
            if row is None:
                raise NotFound(f"command {cid} does not exist", "not_found")
            events = [CommandEvent(*e) for e in conn.execute(
                sa.select(*_EVENT).where(ev.c.command_id == cid).order_by(ev.c.ts, ev.c.id))]
        return CommandDetail(**row._mapping, events=events)

    def issued(self, start: int, end: int) -> list[CommandRecord]:
        """Commands created in [start, end), oldest first (the takeover report's remote control)."""
        t = schema.commands
        with self._read() as conn:
            return [CommandRecord(*r) for r in conn.execute(
                sa.select(*_COMMAND).where(t.c.created_at >= start, t.c.created_at < end)
                .order_by(t.c.created_at, t.c.id))]

    def query(self, *, station: str | None = None, building: str | None = None,
              state: Sequence[str] | None = None, limit: int = 50, offset: int = 0) -> Page[CommandRecord]:
        t = schema.commands
        conds: list[Any] = []
        if station is not None:
            conds.append(t.c.station == station)
        if building is not None:
            conds.append(t.c.building == building)
        if state:
            conds.append(t.c.state.in_(list(state)))
        where = sa.and_(sa.true(), *conds)
        with self._read() as conn:
            total = conn.execute(sa.select(sa.func.count()).select_from(t).where(where)).scalar_one()
            rows = [CommandRecord(*r) for r in conn.execute(
                sa.select(*_COMMAND).where(where).order_by(t.c.created_at.desc(), t.c.id)
                .limit(limit).offset(offset))]
        return Page(rows, int(total))
