"""The takeover report on real InfluxDB: a simulated December 2025 (three stations, 10-minute samples,
the simulator's physics, heatwatch/season.py) with known leaks, cold rooms, sensor faults, an
outage and two days colder than the design temperature, written with the collector's encoder and
judged by the rule engine into a real alert store. Every figure the report gives is checked
against a computation in this file from the raw samples the season wrote — plain Python over
the samples, sharing no code with report/compute.py or InfluxDB's aggregation — and against
what the scenario makes known (which station leaks, which building was cold, how long the link
was down). Each figure twice: from the raw data, and from a copy of it that `heatwatch influx
setup` rolled up (the report then reads the 1-hour rollup) — the two reports are the same."""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import itertools
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import yaml
from fastapi.testclient import TestClient
from openpyxl import load_workbook
from PIL import Image

from alerting.assets import parse
from alerting.commands import CommandStore, NewCommand
from alerting.registry import SiteRegistry
from alerting.store import Store
from api.app import create_app
from api.influx import InfluxReader
from collector.lifecycle import setup
from contract.alerts import AlertRules
from contract.commands import CommandResult
from contract.config import InfluxSettings, LifecycleSettings, load_api_config, load_gateway_config
from dashboards import build
from heatwatch.devstack import REPO, Influxd
from heatwatch.season import StationSpec, Truth, influx_writer, run
from report import source
from report.model import RefundBand, Report, ReportSettings
from simulator.physics import Event
from tests.conftest import influx_query, write_gateway_config
from tests.control_helpers import write_keys

H, D = 3_600_000, 86_400
TZ = dt.timezone(dt.timedelta(hours=8))
START = dt.datetime(2025, 12, 1, tzinfo=TZ)  # a past month: the API reports up to now
P0 = int(START.timestamp() * 1000)
P1 = int(dt.datetime(2026, 1, 1, tzinfo=TZ).timestamp() * 1000)
NOW = P1 + 5 * D * 1000  # the report is made in January: December is over
COLD_SNAPS = (17, 18)  # Dec 18 and 19: 12 K colder, below the design −7.6 °C
LINK_DOWN = (7 * D, 7 * D + 30 * 3600)  # st003 silent from Dec 8 00:00 for 30 h
BANDS = [RefundBand(name="≤ 2 K", above_k=0, up_to_k=2, refund_pct=10),
         RefundBand(name="2–6 K", above_k=2, up_to_k=6, refund_pct=50),
         RefundBand(name="> 6 K", above_k=6, refund_pct=100)]
ACK_AFTER_MIN = 15
PERIOD = "2025-12"
# st002's b01-0301 reads an implausible 1 °C (flagged uncertain) two samples an hour on Dec 5,
# 10:00–22:00, and every sample 22:00–24:00: those hours' plausible mean is the other readings',
# the last two have none. An hourly mean over every reading would make ten warm hours cold.
ODD_SENSOR = ("st002", "b01", "b01-0301")
ODD_FROM = P0 + 4 * D * 1000 + 10 * H


@dataclass
class Season:
    truth: Truth
    store: Store
    influx: Influxd
    database: str
    ctx: source.Context
    report: Report
    rolled: Report  # the same season read from the 1-hour rollup
    rolled_db: str
    tickets: list[str]
    folder: Path
    api_config: Path
    commands: Commands


def _register() -> str:
    rows = ["station,station_name,building,address,household,unit,room,sensor,"
            "building_area_m2,station_area_m2"]
    for b, area in (("b01", 5200), ("b02", 4800), ("b03", 6100)):  # st001: every building measured
        for f in (1, 3, 5, 7):
            rows.append(f"st001,幸福里换热站,{b},幸福里小区{b[-1]}号楼,S1-{b}-{f},1,{f}01,{b}-0{f}01,{area},")
    for b in ("b01", "b02", "b03"):  # st002: only the station's total; one household without a sensor
        for f in (1, 2, 3, 4):
            sensor = "" if (b, f) == ("b03", 4) else f"{b}-{f:02d}01"
            rows.append(f"st002,和平里换热站,{b},和平里{b[-1]}号楼,S2-{b}-{f},2,{f}01,{sensor},,42000")
    return "\n".join(rows) + "\n"  # st003: not in the register at all


