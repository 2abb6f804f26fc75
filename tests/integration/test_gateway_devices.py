"""The gateway against the simulator over real Modbus (TCP, RTU over TCP, RTU on a serial bus):
a dead device goes offline with bad readings while the other devices keep their values."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

import gateway.modbus
from alerting.engine import Engine
from contract.alerts import AlertRules
from contract.config import GatewayConfig, load_gateway_config
from contract.payload import DeviceState, Quality, Reading, StationStatus
from gateway.app import Gateway
from gateway.plan import plan_requests
from heatwatch.devstack import NullModem, SimThread, free_port
from simulator.physics import Event
from tests.conftest import write_gateway_config


def test_dead_device_is_offline_and_the_others_keep_answering(
    station_config: GatewayConfig, simulator: SimThread,
) -> None:
    now = simulator.call(simulator.sim.now)
    assert isinstance(now, float)
    simulator.call(simulator.sim.add_event, "st001", Event("dead_device", start=now, device="plc"))
    simulator.call(simulator.sim.step)

    async def poll() -> tuple[int, dict[str, DeviceState], dict[str, set[Quality]]]:
        gw = Gateway(station_config)
        try:
            msg = await gw.poll_once("slow")
            msg2 = await gw.poll_once("slow")  # the dead PLC is in backoff: not asked again
            by_dev: dict[str, set[Quality]] = {}
            names = {p.key: d.cfg.name for d in gw.devices for p in d.cfg.points}
            for r in msg.values + msg2.values:
                by_dev.setdefault(names[(r.point, r.building, r.household)], set()).add(r.quality)
            plc = next(d for d in gw.devices if d.cfg.name == "plc")
            return plc.health.failures, {d.cfg.name: d.health.state for d in gw.devices}, by_dev
        finally:
            for link in gw.links:
                link.close()
            gw.outbox.close()

    failures, states, qualities = asyncio.run(poll())
    assert failures == 1  # one timeout, then backoff: a dead slave does not cost every cycle
    assert states == {"plc": DeviceState.OFFLINE, "makeup_meter": DeviceState.ONLINE,
                      "rooms": DeviceState.ONLINE}
    assert qualities["plc"] == {Quality.BAD}
    assert qualities["rooms"] == {Quality.GOOD}


def test_a_refused_register_is_isolated_and_the_rest_of_its_block_arrives(
    station_config: GatewayConfig, simulator: SimThread,
) -> None:
    async def poll() -> None:
        gw = Gateway(station_config)
        try:
            plc = next(d for d in gw.devices if d.cfg.name == "plc")
            block = max(plc.plans["fast"], key=lambda r: len(r.points))
            assert len(block.points) >= 8 and block.table == "holding_register"
            hole_point, hole = block.points[len(block.points) // 2]
            simulator.call(simulator.sim.refuse, "st001", "plc", "holding_register", hole)
            simulator.call(simulator.sim.step)
            before = len(plc.plans["fast"])

            for cycle in range(2):
                msg = await gw.poll_once("fast")
                quality = {r.point if r.building is None else f"{r.point}@{r.building}": r.quality
                           for r in msg.values}
                name = hole_point.point if hole_point.building is None else \
                    f"{hole_point.point}@{hole_point.building}"
                assert quality.pop(name) is Quality.BAD, cycle
                assert set(quality.values()) == {Quality.GOOD}, cycle  # everything else arrives
                assert plc.health.state is DeviceState.DEGRADED
                assert hole_point.point in (plc.health.error or "")
            # the plan adapted: the refused block became a few pieces, bounded by the halving
            pieces = len(plc.plans["fast"]) - before + 1
            assert 2 <= pieces <= 2 * (len(block.points).bit_length())
            # every point of the group is still read, exactly once
            covered = sorted(p.key for r in plc.plans["fast"] for p, _ in r.points)
            assert covered == sorted(p.key for r in plan_requests(plc.cfg, "fast") for p, _ in r.points)
        finally:
            for link in gw.links:
                link.close()
            gw.outbox.close()

    asyncio.run(poll())


def test_rtu_on_a_serial_bus_and_through_a_serial_device_server(tmp_path: Path) -> None:
    """RS-485 for real: the meter and the room concentrator share one serial bus (a null-modem
    pair of ttys, pyserial on both ends, RTU frames with CRCs); the PLC sits behind a serial
    device server (RTU over TCP). Every point reads back what the simulator serves; a dead meter
    on the bus costs the concentrator beside it one timeout, then backoff, and no values."""
    cable = NullModem()
    path = write_gateway_config(tmp_path, "st001", mqtt_port=1883, plc_port=free_port(), bus_port=1)
    raw = yaml.safe_load(path.read_text())
    bus = {"device": cable.a, "baudrate": 19200}  # 8N1: Linux ptys refuse parity settings (EINVAL)
    for dev in raw["devices"]:
        if dev["name"] == "plc":
            dev["transport"] = "rtu_over_tcp"
        else:
            dev.update(transport="rtu", serial=bus)
            del dev["host"], dev["port"]
    path.write_text(yaml.safe_dump(raw))
    cfg = load_gateway_config(path)
    plc_at = f"127.0.0.1:{cfg.resolved[0].port} rtu"
    assert {d.where for d in cfg.resolved} == {plc_at, f"{cable.a} 19200 8N1"}
    sim = SimThread([cfg], serial_peers={cable.a: cable.b})
    try:
        sim.call(sim.sim.pause)
        served = sim.call(sim.sim.served, "st001")
        assert isinstance(served, dict)

        async def poll() -> tuple[dict[tuple[str, str | None, str | None], Reading], Gateway]:
            gw = Gateway(cfg)
            got = {}
            for group in cfg.poll_groups:
                msg = await gw.poll_once(group)
                got.update({(r.point, r.building, r.household): r for r in msg.values})
            return got, gw

        async def run() -> None:
            got, gw = await poll()
            try:
                assert set(got) == set(served)
                for key, r in got.items():
                    assert r.quality is Quality.GOOD, r
                    want = served[key]
                    assert (r.value == pytest.approx(want, rel=1e-6, abs=1e-9)
                            if isinstance(want, float) else r.value == want), (key, r.value, want)
                assert {d.cfg.name: d.health.state for d in gw.devices} == dict.fromkeys(
                    ("plc", "makeup_meter", "rooms"), DeviceState.ONLINE)
                assert len(gw.links) == 2  # the bus is one link: its devices are read in turn
                # the meter dies; the concentrator on the same bus keeps its readings
                now = sim.call(sim.sim.now)
                assert isinstance(now, float)
                dead = Event("dead_device", start=now - 1, device="makeup_meter")
                sim.call(sim.sim.add_event, "st001", dead)
                rooms = next(d for d in gw.devices if d.cfg.name == "rooms")
                meter = next(d for d in gw.devices if d.cfg.name == "makeup_meter")
                for _ in range(3):
                    for group in cfg.poll_groups:
                        msg = await gw.poll_once(group)
                        for r in msg.values:
                            dev = ("rooms" if r.household else
                                   "makeup_meter" if any(p.key == (r.point, r.building, r.household)
                                                         for p in meter.cfg.points) else "plc")
                            assert r.quality is (Quality.BAD if dev == "makeup_meter" else Quality.GOOD), r
                assert meter.health.state is DeviceState.OFFLINE and meter.health.failures == 1
                assert rooms.health.state is DeviceState.ONLINE
            finally:
                for link in gw.links:
                    link.close()
                gw.outbox.close()

        asyncio.run(run())
        assert cable.bytes > 0
    finally:
        sim.stop()
        cable.close()


def test_report_by_exception_sends_changes_and_a_heartbeat(tmp_path: Path) -> None:
    """The slow group reports by exception: the first cycle sends every point, unchanged cycles
    send none (the message still goes: liveness and sequence numbers), a moved point goes at
    once, and every point again once the heartbeat is due."""
    path = write_gateway_config(tmp_path, "st001", mqtt_port=1883, plc_port=free_port(),
                                bus_port=free_port(), slow_s=0.1)
    raw = yaml.safe_load(path.read_text())
    raw["poll_groups"]["slow"].update(by_exception=True, max_silence_s=1.5)
    path.write_text(yaml.safe_dump(raw))
    cfg = load_gateway_config(path)
    slow = {p.key for d in cfg.resolved for p in d.points if p.group == "slow"}
    assert len(slow) >= 3
    sim = SimThread([cfg])
    try:
        sim.call(sim.sim.pause)

        async def run() -> list[list[Reading]]:
            gw = Gateway(cfg)
            try:
                sent = []
                t0 = time.monotonic()
                while time.monotonic() - t0 < 1.7:
                    msg = await gw.poll_once("slow")
                    assert msg.heartbeat_s == 1.5
                    sent.append(msg.values)
                    await asyncio.sleep(0.1)
                # one point moves: it alone goes, at once
                key = next(p.key for d in cfg.resolved for p in d.points
                           if p.group == "slow" and p.type in ("uint32", "float32", "int16"))

                def bump() -> None:
                    sim.sim.models["st001"].values[key] += 5  # type: ignore[operator]
                    for img in sim.sim.images:
                        img.render()

                sim.call(bump)
                moved = await gw.poll_once("slow")
                assert [(r.point, r.building, r.household) for r in moved.values] == [key]
                fast = await gw.poll_once("fast")  # a group without by_exception sends everything
                assert fast.heartbeat_s is None and len(fast.values) == sum(
                    1 for d in cfg.resolved for p in d.points if p.group == "fast")
                return sent
            finally:
                for link in gw.links:
                    link.close()
                gw.outbox.close()

        sent = asyncio.run(run())
        assert {(r.point, r.building, r.household) for r in sent[0]} == slow
        assert all(len(v) == 0 for v in sent[1:-2])  # paused: nothing moved
        assert {(r.point, r.building, r.household) for v in sent[-2:] for r in v} == slow  # heartbeat
    finally:
        sim.stop()


def test_a_dead_device_read_by_one_group_stays_offline_through_every_group(
    station_config: GatewayConfig, simulator: SimThread,
) -> None:
    """st001's topology: the room concentrator shares the meter's RS-485 converter and is read
    only by the slow group. Dead, it must stay offline through every fast and status cycle and
    every backoff retry: its health changes only on an exchange with it. The station status the
    gateway publishes then makes the rule engine raise device_offline once the hold has passed
    (before the fix each fast cycle declared it "answering again" and the hold never ran out)."""
    groups = {p.group for d in station_config.resolved if d.name == "rooms" for p in d.points}
    assert groups == {"slow"}  # the premise: other groups have no request for it
    now = simulator.call(simulator.sim.now)
    assert isinstance(now, float)
    simulator.call(simulator.sim.add_event, "st001", Event("dead_device", start=now - 1, device="rooms"))
    simulator.call(simulator.sim.step)

    async def run() -> list[StationStatus]:
        gw = Gateway(station_config)
        rooms = next(d for d in gw.devices if d.cfg.name == "rooms")
        statuses: list[StationStatus] = []
        cycles: Counter[str] = Counter()
        try:
            # until two backoff periods (1 s, 2 s) ran out and the retries failed again
            while rooms.health.failures < 3:
                for group in ("slow", "fast", "status"):
                    await gw.poll_once(group)
                    cycles[group] += 1
                    status = gw.station_status(int(time.time() * 1000))
                    statuses.append(status)
                    assert rooms.health.state is DeviceState.OFFLINE, (group, cycles)
                    assert status.devices["rooms"].state is DeviceState.OFFLINE, (group, cycles)
                    assert status.devices["plc"].state is DeviceState.ONLINE
                    assert status.devices["makeup_meter"].state is DeviceState.ONLINE
                await asyncio.sleep(0.1)  # the poll interval of this test
        finally:
            for link in gw.links:
                link.close()
            gw.outbox.close()
        assert min(cycles.values()) >= 10, cycles
        return statuses

    statuses = asyncio.run(run())
    # the rule engine on those statuses: device_offline fires once the hold has passed
    rules = AlertRules.model_validate({"season": {"start": "01-01", "end": "12-31"},
                                       "offline": {"device_hold_s": 2}})
    engine = Engine(rules)
    out = [tr for s in statuses for tr in engine.station_status(s, s.ts)]
    out += engine.tick(statuses[-1].ts + 2500)
    fired = [tr for tr in out if tr.rule == "device_offline" and tr.state == "firing"]
    assert [tr.subject for tr in fired] == ["rooms"]
    assert not [tr for tr in out if tr.state == "resolved"]


class _Said:
    """Stands in for a module's structlog logger: what was logged, by event."""

    def __init__(self) -> None:
        self.events: Counter[str] = Counter()

    def __getattr__(self, level: str) -> Any:
        return lambda event, **_kw: self.events.update([event])


