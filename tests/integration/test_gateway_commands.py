"""The gateway's command path in process (gateway/commands.py) against the simulator's Modbus
server: the cases the end-to-end tests do not reach cheaply — a write interrupted by a crash
is never repeated, a dead device fails the command with a timeout, a command for another
station, from a clock far ahead, or within a point's minimum interval is refused."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from contract.commands import CommandResult
from contract.config import GatewayConfig, load_gateway_config
from gateway.app import Gateway
from heatwatch.devstack import SimThread, free_port
from messaging.client import Message
from simulator.physics import Event
from tests.control_helpers import (
    DEVICE,
    STATION,
    command,
    command_topic,
    signed,
    write_control_gateway,
    write_keys,
)


@dataclass
class Setup:
    cfg: GatewayConfig
    sim: SimThread
    key: Ed25519PrivateKey

    def writes(self) -> list[tuple[int, int, list[int]]]:
        out = self.sim.call(self.sim.sim.writes, STATION, DEVICE)
        assert isinstance(out, list)
        return out


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    key, _, pub = write_keys(tmp_path / "keys")
    path = write_control_gateway(tmp_path / "gw", mqtt_port=1, plc_port=free_port(), public_key=pub,
                                 min_interval_s=900)
    cfg = load_gateway_config(path)
    sim = SimThread([cfg])
    yield Setup(cfg, sim, key)
    sim.stop()


def _msg(topic: str, payload: bytes) -> Message:
    return Message(topic, payload, 1, False, False, 1, None, 1)


async def _take(gw: Gateway, *msgs: Message) -> list[CommandResult | None]:
    assert gw.commands is not None
    return [await gw.commands.take(m) for m in msgs]


def _run(cfg: GatewayConfig, *msgs: Message, before: object = None) -> list[CommandResult | None]:
    async def main() -> list[CommandResult | None]:
        gw = Gateway(cfg)
        try:
            if callable(before):
                await before(gw)
            return await _take(gw, *msgs)
        finally:
            for link in gw.links:
                link.close()
            gw.outbox.close()
            assert gw.commands is not None
            gw.commands.close()
    return asyncio.run(main())


def test_a_write_interrupted_by_a_crash_is_reported_and_never_repeated(setup: Setup) -> None:
    cmd = command("building_valve_setpoint", 65.0, building="b01")

    async def crashed_mid_write(gw: Gateway) -> None:  # what a kill -9 after the ledger's start leaves
        assert gw.commands is not None
        gw.commands.ledger.start(cmd.id, int(time.time() * 1000))

    [res] = _run(setup.cfg, _msg(command_topic(cmd), signed(cmd, setup.key)), before=crashed_mid_write)
    assert res is not None and (res.state, res.reason) == ("failed", "interrupted")
    assert res.read_back == pytest.approx(60.0)
    assert setup.writes() == []


def test_a_dead_device_fails_the_command_with_a_timeout(setup: Setup) -> None:
    now = setup.sim.call(setup.sim.sim.now)
    assert isinstance(now, float)
    setup.sim.call(setup.sim.sim.add_event, STATION, Event("dead_device", start=now - 1, device=DEVICE))
    cmd = command("building_valve_setpoint", 65.0, building="b01")
    [res] = _run(setup.cfg, _msg(command_topic(cmd), signed(cmd, setup.key)))
    assert res is not None and (res.state, res.reason) == ("failed", "timeout")
    assert "local_mode" in res.detail  # the first read, of the local/remote switch, got no answer


def test_other_station_clock_ahead_and_rate_limit_are_refused(setup: Setup) -> None:
    other = command("building_valve_setpoint", 65.0, building="b01", station="st002")
    ahead = command("building_valve_setpoint", 65.0, building="b01")
    ahead = ahead.model_copy(update={"issued_at": ahead.issued_at + 600_000,
                                     "deadline": ahead.deadline + 600_000})
    first = command("building_valve_setpoint", 65.0, building="b01")
    again = command("building_valve_setpoint", 66.0, building="b01")  # within min_interval_s 900
    res = _run(setup.cfg,
               # a topic of another station never reaches this gateway's subscription; its payload
               # could, on this station's topic
               _msg(command_topic(other).replace("st002", STATION), signed(other, setup.key)),
               _msg(command_topic(ahead), signed(ahead, setup.key)),
               _msg(command_topic(first), signed(first, setup.key)),
               _msg(command_topic(again), signed(again, setup.key)))
    got = [(r.state, r.reason) if r else None for r in res]
    assert got == [("rejected", "wrong_station"), ("rejected", "clock_skew"), ("confirmed", None),
                   ("rejected", "rate_limit")]
    assert len(setup.writes()) == 1