@pytest.fixture(scope="module")
def season(tmp_path_factory: pytest.TempPathFactory, influxd: Influxd) -> Iterator[Season]:
    folder = tmp_path_factory.mktemp("report")
    store = Store(f"sqlite:///{folder / 'alerts.sqlite'}")
    store.migrate()
    SiteRegistry(store.db).import_assets(parse(_register()), actor="test", now=P0)
    gw = load_gateway_config(_with_control(write_gateway_config(
        folder / "gw", "st001", mqtt_port=1883, plc_port=15011, bus_port=15012, fast_s=600, slow_s=600)))
    specs = [
        StationSpec("st001", config=gw, events=[
            Event("cold_building", 4 * D, 8 * D, building="b02"),  # 4 days ~14.5 °C: refund band 2–6 K
            Event("cold_household", 11 * D, 12 * D + 12 * 3600, household="b01-0301"),
            Event("stuck_sensor", 20 * D, 24 * D, point="room_temp", building="b01", household="b01-0101"),
            Event("broken_sensor", 25 * D, 26 * D, point="room_temp", building="b03", household="b03-0501"),
        ]),
        StationSpec("st002", events=[Event("slow_leak", 0, None),  # +3 m³/h all month: 2.9 % > 2 %
                                     Event("open_window", 9 * D, 9 * D + 7200, household="b02-0201")]),
        StationSpec("st003", events=[Event("link_down", *LINK_DOWN),
                                     Event("theft", 14 * D, 20 * D),
                                     Event("cold_building", 2 * D, 3 * D, building="b01")]),
    ]
    database = "report_season"
    truth = run(specs, START, 31, step_s=600, rules=AlertRules(), cold_snaps=COLD_SNAPS,
                write=influx_writer(influxd.url, database), store=store)
    _implausible(influxd, database, truth)
    # the dispatch room answers: every fired alert of the big rules acknowledged 15 min after it
    # fired, with the hotline ticket of the caller; one note with a ticket as well
    tickets = []
    for a in store.query(limit=500).rows:
        if a["fired_at"] is not None and a["rule"] in ("makeup_rate", "building_low", "room_low"):
            t = f"HL-{a['id']:04d}"
            store.acknowledge(a["id"], actor="disp-li", now=a["fired_at"] + ACK_AFTER_MIN * 60_000,
                              note="caller reports cold rooms", ticket=t)
            tickets.append(t)
    commands = _commands(store)
    first = store.query(limit=1, rule=["makeup_rate"]).rows[0]
    store.add_note(first["id"], actor="eng-wang", now=first["fired_at"] + 3 * H, note="valve found open",
                   ticket="HL-9999")
    tickets.append("HL-9999")
    ctx = source.Context(settings=ReportSettings(company="幸福热力公司", refund_bands=BANDS),
                         rules=AlertRules(), plans=source.plans_from([gw]))
    rep = _report(influxd, database, store, ctx)
    # a copy of the raw data, rolled up by `heatwatch influx setup` as a site does it
    rolled_db = f"{database}_rolled"
    _copy(influxd, database, rolled_db)
    _influx_setup(influxd, rolled_db, folder / "rolled")
    rolled = _report(influxd, rolled_db, store, ctx)
    # the same settings as files, for the API and the command line
    (folder / "report.yaml").write_text(yaml.safe_dump({
        "kind": "report", "company": "幸福热力公司", "gateways": ["gw/st*.yaml"],
        "refund_bands": [b.model_dump() for b in BANDS]}, allow_unicode=True))
    api_config = folder / "api.yaml"
    api_config.write_text(yaml.safe_dump({
        "kind": "api", "influx": {"url": influxd.url, "database": database},
        "store": f"sqlite:///{folder / 'alerts.sqlite'}", "report": "report.yaml"}))
    yield Season(truth, store, influxd, database, ctx, rep, rolled, rolled_db, tickets, folder, api_config,
                 commands)
    store.close()


def _with_control(path: Path) -> Path:
    """st001's gateway takes remote commands (a control: block): the entrance valve setpoints its
    map makes writable (b01–b03) are what it announces."""
    _, _, public = write_keys(path.parent / "keys")
    cfg = yaml.safe_load(path.read_text())
    cfg["control"] = {"public_keys": [str(public)], "ledger": str(path.parent / "ledger.sqlite")}
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


@dataclass
class Commands:
    """What the season's commands make known: outcome of each command issued in December."""

    outcomes: dict[str, str]  # command id → its state as the API shows it
    proof: str  # the command that proved st001's b01


def _commands(store: Store) -> Commands:
    """Remote commands through the command store's own calls, as the API creates, confirms, claims
    and marks them sent and the collector records the gateways' results: st001's b01 valve
    confirmed twice (the first proves it), b02's failed and another read back otherwise, b03's
    refused by the gateway and one sent with no answer ever; a station-wide setpoint confirmed by
    a second engineer and written, another never confirmed; st003's gateway answering a command
    this API never issued (origin broker); b03's confirmed in November (not this period)."""
    cs = CommandStore(store.db.engine)
    t = P0 + 2 * D * 1000

    def new(cid: str, at: int, building: str | None, point: str = "building_valve_setpoint",
            value: float = 70.0) -> None:
        cs.create(NewCommand(id=cid, station="st001", device="plc", point=point, building=building,
                             household=None, value=value, old_value=60.0, needs_confirmation=building is None,
                             issuer="eng-wang", reason="rooms at 16 °C", ticket=f"HL-{cid}", created_at=at,
                             deadline=at + 300_000, payload=None if building is None else b"signed"))

    def result(cid: str, at: int, building: str | None, state: str, station: str = "st001",
               point: str = "building_valve_setpoint", **kw: object) -> CommandResult:
        return CommandResult.model_validate({
            "id": cid, "station": station, "gateway": f"gw-{station}", "state": state, "device": "plc",
            "point": point, "building": building, "value": 70.0, "ts": at + 2_000, **kw})

    plan = [("c-b01", t, "b01", "confirmed", {"read_back": 70.0}),
            ("c-b02", t + H, "b02", "failed", {"reason": "modbus_exception", "code": 4}),
            ("c-b02-mismatch", t + 2 * H, "b02", "mismatch", {"read_back": 65.0}),
            ("c-b03", t + 3 * H, "b03", "rejected", {"reason": "step"}),
            ("c-b01-again", t + 5 * D * 1000, "b01", "confirmed", {"read_back": 70.0})]
    for cid, at, b, state, kw in plan:
        new(cid, at, b)
        cs.mark_sent(cid, at + 100)
        cs.record_results([result(cid, at, b, state, **kw)], at + 2_100)
    new("c-b03-silent", t + 4 * H, "b03")  # sent; the gateway never answered
    cs.mark_sent("c-b03-silent", t + 4 * H + 100)
    sp = "secondary_supply_temp_setpoint"
    new("c-supply", t + 6 * H, None, sp, 55.0)
    cs.confirm("c-supply", actor="eng-li", now=t + 6 * H + 60_000)
    cs.set_payload("c-supply", b"signed")
    cs.mark_sent("c-supply", t + 6 * H + 60_100)
    cs.record_results([result("c-supply", t + 6 * H + 60_000, None, "confirmed", point=sp, read_back=55.0)],
                      t + 6 * H + 62_000)
    new("c-supply-unconfirmed", t + 7 * H, None, sp, 56.0)
    assert cs.claim(t + 8 * H) == []  # the sender's next turn expires it: not confirmed in time
    cs.record_results([result("c-st003", t + 8 * H, "b01", "confirmed", station="st003", read_back=70.0)],
                      t + 8 * H + 2_100)
    new("c-november", P0 - 3 * D * 1000, "b03")
    cs.mark_sent("c-november", P0 - 3 * D * 1000 + 100)
    cs.record_results([result("c-november", P0 - 3 * D * 1000, "b03", "confirmed", read_back=70.0)], P0)
    return Commands({"c-b01": "confirmed", "c-b02": "failed", "c-b02-mismatch": "mismatch",
                     "c-b03": "rejected", "c-b01-again": "confirmed", "c-b03-silent": "unknown",
                     "c-supply": "confirmed", "c-supply-unconfirmed": "expired", "c-st003": "confirmed"},
                    "c-b01")


