"""The rule engine: telemetry and status in, alert transitions out. A pure state machine.

Stage: collector → **evaluate rules** → record alerts. ``observe(frame, now)`` takes one validated
telemetry message, ``station_status``/``gateway_status`` the status topics, ``tick(now)`` runs
the time-driven rules (stale sensors, offline stations, escalation); each returns the
``Transition`` list the collector stores, writes to InfluxDB and pages. Nothing here reads a
clock or does I/O, so tests drive it with a fake clock, and ``snapshot``/``restore`` carry its
state across a collector restart.

Data-driven rules judge in *data time* (the gateway's sample ts), so replayed backfill is judged
when it happened and a collector that lags does not invent durations; offline rules judge in
receive time (``now``). Samples older than what an entity has already seen update nothing:
the past never pages, and holds never run backwards.

Topology for inhibition (Alertmanager's ``inhibit_rules``, fixed by the domain): a gateway
offline inhibits its stations' alerts; a station offline inhibits every process alert of the
station; a building alert (pending or firing) inhibits its households' room alerts. Inhibited, silenced and
backfill transitions are stored but not paged (``quiet``); if the alert is still firing when the
reason goes away, it is paged then.

Rules: ``alerting.rooms`` (room_low, building_low, sensor_fault), ``alerting.makeup``
(makeup_rate, makeup_daily, makeup_burst, makeup_pump); offline rules live here.
"""

from __future__ import annotations

import datetime as dt
import pickle
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from alerting import makeup, rooms
from alerting.lifecycle import Change, Life, get_fields, maybe_escalate, set_fields, step
from contract.alerts import AlertRules, Rule, Severity, State, Transition, alert_key
from contract.payload import Frame, GatewayStatus, StationStatus

SNAPSHOT_VERSION = 2  # 2: every state class pickles as a field tuple (compiled and interpreted alike)
_PROCESS_RULES = frozenset({Rule.ROOM_LOW, Rule.BUILDING_LOW, Rule.SENSOR_FAULT, Rule.MAKEUP_RATE,
                            Rule.MAKEUP_DAILY, Rule.MAKEUP_BURST, Rule.MAKEUP_PUMP,
                            Rule.DEVICE_OFFLINE})
_SUMMARY = {Change.PENDING: "pending", Change.FIRING: "firing", Change.RESOLVED: "resolved",
            Change.SEVERITY: "severity raised", Change.REPAGE: "firing (paged now)"}


@dataclass(frozen=True, slots=True)
class Silence:
    """Planned works: nothing under ``station`` (or one of its buildings) pages in [start, end)."""

    station: str
    building: str | None
    start: int  # ms
    end: int
    reason: str


_STATION_FIELDS = ("devices_alerted", "devices_offline", "gateway", "heartbeat_ms", "last_rx", "last_t",
                   "makeup", "status_offline")


class StationState:
    __slots__ = _STATION_FIELDS

    def __init__(self) -> None:
        self.gateway: str | None = None
        self.last_rx = 0  # receive time (ms) of its last telemetry
        self.last_t = 0  # newest sample time seen
        # the longest heartbeat of its report-by-exception groups: a silence that long is normal
        self.heartbeat_ms = 0.0
        self.status_offline = False
        self.devices_offline: dict[str, int] = {}  # device → since (ms)
        self.devices_alerted: set[str] = set()  # devices with a device_offline life
        self.makeup = makeup.StationMakeup()

    def __getstate__(self) -> tuple[Any, ...]:
        return get_fields(self, _STATION_FIELDS)

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        set_fields(self, _STATION_FIELDS, state)


_GATEWAY_FIELDS = ("offline_since", "stations")


class GatewayState:
    __slots__ = _GATEWAY_FIELDS

    def __init__(self) -> None:
        self.offline_since: int | None = None
        self.stations: set[str] = set()

    def __getstate__(self) -> tuple[Any, ...]:
        return get_fields(self, _GATEWAY_FIELDS)

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        set_fields(self, _GATEWAY_FIELDS, state)


