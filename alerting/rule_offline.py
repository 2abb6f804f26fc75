"""Offline rules: station_offline, gateway_offline, device_offline. Judged in receive time.

- ``station_offline`` (major, at once): the station's status topic says offline, or no
  telemetry for ``offline.station_after_s``. Telemetry resolves it at once.
- ``gateway_offline`` (major): the gateway's last will (status ``offline``), held
  ``offline.station_after_s``; it inhibits its stations.
- ``device_offline`` (warning): the station status names a device offline for
  ``offline.device_hold_s``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from alerting.family import Context, Family, Verdict
from alerting.lifecycle import Life, get_fields, set_fields
from contract.alerts import Rule, Severity, alert_key
from contract.payload import Frame, GatewayStatus, StationStatus

_OFFLINE_FIELDS = ("devices_alerted", "devices_offline", "status_offline")


class StationOffline:
    __slots__ = _OFFLINE_FIELDS

    def __init__(self) -> None:
        self.status_offline = False
        self.devices_offline: dict[str, int] = {}  # device → since (ms)
        self.devices_alerted: set[str] = set()  # devices with a device_offline life

    def __getstate__(self) -> tuple[Any, ...]:
        return get_fields(self, _OFFLINE_FIELDS)

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        set_fields(self, _OFFLINE_FIELDS, state)


_GATEWAY_FIELDS = ("offline_since",)


class GatewayOffline:
    __slots__ = _GATEWAY_FIELDS

    def __init__(self) -> None:
        self.offline_since: int | None = None

    def __getstate__(self) -> tuple[Any, ...]:
        return get_fields(self, _GATEWAY_FIELDS)

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        set_fields(self, _GATEWAY_FIELDS, state)


_IDLE = StationOffline()  # a station with no status news (never written to)


class Offline(Family):
    name = "offline"
    order = 10  # first: data that is back resolves station_offline before the process rules judge
    raises = (Rule.STATION_OFFLINE, Rule.GATEWAY_OFFLINE, Rule.DEVICE_OFFLINE)

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        self.stations: dict[str, StationOffline] = {}
        self.gateways: dict[str, GatewayOffline] = {}

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
        key = alert_key(Rule.STATION_OFFLINE, frame.station)
        st = self.stations.get(frame.station)
        if (self.ctx.is_open(key) and not frame.backfill
                and (st is None or not st.status_offline)):
            return [Verdict(key, Rule.STATION_OFFLINE, False, now, Severity.MAJOR, station=frame.station)]
        return []

    def station_status(self, s: StationStatus, now: int) -> list[Verdict]:
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
        gw = self._gateway(g.gateway)
        if g.state == "offline":
            if gw.offline_since is None:
                gw.offline_since = now
        else:
            gw.offline_since = None
        out: list[Verdict] = []
        self._judge_gateway(g.gateway, gw, now, out)
        return out

    def tick(self, now: int) -> list[Verdict]:
        out: list[Verdict] = []
        if not self.ctx.season(now)[0]:
            return out
        for name, gw in self.gateways.items():
            self._judge_gateway(name, gw, now, out)
        after = self.ctx.rules.offline.station_after_s * 1000
        idle = _IDLE
        for name, info in self.ctx.stations.items():
            st = self.stations.get(name)
            # the common case, once per station per tick: heard from lately, nothing open
            if ((st is None or (not st.status_offline and not st.devices_offline
                                and not st.devices_alerted)) and now - info.last_rx <= after
                    and not self.ctx.is_open(alert_key(Rule.STATION_OFFLINE, name))):
                continue
            self._judge_station(name, st if st is not None else idle, now, out)
        return out

    # -- verdicts -----------------------------------------------------------------------------
    def _judge_gateway(self, name: str, gw: GatewayOffline, now: int, out: list[Verdict]) -> None:
        if not self.ctx.season(now)[0]:
            return
        active = gw.offline_since is not None
        key = alert_key(Rule.GATEWAY_OFFLINE, gateway=name)
        if not active and not self.ctx.is_open(key):
            return
        since = gw.offline_since if gw.offline_since is not None else now
        stations = self.ctx.gateways.get(name, set())
        out.append(Verdict(key, Rule.GATEWAY_OFFLINE, active, now, Severity.MAJOR,
                           hold_ms=self.ctx.rules.offline.station_after_s * 1000, gateway=name,
                           context=lambda: {"stations": sorted(stations), "offline_since": since}))

    def _judge_station(self, name: str, st: StationOffline, now: int, out: list[Verdict]) -> None:
        if not self.ctx.season(now)[0]:
            return
        info = self.ctx.station(name)
        after = self.ctx.rules.offline.station_after_s * 1000
        silent = info.last_rx > 0 and now - info.last_rx > after
        active = st.status_offline or silent
        key = alert_key(Rule.STATION_OFFLINE, name)
        if active or self.ctx.is_open(key):
            last = info.last_rx
            reason = "status offline" if st.status_offline else "no telemetry"
            out.append(Verdict(key, Rule.STATION_OFFLINE, active, now, Severity.MAJOR, station=name,
                               context=lambda: {"reason": reason, "last_data": last}))
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
