"""The gateway's command path end to end: signed commands on a real mosquitto → the gateway
process → a Modbus server (the simulator, in this process, so the test sees every write request
on the wire) → read-back → result on the broker. The API is not involved here: commands are
published straight onto the broker, as an attacker with broker access could."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from contract.commands import CommandResult, generate_keypair, load_private_key, parse_command_result, sign
from contract.config import load_gateway_config
from contract.payload import parse_gateway_status
from heatwatch.devstack import Mosquitto, SimThread, free_port
from tests.conftest import Processes, Subscriber, publish, wait_for
from tests.control_helpers import (
    DEVICE,
    GATEWAY,
    STATION,
    WRITES,
    command,
    command_topic,
    result_topic,
    signed,
    write_control_gateway,
    write_keys,
)


@dataclass
class Rig:
    broker: Mosquitto
    sim: SimThread
    procs: Processes
    key: Ed25519PrivateKey
    config: Path
    results: Subscriber

    def start_gateway(self) -> None:
        self.procs.start("gateway", "gateway", str(self.config))

    def stop_gateway(self) -> None:
        p = self.procs.procs["gateway"]
        p.terminate()
        p.wait(15)

    def writes(self) -> list[tuple[int, int, list[int]]]:
        out = self.sim.call(self.sim.sim.writes, STATION, DEVICE)
        assert isinstance(out, list)
        return out

    def result(self, cid: str, timeout: float = 20) -> CommandResult:
        topic = result_topic(cid)
        raw = wait_for(lambda: next((p for t, p in list(self.results.messages) if t == topic), None),
                       timeout, f"the result of {cid}")
        return parse_command_result(raw)

    def results_of(self, cid: str) -> list[CommandResult]:
        return [parse_command_result(p) for t, p in list(self.results.messages) if t == result_topic(cid)]

    def send(self, cmd_bytes: bytes, topic: str) -> None:
        publish(self.broker.port, [(topic, cmd_bytes)])


@pytest.fixture
def rig(request: pytest.FixtureRequest, tmp_path: Path, mosquitto: Mosquitto,
        procs: Processes) -> Iterator[Rig]:
    key, _, pub = write_keys(tmp_path / "keys")
    slow_plc = request.node.get_closest_marker("slow_plc") is not None  # answers writes in 3 s
    path = write_control_gateway(tmp_path / "gw", mqtt_port=mosquitto.port, plc_port=free_port(),
                                 public_key=pub, timeout_s=5.0 if slow_plc else 0.5)
    sim = SimThread([load_gateway_config(path)])
    results = Subscriber(mosquitto.port, f"heatwatch/v1/station/{STATION}/command-result/+", persistent=True)
    status = Subscriber(mosquitto.port, f"heatwatch/v1/gateway/{GATEWAY}/status")
    r = Rig(mosquitto, sim, procs, key, path, results)
    r.start_gateway()
    try:
        # the birth lists every writable point with its bounds: the gateway is ready
        wait_for(lambda: any(parse_gateway_status(p).state == "online" for _, p in status.messages), 30,
                 "the gateway's birth")
        yield r
    finally:
        status.close()
        results.close()
        sim.stop()


def test_every_writable_type_and_word_order_is_written_on_the_wire_and_read_back(rig: Rig) -> None:
    for point, building, _typ, _extra, value, fc, words in WRITES:
        cmd = command(point, value, building=building)
        before = len(rig.writes())
        rig.send(signed(cmd, rig.key), command_topic(cmd))
        res = rig.result(cmd.id)
        assert res.state == "confirmed", (point, res)
        assert res.read_back == pytest.approx(value, rel=1e-6) if not isinstance(value, bool) else \
            res.read_back is value
        assert rig.writes()[before:] == [(fc, rig.writes()[before][1], words)], point  # one request


def test_the_gateway_status_announces_its_writable_points_with_bounds(rig: Rig, mosquitto: Mosquitto) -> None:
    status = Subscriber(mosquitto.port, f"heatwatch/v1/gateway/{GATEWAY}/status")  # the retained copy
    try:
        raw = wait_for(lambda: status.messages, 10, "retained status")[0][1]
    finally:
        status.close()
    st = parse_gateway_status(raw)
    by = {(w.point, w.building): w for w in st.writable}
    assert set(by) == {(p, b) for p, b, *_ in WRITES}
    valve = by[("building_valve_setpoint", "b01")]
    # DOMAIN.md's defaults: ≥ 5 % opening, ≤ 10 % a step; ≤ 85 °C supply, ≤ 3 K a step
    assert (valve.min, valve.max, valve.max_step, valve.station_wide) == (5, 100, 10, False)
    supply = by[("secondary_supply_temp_setpoint", None)]
    assert (supply.min, supply.max, supply.max_step, supply.station_wide) == (30, 85, 3, True)
    assert by[("x_pump_enable", None)].kind == "bool"


def test_the_same_command_delivered_twice_is_written_once(rig: Rig) -> None:
    cmd = command("building_valve_setpoint", 68.0, building="b01")
    body = signed(cmd, rig.key)
    rig.send(body, command_topic(cmd))
    first = rig.result(cmd.id)
    # (an answer may reach the broker twice: the outbox pump and the direct hand-over can both
    # take a fresh row; results are recorded by command id, so that is harmless)
    rig.send(body, command_topic(cmd))  # a redelivery, or the API's second worker
    wait_for(lambda: len(rig.results_of(cmd.id)) >= 2, 20, "the second answer")
    rig.stop_gateway()  # and across a restart: the ledger is on disk
    rig.start_gateway()
    answered = len(rig.results_of(cmd.id))
    rig.send(body, command_topic(cmd))
    wait_for(lambda: len(rig.results_of(cmd.id)) > answered, 30, "the answer after a restart")
    assert first.state == "confirmed"
    assert all(r == first for r in rig.results_of(cmd.id))  # the stored result, byte for byte
    assert len(rig.writes()) == 1


def test_a_gateway_offline_past_the_deadline_answers_expired_and_writes_nothing(rig: Rig) -> None:
    rig.stop_gateway()  # its persistent session keeps what arrives meanwhile
    cmd = command("building_valve_setpoint", 66.0, building="b01", deadline_s=2)
    topic = command_topic(cmd)
    rig.send(signed(cmd, rig.key), topic)
    time.sleep(2.5)
    rig.start_gateway()
    res = rig.result(cmd.id, 30)
    assert res.state == "expired" and "nothing written" in res.detail
    assert rig.writes() == []


def test_commands_straight_onto_the_broker_unsigned_forged_or_out_of_bounds_are_rejected(rig: Rig) -> None:
    cases = []
    # no signature at all
    c1 = command("building_valve_setpoint", 90.0, building="b01")
    rig.send(orjson.dumps({"schema": 1, "command": c1.model_dump(mode="json")}), command_topic(c1))
    cases.append((c1.id, "bad_payload"))
    # signed by a key the gateway does not hold
    stranger = load_private_key(generate_keypair()[0], "stranger")
    c2 = command("building_valve_setpoint", 70.0, building="b01")
    rig.send(signed(c2, stranger), command_topic(c2))
    cases.append((c2.id, "unknown_key"))
    # a genuine signature, with the value changed on the way
    c3 = command("building_valve_setpoint", 62.0, building="b01")
    forged = sign(c3, rig.key).model_copy(update={"command": c3.model_copy(update={"value": 100.0})})
    rig.send(forged.to_json(), command_topic(c3))
    cases.append((c3.id, "bad_signature"))
    # properly signed, but past the gateway's own bounds (an API with other bounds, or a stolen key)
    c4 = command("building_valve_setpoint", 3.0, building="b01")
    rig.send(signed(c4, rig.key), command_topic(c4))
    cases.append((c4.id, "bounds"))
    c5 = command("building_valve_setpoint", 95.0, building="b01")  # 60 → 95: above max_step 10
    rig.send(signed(c5, rig.key), command_topic(c5))
    cases.append((c5.id, "step"))
    c6 = command("primary_valve_setpoint", 50.0)  # not in this gateway's map
    rig.send(signed(c6, rig.key), command_topic(c6))
    cases.append((c6.id, "unknown_point"))
    for cid, reason in cases:
        res = rig.result(cid)
        assert (res.state, res.reason) == ("rejected", reason), res
    assert "below min 5 of building_valve_setpoint" in rig.result(c4.id).detail
    assert rig.writes() == []


def test_a_plc_exception_fails_the_command_with_its_code(rig: Rig) -> None:
    rig.sim.call(rig.sim.sim.refuse_writes, STATION, DEVICE, 4)  # server device failure
    cmd = command("building_valve_setpoint", 64.0, building="b01")
    rig.send(signed(cmd, rig.key), command_topic(cmd))
    res = rig.result(cmd.id)
    assert (res.state, res.reason, res.code) == ("failed", "modbus_exception", 4)
    assert len(rig.writes()) == 1  # asked once, never retried


def test_local_mode_rejects_and_writes_nothing(rig: Rig) -> None:
    rig.sim.call(rig.sim.sim.set_local_mode, STATION, True)
    cmd = command("building_valve_setpoint", 64.0, building="b01")
    rig.send(signed(cmd, rig.key), command_topic(cmd))
    res = rig.result(cmd.id)
    assert (res.state, res.reason) == ("rejected", "local_mode")
    assert rig.writes() == []


def test_a_plc_holding_its_own_value_gives_mismatch(rig: Rig) -> None:
    rig.sim.call(rig.sim.sim.hold, STATION, DEVICE, ("building_valve_setpoint", "b01", None))
    cmd = command("building_valve_setpoint", 64.0, building="b01")
    rig.send(signed(cmd, rig.key), command_topic(cmd))
    res = rig.result(cmd.id)
    assert res.state == "mismatch"
    assert res.old_value == pytest.approx(60.0) and res.read_back == pytest.approx(60.0)
    assert len(rig.writes()) == 1


@pytest.mark.slow
@pytest.mark.slow_plc
def test_a_result_survives_a_broker_killed_mid_command_and_a_gateway_restart(rig: Rig) -> None:
    """The PLC takes 3 s to answer the write; the broker is killed meanwhile and the gateway is
    restarted before the broker returns: the result waits in the outbox and arrives."""
    time.sleep(12)  # past one autosave: the observer's session is on the broker's disk
    rig.sim.call(rig.sim.sim.slow_writes, STATION, DEVICE, 3.0)
    cmd = command("building_valve_setpoint", 67.0, building="b01", deadline_s=120)
    rig.send(signed(cmd, rig.key), command_topic(cmd))
    wait_for(lambda: rig.writes(), 10, "the write on the wire")
    rig.broker.kill()
    time.sleep(4)  # the write is answered and the result goes to the outbox, not the broker
    rig.stop_gateway()
    rig.broker.start()
    rig.start_gateway()
    res = rig.result(cmd.id, 60)
    assert res.state == "confirmed"
    assert len(rig.writes()) == 1
