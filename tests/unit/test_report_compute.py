"""The takeover report's pure figures (report/compute.py) on constructed inputs: periods and
seasons, totalizer deltas, runs and refund bands, gaps, service durations, the remote-control
seam on constructed command rows, and the asset register's heated-area columns."""

from __future__ import annotations

import datetime as dt

import pytest

from alerting.assets import ImportProblems, parse
from alerting.rows import AlertRow, BuildingRow, StationRow, TicketEvent
from contract.alerts import AlertRules
from report import compute
from report.compute import DAY_MS, HOUR_MS, Inputs, RoomTotal
from report.model import CommandRow, RefundBand, ReportSettings

RULES = AlertRules()
TZ = dt.timezone(dt.timedelta(hours=8))


def ms(*a: int) -> int:
    return int(dt.datetime(*a, tzinfo=TZ).timestamp() * 1000)  # type: ignore[misc]


def test_periods_are_local_months_days_and_seasons() -> None:
    p = compute.parse_period("2026-11", RULES)
    assert (p.start, p.end) == (ms(2026, 11, 1), ms(2026, 12, 1))
    p = compute.parse_period("2026-12", RULES)
    assert p.end == ms(2027, 1, 1)
    p = compute.parse_period("2026-11-15..2027-03-15", RULES)
    assert (p.start, p.end) == (ms(2026, 11, 15), ms(2027, 3, 16))
    p = compute.parse_period("season:2026", RULES)
    assert (p.start, p.end) == (ms(2026, 11, 15), ms(2027, 3, 16)) and "2026/27" in p.title
    for bad in ("2026-13", "2026-11-30..2026-11-01", "november", "season:x"):
        with pytest.raises(ValueError, match="period"):
            compute.parse_period(bad, RULES)


def test_the_season_part_of_a_month_and_cold_days_leave_the_analysis() -> None:
    p = compute.parse_period("2026-11", RULES)
    assert compute.season_ranges(p, RULES) == [(ms(2026, 11, 15), ms(2026, 12, 1))]
    cold = {ms(2026, 11, 20): -9.0, ms(2026, 11, 21): -5.0}
    assert compute.analysis_ranges(p, RULES, cold, p.end) == [
        (ms(2026, 11, 15), ms(2026, 11, 20)), (ms(2026, 11, 21), ms(2026, 12, 1))]
    # a period not over yet is analysed up to now
    assert compute.analysis_ranges(p, RULES, {}, ms(2026, 11, 16, 5, 30)) == [
        (ms(2026, 11, 15), ms(2026, 11, 16, 6))]


def test_makeup_from_totalizer_deltas_rollover_replacement_gaps_and_limit() -> None:
    h0 = ms(2026, 12, 1)
    rules = AlertRules.model_validate({"makeup": {"networks": {"secondary": {"rollover": 1000.0}}}})
    rows: list[tuple[int, float | None, float | None]] = [
        (h0, 990.0, 100.0),
        (h0 + HOUR_MS, 993.0, 100.0),  # 3 m³ in an hour of 100 m³ circulation
        (h0 + 2 * HOUR_MS, 1.0, 100.0),  # rolled over: 8 m³
        (h0 + 3 * HOUR_MS, 500.0, 100.0),  # a new meter (a step no pipe carries): dropped
        (h0 + 4 * HOUR_MS, 502.0, None),  # no circulation measured: counted, not judged
        (h0 + 7 * HOUR_MS, 505.0, 100.0),  # across a 3-h gap: counted, not judged
        (h0 + 8 * HOUR_MS, 506.0, 100.0),
    ]
    n = compute.network_makeup(rules, "st001", "secondary", rows, area=20_000.0)
    assert n.makeup_m3 == pytest.approx(3 + 8 + 2 + 3 + 1)
    assert n.judged_makeup_m3 == pytest.approx(12) and n.circulation_m3 == pytest.approx(300)
    assert n.rate_pct == pytest.approx(4.0) and n.passed is False and n.margin_pp == pytest.approx(2.0)
    assert n.meter_events == 1 and n.judged_hours == 3
    days = 8 / 24 + 1 / 24
    assert n.daily_t_per_10k_m2 == pytest.approx(17 / days / 20_000 * 10_000, rel=1e-3)
    # no area, no figure per area; a reset without a known roll-over is not water
    n = compute.network_makeup(AlertRules(), "st001", "secondary", rows[:3], area=None)
    assert n.daily_t_per_10k_m2 is None and n.meter_events == 1 and n.makeup_m3 == pytest.approx(3)


def test_maintenance_hours_are_not_judged() -> None:
    h0 = ms(2026, 12, 1)
    rules = AlertRules.model_validate({"maintenance": [{
        "station": "st001", "start": "2026-12-01T02:30+08:00", "end": "2026-12-01T03:00+08:00",
        "reason": "pressure test"}]})
    rows: list[tuple[int, float | None, float | None]] = [
        (h0, 0.0, 100.0), (h0 + HOUR_MS, 1.0, 100.0), (h0 + 2 * HOUR_MS, 20.0, 100.0)]
    n = compute.network_makeup(rules, "st001", "secondary", rows, None)
    assert n.excluded_m3 == pytest.approx(19.0) and n.rate_pct == pytest.approx(1.0)


