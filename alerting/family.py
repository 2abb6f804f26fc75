"""What every rule family is and what it sees: ``Family`` (the protocol), ``Verdict``, ``Context``.

A rule family (``alerting/rule_*.py``, one file each, found by ``alerting.rule_modules()``)
owns its state and judges; the engine (``alerting/engine.py``) owns alert lives, inhibition
and emission, and composes the families' verdicts:

    engine ── FrameView, Context ──▶ family.observe() ──▶ [Verdict, …] ──▶ engine: lives → Transitions
           ── now, Context ───────▶ family.tick()    ──▶ [Verdict, …]

A ``Verdict`` is one rule's finding on one entity at one time: the condition (``active``), its
value and severity, how long it must hold before it fires (``hold_ms``) and stay clear before
it resolves (``clear_ms``), and its context. A family never calls back into the engine; what it
may read is the ``Context``: the rules, the calendar (local day, season), silences, the station
directory (gateway, newest data time, heartbeat) and which alerts are open (a read-only view of
the engine's lives, as of the verdicts applied so far).

Families snapshot their own state (``state``/``restore``: built from classes that pickle as field
tuples, see ``alerting.lifecycle.get_fields``) and re-point their flags at the engine's lives
after a restart (``adopt``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar

from alerting.lifecycle import Life, get_fields, set_fields
from contract.alerts import AlertRules, Quiet, Rule, Severity, Silence
from contract.payload import Frame, GatewayStatus, Sample, StationStatus

ContextArg = Callable[[], dict[str, Any]] | dict[str, Any] | None
# what a family with nothing to say returns: one shared list, never appended to (no allocation
# per message and family)
NO_VERDICTS: list[Verdict] = []


class Verdict:
    """One rule's finding on one entity; the engine turns it into a life step and transitions.

    ``since`` backdates a new episode (an hourly verdict covers the hour before it).
    ``context`` is a dict, or a function building it (called only when a life needs it).
    """

    __slots__ = ("active", "building", "clear_ms", "context", "gateway", "hold_ms", "household",
                 "key", "quiet", "rule", "severity", "since", "station", "subject", "t", "update",
                 "value")

    def __init__(self, key: str, rule: Rule, active: bool, t: int, severity: Severity, *,
                 value: float | None = None, hold_ms: float = 0, clear_ms: float = 0,
                 quiet: Quiet = Quiet.NONE, station: str | None = None, building: str | None = None,
                 household: str | None = None, gateway: str | None = None,
                 subject: str | None = None, since: int | None = None,
                 context: ContextArg = None) -> None:
        self.key, self.rule, self.active, self.t, self.severity = key, rule, active, t, severity
        self.value, self.hold_ms, self.clear_ms, self.quiet = value, hold_ms, clear_ms, quiet
        self.station, self.building, self.household = station, building, household
        self.gateway, self.subject, self.since, self.context = gateway, subject, since, context
        # context entries refreshed on an open life by every verdict (e.g. a building's counts)
        self.update: dict[str, Any] | None = None


class FrameView:
    """One telemetry message as the rules read it: only the points some family wants, split by
    level once for all families (the engine's single pass over ~200 samples a message)."""

    __slots__ = ("backfill", "frame", "grace", "households", "quiet", "station", "t", "values")

    def __init__(self, frame: Frame, t: int, households: list[Sample], values: dict[str, Sample],
                 quiet: Quiet, grace: bool) -> None:
        self.frame, self.station, self.t, self.backfill = frame, frame.station, t, frame.backfill
        self.households = households  # household-level samples (room sensors)
        self.values = values  # station-level samples by point
        self.quiet = quiet  # BACKFILL for replayed data: state moves, nothing pages
        self.grace = grace  # inside the season's start grace (filling, commissioning)


_WHOLE_DAY_MS = 18 * 3_600_000  # a day's outdoor readings must span this much for its mean to count
_STATION_FIELDS = ("gateway", "heartbeat_ms", "last_rx", "last_t", "outdoor_day", "outdoor_first",
                   "outdoor_last", "outdoor_n", "outdoor_sum", "prev_day", "prev_mean")


class StationInfo:
    """What the rules share about a station: its gateway and how recent its data are."""

    __slots__ = _STATION_FIELDS

    def __init__(self) -> None:
        self.gateway: str | None = None
        self.last_rx = 0  # receive time (ms) of its last telemetry
        self.last_t = 0  # newest sample time seen
        # the longest heartbeat of its report-by-exception groups: a silence that long is normal
        self.heartbeat_ms = 0.0
        self.outdoor_day = -1  # the local day the outdoor sums are of
        self.outdoor_sum = 0.0
        self.outdoor_n = 0
        self.outdoor_first = self.outdoor_last = 0  # the day's first and last reading (ms)
        self.prev_day = -1  # the last completed day …
        self.prev_mean: float | None = None  # … and its mean (None: its readings did not cover it)

    def __getstate__(self) -> tuple[Any, ...]:
        return get_fields(self, _STATION_FIELDS)

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        set_fields(self, _STATION_FIELDS, state)


class Context:
    """What a family may read: rules, calendar, silences, stations, open alerts. No I/O, no clock."""

    POINTS: ClassVar[frozenset[str]] = frozenset({"outdoor_temp"})  # what ``note_view`` reads

    def __init__(self, rules: AlertRules, lives: Mapping[str, Life]) -> None:
        self.rules = rules
        self.lives = lives  # the engine's, read only
        self.stations: dict[str, StationInfo] = {}
        self.gateways: dict[str, set[str]] = {}  # gateway → its stations
        # room sensors below the standard per station (kept by the rooms family: the outage
        # incident's rooms-back check reads it)
        self.rooms_below: dict[str, int] = {}
        # stations whose circulation has tripped (kept by the circulation family: the make-up
        # rate of such an hour says nothing about leaks)
        self.tripped: set[str] = set()
        self.silences: list[Silence] = []
        self._silenced_stations: dict[str, list[Silence]] = {}
        self._offset_h = rules.timezone_offset_h
        self._season_cache: dict[int, tuple[bool, bool]] = {}  # local day → (in season, in grace)

    # -- open alerts --------------------------------------------------------------------------
    def is_open(self, key: str) -> bool:
        return key in self.lives

    # -- stations -----------------------------------------------------------------------------
    def station(self, name: str) -> StationInfo:
        st = self.stations.get(name)
        if st is None:
            st = self.stations[name] = StationInfo()
        return st

    def attach(self, station: str, gateway: str) -> StationInfo:
        """Record which gateway a station is behind (topology for inhibition)."""
        st = self.station(station)
        if st.gateway != gateway:
            if st.gateway is not None:
                self.gateways.get(st.gateway, set()).discard(station)
            st.gateway = gateway
        self.gateways.setdefault(gateway, set()).add(station)
        return st

    def note(self, frame: Frame, now: int) -> StationInfo:
        """One telemetry message arrived (received at ``now``)."""
        st = self.station(frame.station)
        if st.gateway != frame.gateway:
            self.attach(frame.station, frame.gateway)
        if now > st.last_rx:
            st.last_rx = now
        if frame.ts > st.last_t:
            st.last_t = frame.ts
        hb = frame.heartbeat_s
        if hb is not None and hb * 1000 > st.heartbeat_ms:
            st.heartbeat_ms = hb * 1000
        return st

    def note_view(self, view: FrameView) -> None:
        """The shared facts a message in season brings: the station's outdoor temperature, summed
        per local day (in order: a late or repeated reading adds nothing)."""
        s = view.values.get("outdoor_temp")
        if s is None or type(s.value) is not float or s.quality == "bad":
            return
        st = self.station(view.station)
        t = view.t
        if t <= st.outdoor_last:
            return
        day = self.local_day(t)
        if day != st.outdoor_day:
            if st.outdoor_n:
                # a completed day counts when its readings span most of it (18 h)
                whole = st.outdoor_last - st.outdoor_first >= _WHOLE_DAY_MS
                st.prev_day = st.outdoor_day
                st.prev_mean = st.outdoor_sum / st.outdoor_n if whole else None
            st.outdoor_day, st.outdoor_sum, st.outdoor_n, st.outdoor_first = day, 0.0, 0, t
        st.outdoor_sum += s.value
        st.outdoor_n += 1
        st.outdoor_last = t

    def daily_mean(self, station: str, t: int) -> tuple[float, str] | None:
        """The outdoor daily mean that decides whether GB/T 33833 applies at ``t``, and where it
        comes from: the official/forecast mean of that local day when the rule file has one
        (``cold_day.mean: official``), else the station's own completed previous day."""
        cd = self.rules.cold_day
        day = self.local_day(t)
        if cd.mean == "official" and cd.official:
            date = dt.date(1970, 1, 1) + dt.timedelta(days=day)
            official = cd.official.get(date)
            if official is not None:
                return official, f"official {date.isoformat()}"
        st = self.stations.get(station)
        if st is None:
            return None
        if (st.outdoor_day == day - 1 and st.outdoor_n
                and st.outdoor_last - st.outdoor_first >= _WHOLE_DAY_MS):
            return st.outdoor_sum / st.outdoor_n, "previous day"  # no message of today yet
        if st.prev_day == day - 1 and st.prev_mean is not None:
            return st.prev_mean, "previous day"
        return None

    def cold_day(self, station: str, t: int) -> bool:
        """Colder than the design outdoor temperature: GB/T 33833 §5.1 does not apply."""
        m = self.daily_mean(station, t)
        return m is not None and m[0] < self.rules.design_outdoor_temp

    # -- calendar -----------------------------------------------------------------------------
    def local_day(self, t: int) -> int:
        """Days since the epoch in the company's local time."""
        return int((t / 1000 + self._offset_h * 3600) // 86400)

    def local_hour(self, t: int) -> int:
        return int((t / 1000 + self._offset_h * 3600) // 3600) % 24

    def day_start(self, day: int) -> int:
        """The ms time a local day starts."""
        return day * 86_400_000 - int(self._offset_h * 3_600_000)

    def season(self, t: int) -> tuple[bool, bool]:
        """(inside the heating season, inside its start grace) at ``t`` ms."""
        day = self.local_day(t)
        hit = self._season_cache.get(day)
        if hit is None:
            d = dt.date(1970, 1, 1) + dt.timedelta(days=day)
            s, e = self.rules.season.start, self.rules.season.end
            md = d.strftime("%m-%d")
            inside = (s <= md <= e) if s <= e else (md >= s or md <= e)
            start_year = d.year if (s <= e or md >= s) else d.year - 1
            start = dt.date(start_year, int(s[:2]), int(s[3:]))
            grace = inside and (d - start).days < self.rules.season.start_grace_days
            if len(self._season_cache) > 4096:
                self._season_cache.clear()
            hit = self._season_cache[day] = (inside, grace)
        return hit

    # -- silences -----------------------------------------------------------------------------
    def set_silences(self, silences: Iterable[Silence]) -> None:
        sil = list(silences)
        self.silences = sil
        by: dict[str, list[Silence]] = {}
        for s in sil:
            by.setdefault(s.station, []).append(s)
        self._silenced_stations = by

    def works(self, station: str, t: int, tail_ms: float) -> Silence | None:
        """A silence anywhere at the station (the whole station or one of its buildings) that
        covers ``t``, or ended less than ``tail_ms`` before it."""
        for s in self._silenced_stations.get(station, ()):
            if s.start <= t < s.end + tail_ms:
                return s
        return None

    def silenced(self, station: str | None, building: str | None, t: int) -> Silence | None:
        if station is None:
            return None
        for s in self._silenced_stations.get(station, ()):
            if s.start <= t < s.end and (s.building is None or s.building == building):
                return s
        return None


class Family:
    """The protocol every rule family implements (a base class the families extend).

    ``name`` keys its snapshot state; ``order`` is its place in the registry (families judge a
    message in this order, and the engine applies each family's verdicts before the next one
    judges); ``raises`` lists its rules.
    """

    name: ClassVar[str] = ""
    order: ClassVar[int] = 100
    raises: ClassVar[tuple[Rule, ...]] = ()

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def points(self) -> frozenset[str]:
        """The points this family reads (the engine passes only these on)."""
        return frozenset()

    def process(self) -> tuple[Rule, ...]:
        """Its rules that a station outage (or its gateway's) holds under it: by default all."""
        return self.raises

    def holds(self) -> dict[Rule, tuple[Rule, ...]]:
        """Station-wide causes it raises → the rules (any family's) a firing one holds under it at
        the same station (inhibited: one incident per cause)."""
        return {}

    def observe(self, view: FrameView, now: int) -> list[Verdict]:
        """One telemetry message inside the heating season."""
        return NO_VERDICTS

    def observe_any(self, frame: Frame, now: int) -> list[Verdict]:
        """Every telemetry message, in season or not, before ``observe`` (e.g. data is back)."""
        return NO_VERDICTS

    def station_status(self, s: StationStatus, now: int) -> list[Verdict]:
        return NO_VERDICTS

    def gateway_status(self, g: GatewayStatus, now: int) -> list[Verdict]:
        return NO_VERDICTS

    def tick(self, now: int) -> list[Verdict]:
        """Time-driven judgement (in receive time), inside the season."""
        return NO_VERDICTS

    def escalate_after_ms(self, life: Life) -> float:
        """How long a firing life of this family stays firing before it is raised a level; 0 never."""
        return 0.0

    def adopt(self, lives: Iterable[Life]) -> None:
        """The engine's lives after a restart: point this family's flags at them."""

    def state(self) -> Any:
        return None

    def restore(self, state: Any) -> None:
        """Take back what ``state`` gave (the rule file may have changed since)."""
