"""Simulator physics on a fake clock: believable baselines, and each event shows in the data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from heatwatch.devstack import DEPLOY
from simulator.physics import Event, Key, StationModel
from simulator.scenario import load_scenario, rooms_settle

T0 = 1_795_000_000.0  # sim time, s
KEYS: list[Key] = [
    ("outdoor_temp", None, None), ("secondary_supply_temp", None, None),
    ("secondary_return_temp", None, None), ("secondary_return_pressure", None, None),
    ("makeup_flow", None, None), ("makeup_total", None, None), ("tank_level", None, None),
    ("secondary_flow", None, None), ("building_valve_setpoint", "b01", None),
    ("building_valve_position", "b01", None), ("building_supply_temp", "b01", None),
    ("room_temp", "b01", "h1"), ("room_temp", "b01", "h2"), ("room_temp", "b02", "h3"),
]


def run(model: StationModel, hours: float, step_s: float = 60) -> dict[Key, float | bool | str]:
    v: dict[Key, float | bool | str] = {}
    t = model.t if model.t is not None else T0
    for i in range(int(hours * 3600 / step_s) + 1):
        v = model.step(t + i * step_s)
    return v


def f(v: dict[Key, float | bool | str], key: Key) -> float:
    x = v[key]
    assert isinstance(x, float)
    return x


def test_baseline_is_believable() -> None:
    m = StationModel("st001", KEYS)
    v0 = run(m, 0)
    total0 = f(v0, ("makeup_total", None, None))
    v = run(m, 24)
    assert 35 <= f(v, ("secondary_supply_temp", None, None)) <= 75
    assert f(v, ("secondary_return_temp", None, None)) < f(v, ("secondary_supply_temp", None, None))
    assert -40 < f(v, ("outdoor_temp", None, None)) < 40
    rate = (f(v, ("makeup_total", None, None)) - total0) / 24  # m³/h over a day
    assert 0.001 * 120 < rate < 0.01 * 120  # a small share of circulation
    for h in ("h1", "h2"):
        assert 17.5 < f(v, ("room_temp", "b01", h)) < 23.5
    assert abs(f(v, ("building_valve_position", "b01", None)) - 60) < 0.1


def test_leak_surges_makeup_and_drops_return_pressure() -> None:
    m = StationModel("st001", KEYS)
    before = run(m, 1)
    m.events.append(Event("leak", start=m.t or 0))
    after = run(m, 0.5)
    assert f(after, ("makeup_flow", None, None)) > 10 * f(before, ("makeup_flow", None, None))
    rp: Key = ("secondary_return_pressure", None, None)
    drop = f(before, rp) - f(after, rp)
    assert drop > 0.05


def test_cold_building_and_household_and_window() -> None:
    m = StationModel("st001", KEYS)
    run(m, 1)
    t = m.t or 0
    m.events += [Event("cold_building", start=t, building="b01"),
                 Event("cold_household", start=t, household="h3")]
    v = run(m, 4)
    assert f(v, ("room_temp", "b01", "h1")) < 16 and f(v, ("room_temp", "b01", "h2")) < 16
    assert f(v, ("room_temp", "b02", "h3")) < 15
    m2 = StationModel("st001", KEYS)
    run(m2, 1)
    m2.events.append(Event("open_window", start=m2.t or 0, end=(m2.t or 0) + 1200, household="h1"))
    dip = run(m2, 20 / 60)
    assert f(dip, ("room_temp", "b01", "h1")) < 19
    back = run(m2, 3)
    assert f(back, ("room_temp", "b01", "h1")) > 18


def test_stuck_sensor_flat_lines_then_recovers() -> None:
    m = StationModel("st001", KEYS)
    run(m, 1)
    key: Key = ("room_temp", "b01", "h1")
    t = m.t or 0
    m.events.append(Event("stuck_sensor", start=t + 60, end=t + 7200, point="room_temp",
                          building="b01", household="h1"))
    seen = {f(run(m, 1 / 60), key) for _ in range(100)}
    assert len(seen) == 1
    assert len({f(run(m, 1 / 60), key) for _ in range(30)}) > 1


def test_remote_setpoint_moves_the_valve() -> None:
    m = StationModel("st001", KEYS)
    run(m, 0.1)
    m.setpoints[("building_valve_setpoint", "b01", None)] = 30.0
    v = run(m, 0.2)
    assert f(v, ("building_valve_setpoint", "b01", None)) == 30.0
    assert abs(f(v, ("building_valve_position", "b01", None)) - 30.0) < 1


def test_shipped_scenario_loads(tmp_path: Path) -> None:
    speed, events = load_scenario(DEPLOY / "scenarios" / "winter-faults.yaml")
    assert speed == 60
    kinds = [e.kind for _, e in events]
    assert kinds == ["leak", "cold_building", "stuck_sensor", "dead_device", "open_window"]
    leak = events[0][1].shifted(T0)
    assert (leak.start, leak.end) == (T0 + 600, T0 + 600 + 7200)
    bad = tmp_path / "s.yaml"
    bad.write_text("events:\n  - {at: 5x, station: s, event: flood}\n")
    with pytest.raises(Exception, match=r"events\.0\.at: .*not a duration"):
        load_scenario(bad)


def test_an_event_under_way_at_the_start_shows_at_the_first_step() -> None:
    """A building cold since before the start has cold rooms at the first reading (the demo's
    first alert comes from its first minute, not after half an hour of cooling)."""
    m = StationModel("st001", KEYS)
    m.events.append(Event("cold_building", start=T0 - 3 * 3600, building="b01"))
    v = run(m, 0)
    assert f(v, ("room_temp", "b01", "h1")) < 16 and f(v, ("room_temp", "b01", "h2")) < 16
    assert f(v, ("room_temp", "b02", "h3")) > 18  # its neighbour is as usual
    later = run(m, 2)  # and it stays settled there: no drift back or further down
    assert abs(f(later, ("room_temp", "b01", "h1")) - f(v, ("room_temp", "b01", "h1"))) < 1.5
    plain = StationModel("st001", KEYS)  # without events, the start is as it always was
    assert f(run(plain, 0), ("room_temp", "b01", "h1")) > 18


def test_opening_a_starved_buildings_valve_warms_it_again() -> None:
    """cold_building is a starved branch: a valve opened to 100 % (the remote fix) restores it."""
    m = StationModel("st001", KEYS)
    m.events.append(Event("cold_building", start=T0 - 3 * 3600, building="b01"))
    v = run(m, 0.5)
    assert f(v, ("building_supply_temp", "b01", None)) < f(v, ("secondary_supply_temp", None, None)) - 10
    m.setpoints[("building_valve_setpoint", "b01", None)] = 100.0
    v = run(m, 3)
    assert f(v, ("building_supply_temp", "b01", None)) > f(v, ("secondary_supply_temp", None, None)) - 3
    assert f(v, ("room_temp", "b01", "h1")) > 18.5 and f(v, ("room_temp", "b01", "h2")) > 18.5


def test_scenario_times_before_the_start_and_bad_durations(tmp_path: Path) -> None:
    f_ = tmp_path / "s.yaml"
    f_.write_text("events:\n  - {at: -3h, station: st001, event: cold_building, building: b03}\n"
                  "  - {at: -1h30m, station: st001, event: leak, for: 2h}\n")
    _, events = load_scenario(f_)
    assert [(e.start, e.end) for _, e in events] == [(-10800, None), (-5400, 1800)]
    assert events[0][1].shifted(T0).start == T0 - 10800
    f_.write_text("events:\n  - {at: 0s, station: st001, event: leak, for: -5m}\n")
    with pytest.raises(Exception, match=r"events\.0\.for: must be a positive duration"):
        load_scenario(f_)


def test_opening_a_cold_buildings_valve_brings_its_rooms_back_over_hours() -> None:
    m = StationModel("st001", KEYS)
    run(m, 1)
    m.events.append(Event("cold_building", start=m.t or 0, building="b01"))
    cold = run(m, 4)
    assert max(f(cold, ("room_temp", "b01", h)) for h in ("h1", "h2")) < 16
    m.write(("building_valve_setpoint", "b01", None), 100.0)
    soon = run(m, 0.25)
    assert max(f(soon, ("room_temp", "b01", h)) for h in ("h1", "h2")) < 18  # not at once: thermal lag
    warm = run(m, 3)
    assert min(f(warm, ("room_temp", "b01", h)) for h in ("h1", "h2")) > 18
    assert abs(f(warm, ("room_temp", "b02", "h3")) - f(cold, ("room_temp", "b02", "h3"))) < 0.5  # b02 unmoved


def test_a_written_supply_setpoint_moves_the_supply_temperature() -> None:
    m = StationModel("st001", KEYS)
    run(m, 1)
    before = run(m, 0)
    m.write(("secondary_supply_temp_setpoint", None, None), 70.0)
    after = run(m, 1)
    assert abs(f(after, ("secondary_supply_temp", None, None)) - 70.0) < 0.5
    assert f(after, ("room_temp", "b01", "h1")) > f(before, ("room_temp", "b01", "h1"))


def test_rooms_settle_makes_rooms_follow_a_valve_in_minutes() -> None:
    """The demo's shortcut (rooms_settle: 2m): the same valve command that takes the simulated
    flats half an hour and more shows within minutes; without it, nothing changed."""
    def warmed(settle: float | None) -> float:
        m = StationModel("st001", KEYS)
        if settle is not None:
            m.room_settle_s = settle
        m.events.append(Event("cold_building", start=T0 - 3 * 3600, building="b01"))
        run(m, 0, step_s=1)
        m.write(("building_valve_setpoint", "b01", None), 100.0)
        v = run(m, 5 / 60, step_s=1)  # five minutes, at the simulator's 1 s tick
        return min(f(v, ("room_temp", "b01", h)) for h in ("h1", "h2"))

    assert warmed(None) < 16  # half an hour's lag: five minutes are not enough
    assert warmed(120) > 18.5  # two minutes' lag (and the valve's own minute)


def test_rooms_settle_is_read_from_a_scenario_and_checked(tmp_path: Path) -> None:
    f_ = tmp_path / "s.yaml"
    f_.write_text("rooms_settle: 2m\nevents: []\n")
    assert rooms_settle(f_) == 120
    assert rooms_settle(DEPLOY / "scenarios" / "winter-faults.yaml") is None  # the model's own
    for bad, says in (("0s", "greater than 0"), ("soon", "not a duration")):
        f_.write_text(f"rooms_settle: {bad}\n")
        with pytest.raises(Exception, match=rf"rooms_settle: .*{says}"):
            rooms_settle(f_)


def _opened(m: StationModel) -> dict[Key, float | bool | str]:
    """The demo's story: the cold building's valve opened 60 → 100 % and five minutes of it."""
    run(m, 0, step_s=1)
    m.write(("building_valve_setpoint", "b01", None), 100.0)
    return run(m, 5 / 60, step_s=1)


def test_a_restarted_simulator_carries_on_from_its_state() -> None:
    """Rooms have thermal mass, a PLC keeps its setpoints, a meter its count: a simulator
    restarted on the state it saved goes on from there. Before, each start put every room where
    the scenario's events settle it with every valve at the PLC's default: restarting the demo
    after its valve story dropped the warmed rooms 6.5 K between two readings (2.8 K after a
    shorter run: the newcomer's jump), and every totalizer went back to where it began."""
    def demo_model() -> StationModel:
        m = StationModel("st001", KEYS)
        m.room_settle_s = 120
        m.events.append(Event("cold_building", start=T0 - 3 * 3600, building="b01"))
        return m

    first = demo_model()
    was = _opened(first)
    then = (first.t or 0) + 6  # restarted 6 s later
    again = demo_model()
    again.restore(json.loads(json.dumps(first.state())))  # through the simulator's JSON file
    now = again.step(then)
    for h in ("h1", "h2"):
        assert abs(f(now, ("room_temp", "b01", h)) - f(was, ("room_temp", "b01", h))) < 0.3
    assert now[("building_valve_setpoint", "b01", None)] == 100.0
    assert abs(f(now, ("building_valve_position", "b01", None)) - 100.0) < 0.1
    assert f(now, ("makeup_total", None, None)) >= f(was, ("makeup_total", None, None))
    # without the state, the old start: the jump the newcomer saw
    cold = demo_model().step(then)
    assert f(was, ("room_temp", "b01", "h1")) - f(cold, ("room_temp", "b01", "h1")) > 5


def test_a_state_from_another_register_restores_what_still_exists() -> None:
    m = StationModel("st001", KEYS)
    m.restore({"room": {"h1": 16.0, "gone": 30.0}, "valve_pos": {"b01": 80.0, "b09": 10.0},
               "setpoints": [[["building_valve_setpoint", "b01", None], 80.0],
                             [["building_valve_setpoint", "b09", None], 10.0]],
               "totals": {"makeup_total": 1234.5, "unknown_total": 1.0}, "tank": 1.2})
    v = m.step(T0)
    assert abs(f(v, ("room_temp", "b01", "h1")) - 16.0) < 0.3
    assert v[("building_valve_setpoint", "b01", None)] == 80.0
    assert f(v, ("makeup_total", None, None)) == pytest.approx(1234.5, abs=0.01)
    with pytest.raises(ValueError, match=r"room\.h1"):
        m.restore({"room": {"h1": "warm"}})


def test_the_simulator_saves_its_stations_and_a_new_one_carries_on(tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    from contract.config import load_gateway_config
    from simulator.server import Simulator

    cfg = load_gateway_config(DEPLOY / "gateway" / "st001.yaml")
    state = tmp_path / "simulator.json"
    sim = Simulator([cfg], state_path=state, room_settle_s=120)
    valve: Key = ("building_valve_setpoint", "b03", None)
    m = sim.models["st001"]
    m.write(valve, 100.0)
    t = m.t or 0
    for i in range(1, 301):  # five minutes of the valve at 100 %
        m.step(t + i)
    rooms = {k: v for k, v in m.values.items() if k[0] == "room_temp"}
    sim.save_state()
    again = Simulator([cfg], state_path=state, room_settle_s=120)
    m2 = again.models["st001"]
    assert m2.values[valve] == 100.0
    assert all(abs(float(m2.values[k]) - float(v)) < 0.3 for k, v in rooms.items())
    state.write_text("{not json")
    fresh = Simulator([cfg], state_path=state)  # a broken file: said once, the stations start afresh
    assert fresh.models["st001"].values[valve] == 60.0
    assert "unreadable" in caplog.text


def test_a_state_file_in_a_missing_folder_is_a_config_error_and_a_failed_save_goes_on(tmp_path: Path) -> None:
    """--state naming a folder that does not exist fails at once, naming the option; a save that
    fails later (the folder gone, a full disk) is logged and the simulation goes on."""
    from contract.config import load_gateway_config
    from contract.errors import ConfigError
    from simulator.server import Simulator

    cfgs = [load_gateway_config(DEPLOY / "gateway" / "st001.yaml")]
    with pytest.raises(ConfigError, match="--state: the folder"):
        Simulator(cfgs, state_path=tmp_path / "nope" / "s.json")
    folder = tmp_path / "state"
    folder.mkdir()
    sim = Simulator(cfgs, state_path=folder / "s.json")
    sim.save_state()
    assert (folder / "s.json").exists()
    (folder / "s.json").unlink()
    folder.rmdir()
    sim.save_state()  # no exception
    assert sim._save_failed