def _report(influxd: Influxd, database: str, store: Store, ctx: source.Context) -> Report:
    reader = InfluxReader(InfluxSettings(url=influxd.url, database=database))

    async def make() -> Report:
        try:
            return await source.report(reader.query_many, store, ctx, PERIOD, NOW, database=database)
        finally:
            await reader.close()

    return asyncio.run(make())


def _implausible(influxd: Influxd, database: str, truth: Truth) -> None:
    """Overwrite some of ODD_SENSOR's readings with 1 °C, flagged as the gateway flags a reading
    outside the plausible range; the truth records them as it records every uncertain reading."""
    st, b, h = ODD_SENSOR
    odd = {t for t, _ in truth.rooms[ODD_SENSOR] if ODD_FROM <= t < ODD_FROM + 14 * H
           and (t >= ODD_FROM + 12 * H or (t - ODD_FROM) % H < 20 * 60_000)}
    assert len(odd) == 12 * 2 + 2 * 6
    lines = [f"household,station={st},building={b},household={h} "
             f'room_temp=1.0,room_temp_quality="uncertain" {t}' for t in sorted(odd)]
    r = httpx.post(f"{influxd.url}/write", params={"db": database, "precision": "ms"},
                   content="\n".join(lines))
    assert r.status_code == 204, r.text
    truth.rooms[ODD_SENSOR] = [(t, None if t in odd else v) for t, v in truth.rooms[ODD_SENSOR]]


def _copy(influxd: Influxd, src: str, dst: str) -> None:
    for q in (f'CREATE DATABASE "{dst}"',
              f'SELECT * INTO "{dst}"."autogen".:MEASUREMENT FROM "{src}"."autogen"./.*/ GROUP BY *'):
        r = httpx.post(f"{influxd.url}/query", params={"db": src, "q": q}, timeout=120)
        assert r.status_code == 200 and "error" not in r.json()["results"][0], r.text


def _influx_setup(influxd: Influxd, database: str, folder: Path) -> str:
    """`heatwatch influx setup` on a collector config for ``database``: the rollups' retention
    policies and continuous queries, backfilled over the raw data (kept ten years here: the
    season is a year old)."""
    folder.mkdir(parents=True, exist_ok=True)
    cfg = folder / "collector.yaml"
    cfg.write_text(yaml.safe_dump({
        "kind": "collector", "influx": {"url": influxd.url, "database": database, "lifecycle": {
            "raw_days": 3650, "rollup_5m_days": 3650, "rollup_1h_days": 3650, "setup_at_start": False}},
        "spool": {"path": str(folder / "spool.sqlite")}}))
    p = subprocess.run([sys.executable, "-m", "heatwatch", "influx", "setup", str(cfg)], capture_output=True,
                       text=True, cwd=REPO, timeout=600)
    assert p.returncode == 0, p.stderr
    assert "backfilled: rollup_1h" in p.stdout, p.stdout
    return p.stdout


@pytest.fixture(params=["raw", "rollup"])
def rep(season: Season, request: pytest.FixtureRequest) -> Report:
    """The report from the raw data, and from the 1-hour rollup: every figure checked for both."""
    return season.report if request.param == "raw" else season.rolled


# -- the independent computation: plain Python over the samples the season wrote --------------
def _hour(t: int) -> int:
    return t - t % H


def _local_day(t: int) -> int:
    return (t + 8 * H) // (24 * H)


def _cold_days(truth: Truth) -> set[int]:
    by_day: dict[int, list[float]] = defaultdict(list)
    for (_, p), xs in truth.station.items():
        if p == "outdoor_temp":
            for t, v in xs:
                by_day[_local_day(t)].append(v)
    return {d for d, vs in by_day.items() if sum(vs) / len(vs) < AlertRules().design_outdoor_temp}


def _fault_hours(store: Store) -> dict[tuple[str, str, str], set[int]]:
    out: dict[tuple[str, str, str], set[int]] = defaultdict(set)
    for a in store.query(rule=["sensor_fault"], limit=500).rows:
        if a["household"] is None:
            continue
        end = a["resolved_at"] if a["resolved_at"] is not None else P1
        h = _hour(a["since"])
        while h < end:
            out[(a["station"], a["building"], a["household"])].add(h)
            h += H
    return out


@dataclass
class Room:
    hours: int
    passing: int
    low: list[tuple[int, float]]


def _rooms(s: Season) -> dict[tuple[str, str, str], Room]:
    cold = _cold_days(s.truth)
    faults = _fault_hours(s.store)
    out = {}
    for k, xs in s.truth.rooms.items():
        by_hour: dict[int, list[float]] = defaultdict(list)
        for t, v in xs:
            if v is not None and 5 <= v <= 35:
                by_hour[_hour(t)].append(v)
        hours = passing = 0
        low = []
        for h, vs in sorted(by_hour.items()):
            if not P0 <= h < P1 or _local_day(h) in cold or h in faults.get(k, set()):
                continue
            m = sum(vs) / len(vs)
            hours += 1
            passing += m >= 18.0
            if m < 18.0:
                low.append((h, m))
        out[k] = Room(hours, passing, low)
    return out


def _runs(low: list[tuple[int, float]]) -> list[list[tuple[int, float]]]:
    out: list[list[tuple[int, float]]] = []
    for h, m in low:
        if out and h == out[-1][-1][0] + H:
            out[-1].append((h, m))
        else:
            out.append([(h, m)])
    return out


def _band(low: list[tuple[int, float]]) -> str | None:
    best: RefundBand | None = None
    for r in _runs(low):
        if len(r) <= 24:
            continue
        short = 18.0 - statistics.median(m for _, m in r)
        b = next(b for b in BANDS if short > b.above_k and (b.up_to_k is None or short <= b.up_to_k))
        if best is None or b.refund_pct > best.refund_pct:
            best = b
    return best.name if best else None


