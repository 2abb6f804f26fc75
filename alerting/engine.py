"""The rule engine: telemetry and status in, alert transitions out. A pure state machine.

Stage: alerter → **evaluate rules** → record alerts. ``observe(frame, now)`` takes one validated
telemetry message, ``station_status``/``gateway_status`` the status topics, ``tick(now)`` runs
the time-driven rules (stale sensors, offline stations, escalation); each returns the
``Transition`` list the alerter stores and pages. One engine judges one partition of the stations
(``alerter/judge.py``). Nothing here reads a clock or does I/O, so tests drive it with a fake
clock, and ``snapshot``/``restore`` carry its state across a restart or a handover.

The rules themselves are families (``alerting/rule_*.py``, behind ``alerting.family.Family``):
each judges and returns ``Verdict``s; this module keeps only what is common to every alert —
their lives (``alerting.lifecycle``), inhibition, and emission.

Data-driven rules judge in *data time* (the gateway's sample ts), so replayed backfill is judged
when it happened and an alerter that lags does not invent durations; offline rules judge in
receive time (``now``). Samples older than what an entity has already seen update nothing:
the past never pages, and holds never run backwards.

Topology for inhibition (Alertmanager's ``inhibit_rules``, fixed by the domain): a gateway
offline inhibits its stations' alerts; a station offline (pending too) inhibits every process
alert of the station; a building alert (pending or firing) inhibits its households' room alerts. Inhibited,
silenced and backfill transitions are stored but not paged (``quiet``); if the alert is still
firing when the reason goes away, it is paged then.
"""

from __future__ import annotations

import importlib
import pickle
from collections.abc import Iterable
from typing import Any

from alerting import rule_modules
from alerting.family import Context, Family, FrameView, Verdict
from alerting.lifecycle import Change, Life, maybe_escalate, step
from contract.alerts import AlertRules, Quiet, Rule, Severity, Silence, State, Transition, alert_key
from contract.payload import Frame, GatewayStatus, Sample, StationStatus

__all__ = ["SNAPSHOT_VERSION", "Engine", "Silence"]

# 3: rule families snapshot their own state (alerting/family.py); 2 was one engine-wide state
SNAPSHOT_VERSION = 3
_SUMMARY = {Change.PENDING: "pending", Change.FIRING: "firing", Change.RESOLVED: "resolved",
            Change.SEVERITY: "severity raised", Change.REPAGE: "firing (paged now)"}


def families(ctx: Context) -> list[Family]:
    """The registry: every ``alerting/rule_*.py`` module's ``FAMILY``, in their ``order``."""
    out: list[Family] = []
    for m in rule_modules():
        cls = importlib.import_module(f"alerting.{m}").FAMILY
        out.append(cls(ctx))
    return sorted(out, key=lambda f: (f.order, f.name))


