"""The closed-loop scenario (tests/scenarios/valve_command.yaml) can fail: without the engineer's
commands the alert never resolves and the rooms stay cold; a command the gateway would refuse
(one jump from 60 % to 100 %, past max_step 10) is reported and fails the run."""

from __future__ import annotations

from pathlib import Path

from heatwatch.scenarios import load, run

CASE = Path(__file__).parent.parent / "scenarios" / "valve_command.yaml"


def test_without_the_commands_the_building_stays_cold_and_the_alert_open() -> None:
    spec = load(CASE).model_copy(update={"commands": []})
    out = run(spec, "no-commands")
    assert not out.passed
    assert ("resolved building_low b02", None) in out.detections
    assert out.cold_rooms and out.rooms["b02"] < 18


def test_a_command_past_the_gateways_step_limit_is_refused() -> None:
    spec = load(CASE)
    jump = spec.commands[0].model_copy(update={"values": [100.0]})
    out = run(spec.model_copy(update={"commands": [jump]}), "one-jump")
    assert not out.passed and out.sent == []
    assert out.refused and "above max_step 10 of building_valve_setpoint" in out.refused[0]


def test_the_loop_closes_with_steps_the_gateway_allows() -> None:
    out = run(load(CASE), "valve_command")
    assert out.passed
    assert [v for *_, v in out.sent] == [70.0, 80.0, 90.0, 100.0]
    assert [b - a for (a, *_), (b, *_) in zip(out.sent, out.sent[1:], strict=False)] == [900_000] * 3
    assert out.rooms["b02"] > 18
