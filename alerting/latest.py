"""The ``latest`` table: the current value of every point of every station, building and household.

Stage: collector → ``upsert`` (``collector/latest.py`` hands it the entities that changed, every
``alerts.latest_s``, in a worker thread); api → ``household`` (the hotline lookup: a household,
its building and its station with their latest values and state, in one query). InfluxDB stays
the history; this table answers "now" without a time-series query per call.

Only one collector writes it (the one with the ``alerts:`` section, which sees every message of
its stations): its memory is the authority, loaded from here at start (``load``), so a row is
always written whole and never merged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from alerting import schema

LATEST_COLUMNS = ("ts", "points", "state", "state_ts", "gateway_state")


@dataclass(slots=True)
class Entity:
    """One row: a station (building = household = ''), a building (household = '') or a household
    (its room sensor's id)."""

    station: str
    building: str
    household: str
    ts: int | None  # sample time of the newest reading of any of its points (ms); None: none yet
    points: dict[str, Any]
    state: str | None = None  # stations: from the station status
    state_ts: int | None = None
    gateway_state: str | None = None  # stations: from their gateway's status

    @property
    def key(self) -> tuple[str, str, str]:
        return self.station, self.building, self.household


def _now_stmt() -> sa.Select[Any]:
    """A household with its address, station name, gateway and the latest rows of the household's
    room sensor, its building and its station (any of the three may be missing)."""
    h, b, st, lt = schema.households, schema.buildings, schema.stations, schema.latest
    ls, lb, lh = lt.alias("ls"), lt.alias("lb"), lt.alias("lh")
    return (sa.select(h, b.c.address, st.c.name.label("station_name"), st.c.gateway,
                      ls.c.ts.label("station_ts"), ls.c.points.label("station_points"),
                      ls.c.state.label("station_state"), ls.c.gateway_state,
                      lb.c.ts.label("building_ts"), lb.c.points.label("building_points"),
                      lh.c.ts.label("room_ts"), lh.c.points.label("room_points"))
            .join(b, sa.and_(b.c.station == h.c.station, b.c.building == h.c.building))
            .join(st, st.c.station == h.c.station, isouter=True)
            .join(ls, sa.and_(ls.c.station == h.c.station, ls.c.building == "", ls.c.household == ""),
                  isouter=True)
            .join(lb, sa.and_(lb.c.station == h.c.station, lb.c.building == h.c.building,
                              lb.c.household == ""), isouter=True)
            .join(lh, sa.and_(lh.c.station == h.c.station, lh.c.building == h.c.building,
                              lh.c.household == h.c.sensor), isouter=True)
            .where(h.c.code == sa.bindparam("code")))


_NOW = _now_stmt()  # built once: building a Core statement costs more than running it (store.py)


class LatestTable:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        t = schema.latest
        if engine.dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as pg_insert
            ins: Any = pg_insert(t)
        else:
            from sqlalchemy.dialects.sqlite import insert as sqlite_insert
            ins = sqlite_insert(t)
        self._upsert = ins.on_conflict_do_update(
            index_elements=["station", "building", "household"],
            set_={c: getattr(ins.excluded, c) for c in (*LATEST_COLUMNS, "written_at")})

    def upsert(self, entities: Sequence[Entity], now: int, chunk: int = 2000) -> None:
        """Write the entities whole, ``chunk`` rows a transaction: the alert store's other writer
        (the collector's ``apply``, before PUBACKs) never waits behind a long one."""
        for i in range(0, len(entities), chunk):
            rows = [{"station": e.station, "building": e.building, "household": e.household, "ts": e.ts,
                     "points": e.points, "state": e.state, "state_ts": e.state_ts,
                     "gateway_state": e.gateway_state, "written_at": now}
                    for e in entities[i:i + chunk]]
            with self.engine.begin() as conn:
                conn.execute(self._upsert, rows)

    def load(self) -> list[Entity]:
        t = schema.latest
        with self.engine.connect() as conn:
            return [Entity(r.station, r.building, r.household, r.ts, r.points, r.state, r.state_ts,
                           r.gateway_state)
                    for r in conn.execute(sa.select(t.c.station, t.c.building, t.c.household,
                                                    *[t.c[c] for c in LATEST_COLUMNS]))]

    def household(self, code: str) -> dict[str, Any] | None:
        """The household ``code`` with its address, station and the latest rows of its chain
        (``station_*``, ``gateway_state``, ``building_*``, ``room_*``; None where nothing
        reported)."""
        with self.engine.connect() as conn:
            row = conn.execute(_NOW, {"code": code}).mappings().first()
        return dict(row) if row is not None else None
