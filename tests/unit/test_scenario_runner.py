"""The scenario runner expresses what real data do, and a wrong scenario or rule file is a readable
error naming the file and the key, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from heatwatch.scenarios import ScenarioSpec, _Station, load, main, run, summary

REPO = Path(__file__).resolve().parent.parent.parent
START = "2026-12-10T00:00:00+08:00"


def _spec(**kw: object) -> ScenarioSpec:
    return ScenarioSpec.model_validate({"description": "t", "start": START, "duration": "2h",
                                        "buildings": 1, "households": 2, **kw})


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "heatwatch.scenarios", *args], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=300, check=False)


@pytest.mark.parametrize(("text", "says"), [
    ("description: x\nstart: 2026-12-10T00:00:00+08:00\nduration: 1h\nrules: {room: {holdmin: 3}}\n",
     "rules.room.holdmin: unknown key"),
    ("description: x\nstart: 2026-12-10T00:00:00+08:00\nduration: 1h\n"
     "profiles: [{point: makeup_flow, set: 1, add: 2}]\n",
     "profiles.0: give exactly one of set, add, sentinel"),
    ("description: x\nstart: 2026-12-10T00:00:00+08:00\nduration: 1h\n"
     "profiles: [{point: makup_flow, add: 2}]\n", "makup_flow"),
    ("description: x\nstart: 2026-12-10T00:00:00+08:00\nduration: 1h\nevents: [{at: 1h, event: lek}]\n",
     "events.0.event: unknown event 'lek'"),
    ("description: x\nstart: 2026-12-10T00:00:00+08:00\nduration: 1h\n"
     "delivery: [{at: 1h, fault: skew, by: 6m}]\n", "delivery.0.fault"),
    ("description: x\nstart: 2026-12-10T00:00:00+08:00\nduration: [1h\n", "not valid YAML"),
    ("description: x\nstart: 2026-12-10T00:00:00+08:00\nduration: 1h\n"
     "expect: [{rule: room_low, within: soon}]\n", "expect.0.within"),
    ("description: x\nstart: 2026-12-10T00:00:00+08:00\nduration: 1h\n"
     "commands: [{when_paged: building_low, point: room_temp, values: [20]}]\n",
     "commands.0.point: room_temp is not a writable point"),
])
def test_an_invalid_scenario_is_a_readable_error_not_a_traceback(tmp_path: Path, text: str,
                                                                  says: str) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    r = _cli(str(bad))
    assert r.returncode == 2
    assert "Traceback" not in r.stderr + r.stdout
    assert f"{bad}: " in r.stderr and says in r.stderr, r.stderr


def test_profiles_ramp_set_and_sentinel_any_point() -> None:
    spec = _spec(profiles=[
        {"point": "makeup_flow", "at": "1h", "for": "1h", "add": [0.0, 2.0]},
        {"point": "circ_pump_running", "at": "1h", "set": False},
        {"point": "room_temp", "household": "b01-0101", "at": "0s", "set": 18.3},
        {"point": "room_temp", "household": "b01-0201", "at": "0s", "sentinel": "bad", "every": 2}])
    st = _Station(spec, "st001", 0, spec.start.timestamp())
    t0 = spec.start.timestamp()
    every = [st.frame(t0 + m * 60, m % 30 == 0) for m in range(0, 121)]
    frames = every[::30]
    assert all(f is not None for f in frames)

    def value(f: object, point: str, household: str | None = None) -> object:
        return next((s.value, s.quality) for s in f.samples  # type: ignore[attr-defined]
                    if s.point == point and s.household == household)

    base = value(frames[0], "makeup_flow")[0]
    assert abs(value(frames[3], "makeup_flow")[0] - base - 1.0) < 0.1  # half-way up the ramp
    assert value(frames[1], "circ_pump_running") == (True, "good")
    assert value(frames[2], "circ_pump_running") == (False, "good")
    assert value(frames[0], "room_temp", "b01-0101") == (18.3, "good")
    assert [value(f, "room_temp", "b01-0201")[1] for f in frames] == ["good", "bad", "good", "bad", "good"]
    # the make-up the profile added is in the totalizer too: volumes and flows agree
    total = [value(f, "makeup_total")[0] for f in frames]
    assert total[4] - total[2] > total[2] - total[0] + 0.9


def test_delivery_faults_and_status_messages_reach_the_engine() -> None:
    """A gateway's will and a clock 6 min fast, as the engine sees them: one gateway page, one
    clock page, nothing judged lost."""
    spec = _spec(duration="3h", stations=2, stations_per_gateway=2,
                 events=[{"at": "1h", "event": "link_down", "for": "1h"}],
                 status=[{"at": "1h1m", "gateway": "gw01", "state": "offline"},
                         {"at": "2h", "gateway": "gw01", "state": "online"}],
                 delivery=[{"at": "2h10m", "fault": "clock_skew", "by": "6m"},
                           {"at": "2h30m", "for": "10m", "fault": "duplicate"}])
    out = run(spec, "t")
    pages = sorted({(t.rule, t.gateway or t.station) for t in out.transitions
                    if t.page and t.state == "firing"})
    assert pages == [("clock_skew", "gw01"), ("gateway_offline", "gw01")]


def test_the_library_report_has_every_rule_and_the_compliance_count() -> None:
    results = [run(load(f), f.stem) for f in sorted((REPO / "tests" / "scenarios").glob("*.yaml"))[:6]]
    text = summary(results)
    assert "pages ≥ standard" in text.splitlines()[0]
    assert text.splitlines()[-1].startswith(f"{len(results)} scenarios")


def test_the_command_prints_the_table_for_a_folder(tmp_path: Path) -> None:
    for name in ("open_window", "cold_household"):
        (tmp_path / f"{name}.yaml").write_text((REPO / "tests" / "scenarios" / f"{name}.yaml").read_text())
    assert main([str(tmp_path)]) == 0


def test_commands_go_to_the_station_that_paged_or_are_refused() -> None:
    """Two stations, the second's building b01 goes cold: the engineer's valve commands reach that
    station's model (not st001's); a command for a station the scenario does not have is an error."""
    base = {"stations": 2, "duration": "8h", "households": 4,
            "events": [{"at": "1h", "event": "cold_building", "station": "st002", "building": "b01"}],
            "expect": [{"rule": "building_low", "station": "st002", "building": "b01"}]}
    cmd = {"when_paged": "building_low", "building": "b01", "point": "building_valve_setpoint",
           "values": [70, 80, 90, 100], "delay": "10m", "every": "15m"}
    out = run(_spec(**base, commands=[cmd], rooms_above={"station": "st002", "building": "b01", "value": 18}))
    assert [(s.station, s.value) for s in out.sent] == [("st002", v) for v in (70.0, 80.0, 90.0, 100.0)]
    assert out.rooms["st002/b01"] > 18 and out.passed, out.cold_rooms
    with pytest.raises(ValidationError, match=r"commands\.0\.station: no station st009 in this scenario"):
        _spec(**base, commands=[{**cmd, "station": "st009"}])
    with pytest.raises(ValidationError, match=r"rooms_above\.station: no station st003 in this scenario"):
        _spec(**base, rooms_above={"station": "st003", "building": "b01", "value": 18})
