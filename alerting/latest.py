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

A household with a room sensor carries its last 24 hours too, ``"day"``: clock-aligned
30-minute means of its room temperature (``RoomDay``), what the hotline screen shows beside the
room's value now. They were one InfluxDB query per lookup (``GROUP BY time(30m)`` over the raw
day), and that query's cost is fixed, not its scan: ~1 ms of influxd CPU to find one series among
100,000 households even when it holds nothing, against 0.25 ms for a query that finds none (a
100,000-room register, 6 or 72 readings a room; #20). A rollup would not have helped (a 5-minute
rollup holds more points a day than a sensor sending every 20-60 min). So the alerter, which sees
every reading anyway, keeps the means, 49 floats a room, and the lookup reads them with the row it
already reads.

The alerter writes it, each member the rows of its partitions' stations (it sees every message
of them): its memory is the authority, loaded from here when it takes a partition over (``load``,
``alerter/latest.py`` ``adopt``), so a row is always written whole and never merged.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from alerting import schema
from alerting.database import columns, connected
from alerting.rows import HouseholdNow, HouseholdRow

# what upsert writes: station, building, ts, points, households (JSON text or None), state,
# state_ts, gateway_state, boot, seq, gap_at — serialised by the caller, so the write is one
# executemany in the driver
Row = tuple[str, str, int | None, str, str | None, str | None, int | None, str | None, str | None,
            int | None, int | None]
_COLS = ("station", "building", "ts", "points", "households", "state", "state_ts", "gateway_state",
         "boot", "seq", "gap_at", "written_at")
BUCKET_MS = 1_800_000  # the hotline's 24 h: 30-minute means
DAY_MS = 86_400_000
DAY_BUCKETS = DAY_MS // BUCKET_MS + 1  # 24 h back from now: 48 whole buckets and the current one
_NAN = float("nan")
NOT_KEPT = 2**62  # a station row's gap_at while no alerter member keeps its row (``not_kept``)
# the rooms' 24 h is served while their station's row was written this recently: a member keeping
# it rewrites it at every flush (alerts.latest_s) that saw a message of the station, and a station
# sends one every poll interval (10-60 s) or heartbeat; past this, the alerter is down or the
# station silent, and InfluxDB answers (what the alerter has not seen, it has)
KEPT_WITHIN_MS = 600_000


