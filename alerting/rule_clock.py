"""Clock rule: clock_skew (warning, per gateway). A wrong gateway clock is a data-quality fault to
fix, not a station outage.

A gateway's messages are stamped with its own clock. When that clock runs fast, its stamps lie
ahead of their receipt; past ``ingest.max_future_s`` the alerter (and the collector, which stores
it) re-stamps the message on its receipt time and marks it (``Frame.skew_ms``), so the data are
kept and judged.
This rule raises ``clock_skew`` for the gateway when the offset — the mark, or the stamp ahead
of the receipt time of a live (not backfilled) message — is ``clock.skew_s`` or more for
``clock.hold_min``; it clears after ``clock.clear_min`` of sane stamps. A slow clock cannot be
told from delivery lag by the rules alone: only the receipt's mark says it.
"""

from __future__ import annotations

from typing import Any

from alerting.family import NO_VERDICTS, Context, Family, Verdict
from alerting.lifecycle import get_fields, set_fields
from contract.alerts import Rule, Severity, alert_key
from contract.payload import Frame

_FIELDS = ("open", "skew_ms", "stations")


class GatewayClock:
    __slots__ = _FIELDS

    def __init__(self) -> None:
        self.open = False  # a clock_skew verdict was given and its life may be open
        self.skew_ms = 0
        self.stations: set[str] = set()

    def __getstate__(self) -> tuple[Any, ...]:
        return get_fields(self, _FIELDS)

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        set_fields(self, _FIELDS, state)


class Clock(Family):
    name = "clock"
    order = 15
    raises = (Rule.CLOCK_SKEW,)

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        self.gateways: dict[str, GatewayClock] = {}
        self._skew_ms = ctx.rules.clock.skew_s * 1000

    def process(self) -> tuple[Rule, ...]:
        return ()  # the gateway's own fault: no station outage holds it

    def observe_any(self, frame: Frame, now: int) -> list[Verdict]:
        if frame.backfill:
            return NO_VERDICTS  # replayed data are old by nature
        skew = frame.skew_ms if frame.skew_ms else frame.ts - now
        skewed = skew >= self._skew_ms or (-skew >= self._skew_ms and frame.skew_ms != 0)
        gw = self.gateways.get(frame.gateway)
        if not skewed and (gw is None or not gw.open):
            return NO_VERDICTS  # the common case: one subtraction a message
        if gw is None:
            gw = self.gateways[frame.gateway] = GatewayClock()
        gw.stations.add(frame.station)
        key = alert_key(Rule.CLOCK_SKEW, gateway=frame.gateway)
        if not skewed and not self.ctx.is_open(key):
            gw.open = False
            return []
        if skewed:
            gw.skew_ms = skew
        gw.open = True
        r = self.ctx.rules.clock
        stations, skew_s, restamped = sorted(gw.stations), round(skew / 1000, 1), frame.skew_ms != 0
        v = Verdict(key, Rule.CLOCK_SKEW, skewed, now, Severity.WARNING, value=skew_s,
                    hold_ms=r.hold_min * 60_000, clear_ms=r.clear_min * 60_000, gateway=frame.gateway,
                    context=lambda: {"skew_s": skew_s, "restamped": restamped, "stations": stations,
                                     "fix": "set the gateway's clock (NTP)"})
        if skewed:
            v.update = {"skew_s": skew_s, "restamped": restamped}
        return [v]

    def state(self) -> Any:
        return self.gateways

    def restore(self, state: Any) -> None:
        self.gateways = state


FAMILY = Clock
