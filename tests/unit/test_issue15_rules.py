"""Issue #15 on a fake clock: each defect of the rules seen against realistic data, pinned down
below the scenario library (tests/scenarios/*.yaml run the same rules on the simulator)."""

from __future__ import annotations

import datetime as dt

from alerting.engine import Engine
from alerting.rule_makeup import Makeup
from contract.alerts import AlertRules, Silence, Transition
from contract.payload import Frame, GatewayStatus, Sample

T0 = int(dt.datetime(2026, 12, 10, tzinfo=dt.timezone(dt.timedelta(hours=8))).timestamp() * 1000)
MIN = 60_000
HOUR = 60 * MIN
DAY = 24 * HOUR
UNITS = {"makeup_total": "m³", "secondary_flow": "m³/h", "makeup_flow": "m³/h",
         "secondary_return_pressure": "MPa", "tank_level": "m", "secondary_supply_temp": "°C",
         "outdoor_temp": "°C", "makeup_pump_running": "", "circ_pump_running": "", "circ_pump_fault": ""}


class Feed:
    def __init__(self, rules: AlertRules | None = None, station: str = "st001", gateway: str = "gw1") -> None:
        self.engine = Engine(rules or AlertRules())
        self.station, self.gateway, self.seq, self.out = station, gateway, 0, list[Transition]()

    def frame(self, t: int, now: int | None = None, **vals: float | bool) -> None:
        self.seq += 1
        samples = [Sample(point=k, unit=UNITS[k], value=v) for k, v in vals.items()]
        f = Frame(self.station, self.gateway, "0badc0de", self.seq, t, False, samples)
        self.out += self.engine.observe(f, t if now is None else now)

    def pages(self, rule: str | None = None) -> list[Transition]:
        return [x for x in self.out if x.page and x.state == "firing" and (rule is None or x.rule == rule)]

    def makeup(self) -> Makeup:
        m = self.engine.family("makeup")
        assert isinstance(m, Makeup)
        return m


def _makeup_day(flow: float = 0.5) -> list[tuple[int, float, bool]]:
    """One day of minutes: (offset ms, m³ this minute, pump running)."""
    return [(m * MIN, flow / 60, m % 30 < 10) for m in range(24 * 60)]


def test_redelivered_minutes_across_midnight_never_make_a_day_or_poison_the_baseline() -> None:
    f = Feed()
    total, sent = 100.0, []
    for d in range(6):
        for off, m3, pump in _makeup_day():
            t = T0 + d * DAY + off
            total += m3
            sent.append((t, total, pump))
            f.frame(t, makeup_total=total, secondary_flow=120.0, makeup_pump_running=pump)
            # QoS 1 after a reconnect at 00:03: the last 5 minutes of the day come again, late
            if d and off == 3 * MIN:
                for t_old, tot_old, pump_old in sent[-9:-4]:
                    f.frame(t_old, now=t, makeup_total=tot_old, secondary_flow=120.0,
                            makeup_pump_running=pump_old)
    net = f.makeup().stations["st001"].nets["secondary"]
    assert len(net.history) == 5 and all(abs(v - 12.0) < 0.05 for v in net.history), list(net.history)
    assert not f.pages()


def test_a_day_cut_by_an_outage_does_not_enter_the_baseline() -> None:
    f = Feed()
    total = 100.0
    for d in range(5):
        for off, m3, pump in _makeup_day():
            total += m3
            if d == 2 and 6 * HOUR <= off < 12 * HOUR:
                continue  # six hours without data: the water is counted, the day is not whole
            f.frame(T0 + d * DAY + off, makeup_total=total, secondary_flow=120.0, makeup_pump_running=pump)
    net = f.makeup().stations["st001"].nets["secondary"]
    assert len(net.history) == 3 and all(abs(v - 12.0) < 0.05 for v in net.history), list(net.history)
    assert len(f.makeup().stations["st001"].pump_hist) == 3


NEIGHBOURS = {"h2": 21.0, "h3": 21.2, "h4": 20.8, "h5": 21.1, "h6": 20.9, "h7": 21.0, "h8": 21.3}