# -- the checks -----------------------------------------------------------------------------
def test_period_and_cold_days(season: Season, rep: Report) -> None:
    p = rep.period
    assert (p.start, p.end, p.data_end) == (P0, P1, P1)
    assert p.cold_days == ["2025-12-18", "2025-12-19"]  # the scenario's cold snap, and only it
    assert {dt.date(1970, 1, 1) + dt.timedelta(days=d) for d in _cold_days(season.truth)} == {
        dt.date(2025, 12, 18), dt.date(2025, 12, 19)}
    assert rep.company == "幸福热力公司" and rep.stations == ["st001", "st002", "st003"]


def test_makeup_against_the_raw_totalizer(season: Season, rep: Report) -> None:
    by = {s.station: s for s in rep.makeup.stations}
    truth = season.truth
    for st in ("st001", "st002", "st003"):
        last: dict[int, float] = {}
        for t, v in truth.station[(st, "makeup_total")]:
            last[_hour(t)] = v  # samples come in time order: the hour's last wins
        flows: dict[int, list[float]] = defaultdict(list)
        for t, v in truth.station[(st, "secondary_flow")]:
            flows[_hour(t)].append(v)
        vol = judged = circ = 0.0
        for a, b in itertools.pairwise(sorted(last)):
            d = last[b] - last[a]
            vol += d
            if b - a == H and flows[b]:
                judged += d
                circ += sum(flows[b]) / len(flows[b])
        n = by[st].networks[0]
        assert n.makeup_m3 == pytest.approx(vol, abs=2e-3)
        assert n.judged_makeup_m3 == pytest.approx(judged, abs=2e-3)
        assert n.circulation_m3 == pytest.approx(circ, abs=0.1)
        assert n.rate_pct == pytest.approx(100 * judged / circ, abs=1e-3)
        days = (max(last) - min(last)) / (24 * H) + 1 / 24
        area = {"st001": 5200 + 4800 + 6100, "st002": 42000}.get(st)
        if area is None:
            assert n.daily_t_per_10k_m2 is None
        else:
            assert n.daily_t_per_10k_m2 == pytest.approx(vol / days / area * 10_000, rel=1e-4)
    # what the scenario makes known: ~0.4 % of circulation at rest; st002's 3 m³/h leak ≈ +2.5 %
    s1, s2, s3 = (by[s].networks[0] for s in ("st001", "st002", "st003"))
    assert s1.passed and 0.3 < (s1.rate_pct or 0) < 0.5
    assert s2.passed is False and 2.7 < (s2.rate_pct or 0) < 3.1 and 0.7 < (s2.margin_pp or 0) < 1.1
    assert s3.passed and (s3.rate_pct or 0) > (s1.rate_pct or 0)  # the evening theft shows, under the limit
    mk = rep.makeup
    assert (mk.passing, mk.failing, mk.no_data) == (2, 1, 0)
    company = mk.company[0]
    assert company.rate_pct == pytest.approx(
        100 * sum(by[s].networks[0].judged_makeup_m3 for s in by) / sum(by[s].networks[0].circulation_m3
                                                                         for s in by), abs=1e-3)
    incidents = [(i.station, i.rule) for i in mk.incidents]
    assert ("st002", "makeup_rate") in incidents
    # the evening theft at st003 is above the limit for its hours: incidents there too, none at st001
    assert ("st003", "makeup_rate") in incidents or ("st003", "makeup_daily") in incidents
    assert not [i for i in mk.incidents if i.station == "st001"]


def test_room_pass_rate_bands_and_longest_against_the_raw_readings(season: Season, rep: Report) -> None:
    rooms = _rooms(season)
    part = rep.rooms
    for st in part.stations:
        mine = {k: r for k, r in rooms.items() if k[0] == st.station}
        hours, passing = sum(r.hours for r in mine.values()), sum(r.passing for r in mine.values())
        assert (st.hours, st.passing) == (hours, passing), st.station
        assert st.rate_pct == pytest.approx(100 * passing / hours, abs=1e-3)
        for b in st.buildings:
            bk = {k: r for k, r in mine.items() if k[1] == b.building}
            assert b.hours == sum(r.hours for r in bk.values())
            assert b.passing == sum(r.passing for r in bk.values())
            assert b.households_low == sum(1 for r in bk.values() if r.low)
        want: dict[str, int] = defaultdict(int)
        for r in mine.values():
            band = _band(r.low)
            if band:
                want[band] += 1
        assert st.bands == {b.name: want.get(b.name, 0) for b in BANDS}, st.station
    total_h = sum(r.hours for r in rooms.values())
    assert part.hours == total_h and part.passing == sum(r.passing for r in rooms.values())
    # the longest below 18 °C: hours, longest run and band as the raw readings give them
    for low in part.longest:
        r = rooms[(low.station, low.building, low.sensor)]
        assert low.hours_below == len(r.low)
        assert low.longest_h == max(len(x) for x in _runs(r.low))
        assert low.band == _band(r.low)
    order = sorted((k for k, r in rooms.items() if r.low),
                   key=lambda k: (-len(rooms[k].low), -max(len(x) for x in _runs(rooms[k].low)), k))
    assert [(x.station, x.building, x.sensor) for x in part.longest] == order[: len(part.longest)]
    # what the scenario makes known: st001's b02 was cold four days (≈ 14.5 °C: 2–6 K short), and
    # the sensor that stuck for four days and the broken one lost hours to sensor faults
    st1 = next(s for s in part.stations if s.station == "st001")
    assert st1.bands["2–6 K"] >= 4
    b02 = {x.sensor: x for x in part.longest if x.station == "st001" and x.building == "b02"}
    assert len(b02) == 4 and all(x.longest_h >= 90 and x.band == "2–6 K" for x in b02.values())
    assert st1.fault_hours > 0
    assert next(x for x in part.longest if x.sensor == "b02-0101").code == "S1-b02-1"


