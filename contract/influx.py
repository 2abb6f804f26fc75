"""The InfluxDB schema, and the pure encoder from telemetry to line protocol.

One line per entity per sample time, all of a message's points for that entity as fields::

    station,station=st001 secondary_supply_temp=55.2,circ_pump_running=true 1763700000000
    building,station=st001,building=b01 building_valve_position=45.0 1763700000000
    household,station=st001,building=b01,household=b01-0301 room_temp=19.6 1763700000000

- measurements ``station``, ``building``, ``household`` (the entity level of the point);
- tags ``station`` [, ``building`` [, ``household``]]: identifiers, never escaped (see topics);
- one field per point, named by its canonical name; numbers are always floats (so an int16
  register and a float32 one never conflict), booleans booleans, text strings (stored exactly:
  a newline is written as is, see ``escape_string_field``);
- custom ``x_`` points of an entity on a line of their own (same series and time), so a custom
  field refused for its type never takes a canonical point down with it;
- a reading whose quality is not good also writes ``<point>_quality`` = "uncertain" | "bad";
  a bad reading has no value field at all;
- timestamp: the gateway's sample time in ms (``precision=ms``). ``backfill`` is deliberately
  not a tag: a tag would put a replayed sample in a second series instead of overwriting.

Alert transitions go to ``alerts`` (Grafana annotations): tags ``rule``, ``state`` and the entity
(``station``, ``building``, ``household``, ``gateway``, ``subject`` where set); fields
``severity``, ``key``, ``summary`` strings, ``value`` float, ``page`` bool, ``since`` ms; at the
transition's time.

Rejected input goes to ``rejects`` (tags ``reason``, and ``station`` for a station of the inventory
or, without one, any; fields ``count`` integer (1 a message; the readings refused from a stored
message), ``detail`` string, ``topic`` string), timestamped at receipt.

Status: ``station_status`` (tag ``station``; fields ``state`` string, ``devices_not_online``
integer) at the gateway's status time; ``gateway_status`` (tag ``gateway``; fields ``state``,
``boot`` strings) at receipt (a last will's own time is when it was registered, not when it fired).

The collector's own counters (``collector/metrics.py`` holds the one table of them): ``collector``
(tag ``client_id``), ``collector_rejects`` (tags ``client_id``, ``reason``), ``collector_gc`` (tags
``client_id``, ``generation``) and, per station, ``ingest`` (tag ``station``).

Remote-command results go to ``commands`` (Grafana annotations, history): tags ``station``,
``state``, and ``point``, ``building``, ``household`` where known; fields ``id``, ``reason``,
``detail`` strings, ``value`` and ``read_back`` floats (``value_bool``, ``read_back_bool`` for
true/false points: one field, one type), ``code`` integer; at the gateway's decision time. A
redelivered result writes the same line again (same series and time: overwritten).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from operator import attrgetter

import msgspec

from contract.alerts import Transition
from contract.commands import CommandResult
from contract.payload import Frame, GatewayStatus, StationStatus
from contract.points import QUALITY_SUFFIX

MEASUREMENT_STATION = "station"
MEASUREMENT_BUILDING = "building"
MEASUREMENT_HOUSEHOLD = "household"
MEASUREMENT_REJECTS = "rejects"
MEASUREMENT_ALERTS = "alerts"
MEASUREMENT_COMMANDS = "commands"
MEASUREMENT_STATION_STATUS = "station_status"
MEASUREMENT_GATEWAY_STATUS = "gateway_status"
MEASUREMENT_COLLECTOR = "collector"
MEASUREMENT_COLLECTOR_REJECTS = "collector_rejects"
MEASUREMENT_COLLECTOR_GC = "collector_gc"
MEASUREMENT_INGEST = "ingest"
PRECISION = "ms"
TELEMETRY_MEASUREMENTS = (MEASUREMENT_STATION, MEASUREMENT_BUILDING, MEASUREMENT_HOUSEHOLD)


def escape_string_field(s: str) -> str:
    """A string field's text, stored exactly: InfluxDB 1.x unescapes only ``\\\\`` and ``\\"`` in a
    string field, so a newline is written as is (its line parser keeps a newline inside quotes:
    measured on influxd 1.6.7); escaped as ``\\n`` it was stored as a backslash and an n."""
    return s.replace("\\", "\\\\").replace('"', '\\"')


def split_lines(body: str) -> list[str]:
    """The lines of a write body, as InfluxDB 1.x's parser cuts them (``models.scanLine``): at a
    newline outside a string field's quotes. Needed only to split a stored body (a spooled batch
    InfluxDB answered 413 to); a newline inside a text value does not end its line."""
    out: list[str] = []
    start, i, n = 0, 0, len(body)
    quoted = fields = False
    equals = commas = 0
    while i < n:
        c = body[i]
        if c == "\\" and i + 1 < n:
            i += 2
            continue
        if c == " ":
            fields = True
        if fields:
            if not quoted and c == "=":
                equals += 1
            elif not quoted and c == ",":
                commas += 1
            elif c == '"' and equals > commas:
                quoted = not quoted
        if c == "\n" and not quoted:
            if i > start:
                out.append(body[start:i])
            start, fields, equals, commas = i + 1, False, 0, 0
        i += 1
    if n > start:
        out.append(body[start:])
    return out


def _escape_tag(s: str) -> str:
    return s.replace("\\", "\\\\").replace(",", "\\,").replace("=", "\\=").replace(" ", "\\ ")


def _fmt(v: bool | float | str) -> str:
    if v is True:
        return "true"
    if v is False:
        return "false"
    if isinstance(v, str):
        return f'"{escape_string_field(v)}"'
    return repr(float(v))


_HEADS: dict[tuple[str, str | None, str | None], str] = {}


def _head(s: str, b: str | None, h: str | None) -> str:
    key = (s, b, h)
    head = _HEADS.get(key)
    if head is None:
        if h is not None:
            head = f"{MEASUREMENT_HOUSEHOLD},station={s},building={b},household={h} "
        elif b is not None:
            head = f"{MEASUREMENT_BUILDING},station={s},building={b} "
        else:
            head = f"{MEASUREMENT_STATION},station={s} "
        if len(_HEADS) > 1_000_000:
            _HEADS.clear()
        _HEADS[key] = head
    return head


_ENCODE = msgspec.json.Encoder().encode
_VALUE = attrgetter("value")
_NOWHERE = object()  # no reading's building or household


def telemetry_lines(t: Frame) -> list[str]:
    """Line protocol for one validated telemetry message: one line per entity for its canonical
    points and, when it has custom ``x_`` points, a second line for those (same series and time:
    InfluxDB merges them into one row). A custom field's type is fixed by whoever wrote it first
    in the shard; a line of the other type is refused whole, so the canonical points never share
    a line with a custom one (issue #16: one station's text ``x_plc_program`` took every station's
    flow and heat totals down with it)."""
    samples = t.samples
    # The collector's hottest loop. Every value's text at once: msgspec writes a message's values
    # as JSON in C (floats shortest round-trip, e.g. 1e16, 1e-7, which InfluxDB reads as floats),
    # ~50 ns a value against ~170 ns for repr() one by one. Only floats take their text from it;
    # a string with a comma in it splits into more pieces, and then each float is written alone.
    # Readings of one entity come in runs, so the group is looked up only when the entity
    # changes; good floats take the first branch. ``point >= "x"`` is true exactly for custom
    # points among valid names (every canonical name sorts before "x": tests/unit); ~15 ns a
    # value, against ~45 for ``startswith("x_")``.
    texts = _ENCODE(list(map(_VALUE, samples)))[1:-1].decode().split(",")
    if len(texts) != len(samples):
        texts = [_ENCODE(v).decode() if type(v) is float else "" for v in map(_VALUE, samples)]
    groups: dict[tuple[str | None, str | None, bool], list[str]] = {}
    kb: object = _NOWHERE  # the first reading opens a group
    kh: object = _NOWHERE
    kx = False
    nowhere: list[str] = []
    add: Callable[[str], None] = nowhere.append
    for r, text in zip(samples, texts, strict=True):
        b, p = r.building, r.point
        x = p >= "x"
        if b != kb or r.household != kh or x is not kx:
            h = r.household
            got = groups.get((b, h, x))
            if got is None:
                got = groups[(b, h, x)] = []
            add, kb, kh, kx = got.append, b, h, x
        v = r.value
        if type(v) is float and r.quality == "good":
            add(f"{p}={text}")
            continue
        if v is not None:
            add(f"{p}={text if type(v) is float else _fmt(v)}")
        if r.quality != "good":
            add(f'{p}{QUALITY_SUFFIX}="{r.quality}"')
    s, ts = t.station, f" {t.ts}"
    return [_head(s, b, h) + ",".join(fl) + ts for (b, h, _x), fl in groups.items()]


def station_status_line(st: StationStatus) -> str:
    offline = sum(1 for d in st.devices.values() if d.state != "online")
    return (f'{MEASUREMENT_STATION_STATUS},station={st.station} state="{st.state.value}",'
            f"devices_not_online={offline}i {st.ts}")


def gateway_status_line(gs: GatewayStatus, received_ms: int) -> str:
    return (f'{MEASUREMENT_GATEWAY_STATUS},gateway={gs.gateway} state="{gs.state}",'
            f'boot="{escape_string_field(gs.boot)}" {received_ms}')


def reject_line(reason: str, station: str | None, topic: str, detail: str, ts_ms: int,
                count: int = 1) -> str:
    tags = f"reason={_escape_tag(reason)}"
    if station:
        tags += f",station={_escape_tag(station)}"
    return (f'{MEASUREMENT_REJECTS},{tags} count={count}i,detail="{escape_string_field(detail[:500])}",'
            f'topic="{escape_string_field(topic[:200])}" {ts_ms}')


def alert_line(tr: Transition) -> str:
    tags = f"rule={tr.rule},state={tr.state}"
    for k in ("station", "building", "household", "gateway", "subject"):
        v = getattr(tr, k)
        if v is not None:
            tags += f",{k}={_escape_tag(v)}"
    fields = (f'severity="{tr.severity}",key="{escape_string_field(tr.key)}",'
              f'summary="{escape_string_field(tr.summary[:300])}",page={"true" if tr.page else "false"},'
              f"since={tr.since}i")
    if tr.value is not None:
        fields += f",value={float(tr.value)!r}"
    return f"{MEASUREMENT_ALERTS},{tags} {fields} {tr.ts}"


# ---------------------------------------------------------------------------------------------
# data lifecycle: raw data for a while, 5-minute and 1-hour rollups for years
#
# Raw telemetry lives in the database's default retention policy (``raw_days``, 90 by default).
# Two continuous queries keep rollups of the three telemetry measurements in their own retention
# policies, under the same measurement names and tags, one field per aggregate of each point:
#   mean_<point>, min_<point>, max_<point>   numbers (min/max of a boolean: was it ever false/true)
#   last_<point>                             every point: states, booleans, text, qualities too
#   count_<point>                            samples of every point in the bucket (completeness,
#                                            presence: the takeover report counts from it)
# ``mean(*)`` skips booleans and strings (InfluxDB 1.x), so one wildcard query covers every point,
# including custom x_ points added later, without knowing the field list. A bucket's row holds
# ``count_<point>`` only when the point had a sample in it (the report counts a station's hours
# with a sample by counting its ``count_<point>``): a plain SELECT fills count with 0 where a
# point had none, SELECT … INTO in InfluxDB 1.6 writes no filled value (measured); ``fill(none)``
# says so in the statement rather than leaning on that.
#
# The 1-hour rollup has a third continuous query for the room sensors: the hourly mean of only
# the plausible readings (the rule file's sensor.plausible_min…max), ``plausible_mean_room_temp``,
# which is what the room pass rate counts. The wildcard ``mean_room_temp`` averages implausible
# (uncertain) readings in with the rest — a sensor reading 1 °C half of an hour of 19 °C gives
# 10 °C, a low hour that never was. Its name carries the range so a reader can check it.

ROLLUP_MEASUREMENTS = TELEMETRY_MEASUREMENTS
ROLLUP_AGGREGATES = ("mean", "min", "max", "last", "count")
ROOM_POINT = "room_temp"
PLAUSIBLE_MEAN = f"plausible_mean_{ROOM_POINT}"
DEFAULT_PLAUSIBLE = (5.0, 35.0)  # contract.alerts SensorRules' defaults


@dataclass(frozen=True, slots=True)
class Rollup:
    """One rollup: its retention policy, its bucket, and how far back each run recomputes.

    ``resample_s``: every run recomputes this much (InfluxDB's ``RESAMPLE FOR``), so samples that
    arrive late (a collector's spool draining, a batch after a short 4G gap) still land in their
    bucket. Longer gaps — a gateway's outbox after hours offline — need ``heatwatch influx
    backfill`` over that span (docs/operations.md). ``rooms``: it also keeps the plausible hourly
    room means (the report's sensor-hours). ``shard_weeks``: the shard group duration of its
    retention policy."""

    name: str
    bucket_s: int
    resample_s: int
    rooms: bool = False
    shard_weeks: int | None = None  # the retention policy's shard group duration; None: InfluxDB's

    @property
    def rp(self) -> str:
        return f"rollup_{self.name}"


ROLLUP_5M = Rollup("5m", 300, 3 * 300)
# a year per shard: a season's report reads two shards, not eighteen weekly ones (InfluxDB's
# default for a policy kept years) — a count over 5.8 M sensor-hours took 1.1 s instead of 3.1 s
# (bench/report_bench.py, 500 stations; the series' blocks are longer and fewer)
ROLLUP_1H = Rollup("1h", 3600, 2 * 3600, rooms=True, shard_weeks=52)
ROLLUPS = (ROLLUP_5M, ROLLUP_1H)


def _ident(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def rollup_select(database: str, raw_rp: str, rollup: Rollup) -> str:
    """The continuous query's body; with a ``WHERE time`` range added it also backfills."""
    names = "|".join(ROLLUP_MEASUREMENTS)
    aggs = ", ".join(f"{a}(*)" for a in ROLLUP_AGGREGATES)
    return (f"SELECT {aggs} INTO {_ident(database)}.{_ident(rollup.rp)}.:MEASUREMENT "
            f"FROM {_ident(database)}.{_ident(raw_rp)}./^({names})$/ "
            f"GROUP BY time({rollup.bucket_s}s), * fill(none)")


def rooms_select(database: str, raw_rp: str, rollup: Rollup, plausible: tuple[float, float]) -> str:
    """The plausible hourly room means: the readings inside ``plausible`` (°C, inclusive)."""
    lo, hi = (float(x) for x in plausible)
    room = _ident(ROOM_POINT)
    return (f"SELECT mean({room}) AS {_ident(PLAUSIBLE_MEAN)} "
            f"INTO {_ident(database)}.{_ident(rollup.rp)}.{_ident(MEASUREMENT_HOUSEHOLD)} "
            f"FROM {_ident(database)}.{_ident(raw_rp)}.{_ident(MEASUREMENT_HOUSEHOLD)} "
            f"WHERE {room} >= {lo!r} AND {room} <= {hi!r} "
            f"GROUP BY time({rollup.bucket_s}s), * fill(none)")


def rollup_selects(database: str, raw_rp: str, rollup: Rollup, plausible: tuple[float, float]) -> list[str]:
    """Every continuous query body of one rollup."""
    out = [rollup_select(database, raw_rp, rollup)]
    if rollup.rooms:
        out.append(rooms_select(database, raw_rp, rollup, plausible))
    return out


def backfill_select(body: str, start_ms: int, end_ms: int) -> str:
    """A continuous query's body over ``[start, end)`` (both on bucket boundaries) by hand, as
    the CQ would have computed it."""
    head, _, group = body.partition(" GROUP BY ")
    span = f"time >= {start_ms}ms AND time < {end_ms}ms"
    if " WHERE " in head:
        return f"{head} AND {span} GROUP BY {group}"
    return f"{head} WHERE {span} GROUP BY {group}"


def _bound(x: float) -> str:
    return repr(float(x))


ROOMS_CQ_RE = re.compile(r"^heatwatch_rollup_(?P<rollup>[0-9a-z]+)_[0-9a-f]{8}_rooms_"
                         r"(?P<lo>-?[0-9][0-9.e+-]*)_(?P<hi>-?[0-9][0-9.e+-]*)$")


def rooms_cq_range(name: str) -> tuple[str, tuple[float, float]] | None:
    """(rollup name, plausible range) of a rooms CQ's name; None for any other name."""
    m = ROOMS_CQ_RE.fullmatch(name)
    if m is None:
        return None
    try:
        return m["rollup"], (float(m["lo"]), float(m["hi"]))
    except ValueError:
        return None


def rollup_cqs(database: str, raw_rp: str, rollup: Rollup,
               plausible: tuple[float, float] = DEFAULT_PLAUSIBLE) -> list[tuple[str, str]]:
    """(name, CREATE CONTINUOUS QUERY statement) of each CQ of one rollup. The names carry a digest
    of all of the rollup's statements, so setup can tell a set that is current from one an older
    config or version left (and replace the set whole: its rows then agree from the backfill on).
    The rooms CQ's name ends in its plausible range, ``…_rooms_5.0_35.0`` (ROOMS_CQ_RE), which the
    report compares with its own rule file's."""
    every = f"RESAMPLE EVERY {rollup.bucket_s}s FOR {rollup.resample_s}s"
    bodies = rollup_selects(database, raw_rp, rollup, plausible)
    digest = hashlib.sha256(" ".join([every, *bodies]).encode()).hexdigest()[:8]
    base = f"heatwatch_rollup_{rollup.name}_{digest}"
    out = []
    for i, body in enumerate(bodies):
        name = base if i == 0 else f"{base}_rooms_{_bound(plausible[0])}_{_bound(plausible[1])}"
        out.append((name, f"CREATE CONTINUOUS QUERY {_ident(name)} ON {_ident(database)} {every} "
                          f"BEGIN {body} END"))
    return out


def rollup_cq(database: str, raw_rp: str, rollup: Rollup) -> tuple[str, str]:
    """The rollup's main CQ (every point's mean/min/max/last/count)."""
    return rollup_cqs(database, raw_rp, rollup)[0]


class Source:
    """Where a query over a time range reads: raw data or a rollup, and how it names a point.

    ``expr("mean", "supply_temp")`` is ``mean("supply_temp")`` on raw data and
    ``mean("mean_supply_temp")`` on a rollup (the mean of 5-minute means: equal to the raw mean
    for evenly sampled points); ``min``/``max`` read ``min_``/``max_``; ``last`` reads ``last_``;
    ``count`` sums ``count_``."""

    __slots__ = ("bucket_s", "rollup")

    def __init__(self, rollup: Rollup | None, bucket_s: int) -> None:
        self.rollup, self.bucket_s = rollup, bucket_s

    @property
    def retention_policy(self) -> str | None:
        return self.rollup.rp if self.rollup else None

    def measurement(self, name: str) -> str:
        return f"{_ident(self.rollup.rp)}.{_ident(name)}" if self.rollup else _ident(name)

    def expr(self, agg: str, point: str) -> str:
        if agg not in ROLLUP_AGGREGATES:
            raise ValueError(f"aggregate {agg!r}: one of {', '.join(ROLLUP_AGGREGATES)}")
        if self.rollup is None:
            return f"{agg}({_ident(point)})"
        if agg == "count":  # samples in a bucket: the sum of the rollup rows' counts
            return f"sum({_ident(f'count_{point}')})"
        return f"{agg}({_ident(f'{agg}_{point}')})"

    def __repr__(self) -> str:
        return f"Source({self.rollup.name if self.rollup else 'raw'}, bucket {self.bucket_s}s)"


def pick_source(start_ms: int, end_ms: int, now_ms: int, max_points: int, *, raw_days: float | None,
                rollup_5m_days: float | None = None, min_bucket_s: int = 1) -> Source:
    """Raw data or a rollup for ``[start, end)`` drawn in at most ``max_points`` buckets.

    The coarsest source whose bucket still fits the drawing wins: a range whose buckets are
    5 minutes or more reads the 5-minute rollup (60× fewer rows than 5-second raw data), an hour
    or more the 1-hour rollup. A range that starts before the raw data's retention reads a rollup
    whatever the bucket (and before the 5-minute rollup's, the 1-hour one). ``raw_days`` None:
    no rollups (heatwatch influx setup has not run), everything from raw data.
    The bucket is rounded up to the source's bucket so every bucket holds whole rollup rows.
    The newest bucket of a rollup is written when it closes (plus the CQ's run): a range ending
    now misses up to one bucket there.
    """
    if end_ms <= start_ms or max_points < 1:
        raise ValueError("need start < end and max_points >= 1")
    bucket_s = max(min_bucket_s, -(-(end_ms - start_ms) // (1000 * max_points)))
    if raw_days is None:
        return Source(None, bucket_s)
    pick: Rollup | None = None
    for r in ROLLUPS:
        if bucket_s >= r.bucket_s:
            pick = r
    if pick is None and start_ms < now_ms - raw_days * 86_400_000:
        pick = ROLLUP_5M
    if pick is ROLLUP_5M and rollup_5m_days is not None and start_ms < now_ms - rollup_5m_days * 86_400_000:
        pick = ROLLUP_1H
    if pick is None:
        return Source(None, bucket_s)
    bucket_s = -(-bucket_s // pick.bucket_s) * pick.bucket_s
    for r in ROLLUPS:  # rounding up may have made a coarser rollup fit (3,303 s → 3,600 s: 1 h)
        if r.bucket_s > pick.bucket_s and bucket_s % r.bucket_s == 0:
            pick = r
    return Source(pick, bucket_s)


def command_line(r: CommandResult) -> str:
    tags = f"station={r.station},state={r.state}"
    for k in ("point", "building", "household"):
        v = getattr(r, k)
        if v is not None:
            tags += f",{k}={_escape_tag(v)}"
    fields = f'id="{r.id}",detail="{escape_string_field(r.detail[:500])}"'
    if r.reason is not None:
        fields += f',reason="{r.reason.value}"'
    for name, v in (("value", r.value), ("read_back", r.read_back)):
        if isinstance(v, bool):
            fields += f",{name}_bool={_fmt(v)}"
        elif v is not None:
            fields += f",{name}={float(v)!r}"
    if r.code is not None:
        fields += f",code={r.code}i"
    return f"{MEASUREMENT_COMMANDS},{tags} {fields} {r.ts}"