def _rooms(f: Feed, t: int, temps: dict[str, float], building: str = "b01") -> None:
    f.seq += 1
    wobble = 0.1 * (t // (10 * MIN) % 3) - 0.1  # live sensors, not flat-lined ones
    samples = [Sample(point="room_temp", unit="°C", building=building, household=h, value=v + wobble)
               for h, v in temps.items()]
    f.out += f.engine.observe(Frame(f.station, f.gateway, "0badc0de", f.seq, t, False, samples), t)


def test_a_median_that_meets_the_standard_never_fires_pages_or_escalates() -> None:
    # pending at 17.5 °C, then 18.2 °C inside the hysteresis band: resolved, never fired
    f = Feed()
    for i in range(0, 6 * 60, 10):
        _rooms(f, T0 + i * MIN, {"h1": 17.5 if i < 60 else 18.25, **NEIGHBOURS})
        f.out += f.engine.tick(T0 + i * MIN)
    assert [x.state for x in f.out if x.rule == "room_low"] == ["pending", "resolved"]
    # paged at 14 °C, then 18.3 °C for a day and a half: no severity page, resolved after 2 h of it
    f = Feed()
    for i in range(0, 36 * 60, 10):
        _rooms(f, T0 + i * MIN, {"h1": 14.0 if i < 4 * 60 else 18.3, **NEIGHBOURS})
        f.out += f.engine.tick(T0 + i * MIN)
    life = [(x.state, x.summary, x.page) for x in f.out if x.rule == "room_low"]
    assert life == [("pending", "room_low pending", False), ("firing", "room_low firing", True),
                    ("resolved", "room_low resolved", True)]
    resolved = next(x for x in f.out if x.state == "resolved")
    # the 60-min median crosses 18 °C about 30 min after the room does, then 120 min of it
    assert 6 * HOUR <= resolved.ts - T0 <= 7 * HOUR
    # still cold after 24 h: that escalates (the same rooms, 17 °C)
    f = Feed()
    for i in range(0, 30 * 60, 10):
        _rooms(f, T0 + i * MIN, {"h1": 17.0, **NEIGHBOURS})
        f.out += f.engine.tick(T0 + i * MIN)
    assert [x.severity for x in f.out if x.rule == "room_low" and x.page] == ["warning", "major"]


def _gateway(f: Feed, state: str, now: int, stations: list[str]) -> None:
    g = GatewayStatus.model_validate({"schema": 1, "gateway": f.gateway, "state": state,
                                      "boot": "0badc0de", "stations": stations, "ts": now})
    f.out += f.engine.gateway_status(g, now)


def test_a_gateway_outage_pages_once_whatever_comes_first() -> None:
    """The will arrives 45 s after the gateway died (1.5 × a 30 s keepalive), long before its
    stations are silent for station_after_s: the pending gateway alert already holds them."""
    f = Feed()
    for st in ("st001", "st002"):
        f.station = st
        f.frame(T0, secondary_supply_temp=55.0)
    _gateway(f, "offline", T0 + 45_000, ["st001", "st002"])
    for m in range(1, 20):
        f.out += f.engine.tick(T0 + m * MIN)
    assert [(x.rule, x.gateway) for x in f.pages()] == [("gateway_offline", "gw1")]
    assert {(x.station, x.quiet) for x in f.out if x.rule == "station_offline" and x.state == "firing"} == {
        ("st001", "inhibited"), ("st002", "inhibited")}
    # no will yet when the station passes its threshold: it waits gateway_wait_s for it, if its
    # gateway announced itself (the birth status that comes with a will); ticks every 15 s
    for announced in (True, False):
        f = Feed()
        if announced:
            _gateway(f, "online", T0, ["st001"])
        f.frame(T0, secondary_supply_temp=55.0)
        for k in range(1, 80):
            now = T0 + k * 15_000
            if k == 23:  # 5 min 45 s: a late will (a long keepalive), after the threshold
                _gateway(f, "offline", now, ["st001"])
            f.out += f.engine.tick(now)
        offline = [(x.state, x.quiet, (x.ts - T0) // 1000) for x in f.out if x.rule == "station_offline"]
        if announced:
            assert [x.rule for x in f.pages()] == ["gateway_offline"]
            assert offline[:2] == [("pending", "", 315), ("firing", "inhibited", 360)]
        else:  # no will to wait for: paged at the first tick past the threshold
            assert offline[0] == ("firing", "", 315)


def test_offline_is_judged_against_the_inventory_and_from_the_rules_start() -> None:
    rules = AlertRules.model_validate({"inventory": {"gw1": ["st001", "st002"], "gw9": ["st009"]}})
    f = Feed(rules)
    f.frame(T0, secondary_supply_temp=55.0)  # st001 reports; st002 and gateway gw9 never do
    for m in range(1, 20):
        f.frame(T0 + m * MIN, secondary_supply_temp=55.0)
        f.out += f.engine.tick(T0 + m * MIN)
    got = {(x.rule, x.station or x.gateway, x.context.get("reason"), (x.ts - T0) // MIN) for x in f.pages()}
    assert got == {("station_offline", "st002", "never heard from", 6),
                   ("gateway_offline", "gw9", "never seen", 6)}
    assert ("firing", "inhibited") in {(x.state, x.quiet) for x in f.out if x.station == "st009"}
    # a restarted collector: silence is judged once the start-up grace (station_after_s from its
    # start) is over, then from the snapshot's last data
    f = Feed()
    f.frame(T0, secondary_supply_temp=55.0)
    blob = f.engine.snapshot()
    g = Feed()
    g.engine.restore(blob)
    for m in range(10, 30):
        g.out += g.engine.tick(T0 + m * MIN)
    assert [(x.rule, (x.ts - T0) // MIN) for x in g.pages()] == [("station_offline", 15)]


def test_no_circulation_is_a_pump_trip_not_a_leak() -> None:
    f = Feed()
    total = 100.0
    for m in range(0, 6 * 60):
        trip = 2 * 60 <= m < 5 * 60  # no pump bits sent: the flow alone tells
        total += 0.5 / 60
        f.frame(T0 + m * MIN, makeup_total=total, secondary_flow=1.5 if trip else 120.0, makeup_flow=0.5)
    assert [(x.rule, (x.ts - T0) // MIN) for x in f.pages()] == [("circ_pump_trip", 122)]
    assert not [x for x in f.out if x.rule == "makeup_rate"]  # 33 % of 1.5 m³/h is no leak rate
    # a standby pump that stops while the duty pump runs, and a night setback: no trip
    f = Feed()
    for m in range(0, 6 * 60):
        flow = 120.0 if m < 60 or m >= 5 * 60 else 70.0
        f.frame(T0 + m * MIN, secondary_flow=flow, circ_pump_running=True, circ_pump_fault=m % 7 == 0)
    assert not f.pages()


def test_a_works_window_for_one_building_covers_the_station_make_up_used_to_refill_it() -> None:
    def run(window_building: str | None, refill_at_h: float) -> Feed:
        f = Feed()
        f.engine.set_silences([Silence("st001", window_building, T0 + 2 * HOUR, T0 + 5 * HOUR, "riser")])
        total = 100.0
        for m in range(0, 12 * 60):
            refill = refill_at_h * 60 <= m < refill_at_h * 60 + 90
            flow = 8.5 if refill else 0.5
            total += flow / 60
            f.frame(T0 + m * MIN, makeup_total=total, secondary_flow=120.0, makeup_flow=flow)
        return f

    assert not run("b02", 4.5).pages()  # refilled at the end of the works and 1 h after
    assert not run(None, 4.5).pages()
    late = run("b02", 8.0)  # 3 h after the works: not theirs any more
    assert [x.rule for x in late.pages()] == ["makeup_rate"]


def test_cold_days_are_decided_by_a_whole_day_and_change_how_rooms_page() -> None:
    def run(rules: dict[str, object], outdoor_yesterday: float, outdoor_tonight: float) -> Feed:
        f = Feed(AlertRules.model_validate(rules))
        for i in range(0, 24 * 60 + 4 * 60, 10):  # yesterday whole, then a cold flat from 00:00
            t = T0 + i * MIN
            f.frame(t, outdoor_temp=outdoor_yesterday if i < 24 * 60 else outdoor_tonight)
            _rooms(f, t, {"h1": max(15.0, min(21.0, 21.0 - (i - 24 * 60) / 10)), **NEIGHBOURS})
        return f

    mild = run({}, -3.0, -12.0)  # at 02:00 the day so far is −12 °C; yesterday decides: −3 °C
    firing = [x for x in mild.pages("room_low")]
    assert [(x.severity, x.context["below_design_outdoor"], x.context["outdoor_mean_source"])
            for x in firing] == [("major", False, "previous day")]
    cold = run({}, -12.0, -3.0)  # default paging on cold days: info
    assert [(x.severity, x.quiet) for x in cold.pages("room_low")] == [("info", "")]
    quiet = run({"cold_day": {"paging": "quiet"}}, -12.0, -3.0)
    assert not quiet.pages() and ("firing", "exempt") in {(x.state, x.quiet) for x in quiet.out}
    official = run({"cold_day": {"mean": "official", "official": {"2026-12-11": -9.0}}}, -3.0, -3.0)
    assert [(x.severity, x.context["outdoor_mean_source"]) for x in official.pages("room_low")] == [
        ("info", "official 2026-12-11")]


def test_a_fast_gateway_clock_is_its_own_alert_and_its_data_are_judged() -> None:
    f = Feed()
    judged = f.engine.samples_judged
    for m in range(0, 30):
        now = T0 + m * MIN
        restamped = m >= 10  # past max_future_s the collector re-stamps on receipt and marks it
        f.seq += 1
        frame = Frame("st001", "gw1", "0badc0de", f.seq, now if restamped else now + 4 * MIN, False,
                      [Sample(point="secondary_supply_temp", unit="°C", value=55.0)],
                      skew_ms=6 * MIN if restamped else 0)
        f.out += f.engine.observe(frame, now)
        f.out += f.engine.tick(now)
    assert [(x.rule, x.gateway, (x.ts - T0) // MIN) for x in f.pages()] == [("clock_skew", "gw1", 10)]
    fired = f.pages()[0]
    assert fired.context["restamped"] is True and fired.value == 360.0
    assert f.engine.samples_judged == judged + 30  # every message judged, none lost
    # a clock within a minute is no fault
    g = Feed()
    for m in range(0, 30):
        g.frame(T0 + m * MIN + 20_000, now=T0 + m * MIN, secondary_supply_temp=55.0)
        g.out += g.engine.tick(T0 + m * MIN)
    assert not g.pages()


def test_intermittent_bad_reports_accumulate_into_a_sensor_fault() -> None:
    def run(bad_every: int) -> list[tuple[str | None, object]]:
        f = Feed()
        for i in range(0, 8 * 60, 20):
            n = i // 20
            v = 85.0 if n % bad_every == bad_every - 1 else 21.0  # the sensor's reset value
            _rooms(f, T0 + i * MIN, {"h1": v, **NEIGHBOURS})
        return [(x.household, x.context["reason"]) for x in f.out
                if x.rule == "sensor_fault" and x.state == "firing"]

    assert run(2) == [("h1", "intermittent")]
    assert run(10) == []  # one in ten: a glitch


def test_a_concentrator_that_did_not_answer_is_not_each_sensors_intermittent_fault() -> None:
    """Every room reading of a message bad at once is the device's silence (the gateway publishes
    a failed read as quality bad for each of its points), not each sensor's fault: a concentrator
    that missed three polls in twelve, or a demo restarted three times before its simulator
    listened, flagged every sensor behind it "intermittent" (36 sensor_fault on the demo's three
    stations). A sensor bad among its good neighbours still counts."""
    def bad(h: str) -> Sample:
        return Sample(point="room_temp", unit="°C", building="b01", household=h, value=None, quality="bad")

    f = Feed()
    sensors = {"h1": 21.0, **NEIGHBOURS}
    for n in range(24):
        t = T0 + n * 20 * MIN
        if n in (3, 6, 9):  # the concentrator did not answer: every room of the message bad
            f.seq += 1
            f.out += f.engine.observe(Frame(f.station, f.gateway, "0badc0de", f.seq, t, False,
                                            [bad(h) for h in sensors]), t)
        elif n in (13, 16, 19):  # h1 alone reads bad, its neighbours answer
            _rooms(f, t, dict(NEIGHBOURS))
            f.seq += 1
            f.out += f.engine.observe(Frame(f.station, f.gateway, "0badc0de", f.seq, t + 1, False,
                                            [bad("h1")]), t + 1)
        else:
            _rooms(f, t, sensors)
    faults = [(x.household, x.context["reason"], (x.ts - T0) // (20 * MIN)) for x in f.out
              if x.rule == "sensor_fault" and x.state == "firing"]
    assert faults == [("h1", "intermittent", 19)]


def test_an_outage_open_before_a_restart_stays_open_until_the_station_is_heard() -> None:
    f = Feed()
    f.frame(T0, secondary_supply_temp=55.0)
    for m in range(1, 10):
        f.out += f.engine.tick(T0 + m * MIN)
    assert [x.rule for x in f.pages()] == ["station_offline"]
    g = Feed()
    g.engine.restore(f.engine.snapshot())
    for m in range(20, 40):  # the grace after the restart does not "recover" it
        g.out += g.engine.tick(T0 + m * MIN)
    assert not [x for x in g.out if x.rule == "station_offline"]
    g.frame(T0 + 40 * MIN, secondary_supply_temp=55.0)
    assert [(x.state, x.page) for x in g.out if x.rule == "station_offline"] == [("resolved", True)]
