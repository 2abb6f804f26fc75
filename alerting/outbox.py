"""The alert outbox: what the alerter still has to send for transitions it recorded.

Stage: alerter → record (``add``, in the transaction that records the transitions) → send
(``take``, ``done``, ``retry``: the partition's owner, ``alerter/pages.py``). Two sinks: ``mqtt``
(every recorded transition on ``heatwatch/v1/alert/{station|gateway}``) and ``webhook`` (the pages).
Written in the same transaction as the alert rows, so a crash between the commit and the send
loses nothing: whoever owns the partition next sends what is left (at least once; a receiver
that must not see a page twice dedupes on the transition's ``key`` and ``ts``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass

import msgspec
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from alerting import schema
from alerting.database import connected
from contract.alerts import Transition

MQTT, WEBHOOK = "mqtt", "webhook"


@dataclass(frozen=True)
class Row:
    id: int
    part: int
    sink: str
    key: str
    payload: bytes
    attempts: int


class Outbox:
    WHAT = "alert store"  # its table: how an outage is named (alerting/database.py)

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def _read(self) -> AbstractContextManager[Connection]:
        return connected(self.engine, self.WHAT)

    def _write(self) -> AbstractContextManager[Connection]:
        return connected(self.engine, self.WHAT, write=True)

    @staticmethod
    def add(conn: Connection, part: int, sink: str, transitions: Sequence[Transition], now: int) -> None:
        if transitions:
            conn.execute(schema.alert_outbox.insert(), [
                {"part": part, "sink": sink, "key": t.key, "payload": msgspec.json.encode(t),
                 "created_at": now, "attempts": 0} for t in transitions])

    def take(self, parts: Iterable[int], sink: str, limit: int = 500) -> list[Row]:
        """The oldest rows of ``sink`` for ``parts``, in the order they were recorded."""
        want = sorted(set(parts))
        if not want:
            return []
        o = schema.alert_outbox
        with self._read() as conn:
            return [Row(int(r.id), int(r.part), r.sink, r.key, bytes(r.payload), int(r.attempts))
                    for r in conn.execute(sa.select(o).where(o.c.part.in_(want), o.c.sink == sink)
                                          .order_by(o.c.id).limit(limit))]

    def done(self, ids: Sequence[int]) -> None:
        if ids:
            o = schema.alert_outbox
            with self._write() as conn:
                conn.execute(o.delete().where(o.c.id.in_(list(ids))))

    def retry(self, row_id: int) -> None:
        o = schema.alert_outbox
        with self._write() as conn:
            conn.execute(o.update().where(o.c.id == row_id).values(attempts=o.c.attempts + 1))

    def count(self, sink: str | None = None) -> int:
        o = schema.alert_outbox
        q = sa.select(sa.func.count()).select_from(o)
        if sink is not None:
            q = q.where(o.c.sink == sink)
        with self._read() as conn:
            return int(conn.execute(q).scalar_one())
