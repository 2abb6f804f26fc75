"""The ``latest`` table: the current value of every point of every station, building and household.

Stage: alerter → ``upsert`` (``alerter/latest.py`` hands it the places that changed, every
``alerts.latest_s``, in a worker thread); api → ``household`` (the hotline lookup: a household,
its building and its station with their latest values and state, in one query). InfluxDB stays
the history; this table answers "now" without a time-series query per call.

One row per station (``building`` = '') and per building entrance; a building's row carries its
households (room sensors) too, in ``households``: ``{household: {"ts": ms, "points": {...}}}``.
A row per household would have been the plainer schema, but each row costs a fixed 4–8 µs to
serialise and upsert, whatever its size: with the load generator's 200-value messages (5
buildings, 20 rooms) a row per entity is 26 rows a message and the flush cost 1.3 µs per value
(the collector's whole work is ~2 µs); nested, 6 rows and 0.5 µs (bench/latest_bench.py). Room
sensors are few per building (4 % of households in Weifang), so a building's row stays small.

The alerter writes it, each member the rows of its partitions' stations (it sees every message
of them): its memory is the authority, loaded from here when it takes a partition over (``load``,
``alerter/latest.py`` ``adopt``), so a row is always written whole and never merged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from alerting import schema
from alerting.database import columns, connected
from alerting.rows import HouseholdNow, HouseholdRow

# what upsert writes: station, building, ts, points, households (JSON text or None), state,
# state_ts, gateway_state — serialised by the caller, so the write is one executemany in the driver
Row = tuple[str, str, int | None, str, str | None, str | None, int | None, str | None]
_COLS = ("station", "building", "ts", "points", "households", "state", "state_ts", "gateway_state",
         "written_at")


@dataclass(slots=True)
class Place:
    """A station (``building`` '') or a building entrance with its households."""

    station: str
    building: str
    ts: int | None = None  # sample time of the newest reading with a value (ms); None: none yet
    points: dict[str, Any] = field(default_factory=dict)
    # household → {"ts": ms, "points": {point: value}} (buildings only)
    households: dict[str, dict[str, Any]] = field(default_factory=dict)
    state: str | None = None  # stations: from the station status
    state_ts: int | None = None
    gateway_state: str | None = None  # stations: from their gateway's status

    @property
    def key(self) -> tuple[str, str]:
        return self.station, self.building

    def row(self) -> Row:
        return (self.station, self.building, self.ts, orjson.dumps(self.points).decode(),
                orjson.dumps(self.households).decode() if self.building else None,
                self.state, self.state_ts, self.gateway_state)


def _now_stmt() -> sa.Select[Any]:
    """A household with its address, station name, gateway and the latest rows of its station
    and its building (either may be missing)."""
    h, b, st, lt = schema.households, schema.buildings, schema.stations, schema.latest
    ls, lb = lt.alias("ls"), lt.alias("lb")
    return (sa.select(*columns(h, HouseholdRow), b.c.address, st.c.name.label("station_name"),
                      st.c.gateway,
                      ls.c.ts.label("station_ts"), ls.c.points.label("station_points"),
                      ls.c.state.label("station_state"), ls.c.gateway_state,
                      lb.c.ts.label("building_ts"), lb.c.points.label("building_points"),
                      lb.c.households.label("building_households"))
            .join(b, sa.and_(b.c.station == h.c.station, b.c.building == h.c.building))
            .join(st, st.c.station == h.c.station, isouter=True)
            .join(ls, sa.and_(ls.c.station == h.c.station, ls.c.building == ""), isouter=True)
            .join(lb, sa.and_(lb.c.station == h.c.station, lb.c.building == h.c.building), isouter=True)
            .where(h.c.code == sa.bindparam("code")))


_NOW = _now_stmt()  # built once: building a Core statement costs more than running it (store.py)


class LatestTable:
    WHAT = "alert store"  # its table: how an outage is named (alerting/database.py)

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        # plain SQL through the driver's executemany: SQLAlchemy's per-row parameter processing
        # cost more than SQLite's own work (12-14 µs a row against 6-7 µs; docs/api.md)
        pg = engine.dialect.name == "postgresql"
        mark, json_mark = ("%s", "%s::json") if pg else ("?", "?")
        values = ", ".join(json_mark if c in ("points", "households") else mark for c in _COLS)
        updates = ", ".join(f"{c} = excluded.{c}" for c in _COLS[2:])
        self._sql = (f"INSERT INTO latest ({', '.join(_COLS)}) VALUES ({values}) "
                     f"ON CONFLICT (station, building) DO UPDATE SET {updates}")

    def upsert(self, rows: Sequence[Row], now: int, chunk: int = 2000) -> None:
        """Write whole rows (``Place.row``), ``chunk`` a transaction: the alert store's other
        writer (the alerter's commit, before PUBACKs) never waits behind a long one."""
        for i in range(0, len(rows), chunk):
            with connected(self.engine, self.WHAT, write=True) as conn:
                conn.exec_driver_sql(self._sql, [(*r, now) for r in rows[i:i + chunk]])

    def load(self) -> list[Place]:
        t = schema.latest
        with connected(self.engine, self.WHAT) as conn:
            return [Place(r.station, r.building, r.ts, r.points, r.households or {}, r.state, r.state_ts,
                          r.gateway_state)
                    for r in conn.execute(sa.select(t.c.station, t.c.building, t.c.ts, t.c.points,
                                                    t.c.households, t.c.state, t.c.state_ts,
                                                    t.c.gateway_state))]

    def gateway_offline(self) -> set[str]:
        """The stations whose gateway's latest status says offline: a dead gateway cannot report
        its stations offline, so their last station status still says online."""
        t = schema.latest
        with connected(self.engine, self.WHAT) as conn:
            return set(conn.execute(sa.select(t.c.station).where(
                t.c.building == "", t.c.gateway_state == "offline")).scalars())

    def household(self, code: str) -> HouseholdNow | None:
        """The household ``code`` with its address and station, and its chain's latest values
        (None where nothing reported); the room's are its sensor's, from its building's row."""
        with connected(self.engine, self.WHAT) as conn:
            row = conn.execute(_NOW, {"code": code}).first()
        if row is None:
            return None
        m = dict(row._mapping)
        households = m.pop("building_households") or {}
        room = households.get(row.sensor) if row.sensor else None
        return HouseholdNow(**m, room_ts=room["ts"] if room else None,
                            room_points=room["points"] if room else None)