class Engine:
    def __init__(self, rules: AlertRules) -> None:
        self.rules = rules
        self.lives: dict[str, Life] = {}
        self.stations: dict[str, StationState] = {}
        self.gateways: dict[str, GatewayState] = {}
        self.rooms = rooms.Rooms(self)
        self.silences: list[Silence] = []
        self._silenced_stations: dict[str, list[Silence]] = {}
        self._out: list[Transition] = []
        self._tz = dt.timezone(dt.timedelta(hours=rules.timezone_offset_h))
        self._season_cache: dict[int, tuple[bool, bool]] = {}  # local day → (in season, in grace)
        self.set_silences([])
        self.samples_judged = 0
        # Start-up grace: until this receive time (ms), a station's silence is not judged (neither
        # raised nor cleared). A collector that just started, or restored a snapshot written minutes
        # ago, has not had the chance to hear from anyone yet: judging the snapshot's last_rx at
        # once paged station_offline for every station on each restart, and resolved it with the
        # first message. Set by the first input after __init__ or restore (see _begin).
        self.grace_until: int | None = None
        self.wanted = frozenset(  # the points any rule reads; the rest pass by
            {"room_temp", "outdoor_temp", "secondary_supply_temp", "makeup_flow", "makeup_pump_running",
             "secondary_return_pressure", "tank_level"}
            | {p for n in rules.makeup.networks.values() for p in (n.makeup_total, n.circulation_flow)})

    # -- inputs -------------------------------------------------------------------------------
    def _begin(self, now: int) -> None:
        if self.grace_until is None:
            self.grace_until = now + int(self.rules.offline.station_after_s * 1000)

    def observe(self, frame: Frame, now: int) -> list[Transition]:
        """Judge one telemetry message (received at ``now`` ms)."""
        if self.grace_until is None:
            self._begin(now)
        st = self.stations.get(frame.station)
        if st is None:
            st = self.stations[frame.station] = StationState()
        if st.gateway != frame.gateway:
            self._gateway(frame.gateway).stations.add(frame.station)
            st.gateway = frame.gateway
        st.last_rx = max(st.last_rx, now)
        t = frame.ts
        quiet = "backfill" if frame.backfill else ""
        life = self.lives.get(alert_key(Rule.STATION_OFFLINE, frame.station))
        if life is not None and not st.status_offline and not frame.backfill:
            self._step(life, False, now, 0, 0, Severity.MAJOR, None, "")
        if t > st.last_t:
            st.last_t = t
        hb = frame.heartbeat_s
        if hb is not None and hb * 1000 > st.heartbeat_ms:
            st.heartbeat_ms = hb * 1000
        in_season, grace = self.season(t)
        if not in_season:
            return self._flush()
        self.samples_judged += len(frame.samples)
        wanted, vals, room, station = self.wanted, {}, self.rooms.sample, frame.station
        hh = self.rooms.station_households(station)
        # the hot loop: ~200 samples a message, most for no rule; a comprehension filters them at
        # half the cost of a for loop with the test inside
        for s in [s for s in frame.samples if s.point in wanted]:
            if s.household is not None:
                room(station, hh, s, t, quiet)
            elif s.building is None:
                vals[s.point] = s
        self.rooms.flush(t, quiet)
        if vals:
            makeup.observe(self, frame.station, st, vals, t, quiet, grace)
        return self._flush()

    def station_status(self, s: StationStatus, now: int) -> list[Transition]:
        self._begin(now)
        st = self.stations.get(s.station)
        if st is None:
            st = self.stations[s.station] = StationState()
        st.gateway = s.gateway
        self._gateway(s.gateway).stations.add(s.station)
        st.status_offline = s.state.value == "offline"
        for name, dev in s.devices.items():
            if dev.state.value == "offline":
                st.devices_offline.setdefault(name, now)
            else:
                st.devices_offline.pop(name, None)
        self._judge_station(s.station, st, now)
        return self._flush()

    def gateway_status(self, g: GatewayStatus, now: int) -> list[Transition]:
        self._begin(now)
        gw = self._gateway(g.gateway)
        gw.stations.update(g.stations)
        if g.state == "offline":
            if gw.offline_since is None:
                gw.offline_since = now
        else:
            gw.offline_since = None
        self._judge_gateway(g.gateway, gw, now)
        return self._flush()

    def tick(self, now: int) -> list[Transition]:
        """Time-driven rules: offline stations and gateways, stale sensors, escalation, season end."""
        self._begin(now)
        in_season, _ = self.season(now)
        if not in_season:
            for life in list(self.lives.values()):
                life.context["season"] = "ended"
                life.state = State.RESOLVED
                self._emit(life, Change.RESOLVED, now, "season")
            return self._flush()
        for name, gw in self.gateways.items():
            self._judge_gateway(name, gw, now)
        for name, st in self.stations.items():
            self._judge_station(name, st, now)
        self.rooms.tick(now)
        after = self.rules.room.escalate_after_h * 3.6e6
        for life in list(self.lives.values()):
            if (life.rule == Rule.ROOM_LOW or life.rule == Rule.BUILDING_LOW) and maybe_escalate(
                    life, now, after):
                self._emit(life, Change.SEVERITY, now, self._quiet_for(life, now, ""))
        return self._flush()

    def set_silences(self, silences: Iterable[Silence]) -> None:
        """Silences from the store, plus the rule file's maintenance windows."""
        sil = list(silences) + [Silence(w.station, w.building, int(w.start.timestamp() * 1000),
                                        int(w.end.timestamp() * 1000), w.reason)
                                for w in self.rules.maintenance]
        self.silences = sil
        by: dict[str, list[Silence]] = {}
        for s in sil:
            by.setdefault(s.station, []).append(s)
        self._silenced_stations = by

    # -- calendar -----------------------------------------------------------------------------
    def local_day(self, t: int) -> int:
        """Days since the epoch in the company's local time."""
        return int((t / 1000 + self.rules.timezone_offset_h * 3600) // 86400)

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

    def silenced(self, station: str | None, building: str | None, t: int) -> Silence | None:
        if station is None:
            return None
        for s in self._silenced_stations.get(station, ()):
            if s.start <= t < s.end and (s.building is None or s.building == building):
                return s
        return None

    # -- judging ------------------------------------------------------------------------------
    def judge(self, rule: Rule, active: bool, t: int, hold_ms: float, clear_ms: float,
              severity: Severity, value: float | None, quiet: str, *, station: str | None = None,
              building: str | None = None, household: str | None = None,
              gateway: str | None = None, subject: str | None = None, since: int | None = None,
              context: Callable[[], dict[str, Any]] | dict[str, Any] | None = None) -> Life | None:
        """One verdict for one alert; creates its life on the first true verdict.

        ``since`` backdates a new episode (an hourly verdict covers the hour before it).
        """
        key = alert_key(rule, station, building, household, subject, gateway)
        life = self.lives.get(key)
        if life is None:
            if not active:
                return None
            life = Life(key, rule, station, building, household, gateway, subject,
                        t if since is None else since, severity)
            life.value, life.seen = value, t
            if context is not None:
                life.context = context() if callable(context) else context
            self.lives[key] = life
            if hold_ms > 0:
                self._emit(life, Change.PENDING, t, self._quiet_for(life, t, quiet))
                return life
        elif active and context is not None and life.state is State.PENDING:
            life.context = context() if callable(context) else context
        self._step(life, active, t, hold_ms, clear_ms, severity, value, quiet)
        return life

    def _step(self, life: Life, active: bool, t: int, hold_ms: float, clear_ms: float,
              severity: Severity, value: float | None, quiet: str) -> None:
        q = self._quiet_for(life, t, quiet) if active else quiet
        change = step(life, active, t, hold_ms, clear_ms, severity, value, q)
        if change:
            self._emit(life, change, t, q)

    def _quiet_for(self, life: Life, t: int, quiet: str) -> str:
        if quiet:
            return quiet
        if self.silenced(life.station, life.building, t) is not None:
            return "silenced"
        if self.inhibited(life):
            return "inhibited"
        return ""

    def inhibited(self, life: Life) -> bool:
        if life.rule in _PROCESS_RULES and life.station is not None:
            off = self.lives.get(alert_key(Rule.STATION_OFFLINE, life.station))
            if off is not None and off.state is State.FIRING:
                return True
        if life.rule in _PROCESS_RULES or life.rule == Rule.STATION_OFFLINE:
            st = self.stations.get(life.station or "")
            if st is not None and st.gateway is not None:
                g = self.lives.get(alert_key(Rule.GATEWAY_OFFLINE, gateway=st.gateway))
                if g is not None and g.state is State.FIRING:
                    return True
        if life.rule == Rule.ROOM_LOW:
            # pending counts too: while the building verdict is open, its flats wait (if it never
            # fires, their next verdict pages them)
            return alert_key(Rule.BUILDING_LOW, life.station, life.building) in self.lives
        return False

    def _emit(self, life: Life, change: int, t: int, quiet: str) -> None:
        if change == Change.PENDING:
            page = False
        elif change == Change.RESOLVED:
            page = life.paged  # the pager hears the end of what it heard the start of
        else:
            page = not quiet
            life.paged = life.paged or page
        self._out.append(life.transition(t, f"{life.rule} {_SUMMARY[change]}", quiet, page))
        if life.state is State.RESOLVED:
            self.lives.pop(life.key, None)

    def _flush(self) -> list[Transition]:
        out, self._out = self._out, []
        return out

    # -- offline rules ------------------------------------------------------------------------
    def _gateway(self, name: str) -> GatewayState:
        gw = self.gateways.get(name)
        if gw is None:
            gw = self.gateways[name] = GatewayState()
        return gw

    def _judge_gateway(self, name: str, gw: GatewayState, now: int) -> None:
        if not self.season(now)[0]:
            return
        active = gw.offline_since is not None
        since = gw.offline_since if gw.offline_since is not None else now
        self.judge(Rule.GATEWAY_OFFLINE, active, now, self.rules.offline.station_after_s * 1000, 0,
                   Severity.MAJOR, None, "", gateway=name,
                   context=lambda: {"stations": sorted(gw.stations), "offline_since": since})

    def _judge_station(self, name: str, st: StationState, now: int) -> None:
        if not self.season(now)[0]:
            return
        after = self.rules.offline.station_after_s * 1000
        silent = st.last_rx > 0 and now - st.last_rx > after
        active = st.status_offline or silent
        # in the start-up grace only the gateway's own word (status offline) counts; silence is
        # judged after it, from the last data the snapshot remembers or what arrived since
        judged = st.status_offline or self.grace_until is None or now >= self.grace_until
        if judged and (active or alert_key(Rule.STATION_OFFLINE, name) in self.lives):
            self.judge(Rule.STATION_OFFLINE, active, now, 0, 0, Severity.MAJOR, None, "", station=name,
                       context=lambda: {"reason": "status offline" if st.status_offline
                                        else "no telemetry", "last_data": st.last_rx})
        hold = self.rules.offline.device_hold_s * 1000
        for dev, since in st.devices_offline.items():
            life = self.judge(Rule.DEVICE_OFFLINE, now - since >= hold, now, 0, 0, Severity.WARNING,
                              None, "", station=name, subject=dev, context={"offline_since": since})
            if life is not None:
                st.devices_alerted.add(dev)
        for dev in st.devices_alerted - st.devices_offline.keys():
            st.devices_alerted.discard(dev)
            gone = self.lives.get(alert_key(Rule.DEVICE_OFFLINE, name, subject=dev))
            if gone is not None:
                self._step(gone, False, now, 0, 0, Severity.WARNING, None, "")

    # -- persistence --------------------------------------------------------------------------
    def adopt(self, open_alerts: Iterable[dict[str, Any]]) -> None:
        """Take the store's open alerts as the truth about lifecycles (after ``restore``).

        The snapshot may be older than the store: alerts raised since are adopted, lives the
        store has closed since (resolved, or by hand) are forgotten.
        """
        lives: dict[str, Life] = {}
        for row in open_alerts:
            life = self.lives.get(row["key"])
            if life is None or life.state.value != row["state"]:
                life = Life(row["key"], row["rule"], row["station"], row["building"], row["household"],
                            row["gateway"], row["subject"], row["since"], Severity(row["severity"]))
                life.state = State(row["state"])
                life.fired = row["fired_at"]
                life.seen = row["last_ts"]
                life.value = row["value"]
                life.context = dict(row["context"] or {})
                life.paged = bool(row["paged"])
            lives[life.key] = life
        self.lives = lives
        self.rooms.adopt(lives.values())

    def snapshot(self) -> bytes:
        """Everything needed to carry on after a restart (rules are re-read from the file)."""
        state = {"version": SNAPSHOT_VERSION, "lives": self.lives, "stations": self.stations,
                 "gateways": self.gateways, "rooms": self.rooms.state()}
        return pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)

    def restore(self, blob: bytes) -> None:
        state = pickle.loads(blob)  # our own file, written by snapshot()
        if state.get("version") != SNAPSHOT_VERSION:
            raise ValueError(f"alert state snapshot version {state.get('version')!r} "
                             f"is not {SNAPSHOT_VERSION}")
        self.lives = state["lives"]
        self.stations = state["stations"]
        self.gateways = state["gateways"]
        self.rooms.restore(state["rooms"])
        self.grace_until = None  # the next input starts a new start-up grace