BANDS = [RefundBand(name="≤ 2 K", above_k=0, up_to_k=2, refund_pct=10),
         RefundBand(name="2–6 K", above_k=2, up_to_k=6, refund_pct=50),
         RefundBand(name="> 6 K", above_k=6, refund_pct=100)]


def _inputs(**kw: object) -> Inputs:
    p = compute.parse_period("2026-12", RULES)
    i = Inputs(period=p, rules=RULES, settings=ReportSettings(refund_bands=BANDS), data_end=p.end,
               generated_at=p.end, daily_outdoor={}, analysis=[(p.start, p.end)])
    for k, v in kw.items():
        setattr(i, k, v)
    return i


def test_runs_bands_and_fault_hours() -> None:
    h0 = ms(2026, 12, 2)
    k = ("st001", "b01", "b01-0101")
    long_run = [(h0 + n * HOUR_MS, 15.0) for n in range(30)]  # 30 h at 15 °C: 3 K short
    short_run = [(h0 + (40 + n) * HOUR_MS, 10.0) for n in range(5)]  # 5 h at 10 °C: too short
    fault = [(h0 + 29 * HOUR_MS, 15.0), (h0 + 100 * HOUR_MS, 19.0)]  # one low, one passing hour
    i = _inputs(room_totals={k: RoomTotal(hours=500, passing={18.0: 465})},
                room_low={k: long_run + short_run}, room_fault_hours={k: fault})
    part = compute.rooms_part(i, ["st001"])
    st = part.stations[0]
    assert (st.hours, st.passing, st.fault_hours) == (498, 464, 2)
    assert st.bands == {"≤ 2 K": 0, "2–6 K": 1, "> 6 K": 0}
    low = part.longest[0]
    assert (low.hours_below, low.longest_h, low.longest_from) == (34, 29, h0)
    assert low.band == "2–6 K" and low.refund_pct == 50 and low.coldest_c == 10.0
    # a run of exactly refund_after_h does not count ("unresolved > 24 h")
    i = _inputs(room_totals={k: RoomTotal(24, {18.0: 0})}, room_low={k: long_run[:24]})
    assert compute.rooms_part(i, ["st001"]).longest[0].band is None


def test_gaps_and_the_dominant_rate() -> None:
    h0 = ms(2026, 12, 1)
    present = [h0 + n * HOUR_MS for n in (0, 1, 2, 5, 6, 9)]
    gs = compute.gaps(present, h0, h0 + 10 * HOUR_MS)
    assert [(g.start, g.hours) for g in gs] == [(h0 + 3 * HOUR_MS, 2), (h0 + 7 * HOUR_MS, 2)]
    assert compute.gaps([], h0, h0 + DAY_MS)[0].hours == 24
    assert compute.dominant([6, 6, 6, 3, 0, 0, 0, 0, 6, 2]) == 6
    assert compute.dominant([0, 0]) is None


def alert(id: int, rule: str, station: str, severity: str, since: int, fired_at: int | None,
          ack_at: int | None, resolved_at: int | None) -> AlertRow:
    return AlertRow(id=id, key=f"{rule}:{station}", rule=rule, state="firing", severity=severity,
                    station=station, building=None, household=None, gateway=None, subject=None, since=since,
                    last_ts=since, fired_at=fired_at, resolved_at=resolved_at, value=None, summary="",
                    context={}, quiet="", paged=True, ack_by=None, ack_at=ack_at, ack_note=None,
                    ack_ticket=None, tickets=[], resolved_by=None)


def test_service_durations_and_tickets() -> None:
    t0 = ms(2026, 12, 3)
    alerts = [
        alert(1, "room_low", "st001", "warning", t0, t0 + 7_200_000, t0 + 7_200_000 + 10 * 60_000,
              t0 + 86_400_000),
        alert(2, "makeup_rate", "st001", "major", t0, t0, t0 + 30 * 60_000, None),
        alert(3, "room_low", "st002", "warning", ms(2026, 11, 3), None, None, None),  # before the period
    ]
    events = [TicketEvent(alert_id=2, ts=t0 + 30 * 60_000, kind="ack", actor="li", ticket="T-1",
                          note="caller on line", station="st001", rule="makeup_rate")]
    part = compute.service_part(_inputs(alerts=alerts, ticket_events=events), ["st001", "st002"])
    assert part.raised == 2 and part.by_rule == {"makeup_rate": 1, "room_low": 1}
    assert part.to_acknowledge.median_min == 20.0 and part.to_acknowledge.p90_min == 30.0
    assert part.to_resolve.n == 1 and part.to_resolve.median_min == 1440.0
    assert [t.ticket for t in part.tickets] == ["T-1"] and part.stations[0].tickets == 1
    assert part.stations[1].raised == 0
    assert compute.durations([]).median_min is None