def test_a_refused_block_keeps_its_device_degraded_through_the_other_groups(
    station_config: GatewayConfig, simulator: SimThread, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A wrong map in one poll group's block: the device stays degraded while the other groups
    read it fine, and the refusal is logged once. Before the fix every status or slow cycle
    declared the PLC online again and the next fast cycle logged "device rejects a request" anew
    (five times a second in a gateway polling at 0.2 s; the device_state metric read "online")."""
    said = _Said()
    monkeypatch.setattr(gateway.modbus, "log", said)

    async def run() -> None:
        gw = Gateway(station_config)
        try:
            plc = next(d for d in gw.devices if d.cfg.name == "plc")
            p, wire = plc.plans["fast"][0].points[0]
            others = {q.key for g in ("status", "slow") for r in plc.plans[g] for q, _ in r.points}
            assert p.key not in others  # the other groups never read the refused register
            simulator.call(simulator.sim.refuse, "st001", "plc", p.table, wire)
            for _ in range(3):
                for group in ("fast", "status", "slow"):
                    await gw.poll_once(group)
                    assert plc.health.state is DeviceState.DEGRADED, group
                    assert p.point in (plc.health.error or ""), group
                    status = gw.station_status(int(time.time() * 1000))
                    assert status.devices["plc"].state is DeviceState.DEGRADED
            simulator.call(simulator.sim.image("st001", "plc").illegal.clear)  # the map fixed on site
            await gw.poll_once("fast")
            assert plc.health.state is DeviceState.ONLINE and plc.health.error is None
        finally:
            for link in gw.links:
                link.close()
            gw.outbox.close()

    asyncio.run(run())
    assert said.events["device rejects a request: check the register map"] == 1


def test_messages_enter_the_outbox_in_sequence_when_poll_groups_finish_together(
    station_config: GatewayConfig, simulator: SimThread,
) -> None:
    """Two poll groups finishing at once: the outbox rows (sent in row order) carry seq 0, 1 in
    that order, even when the first one's disk write is the slower (a consumer that counts on
    0, 1, 2 … — the alerter's latest values — would otherwise see a gap that is none)."""
    async def poll() -> list[int | None]:
        gw = Gateway(station_config)
        real = gw.outbox.append

        def slow_first(*args: Any, **kw: Any) -> Any:
            if kw.get("seq") == 0:
                time.sleep(0.3)  # a slow disk under the first message (fault injection)
            return real(*args, **kw)

        gw.outbox.append = slow_first  # type: ignore[method-assign]
        try:
            await asyncio.gather(gw.poll_once("fast"), gw.poll_once("slow"))
            return [r.seq for r in gw.outbox.fetch_after(0, 10)]
        finally:
            for link in gw.links:
                link.close()
            gw.outbox.close()

    assert asyncio.run(poll()) == [0, 1]
