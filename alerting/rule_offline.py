"""Offline rules: station_offline, gateway_offline, device_offline. Judged in receive time.

- ``station_offline`` (major): the station's status topic says offline for
  ``offline.status_hold_s`` (every device unanswered that long: a poll or two lost is not an
  outage), or no telemetry for ``offline.station_after_s``. It is one incident for the outage: when the
  station is back, it closes after the rooms-back check — once as few of its room sensors are
  below the standard as before the outage (at once after a link outage; hours after a power cut
  that let the flats cool), at most ``room.recovery_max_h`` later. Until then its rooms' and
  buildings' alerts stay under it (inhibited), so the tail is reported in the incident, not
  paged.
- ``gateway_offline`` (major): the gateway's last will (status ``offline``), held
  ``offline.station_after_s``; it inhibits its stations from the first moment (pending too), so
  a silent station behind a gateway that announced itself (its birth status: the broker holds
  its will) waits ``offline.gateway_wait_s`` past its own threshold for the will: a gateway
  outage is one page with its stations under it.

Offline is judged against the inventory too (``inventory`` in the rule file: gateway → stations,
as the asset register and the gateways' configs say they exist): a station never heard from is
``station_offline`` ("never heard from"), a gateway never seen (no status, none of its stations
heard from) is ``gateway_offline``, ``offline.station_after_s`` after the rules start. Silence is
judged only once the rules have run ``offline.station_after_s`` (the start-up grace), so an
alerter that just (re)started, or took a partition over, does not page stations it has not yet
had the chance to hear from; after it, from the last data the snapshot remembers or what came
since.
- ``device_offline`` (warning): the station status names a device offline for
  ``offline.device_hold_s``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from alerting.family import NO_VERDICTS, Context, Family, Verdict
from alerting.lifecycle import Life, get_fields, set_fields
from contract.alerts import Rule, Severity, State, alert_key
from contract.payload import Frame, GatewayStatus, StationStatus

_OFFLINE_FIELDS = ("back_at", "below_before", "devices_alerted", "devices_offline", "out_since",
                   "status_offline")


class StationOffline:
    __slots__ = _OFFLINE_FIELDS

    def __init__(self) -> None:
        self.status_offline = False
        self.devices_offline: dict[str, int] = {}  # device → since (ms)
        self.devices_alerted: set[str] = set()  # devices with a device_offline life
        self.out_since = 0  # the outage's start (receive time); 0 = none
        self.back_at = 0  # when its data came back (the rooms-back check runs from here)
        self.below_before = 0  # its rooms below the standard when the outage started

    def __getstate__(self) -> tuple[Any, ...]:
        return get_fields(self, _OFFLINE_FIELDS)

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        set_fields(self, _OFFLINE_FIELDS, state)


_GATEWAY_FIELDS = ("announced", "offline_since", "seen")


class GatewayOffline:
    __slots__ = _GATEWAY_FIELDS

    def __init__(self) -> None:
        self.offline_since: int | None = None
        self.seen = False  # a status message, or telemetry from a station behind it
        # a status message: the gateway's birth (retained) comes with a will the broker publishes
        # when it dies, so only then is there a will for its stations to wait for
        self.announced = False

    def __getstate__(self) -> tuple[Any, ...]:
        return get_fields(self, _GATEWAY_FIELDS)

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        set_fields(self, _GATEWAY_FIELDS, state)


class Offline(Family):
    name = "offline"
    order = 10  # first: data that is back resolves station_offline before the process rules judge
    raises = (Rule.STATION_OFFLINE, Rule.GATEWAY_OFFLINE, Rule.DEVICE_OFFLINE)

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        self.stations: dict[str, StationOffline] = {}
        self.gateways: dict[str, GatewayOffline] = {}
        self.started = 0  # the first time (receive time) these rules saw anything; not snapshotted
        self.expected: set[str] = set()  # the inventory's stations
        self.inventory_gateways: set[str] = set(ctx.rules.inventory)
        for gw, stations in ctx.rules.inventory.items():
            self._gateway(gw)
            for name in stations:
                ctx.attach(name, gw)
                self.expected.add(name)

    def process(self) -> tuple[Rule, ...]:
        return (Rule.DEVICE_OFFLINE,)  # the station's own alert is the outage; a device is under it

    def _start(self, now: int) -> None:
        if not self.started:
            self.started = now

    def _station(self, name: str) -> StationOffline:
        st = self.stations.get(name)
        if st is None:
            st = self.stations[name] = StationOffline()
        return st

    def _gateway(self, name: str) -> GatewayOffline:
        gw = self.gateways.get(name)
        if gw is None:
            gw = self.gateways[name] = GatewayOffline()
        return gw

    # -- inputs -------------------------------------------------------------------------------
    def observe_any(self, frame: Frame, now: int) -> list[Verdict]:
        if not self.started:
            self.started = now
        gw = self.gateways.get(frame.gateway)
        if gw is None or not gw.seen:
            self._gateway(frame.gateway).seen = True
        key = alert_key(Rule.STATION_OFFLINE, frame.station)
        if not self.ctx.is_open(key) or frame.backfill:
            return NO_VERDICTS
        out: list[Verdict] = []  # data is back: resolved, or the rooms-back check starts
        self._offline(frame.station, self._station(frame.station), key, now, out)
        return out

    def station_status(self, s: StationStatus, now: int) -> list[Verdict]:
        self._start(now)
        self._gateway(s.gateway).seen = True
        st = self._station(s.station)
        st.status_offline = s.state.value == "offline"
        for name, dev in s.devices.items():
            if dev.state.value == "offline":
                st.devices_offline.setdefault(name, now)
            else:
                st.devices_offline.pop(name, None)
        out: list[Verdict] = []
        self._judge_station(s.station, st, now, out)
        return out

    def gateway_status(self, g: GatewayStatus, now: int) -> list[Verdict]:
        self._start(now)
        gw = self._gateway(g.gateway)
        gw.seen = gw.announced = True
        if g.state == "offline":
            if gw.offline_since is None:
                gw.offline_since = now
        else:
            gw.offline_since = None
        out: list[Verdict] = []
        self._judge_gateway(g.gateway, gw, now, out)
        return out

    def tick(self, now: int) -> list[Verdict]:
        self._start(now)
        out: list[Verdict] = []
        if not self.ctx.season(now)[0]:
            return out
        for name, gw in self.gateways.items():
            self._judge_gateway(name, gw, now, out)
        after = self.ctx.rules.offline.station_after_s * 1000
        for name, info in self.ctx.stations.items():
            st = self.stations.get(name)
            # the common case, once per station per tick: heard from lately, nothing open
            if ((st is None or (not st.status_offline and not st.devices_offline
                                and not st.devices_alerted)) and now - info.last_rx <= after
                    and not self.ctx.is_open(alert_key(Rule.STATION_OFFLINE, name))):
                continue
            self._judge_station(name, st if st is not None else self._station(name), now, out)
        return out

    # -- verdicts -----------------------------------------------------------------------------
    def _judge_gateway(self, name: str, gw: GatewayOffline, now: int, out: list[Verdict]) -> None:
        if not self.ctx.season(now)[0]:
            return
        after = self.ctx.rules.offline.station_after_s * 1000
        never = (not gw.seen and name in self.inventory_gateways and self.started > 0
                 and now - self.started > after)
        active = gw.offline_since is not None or never
        key = alert_key(Rule.GATEWAY_OFFLINE, gateway=name)
        if not active and not self.ctx.is_open(key):
            return
        since = gw.offline_since if gw.offline_since is not None else now
        stations = self.ctx.gateways.get(name, set())
        reason = "never seen" if gw.offline_since is None and never else "will (offline)"
        out.append(Verdict(key, Rule.GATEWAY_OFFLINE, active, now, Severity.MAJOR,
                           hold_ms=0 if reason == "never seen" else after, gateway=name,
                           context=lambda: {"stations": sorted(stations), "offline_since": since,
                                            "reason": reason}))

    def _offline(self, name: str, st: StationOffline, key: str, now: int, out: list[Verdict]) -> None:
        """The station_offline verdict: down, recovering (the rooms-back check) or back."""
        info = self.ctx.station(name)
        offline = self.ctx.rules.offline
        after = offline.station_after_s * 1000
        # The start-up grace: silence is judged only once the rules have run station_after_s (a
        # alerter that just started, or restored a snapshot written minutes ago, has not had
        # the chance to hear from anyone: judging the snapshot's last data at once paged every
        # station on each restart), then from the last data itself, the snapshot's or newer. A
        # station whose outage is open stays down until it is heard from again; one never heard
        # from (the inventory's) is silent station_after_s after the start.
        # Only an outage that paged skips the grace: a pending one (the status held, a silence
        # waiting for the will) restored from a snapshot is left alone until the grace is over
        # or the station is heard from (a restart must not turn a status blip, pending when the
        # snapshot was written, into a "no telemetry" page from the snapshot's old data).
        life = self.ctx.lives.get(key)
        is_open = life is not None
        fired = life is not None and life.state is State.FIRING
        graced = self.started > 0 and now - self.started >= after
        last_rx = info.last_rx
        if last_rx > 0:
            silent = (fired or graced) and now - last_rx > after
            crossed = last_rx + after  # when the silence passed the threshold
        else:
            silent = name in self.expected and self.started > 0 and now - self.started > after
            crossed = self.started + after
        if is_open and not fired and not graced and not st.status_offline and now - last_rx > after:
            return  # pending, silent as far as the snapshot knows, in the grace: not judged yet
        down = st.status_offline or silent
        below = self.ctx.rooms_below.get(name, 0)
        if down:
            if not st.out_since:
                st.out_since, st.below_before = now, below
            st.back_at = 0
            reason = ("status offline" if st.status_offline
                      else "no telemetry" if info.last_rx else "never heard from")
            active = True
        elif is_open or st.out_since:
            if not st.back_at:
                st.back_at = now
            reason = "rooms recovering"
            recovery_ms = self.ctx.rules.room.recovery_max_h * 3_600_000
            # the rooms-back check keeps an outage that paged open; one still pending (held, or
            # waiting for the gateway's will) ends when the data is back: it never was an outage
            active = fired and below > st.below_before and now - st.back_at < recovery_ms
        else:
            return
        if active or is_open:
            last = info.last_rx
            update: dict[str, Any] = {"rooms_below_standard": max(0, below - st.below_before)}
            if not down:
                update["back_at"] = st.back_at
            # a silent station waits for its gateway's will, if the gateway has one (it announced
            # itself), counted from when the silence passed the threshold: a silence that passed
            # it long ago (judged after a restart's grace) waits no more, the retained will came
            # with the subscription
            gw = self.gateways.get(info.gateway or "")
            wait = down and not st.status_offline and gw is not None and gw.announced
            # the gateway saying "offline" (every device of the station unanswered on its last
            # exchange) is held offline.status_hold_s: one timed-out poll of a busy PLC or a
            # noisy bus (the gateway retries it a second later) is not an outage to page at
            # night — seen paging and resolving within seconds under load; a silence's threshold
            # has already passed when it is judged
            hold_ms = (offline.gateway_wait_s * 1000 if wait
                       else offline.status_hold_s * 1000 if down and st.status_offline and not silent
                       else 0)
            v = Verdict(key, Rule.STATION_OFFLINE, active, now, Severity.MAJOR, station=name,
                        hold_ms=hold_ms, since=int(crossed) if wait else None,
                        context=lambda: {"reason": reason, "last_data": last})
            v.update = {"reason": reason, **update} if is_open else update
            out.append(v)
        if not active:
            st.out_since = st.back_at = st.below_before = 0

    def _judge_station(self, name: str, st: StationOffline, now: int, out: list[Verdict]) -> None:
        if not self.ctx.season(now)[0]:
            return
        key = alert_key(Rule.STATION_OFFLINE, name)
        self._offline(name, st, key, now, out)
        hold = self.ctx.rules.offline.device_hold_s * 1000
        for dev, since in st.devices_offline.items():
            dkey = alert_key(Rule.DEVICE_OFFLINE, name, subject=dev)
            on = now - since >= hold
            if on or self.ctx.is_open(dkey):
                out.append(Verdict(dkey, Rule.DEVICE_OFFLINE, on, now, Severity.WARNING, station=name,
                                   subject=dev, context={"offline_since": since}))
                st.devices_alerted.add(dev)
        for dev in st.devices_alerted - st.devices_offline.keys():
            st.devices_alerted.discard(dev)
            dkey = alert_key(Rule.DEVICE_OFFLINE, name, subject=dev)
            if self.ctx.is_open(dkey):
                out.append(Verdict(dkey, Rule.DEVICE_OFFLINE, False, now, Severity.WARNING, station=name,
                                   subject=dev))

    # -- persistence --------------------------------------------------------------------------
    def adopt(self, lives: Iterable[Life]) -> None:
        for life in lives:
            if life.rule == Rule.DEVICE_OFFLINE and life.station is not None and life.subject:
                self._station(life.station).devices_alerted.add(life.subject)

    def state(self) -> Any:
        return {"stations": self.stations, "gateways": self.gateways}

    def restore(self, state: Any) -> None:
        self.stations, self.gateways = state["stations"], state["gateways"]


FAMILY = Offline