def test_remote_control_on_constructed_command_rows() -> None:
    p = compute.parse_period("2026-12", RULES)
    inside = p.start + DAY_MS

    def cmd(i: int, station: str, building: str | None, outcome: str, at: int = inside,
            point: str = "building_valve_setpoint", household: str | None = None) -> CommandRow:
        return CommandRow(id=f"c{i}", station=station, building=building, household=household, point=point,
                          outcome=outcome, issued_at=at, finished_at=at + 1000 * i, ticket=f"T-{i}")

    rows = [cmd(1, "st001", "b01", "confirmed"), cmd(2, "st001", "b02", "failed"),
            cmd(3, "st001", "b03", "confirmed", at=p.start - 1),  # before the period
            cmd(4, "st002", "b01", "confirmed"),  # a valve not announced writable
            cmd(5, "st001", None, "confirmed", point="secondary_supply_temp_setpoint"),
            cmd(6, "st001", "b01", "expired"),
            cmd(7, "st001", "b02", "mismatch"),  # written, read back otherwise: proves nothing
            cmd(8, "st001", "b03", "confirmed", household="b03-0101", point="x_room_valve"),
            cmd(9, "st001", "b01", "confirmed", at=inside - 500),  # issued first, answered after c1
            cmd(10, "st001", "b03", "confirmed", at=p.end)]  # after the period
    controllable = {"st001": {"b01", "b02", "b03"}}
    part = compute.remote_part(controllable, rows, p.start, p.end, ["st001", "st002"],
                               {"st001": "announced"})
    assert part.wired and part.controllable == 3 and part.proven == 1
    assert part.commands == {"confirmed": 5, "expired": 1, "failed": 1, "mismatch": 1}
    st1 = part.stations[0]
    assert st1.proven == ["b01"] and st1.controllable == ["b01", "b02", "b03"] and st1.source == "announced"
    # the first answered, not the first issued
    assert [(x.building, x.command, x.ticket) for x in part.proofs] == [("b01", "c1", "T-1")]
    assert part.stations[1].proven == [] and part.stations[1].commands == {"confirmed": 1}
    assert part.stations[1].source is None
    unwired = compute.remote_part(controllable, None, p.start, p.end, ["st001"])
    assert not unwired.wired and unwired.commands == {} and unwired.controllable == 3


def test_controllable_valves_announced_before_config() -> None:
    plans = {"st001": compute.StationPlan("st001", {}, {"b01", "b02"}),
             "st002": compute.StationPlan("st002", {}, {"b01"})}
    got = compute.controllable_valves(plans, {"st002": set(), "st003": {"b07"}})
    assert got == {"st001": ({"b01", "b02"}, "config"), "st002": (set(), "announced"),
                   "st003": ({"b07"}, "announced")}
    assert compute.controllable_valves(plans, None)["st002"] == ({"b01"}, "config")


HEADER = "station,station_name,building,address,household,unit,room,sensor,building_area_m2,station_area_m2\n"


def test_asset_register_heated_area_columns() -> None:
    a = parse(HEADER + "st001,幸福里,b01,幸福里3号楼,H1,1,101,,5200,\n"
                       "st001,幸福里,b01,幸福里3号楼,H2,1,201,,,\n"
                       "st001,幸福里,b02,幸福里4号楼,H3,1,101,,\"4,800\",\n"
                       "st002,和平,b01,和平1号楼,H4,1,101,,,30000\n")
    assert a.buildings[("st001", "b01")]["heated_area_m2"] == 5200.0
    assert a.buildings[("st001", "b02")]["heated_area_m2"] == 4800.0
    assert a.buildings[("st002", "b01")]["heated_area_m2"] is None
    assert a.stations["st002"]["heated_area_m2"] == 30000.0 and a.stations["st001"]["heated_area_m2"] is None
    with pytest.raises(ImportProblems) as e:
        parse(HEADER + "st001,x,b01,a,H1,1,101,,5200,\nst001,x,b01,a,H2,1,102,,5300,\n"
                       "st001,x,b02,b,H3,1,101,,-5,\n")
    assert e.value.problems == [
        "line 3: building st001/b01 has building_area_m2 5300 here but 5200 on line 2",
        "line 4: building_area_m2: -5 m² is not between 0 and 10,000,000"]
    # a register without the columns leaves areas alone (no key to write)
    a = parse("station,building,address,household\nst001,b01,a,H1\n")
    assert "heated_area_m2" not in a.buildings[("st001", "b01")]


def test_station_area_is_registered_or_the_sum_of_every_building() -> None:
    def b(station: str, building: str, area: float | None) -> BuildingRow:
        return BuildingRow(station=station, building=building, address="", heated_area_m2=area)

    i = _inputs(station_register={"st001": StationRow("st001", "", None, None),
                                  "st002": StationRow("st002", "", None, 9000.0)},
                building_register={("st001", "b01"): b("st001", "b01", 100.0),
                                   ("st001", "b02"): b("st001", "b02", 200.0),
                                   ("st003", "b01"): b("st003", "b01", 100.0),
                                   ("st003", "b02"): b("st003", "b02", None)})
    assert compute.station_area(i, "st001") == 300.0
    assert compute.station_area(i, "st002") == 9000.0
    assert compute.station_area(i, "st003") is None  # one building unknown: the sum would lie
