"""The collector's latest-value stage: validated frame → latest value per entity → ``latest`` table.

Takes every validated telemetry frame and every station and gateway status (``observe``,
``station_status``, ``gateway_status``; in the event loop, in arrival order) and keeps, per
station, building and household, the latest value of each point and the newest sample time.
``flusher`` writes the entities that changed since its last round to the alert store's ``latest``
table (``alerting/latest.py``) every ``interval_s``, in a worker thread; the API's hotline reads
them there instead of asking InfluxDB for ``last(*)`` on every call.

Bounds: memory is one small dict per entity (``max_entities``, beyond which new entities are
counted and not kept); the write per round is at most one row per entity, whatever the message
rate. A failed write keeps the entities dirty for the next round. At start ``load`` reads the
table back, so a row is always written whole (a station reporting by exception does not lose
its quiet points to a restart).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from time import thread_time_ns
from typing import Any

import sqlalchemy.exc
import structlog

from alerting.latest import Entity, LatestTable
from contract.payload import Frame, GatewayStatus, StationStatus

log = structlog.get_logger("heatwatch.collector.latest")
MAX_ENTITIES = 2_000_000  # ~5 stations' worth of households per thousand: far above a city's 155k

_Key = tuple[str, str, str]


@dataclass
class LatestStats:
    entities: int = 0
    written: int = 0  # rows upserted
    flushes: int = 0
    write_errors: int = 0
    refused: int = 0  # readings of new entities beyond max_entities (not kept; counted)
    flush_ns: int = 0  # CPU of the flushes (copy in the loop + write in the thread)


class LatestValues:
    def __init__(self, table: LatestTable, *, interval_s: float = 5.0,
                 max_entities: int = MAX_ENTITIES, clock: Callable[[], float] = time.time) -> None:
        self.table, self.interval_s, self.max_entities, self.clock = table, interval_s, max_entities, clock
        self.entities: dict[_Key, Entity] = {}
        self.dirty: set[_Key] = set()
        self.stats = LatestStats()

    def load(self) -> None:
        """Blocking: what the table holds, before the first message."""
        for e in self.table.load():
            self.entities[e.key] = e
        self.stats.entities = len(self.entities)

    def _entity(self, key: _Key, ts: int | None) -> Entity | None:
        e = self.entities.get(key)
        if e is None:
            if len(self.entities) >= self.max_entities:
                if not self.stats.refused:
                    log.error("latest values: too many entities; new ones are not kept",
                              max_entities=self.max_entities, station=key[0])
                self.stats.refused += 1
                return None
            e = self.entities[key] = Entity(key[0], key[1], key[2], ts, {})
            self.stats.entities += 1
        return e

    # -- inputs (event loop) -------------------------------------------------------------------
    def observe(self, frame: Frame) -> None:
        """The frame's readings into their entities. A bad reading (no value) keeps the last
        value and does not move the entity's time, so ``ts`` is when a value was last seen. A
        frame older than what an entity holds (a backfill, a redelivery) only adds points the
        entity does not have yet."""
        # per reading: readings of one entity come in runs, so the entity is looked up only when
        # (building, household) changes, as in contract.influx.telemetry_lines
        st, ts, entities, dirty = frame.station, frame.ts, self.entities, self.dirty
        cur_b: str | None = "\0"
        cur_h: str | None = "\0"
        e: Entity | None = None
        points: dict[str, Any] = {}
        newer = True
        for r in frame.samples:
            b, h = r.building, r.household
            if b != cur_b or h != cur_h:
                cur_b, cur_h = b, h
                key = (st, b or "", h or "")
                e = entities.get(key) or self._entity(key, None)
                if e is None:
                    continue
                newer = e.ts is None or ts >= e.ts
                points = e.points
                dirty.add(key)
            v = r.value
            if v is None or e is None:
                continue
            if newer:
                points[r.point] = v
                e.ts = ts
            elif r.point not in points:
                points[r.point] = v

    def station_status(self, s: StationStatus) -> None:
        e = self._entity((s.station, "", ""), None)
        if e is not None and (e.state_ts is None or s.ts >= e.state_ts):
            e.state, e.state_ts = s.state.value, s.ts
            self.dirty.add(e.key)

    def gateway_status(self, g: GatewayStatus) -> None:
        """Every station the gateway serves carries its state (a dead gateway cannot report its
        stations offline itself)."""
        for st in g.stations:
            e = self._entity((st, "", ""), None)
            if e is not None and e.gateway_state != g.state:
                e.gateway_state = g.state
                self.dirty.add(e.key)

    # -- output --------------------------------------------------------------------------------
    def take(self) -> list[Entity]:
        """Copies of the entities changed since the last take (the loop goes on changing the
        originals while a thread writes the copies)."""
        keys, self.dirty = self.dirty, set()
        out = []
        for k in keys:
            e = self.entities[k]
            out.append(Entity(e.station, e.building, e.household, e.ts, dict(e.points), e.state,
                              e.state_ts, e.gateway_state))
        return out

    async def flush(self) -> int:
        """One round: the changed entities into the table; on failure they stay dirty."""
        c0 = thread_time_ns()
        rows = self.take()
        if not rows:
            return 0
        copy_ns = thread_time_ns() - c0

        def write() -> int:
            t0 = thread_time_ns()
            self.table.upsert(rows, int(self.clock() * 1000))
            return thread_time_ns() - t0

        try:
            write_ns = await asyncio.to_thread(write)
        except sqlalchemy.exc.SQLAlchemyError as exc:  # locked, disk, server gone: next round
            self.dirty.update(e.key for e in rows)
            self.stats.write_errors += 1
            if self.stats.write_errors == 1 or self.stats.write_errors % 100 == 0:
                log.warning("could not write latest values; keeping them for the next round",
                            error=str(exc)[:300], rows=len(rows), failures=self.stats.write_errors)
            return 0
        self.stats.flushes += 1
        self.stats.written += len(rows)
        self.stats.flush_ns += copy_ns + write_ns
        return len(rows)

    async def flusher(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            await self.flush()

    async def close(self) -> None:
        """The last changes, at shutdown."""
        await self.flush()