class RoomDay:
    """A room sensor's last 24 hours: the means of its readings per clock-aligned 30 minutes,
    as InfluxDB's ``SELECT mean(room_temp) … GROUP BY time(30m)`` over the raw readings gives
    them, kept by the alerter as the readings arrive.

    ``since`` is the first reading this ring counted: it holds every reading the alerter judged
    from then on, so it answers for 24 h only once ``since`` is a day old (before that,
    ``day_means`` says so and the lookup asks InfluxDB: a new sensor, or the first day after this
    ring was introduced). Readings are counted when newer than the newest counted (``last``), the
    rooms rule's own test (``rule_rooms``): a redelivery or a takeover's replay is never counted
    twice. A reading older than that, which only a message lost on its way and sent again after
    newer ones can be, is left out: InfluxDB has it, and its station's sequence gap (the station
    row's ``gap_at``) sends the lookup there for the day.

    Each mean is kept rounded to 0.01 °C, as the lookup shows it, in an ``array`` of doubles
    (~450 bytes a room; a list of floats would be 1.6 KB) that becomes the row's JSON in C
    (``tolist``; orjson writes NaN, a bucket without a reading, as null): a flush of full days
    costs 2x one without (0.75 against 0.37 µs a value, every message's 20 rooms rewritten),
    where a Python pass rounding each float32 mean was 5x (bench/latest_bench.py --day).
    """

    __slots__ = ("bucket", "last", "means", "n", "since", "sum")

    def __init__(self, since: int, last: int, bucket: int, total: float, n: int, means: array[float]) -> None:
        self.since, self.last, self.bucket = since, last, bucket
        self.sum, self.n, self.means = total, n, means

    @classmethod
    def first(cls, ts: int, v: float) -> RoomDay:
        return cls(ts, ts, ts // BUCKET_MS, v, 1, array("d", (round(v, 2),)))

    def add(self, ts: int, v: float) -> None:
        if ts <= self.last:
            return  # counted already, or older than a reading that was (the docstring)
        self.last = ts
        b, means = ts // BUCKET_MS, self.means
        if b == self.bucket:
            self.sum += v
            self.n += 1
        else:  # a later bucket: the ones between had no reading
            gap = b - self.bucket
            if gap >= DAY_BUCKETS:
                del means[:]
            else:
                means.extend([_NAN] * (gap - 1))
            means.append(0.0)
            if len(means) > DAY_BUCKETS:
                del means[:len(means) - DAY_BUCKETS]
            self.bucket, self.sum, self.n = b, v, 1
        means[-1] = round(self.sum / self.n, 2)

    def json(self) -> dict[str, Any]:
        """As stored in the row (``Place.row``): the means oldest first, the last one the
        ``bucket``'s, null for a bucket without a reading."""
        return {"since": self.since, "last": self.last, "bucket": self.bucket, "sum": self.sum, "n": self.n,
                "means": self.means.tolist()}

    @classmethod
    def from_json(cls, d: Any) -> RoomDay | None:
        """The ring of a row read back (``LatestTable.load``); None for one that is not a ring
        (a row written by other code): it starts again."""
        try:
            means = array("d", (_NAN if m is None else m for m in d["means"][-DAY_BUCKETS:]))
            day = cls(int(d["since"]), int(d["last"]), int(d["bucket"]), float(d["sum"]), int(d["n"]), means)
        except (KeyError, TypeError, ValueError):
            return None
        return day if means and day.n > 0 else None


def day_means(day: dict[str, Any] | None, now: int, gap_at: int | None = None,
              written_at: int | None = None) -> list[tuple[int, float]] | None:
    """A stored ring's (``RoomDay.json``) means of the 24 h before ``now``: (bucket start ms, °C),
    oldest first, the bucket holding ``now`` - 24 h the first and whole (InfluxDB's first bucket
    counts only the readings after it). None — the readings missing from it are in InfluxDB —
    when there is none, it does not reach back 24 h, its station's messages had a gap
    (``gap_at``, the station row's) less than 24 h ago, or that row was not written in the last
    ``KEPT_WITHIN_MS`` (``written_at``, the row's: the alerter is down, or the station silent)."""
    try:
        since = max(day["since"], gap_at or 0) if day else now
        if since > now - DAY_MS or written_at is None or now - written_at > KEPT_WITHIN_MS:
            return None
        means, first = day["means"], day["bucket"] - len(day["means"]) + 1  # type: ignore[index]
        lo, hi = (now - DAY_MS) // BUCKET_MS, now // BUCKET_MS
        return [((first + i) * BUCKET_MS, m) for i, m in enumerate(means)
                if m is not None and lo <= first + i <= hi]
    except (KeyError, TypeError, ValueError):  # not a ring (another version's row): InfluxDB answers
        return None


def _json(o: object) -> Any:
    if type(o) is RoomDay:
        return o.json()
    raise TypeError(f"{type(o).__name__} is not stored in the latest table")


@dataclass(slots=True)
class Place:
    """A station (``building`` '') or a building entrance with its households."""

    station: str
    building: str
    ts: int | None = None  # sample time of the newest reading with a value (ms); None: none yet
    points: dict[str, Any] = field(default_factory=dict)
    # household → {"ts": ms, "points": {point: value}, "day": RoomDay (room sensors)} (buildings only)
    households: dict[str, dict[str, Any]] = field(default_factory=dict)
    state: str | None = None  # stations: from the station status
    state_ts: int | None = None
    gateway_state: str | None = None  # stations: from their gateway's status
    # stations: the newest message seen (its gateway's boot and sequence number), and the sample
    # time of the first message after one the stage did not see (alerter/latest.py ``_sequence``)
    boot: str | None = None
    seq: int | None = None
    gap_at: int | None = None
    msg_ts: int | None = None  # the newest message's sample time (this process's memory only)

    @property
    def key(self) -> tuple[str, str]:
        return self.station, self.building

    def row(self) -> Row:
        return (self.station, self.building, self.ts, orjson.dumps(self.points).decode(),
                orjson.dumps(self.households, default=_json).decode() if self.building else None,
                self.state, self.state_ts, self.gateway_state, self.boot, self.seq, self.gap_at)


def _now_stmt() -> sa.Select[Any]:
    """A household with its address, station name, gateway and the latest rows of its station
    and its building (either may be missing)."""
    h, b, st, lt = schema.households, schema.buildings, schema.stations, schema.latest
    ls, lb = lt.alias("ls"), lt.alias("lb")
    return (sa.select(*columns(h, HouseholdRow), b.c.address, st.c.name.label("station_name"),
                      st.c.gateway,
                      ls.c.ts.label("station_ts"), ls.c.points.label("station_points"),
                      ls.c.state.label("station_state"), ls.c.gateway_state,
                      ls.c.gap_at.label("station_gap_at"), ls.c.written_at.label("station_written_at"),
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

    def load(self, stations: Callable[[str], bool] = lambda _s: True) -> list[Place]:
        """The rows of the ``stations`` wanted (a member taking partitions over)."""
        t = schema.latest
        with connected(self.engine, self.WHAT) as conn:
            rows = list(conn.execute(sa.select(t.c.station, t.c.building, t.c.ts, t.c.points, t.c.households,
                                               t.c.state, t.c.state_ts, t.c.gateway_state, t.c.boot, t.c.seq,
                                               t.c.gap_at)))
        places = []
        for r in rows:
            if not stations(r.station):
                continue
            households = r.households or {}
            for e in households.values():
                if "day" in e:
                    day = RoomDay.from_json(e["day"])
                    if day is None:
                        del e["day"]
                    else:
                        e["day"] = day
            places.append(Place(r.station, r.building, r.ts, r.points, households, r.state, r.state_ts,
                                r.gateway_state, r.boot, r.seq, r.gap_at))
        return places

    def not_kept(self, stations: Callable[[str], bool]) -> int:
        """Mark the rows of ``stations`` as kept by nobody (an alerter member with the latest
        values off took them over): their rooms' 24 h is not served until a member keeping them
        sees a message again, and a day has passed (its gap). Returns the stations marked."""
        t = schema.latest
        with connected(self.engine, self.WHAT, write=True) as conn:
            mine = [s for s in conn.execute(sa.select(t.c.station).where(t.c.building == "")).scalars()
                    if stations(s)]
            for i in range(0, len(mine), 2000):
                conn.execute(sa.update(t).where(t.c.building == "", t.c.station.in_(mine[i:i + 2000]))
                             .values(gap_at=NOT_KEPT))
        return len(mine)

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
                            room_points=room["points"] if room else None,
                            room_day=room.get("day") if room else None)
