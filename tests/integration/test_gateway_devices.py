"""The gateway against the simulator over real Modbus TCP: a dead device goes offline with bad
readings while the devices on other connections keep their values; writes reach the model."""

from __future__ import annotations

import asyncio

from contract.config import GatewayConfig
from contract.payload import DeviceState, Quality
from gateway.app import Gateway
from gateway.plan import plan_requests
from heatwatch.devstack import SimThread
from simulator.physics import Event


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