def test_information_management_against_the_raw_samples(season: Season, rep: Report) -> None:
    info = {s.station: s for s in rep.information.stations}
    hours = (P1 - P0) // H
    # st001 has a gateway config: every point polled every 600 s, 6 samples an hour each
    st1 = info["st001"]
    exp = 6 * hours
    keys = list(season.ctx.plans["st001"].per_hour)
    assert st1.source == "config"
    assert st1.expected == exp * len(keys)
    assert st1.received == sum(min(exp, season.truth.counts["st001"][k]) for k in keys)
    # the day b03-0501 read its fault sentinel: 144 bad readings, no values
    assert st1.expected - st1.received == 144
    assert st1.completeness_pct == pytest.approx(100 * st1.received / st1.expected, abs=1e-3)
    # st003 has none: its own dominant rate (6 an hour); the link was down 30 h
    st3 = info["st003"]
    assert st3.source == "data" and st3.expected == 6 * hours
    assert st3.received == season.truth.counts["st003"][("makeup_total", None, None)] == 6 * (hours - 30)
    assert st3.online_hours == hours - 30 and st3.gaps == 1 and st3.longest_gap_h == 30
    assert st3.gap_list[0].start == P0 + LINK_DOWN[0] * 1000
    assert info["st002"].completeness_pct == pytest.approx(100.0) and info["st002"].gaps == 0
    # sensor coverage against the register: st002's b03 has a household without a sensor
    cov = {b.building: b for b in info["st002"].buildings}
    assert (cov["b03"].households, cov["b03"].sensors_registered, cov["b03"].sensors_reporting) == (4, 3, 4)
    assert cov["b01"].coverage_pct == pytest.approx(100.0)
    assert [b.households for b in info["st003"].buildings] == [0, 0, 0]  # not registered
    assert all(b.sensors_reporting == 4 for b in info["st003"].buildings)


def test_service_against_the_store(season: Season, rep: Report) -> None:
    rows = [a for a in season.store.query(limit=500).rows if P0 <= a["since"] < P1]
    svc = rep.service
    assert svc.raised == len(rows)
    by_rule: dict[str, int] = defaultdict(int)
    for a in rows:
        by_rule[a["rule"]] += 1
    assert svc.by_rule == dict(sorted(by_rule.items()))
    acked = [a for a in rows if a["ack_at"] is not None]
    assert svc.to_acknowledge.n == len(acked) > 0
    assert svc.to_acknowledge.median_min == ACK_AFTER_MIN and svc.to_acknowledge.p90_min == ACK_AFTER_MIN
    resolved = [(a["resolved_at"] - a["since"]) / 60_000 for a in rows if a["resolved_at"] is not None]
    assert svc.to_resolve.n == len(resolved)
    assert svc.to_resolve.median_min == pytest.approx(statistics.median(resolved), abs=0.01)
    assert sorted(t.ticket for t in svc.tickets) == sorted(season.tickets)
    per = {s.station: s for s in svc.stations}
    assert sum(s.tickets for s in per.values()) == len(season.tickets)
    assert per["st003"].by_rule.get("station_offline") == 1


def test_remote_control_from_the_commands_table(season: Season, rep: Report) -> None:
    """Controllable: the buildings whose valve st001's gateway config maps writable under its
    control: block; proven: b01, by the first of its two confirmed commands (b02's failed and its
    read-back mismatch prove nothing, nor does a station-wide setpoint); commands of December by
    their state as the API shows them — against the store's own rows."""
    rc = rep.remote_control
    assert rc.wired and rc.controllable == 3 and rc.proven == 1
    by = {s.station: s for s in rc.stations}
    assert by["st001"].controllable == ["b01", "b02", "b03"] and by["st001"].source == "config"
    assert by["st001"].proven == ["b01"]
    assert by["st003"].controllable == [] and by["st003"].source is None and by["st003"].proven == []
    want: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    cs = CommandStore(season.store.db.engine)
    rows = [r for r in cs.query(limit=100).rows if P0 <= r.created_at < P1]
    assert {r.id for r in rows} == set(season.commands.outcomes)  # November's is left out
    for r in rows:
        shown = "unknown" if r.state == "sent" and r.deadline < NOW else r.state
        assert shown == season.commands.outcomes[r.id], r.id
        want[r.station][shown] += 1
    for st, outcomes in want.items():
        assert by[st].commands == dict(sorted(outcomes.items())), st
    assert rc.commands == {"confirmed": 4, "expired": 1, "failed": 1, "mismatch": 1, "rejected": 1,
                           "unknown": 1}
    [proof] = rc.proofs
    assert (proof.station, proof.building, proof.command, proof.ticket) == (
        "st001", "b01", season.commands.proof, "HL-c-b01")
    assert proof.at == cs.get(season.commands.proof).result_at


def test_what_is_missing(season: Season, rep: Report) -> None:
    missing = "\n".join(rep.missing)
    assert "st003" in missing and "heated area" in missing
    assert "remotely controllable valves of 2 station(s) (st002, st003)" in missing
    assert "commands table" not in missing
    st2 = next(s for s in rep.makeup.stations if s.station == "st002")
    assert st2.area_m2 == 42000 and st2.name == "和平里换热站"


def test_a_gateway_without_control_announces_no_valve(tmp_path: Path) -> None:
    """The map's write: blocks alone do not make a valve remotely controllable: without a
    control: block the gateway takes no command and its status lists no writable point."""
    plain = load_gateway_config(write_gateway_config(tmp_path, "st001", mqtt_port=1883, plc_port=15011,
                                                     bus_port=15012))
    assert any(p.write is not None and p.point == "building_valve_setpoint"
               for d in plain.resolved for p in d.points)
    assert source.plans_from([plain])["st001"].controllable == set()
    ctl = load_gateway_config(_with_control(write_gateway_config(
        tmp_path / "ctl", "st001", mqtt_port=1883, plc_port=15011, bus_port=15012)))
    assert source.plans_from([ctl])["st001"].controllable == {"b01", "b02", "b03"}


# -- delivered as: API, spreadsheet, PDF, command line ----------------------------------------
def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return {**a, "generated_at": 0} == {**b, "generated_at": 0}


