"""The alerter's latest-value tap: validated frame → latest value per entity → ``latest`` table.

Takes every validated telemetry frame and every station and gateway status of the partitions
this member owns (``observe``, ``station_status``, ``gateway_status``; in the event loop, in
arrival order) and keeps, per station, building and household, the latest value of each point
and the newest sample time, and per room sensor its last 24 h of 30-minute means
(``alerting.latest.RoomDay``). ``flusher`` writes the places (stations, buildings with their
households) that changed since its last round to the alert store's ``latest`` table
(``alerting/latest.py``) every ``interval_s``, in a worker thread; the API's hotline reads them
there instead of asking InfluxDB for ``last(*)`` and the room's 24 h on every call.

Bounds: memory is one small dict per entity, ~450 bytes more a room sensor (``max_entities``,
beyond which new entities are counted and not kept); the write per round is at most one row per
station and building, whatever the message rate. A failed write keeps the places dirty for the
next round. A partition taken over brings its rows in (``adopt``, read by the caller from the
table), so a row is always written whole (a station reporting by exception does not lose its
quiet points, nor a room its 24 h, to a handover or a restart); a partition given up leaves
(``forget``), after a last flush.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from time import thread_time_ns
from typing import Any

import sqlalchemy.exc
import structlog

from alerting.latest import NOT_KEPT, LatestTable, Place, RoomDay, Row
from contract.errors import HeatwatchError
from contract.influx import ROOM_POINT
from contract.payload import Frame, GatewayStatus, StationStatus

log = structlog.get_logger("heatwatch.alerter.latest")
MAX_ENTITIES = 2_000_000  # stations, buildings and households: a 5,000-station city has ~155,000

_Key = tuple[str, str]


@dataclass
class LatestStats:
    entities: int = 0  # stations, buildings and households held
    written: int = 0  # rows upserted
    flushes: int = 0
    write_errors: int = 0
    refused: int = 0  # readings of new entities beyond max_entities (not kept; counted)
    flush_ns: int = 0  # CPU of the flushes (serialising in the loop + writing in the thread)


class LatestValues:
    def __init__(self, table: LatestTable, *, interval_s: float = 5.0,
                 max_entities: int = MAX_ENTITIES, clock: Callable[[], float] = time.time) -> None:
        self.table, self.interval_s, self.max_entities, self.clock = table, interval_s, max_entities, clock
        self.places: dict[_Key, Place] = {}
        self.dirty: set[_Key] = set()
        self.stats = LatestStats()
        self._flushing = asyncio.Lock()

    def adopt(self, places: Iterable[Place]) -> None:
        """Rows read from the table (``table.load``, in a thread) for the stations just taken
        over; what this member already holds of them stays (it is newer)."""
        for p in places:
            if p.key not in self.places:
                self.places[p.key] = p
                self.stats.entities += 1 + len(p.households)

    def forget(self, station_in: Callable[[str], bool]) -> None:
        """Drop the places of the stations given up (after their last flush)."""
        gone = [k for k in self.places if station_in(k[0])]
        for k in gone:
            p = self.places.pop(k)
            self.dirty.discard(k)
            self.stats.entities -= 1 + len(p.households)

    def _room(self, key: _Key) -> bool:
        if self.stats.entities >= self.max_entities:
            if not self.stats.refused:
                log.error("latest values: too many stations, buildings and households; new ones are "
                          "not kept", max_entities=self.max_entities, station=key[0])
            self.stats.refused += 1
            return False
        self.stats.entities += 1
        return True

    def _place(self, key: _Key) -> Place | None:
        p = self.places.get(key)
        if p is None and self._room(key):
            p = self.places[key] = Place(key[0], key[1])
        return p

    # -- inputs (event loop) -------------------------------------------------------------------
    def observe(self, frame: Frame) -> None:
        """The frame's readings into their entities. A bad reading (no value) keeps the last
        value and does not move the entity's time, so ``ts`` is when a value was last seen. A
        frame older than what an entity holds (a backfill, a redelivery) only adds points the
        entity does not have yet. A room temperature also goes into its sensor's 24 h."""
        # per reading: readings of one entity come in runs, so the entity is looked up only when
        # (building, household) changes, as in contract.influx.telemetry_lines
        st, ts, places, dirty = frame.station, frame.ts, self.places, self.dirty
        sp = places.get((st, "")) or self._place((st, ""))
        if sp is not None:
            self._sequence(sp, frame)
            dirty.add(sp.key)
        cur_b: str | None = "\0"
        cur_h: str | None = "\0"
        ent: Place | dict[str, Any] | None = None  # a place, or a household's {"ts", "points"}
        points: dict[str, Any] = {}
        newer = room = True
        for r in frame.samples:
            b, h = r.building, r.household
            if b != cur_b or h != cur_h:
                cur_b, cur_h = b, h
                key = (st, b or "")
                place = places.get(key) or self._place(key)
                ent = place
                if place is not None and h is not None:
                    ent = place.households.get(h)
                    if ent is None and self._room(key):
                        ent = place.households[h] = {"ts": None, "points": {}}
                if ent is None:
                    continue
                room = type(ent) is dict
                if room:
                    newer = ent["ts"] is None or ts >= ent["ts"]  # type: ignore[index]
                    points = ent["points"]  # type: ignore[index]
                else:
                    newer = ent.ts is None or ts >= ent.ts  # type: ignore[union-attr]
                    points = ent.points  # type: ignore[union-attr]
                dirty.add(key)
            v = r.value
            if v is None or ent is None:
                continue
            p = r.point
            if newer:
                points[p] = v
                if room:
                    ent["ts"] = ts  # type: ignore[index]
                else:
                    ent.ts = ts  # type: ignore[union-attr]
            elif p not in points:
                points[p] = v
            if room and p == ROOM_POINT and type(v) is float:  # what InfluxDB's mean counts
                day = ent.get("day")  # type: ignore[union-attr]
                if day is None:
                    ent["day"] = RoomDay.first(ts, v)  # type: ignore[index]
                else:
                    day.add(ts, v)

    @staticmethod
    def _sequence(p: Place, f: Frame) -> None:
        """The station's message sequence: a message after one this stage did not see (its
        gateway numbers them 0, 1, 2 … per boot) marks a gap, and the rooms' 24 h kept here are
        not the whole story until it is a day old (``alerting.latest.day_means``; the lookup asks
        InfluxDB meanwhile). Missed: the latest values were off for a while, a broker queue
        overflowed, a member was killed after acknowledging messages it had not flushed yet, a
        message was lost and its gateway sends it again later, a message this alerter refused
        (too old, malformed: InfluxDB has none of those either, a day of queries is the price).
        Every change of boot is a gap too: the old boot's last messages may be the ones missed,
        and a gateway restarts rarely. A station row without a sequence (new, or written by an
        older version) counts its first message as after a gap: harmless for a new station, whose
        rooms' 24 h start with it anyway. ``gap_at`` never moves back."""
        if p.gap_at != NOT_KEPT and p.boot == f.boot and p.seq is not None:
            if f.seq <= p.seq:
                return  # a redelivery, or a message sent again late: its gap is already marked
            if f.seq == p.seq + 1:
                p.seq, p.msg_ts = f.seq, max(p.msg_ts or 0, f.ts)
                return
        newest = p.msg_ts or 0
        if p.gap_at == NOT_KEPT:  # kept by nobody for a while (``LatestTable.not_kept``)
            p.gap_at = max(newest, f.ts)
        else:
            p.gap_at = max(p.gap_at or 0, newest, f.ts)
        if f.ts >= newest:  # an older boot's message sent late does not become the sequence
            p.boot, p.seq, p.msg_ts = f.boot, f.seq, f.ts

    def station_status(self, s: StationStatus) -> None:
        p = self._place((s.station, ""))
        if p is not None and (p.state_ts is None or s.ts >= p.state_ts):
            p.state, p.state_ts = s.state.value, s.ts
            self.dirty.add(p.key)

    def gateway_status(self, g: GatewayStatus) -> None:
        """Every station the gateway serves carries its state (a dead gateway cannot report its
        stations offline itself)."""
        for st in g.stations:
            p = self._place((st, ""))
            if p is not None and p.gateway_state != g.state:
                p.gateway_state = g.state
                self.dirty.add(p.key)

    # -- output --------------------------------------------------------------------------------
    def take(self) -> list[Row]:
        """The rows of the places changed since the last take, serialised here (the loop goes
        on changing them while a thread writes the rows); the stations' rows last."""
        keys, self.dirty = self.dirty, set()
        places = self.places
        # stations last: the upsert commits in chunks, and a station's sequence in the table must
        # never be ahead of its buildings' rooms (a gap would go unseen after a crash between);
        # a place forgotten since it was marked (a partition given up) has nothing to write
        buildings = [places[k].row() for k in keys if k[1] and k in places]
        return buildings + [places[k].row() for k in keys if not k[1] and k in places]

    async def flush(self) -> int:
        """One round: the changed places into the table; on failure they stay dirty. One round
        at a time, to its end: a round overtaking another would write older rows over newer
        ones, and a station's sequence ahead of its rooms (``take``)."""
        async with self._flushing:
            return await self._flush()

    async def _flush(self) -> int:
        c0 = thread_time_ns()
        rows = self.take()
        if not rows:
            return 0
        take_ns = thread_time_ns() - c0

        def write() -> int:
            t0 = thread_time_ns()
            self.table.upsert(rows, int(self.clock() * 1000))
            return thread_time_ns() - t0

        fut = asyncio.get_running_loop().run_in_executor(None, write)
        try:
            write_ns = await asyncio.shield(fut)
        except asyncio.CancelledError:  # the thread writes on: the next round waits for it
            await asyncio.wait([fut])
            raise
        except (HeatwatchError, sqlalchemy.exc.SQLAlchemyError) as exc:  # locked, disk, gone: next round
            self.dirty.update(k for r in rows if (k := (r[0], r[1])) in self.places)
            self.stats.write_errors += 1
            if self.stats.write_errors == 1 or self.stats.write_errors % 100 == 0:
                log.warning("could not write latest values; keeping them for the next round",
                            error=str(exc)[:300], rows=len(rows), failures=self.stats.write_errors)
            return 0
        self.stats.flushes += 1
        self.stats.written += len(rows)
        self.stats.flush_ns += take_ns + write_ns
        return len(rows)

    async def flusher(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            await self.flush()

    async def close(self) -> None:
        """The last changes, at shutdown."""
        await self.flush()