class Engine:
    def __init__(self, rules: AlertRules) -> None:
        self.rules = rules
        self.lives: dict[str, Life] = {}
        self.ctx = Context(rules, self.lives)
        self.families = families(self.ctx)
        self.by_name = {f.name: f for f in self.families}
        self._owner: dict[str, Family] = {r.value: f for f in self.families for r in f.raises}
        # the process rules: what a station outage (or its gateway's) holds under it
        self._process = frozenset(r.value for f in self.families for r in f.process())
        # station-wide causes a family declares (a circulation pump trip holds the rooms)
        self._causes: list[tuple[str, frozenset[str]]] = [
            (cause.value, frozenset(r.value for r in held))
            for f in self.families for cause, held in f.holds().items()]
        self._out: list[Transition] = []
        self.set_silences([])
        self.samples_judged = 0
        # the points any rule reads; the rest pass by
        self.wanted = Context.POINTS | {p for f in self.families for p in f.points()}

    def family(self, name: str) -> Family:
        return self.by_name[name]

    # -- inputs -------------------------------------------------------------------------------
    def observe(self, frame: Frame, now: int) -> list[Transition]:
        """Judge one telemetry message (received at ``now`` ms)."""
        self.ctx.note(frame, now)
        for fam in self.families:
            self._apply(fam.observe_any(frame, now))
        t = frame.ts
        in_season, grace = self.ctx.season(t)
        if not in_season:
            return self._flush()
        self.samples_judged += len(frame.samples)
        wanted = self.wanted
        households: list[Sample] = []
        values: dict[str, Sample] = {}
        # the hot loop: ~200 samples a message, most for no rule; a comprehension filters them at
        # half the cost of a for loop with the test inside
        for s in [s for s in frame.samples if s.point in wanted]:
            if s.household is not None:
                households.append(s)
            elif s.building is None:
                values[s.point] = s
        view = FrameView(frame, t, households, values, Quiet.BACKFILL if frame.backfill else Quiet.NONE,
                         grace)
        for fam in self.families:
            self._apply(fam.observe(view, now))
        if values:  # after the rules: a message's context is what was known before it
            self.ctx.note_view(view)
        return self._flush()

    def station_status(self, s: StationStatus, now: int) -> list[Transition]:
        self.ctx.attach(s.station, s.gateway)
        for fam in self.families:
            self._apply(fam.station_status(s, now))
        return self._flush()

    def gateway_status(self, g: GatewayStatus, now: int) -> list[Transition]:
        for station in g.stations:
            if self.ctx.station(station).gateway is None:
                self.ctx.attach(station, g.gateway)
        self.ctx.gateways.setdefault(g.gateway, set()).update(g.stations)
        for fam in self.families:
            self._apply(fam.gateway_status(g, now))
        return self._flush()

    def tick(self, now: int) -> list[Transition]:
        """Time-driven rules: offline stations and gateways, stale sensors, escalation, season end."""
        in_season, _ = self.ctx.season(now)
        if not in_season:
            for life in list(self.lives.values()):
                life.context["season"] = "ended"
                life.state = State.RESOLVED
                self._emit(life, Change.RESOLVED, now, Quiet.SEASON)
            return self._flush()
        for fam in self.families:
            self._apply(fam.tick(now))
        for life in list(self.lives.values()):
            owner = self._owner.get(life.rule)
            after = owner.escalate_after_ms(life) if owner is not None else 0.0
            if after > 0 and maybe_escalate(life, now, after):
                self._emit(life, Change.SEVERITY, now, self._quiet_for(life, now, Quiet.NONE))
        return self._flush()

    def set_silences(self, silences: Iterable[Silence]) -> None:
        """Silences from the store, plus the rule file's maintenance windows."""
        self.ctx.set_silences(list(silences) + [
            Silence(w.station, w.building, int(w.start.timestamp() * 1000),
                    int(w.end.timestamp() * 1000), w.reason) for w in self.rules.maintenance])

    @property
    def silences(self) -> list[Silence]:
        return self.ctx.silences

    # -- composing verdicts -------------------------------------------------------------------
    def _apply(self, verdicts: list[Verdict]) -> None:
        for v in verdicts:
            self._verdict(v)

    def _verdict(self, v: Verdict) -> None:
        """One verdict for one alert; creates its life on the first true verdict."""
        life = self.lives.get(v.key)
        if life is None:
            if not v.active:
                return
            life = Life(v.key, v.rule, v.station, v.building, v.household, v.gateway, v.subject,
                        v.t if v.since is None else v.since, v.severity)
            life.value, life.seen = v.value, v.t
            ctx = v.context
            if ctx is not None:
                life.context = ctx if isinstance(ctx, dict) else ctx()
            self.lives[v.key] = life
            # backdated past its hold already (a station silent since before this tick): the step
            # below fires it at once, as a hold of 0 does (a pending row at the very instant it
            # fires says nothing)
            if v.hold_ms > 0 and (v.since is None or v.t - v.since < v.hold_ms):
                self._emit(life, Change.PENDING, v.t, self._quiet_for(life, v.t, v.quiet))
                return
        elif v.active and v.context is not None and life.state is State.PENDING:
            ctx = v.context
            life.context = ctx if isinstance(ctx, dict) else ctx()
        if v.update is not None:
            life.context.update(v.update)
        q = self._quiet_for(life, v.t, v.quiet) if v.active else v.quiet
        change = step(life, v.active, v.t, v.hold_ms, v.clear_ms, v.severity, v.value, q)
        if change:
            self._emit(life, change, v.t, q)

    def _quiet_for(self, life: Life, t: int, quiet: Quiet) -> Quiet:
        if quiet:
            return quiet
        if self.ctx.silenced(life.station, life.building, t) is not None:
            return Quiet.SILENCED
        if self.inhibited(life):
            return Quiet.INHIBITED
        return Quiet.NONE

    def inhibited(self, life: Life) -> bool:
        process = life.rule in self._process
        if process and life.station is not None:
            # pending counts too: a station whose devices stopped answering (held before it
            # pages, rule_offline) or that went silent is not judged on what it said last; if it
            # never fires, the process alert's next verdict pages it
            if alert_key(Rule.STATION_OFFLINE, life.station) in self.lives:
                return True
            for cause, held in self._causes:
                if life.rule in held:
                    c = self.lives.get(alert_key(cause, life.station))
                    if c is not None and c.state is State.FIRING:
                        return True
        if process or life.rule == Rule.STATION_OFFLINE:
            st = self.ctx.stations.get(life.station or "")
            # pending counts too: the gateway's will came first, its stations are under it from
            # the first moment (an outage pages once)
            if (st is not None and st.gateway is not None
                    and alert_key(Rule.GATEWAY_OFFLINE, gateway=st.gateway) in self.lives):
                return True
        if life.rule == Rule.ROOM_LOW:
            # pending counts too: while the building verdict is open, its flats wait (if it never
            # fires, their next verdict pages them)
            return alert_key(Rule.BUILDING_LOW, life.station, life.building) in self.lives
        return False

    def _emit(self, life: Life, change: int, t: int, quiet: Quiet) -> None:
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
        self.lives.clear()  # the same dict the context reads
        self.lives.update(lives)
        for fam in self.families:
            fam.adopt(self.lives.values())

    def snapshot(self) -> bytes:
        """Everything needed to carry on after a restart (rules are re-read from the file)."""
        state = {"version": SNAPSHOT_VERSION, "lives": self.lives, "stations": self.ctx.stations,
                 "gateways": self.ctx.gateways,
                 "families": {f.name: f.state() for f in self.families}}
        return pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)

    def restore(self, blob: bytes) -> None:
        state = pickle.loads(blob)  # our own file, written by snapshot()
        if not isinstance(state, dict) or state.get("version") != SNAPSHOT_VERSION:
            version = state.get("version") if isinstance(state, dict) else None
            raise ValueError(f"alert state snapshot version {version!r} is not {SNAPSHOT_VERSION}")
        self.lives.clear()
        self.lives.update(state["lives"])
        self.ctx.stations = state["stations"]
        self.ctx.gateways = state["gateways"]
        for fam in self.families:
            if fam.name in state["families"]:
                fam.restore(state["families"][fam.name])