@pytest.fixture(scope="module")
def api(season: Season) -> Iterator[tuple[TestClient, dict[str, dict[str, str]]]]:
    now = int(time.time() * 1000)
    auth = {role: {"Authorization": "Bearer " + SiteRegistry(season.store.db).add_token(
        name=f"report-{role}", role=role, actor="test", now=now)} for role in ("dispatcher", "engineer")}
    with TestClient(create_app(load_api_config(season.api_config))) as client:
        yield client, auth


def test_api_answers_engineers_with_the_report_and_its_parts(
        season: Season, api: tuple[TestClient, dict[str, dict[str, str]]]) -> None:
    c, auth = api
    q = {"period": PERIOD}
    assert c.get("/v1/report", params=q).status_code == 401
    r = c.get("/v1/report", params=q, headers=auth["dispatcher"])
    assert r.status_code == 403 and "engineer" in r.json()["detail"]
    whole = c.get("/v1/report", params=q, headers=auth["engineer"])
    assert whole.status_code == 200
    body = whole.json()
    assert _same(body, season.report.model_dump(mode="json"))  # the API computes what collect() did
    for path, part in (("makeup", "makeup"), ("rooms", "rooms"), ("information", "information"),
                       ("service", "service"), ("remote-control", "remote_control")):
        r = c.get(f"/v1/report/{path}", params=q, headers=auth["engineer"])
        assert r.status_code == 200 and r.json() == body[part], path
    # the parts came from the same computation, kept for CACHE_S
    again = c.get("/v1/report", params=q, headers=auth["engineer"]).json()
    assert again["generated_at"] == body["generated_at"]
    r = c.get("/v1/report", params={"period": "2025-13"}, headers=auth["engineer"])
    assert r.status_code == 422 and "period" in r.json()["detail"]


def test_spreadsheet_has_a_sheet_per_part_with_the_figures(
        season: Season, api: tuple[TestClient, dict[str, dict[str, str]]]) -> None:
    c, auth = api
    r = c.get("/v1/report.xlsx", params={"period": PERIOD}, headers=auth["engineer"])
    assert r.status_code == 200 and "heatwatch-report-2025-12.xlsx" in r.headers["content-disposition"]
    wb = load_workbook(io.BytesIO(r.content))
    assert wb.sheetnames == ["Summary", "Make-up water", "Room temperature", "Information", "Service",
                             "Remote control", "Missing and notes"]
    rows = list(wb["Make-up water"].iter_rows(values_only=True))
    head = rows[1]
    st2 = next(x for x in rows if x[0] == "st002")
    want = next(s for s in season.report.makeup.stations if s.station == "st002").networks[0]
    assert st2[head.index("rate %")] == want.rate_pct and st2[head.index("meets limit")] == "no"
    rooms = list(wb["Room temperature"].iter_rows(values_only=True))
    st1 = next(x for x in rooms if x[0] == "st001")
    assert st1[4] == next(s for s in season.report.rooms.stations if s.station == "st001").rate_pct
    assert wb["Summary"]["A1"].value.startswith("幸福热力公司")
    remote = list(wb["Remote control"].iter_rows(values_only=True))
    head = remote[1]
    st1 = next(x for x in remote if x[0] == "st001")
    rc = {s.station: s for s in season.report.remote_control.stations}["st001"]
    col = {name: st1[j] for j, name in enumerate(head)}
    assert (col["controllable"], col["from"], col["proven buildings"]) == (3, "config", "b01")
    for outcome, n in rc.commands.items():
        assert st1[head.index(f"commands {outcome}")] == n, outcome
    assert next(x for x in remote if x[0] == "st003")[head.index("commands confirmed")] == 1
    assert ("st001", "b01", season.commands.proof) in {x[:3] for x in remote}


def test_pdf_renders_with_headings_charts_and_tables(
        season: Season, api: tuple[TestClient, dict[str, dict[str, str]]]) -> None:
    c, auth = api
    r = c.get("/v1/report.pdf", params={"period": PERIOD}, headers=auth["engineer"])
    assert r.status_code == 200 and r.content.startswith(b"%PDF")
    pdf = season.folder / "report.pdf"
    pdf.write_bytes(r.content)
    text = subprocess.run(["pdftotext", "-layout", str(pdf), "-"], capture_output=True, text=True,
                          check=True).stdout
    pages = text.split("\f")
    for p in pages[:-1]:  # every page carries the company and the period
        assert "幸福热力公司 · takeover report · 2025-12" in p
    for heading in ("Room pass rate by station", "Make-up rate by station, secondary network",
                    "Leak and theft incidents", "Households below the standard longest",
                    "Information management", "Service", "Building remote control",
                    "Missing figures"):
        assert heading in text, heading
    assert "S1-b02-1" in text  # a household below the standard, by its code
    remote = text[text.index("Building remote control"):text.index("Missing figures")]
    assert "b01, b02, b03" in remote and season.commands.proof in remote and "HL-c-b01" in remote
    assert "Valves proven" in remote
    # rendered to images (pdftoppm): each page is a real picture, not blank
    out = season.folder / "page"
    subprocess.run(["pdftoppm", "-png", "-r", "50", str(pdf), str(out)], check=True)
    images = sorted(season.folder.glob("page-*.png"))
    assert len(images) == len(pages) - 1 >= 4
    for img in images:
        with Image.open(img) as im:
            colours = im.convert("L").getextrema()
            assert colours[0] < 100 and colours[1] > 200, img  # ink on paper
    def colours(img: Path) -> set[tuple[int, int, int]]:
        with Image.open(img) as im:
            return {c for _, c in im.convert("RGB").getcolors(maxcolors=1 << 20) or []}

    assert (78, 121, 167) in colours(images[0]), "the pass-rate bars are drawn"
    assert (225, 87, 89) in colours(images[1]), "st002's make-up bar is red: above the limit"


def test_command_line_writes_pdf_xlsx_and_json(season: Season, tmp_path: Path) -> None:
    for suffix in ("json", "xlsx", "pdf"):
        out = tmp_path / f"report.{suffix}"
        p = subprocess.run([sys.executable, "-m", "heatwatch", "report", "--period", PERIOD, "--out",
                            str(out), "--config", str(season.api_config)], capture_output=True, text=True,
                           timeout=120)
        assert p.returncode == 0, p.stderr
        assert out.stat().st_size > 1000
    got = orjson.loads((tmp_path / "report.json").read_bytes())
    assert _same(got, season.report.model_dump(mode="json"))
    load_workbook(tmp_path / "report.xlsx")
    assert (tmp_path / "report.pdf").read_bytes().startswith(b"%PDF")
    p = subprocess.run([sys.executable, "-m", "heatwatch", "report", "--period", "december", "--out",
                        str(tmp_path / "x.pdf"), "--config", str(season.api_config)], capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 2 and "period 'december'" in p.stderr


def test_dashboard_figures_match_the_raw_samples(season: Season) -> None:
    """The report dashboard's per-station panels (dashboards/build.py ``report``) over December:
    pass rate (every sensor-hour: the dashboard cannot leave out cold days or fault episodes),
    hours online, and the make-up rate from hourly totalizer growth."""
    board = {p["title"]: p["targets"][0]["query"] for p in build.report()["panels"] if p.get("targets")}

    def run_q(title: str) -> dict[str, float]:
        q = board[title].replace("$timeFilter", f"time >= {P0}ms AND time < {P1}ms")
        got = influx_query(season.influx, season.database, q)
        return {s["tags"][next(iter(s["tags"]))]: s["values"][0][1] for s in got}

    passing: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for (st, _, _), xs in season.truth.rooms.items():
        by_hour: dict[int, list[float]] = defaultdict(list)
        for t, v in xs:
            if v is not None:
                by_hour[_hour(t)].append(v)
        for vs in by_hour.values():
            passing[st][0] += sum(vs) / len(vs) >= 18
            passing[st][1] += 1
    rate = run_q("Room pass rate by station (%)")
    for st, (k, n) in passing.items():
        assert rate[st] == pytest.approx(100 * k / n, abs=1e-6), st
    online = run_q("Hours online by station")
    assert online == {s.station: s.online_hours for s in season.report.information.stations}
    makeup = run_q("Make-up rate by station over the range (%)")
    for st in ("st001", "st002", "st003"):
        last: dict[int, float] = {}
        for t, v in season.truth.station[(st, "makeup_total")]:
            last[_hour(t)] = v
        flows: dict[int, list[float]] = defaultdict(list)
        for t, v in season.truth.station[(st, "secondary_flow")]:
            flows[_hour(t)].append(v)
        hours = sorted(last)
        d = sum(last[b] - last[a] for a, b in itertools.pairwise(hours))  # a gap's water in one hour
        c = sum(sum(vs) / len(vs) for vs in flows.values())
        assert makeup[st] == pytest.approx(100 * d / c, rel=1e-9), st
    assert makeup["st002"] > 2.0 > makeup["st001"]


# -- the 1-hour rollup ------------------------------------------------------------------------
def _without_notes(r: Report) -> dict[str, Any]:
    return {**r.model_dump(mode="json"), "notes": [], "generated_at": 0}


def test_the_rollup_gives_the_figures_of_the_raw_data(season: Season) -> None:
    """The same season from the raw data and from its 1-hour rollup: the same report, and the
    notes say which source each read (the raw database has no rollup: `influx setup` never ran)."""
    assert _without_notes(season.rolled) == _without_notes(season.report)
    assert season.rolled.notes[0].startswith("Read from the 1-hour rollup")
    assert season.report.notes[0].startswith("No 1-hour rollup here")
    assert season.rolled.notes[1:] == season.report.notes[1:]


def test_implausible_readings_stay_out_of_the_rollups_sensor_hours(season: Season) -> None:
    """The wildcard rollup averages ODD_SENSOR's 1 °C readings in (the hours it gives are cold);
    the plausible mean the report reads averages only the readings in 5–35 °C, as the raw path
    does, and has no row for the hours without one."""
    st, _, h = ODD_SENSOR
    got = influx_query(season.influx, season.rolled_db, (
        'SELECT "mean_room_temp", "plausible_mean_room_temp" FROM "rollup_1h"."household" '
        f"WHERE \"household\" = '{h}' AND \"station\" = '{st}' AND time >= {ODD_FROM}ms "
        f"AND time < {ODD_FROM + 14 * H}ms"))
    rows_ = {v[0]: v for v in got[0]["values"]}
    want: dict[int, list[float]] = defaultdict(list)
    for t, v in season.truth.rooms[ODD_SENSOR]:
        if ODD_FROM <= t < ODD_FROM + 14 * H and v is not None:
            want[_hour(t)].append(v)
    assert len(rows_) == 14 and len(want) == 12
    for hour, (_, everything, plausible) in rows_.items():
        if hour in want:
            assert plausible == pytest.approx(statistics.fmean(want[hour]), abs=1e-9)
            assert everything < 18 <= plausible  # a warm room the wildcard mean would call cold
        else:
            assert plausible is None and everything == 1.0
    # and the report counts those hours as the raw readings give them (the rooms check above
    # holds for the odd sensor too): twelve warm sensor-hours on Dec 5, none below 18 °C
    assert all(not (ODD_FROM <= t < ODD_FROM + 14 * H) for t, _ in _rooms(season)[ODD_SENSOR].low)


def test_rooms_from_raw_when_the_rollup_uses_another_plausible_range(season: Season) -> None:
    """A rule file whose plausible range differs from the rollup's: rooms are averaged from the raw
    readings (with a note naming both ranges) and agree with the raw database's report; ``rollups:
    off`` reads everything raw."""
    rules = AlertRules.model_validate({"sensor": {"plausible_min": 4.0}})
    ctx = source.Context(settings=season.ctx.settings, rules=rules, plans=season.ctx.plans)
    other = _report(season.influx, season.rolled_db, season.store, ctx)
    assert "room sensor-hours averaged from the raw readings" in other.notes[0]
    assert "5–35 °C" in other.notes[0] and "4–35 °C" in other.notes[0]
    assert other.rooms == _report(season.influx, season.database, season.store, ctx).rooms
    assert other.makeup == season.rolled.makeup
    off = source.Context(settings=season.ctx.settings.model_copy(update={"rollups": "off"}),
                         rules=season.ctx.rules, plans=season.ctx.plans)
    raw = _report(season.influx, season.rolled_db, season.store, off)
    assert raw.notes[0].startswith("Rollups off in the report settings")
    assert _without_notes(raw) == _without_notes(season.report)


def test_hours_the_rollup_does_not_hold_are_read_raw(influxd: Influxd, tmp_path: Path) -> None:
    """Raw hours the rollup does not cover — written after its backfill (a collector that made the
    CQs at start rolls up only from then), or rolled up by an older heatwatch without counts (and
    their raw data since gone): the report says so and reads the raw data; once the hours are
    backfilled it reads the rollup again."""
    db = f"report_old_{int(time.time() * 1000)}"
    t0 = P0 + 10 * D * 1000  # Dec 11 00:00 local

    def station(start: int, hours: int) -> str:
        return "\n".join(f"station,station=st009 makeup_total={100 + (start - t0) / 1_200_000 + k * 0.5},"
                         f"secondary_flow=100.0,outdoor_temp=-2.0 {start + k * 600_000}"
                         for k in range(6 * hours))

    httpx.post(f"{influxd.url}/query", params={"q": f'CREATE DATABASE "{db}"'}).raise_for_status()
    httpx.post(f"{influxd.url}/write", params={"db": db, "precision": "ms"},
               content=station(t0, 48)).raise_for_status()
    folder = tmp_path / "cfg"
    _influx_setup(influxd, db, folder)
    store = Store(f"sqlite:///{tmp_path / 'alerts.sqlite'}")
    store.migrate()
    ctx, off = source.Context(), source.Context(settings=ReportSettings(rollups="off"))
    current = _report(influxd, db, store, ctx)
    assert current.notes[0].startswith("Read from the 1-hour rollup")
    # a day of raw data before the rollup's first hour
    httpx.post(f"{influxd.url}/write", params={"db": db, "precision": "ms"},
               content=station(t0 - D * 1000, 24)).raise_for_status()
    got = _report(influxd, db, store, ctx)
    assert got.notes[0].startswith("The 1-hour rollup starts at 2025-12-11 00:00, the raw data at 2025-12-10 "
                                   "00:00 (run `heatwatch influx backfill`"), got.notes[0]
    assert _without_notes(got) == _without_notes(_report(influxd, db, store, off))
    assert got.makeup.stations[0].networks[0].judged_hours == 71
    cfg = str(folder / "collector.yaml")
    p = subprocess.run([sys.executable, "-m", "heatwatch", "influx", "backfill", cfg,
                        "--since", "2025-12-09T16:00", "--until", "2025-12-10T16:00"],
                       capture_output=True, text=True, cwd=REPO, timeout=120)
    assert p.returncode == 0, p.stderr
    again = _report(influxd, db, store, ctx)
    assert again.notes[0].startswith("Read from the 1-hour rollup")
    assert _without_notes(again) == _without_notes(got)
    # a day before that as an older heatwatch rolled it up (no count_ fields), its raw data gone
    old = [f"station,station=st009 mean_makeup_total=99.0,last_makeup_total=99.0,mean_secondary_flow=100.0 "
           f"{t0 - 2 * D * 1000 + k * H}" for k in range(24)]
    httpx.post(f"{influxd.url}/write", params={"db": db, "rp": "rollup_1h", "precision": "ms"},
               content="\n".join(old)).raise_for_status()
    got = _report(influxd, db, store, ctx)
    assert "holds counts of station data from 2025-12-10 on only" in got.notes[0], got.notes[0]
    assert got.makeup == again.makeup  # from the raw data, which has every sample it still keeps
    store.close()


def test_a_period_not_over_reads_up_to_the_rollups_newest_hour(influxd: Influxd, tmp_path: Path) -> None:
    """December asked on Dec 12 at 10:20, the 1-hour rollup written up to 10:00 (its CQ rolls an
    hour up once the hour is over): the report ends at 10:00, says so, and gives what the raw data
    gives up to 10:00."""
    db = f"report_now_{int(time.time() * 1000)}"
    t0 = P0 + 10 * D * 1000  # Dec 11 00:00 local
    ten, now = t0 + 34 * H, t0 + 34 * H + 20 * 60_000
    lines = [f"station,station=st009 makeup_total={100 + k * 0.05},secondary_flow=100.0,outdoor_temp=-2.0 "
             f"{t0 + k * 600_000}" for k in range((now - t0) // 600_000)]
    httpx.post(f"{influxd.url}/query", params={"q": f'CREATE DATABASE "{db}"'}).raise_for_status()
    httpx.post(f"{influxd.url}/write", params={"db": db, "precision": "ms"},
               content="\n".join(lines)).raise_for_status()
    lc = LifecycleSettings(raw_days=3650, rollup_5m_days=3650, rollup_1h_days=3650, setup_at_start=False)
    asyncio.run(setup(InfluxSettings(url=influxd.url, database=db, lifecycle=lc), now_ms=ten))
    store = Store(f"sqlite:///{tmp_path / 'alerts.sqlite'}")
    store.migrate()
    reader = InfluxReader(InfluxSettings(url=influxd.url, database=db))

    async def make(ctx: source.Context, at: int) -> Report:
        return await source.report(reader.query_many, store, ctx, PERIOD, at, database=db)

    async def both() -> tuple[Report, Report]:
        try:
            return (await make(source.Context(), now),
                    await make(source.Context(settings=ReportSettings(rollups="off")), ten))
        finally:
            await reader.close()

    rolled, raw = asyncio.run(both())
    assert rolled.period.data_end == ten
    assert rolled.notes[1] == "Up to 2025-12-12 10:00, the end of the 1-hour rollup's newest complete hour."
    assert _without_notes(rolled) == _without_notes(raw)
    st = rolled.makeup.stations[0].networks[0]
    assert st.makeup_m3 == pytest.approx(0.05 * 6 * 33, abs=1e-6) and st.judged_hours == 33  # hourly lasts
    store.close()

