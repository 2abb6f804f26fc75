"""The gateway under faults, end to end: simulator (real Modbus TCP) → gateway process → real
mosquitto → an observer that receipts what it receives, as the collector does after its durable
write (tests/e2e/test_gateway_receipts.py). "Nothing lost" is checked on the gateway's own
sequence numbers: every message it committed to its outbox arrives, gap-free, with the poll's
original timestamp."""

from __future__ import annotations

import itertools
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from contract.config import GatewayConfig, load_gateway_config
from contract.payload import Telemetry, parse_telemetry
from gateway.publisher import BACKFILL_AFTER_S
from heatwatch.devstack import REPO, Mosquitto, SimThread, free_port
from simulator.physics import Event
from tests.conftest import Processes, Subscriber, wait_for, write_gateway_config

pytestmark = pytest.mark.slow


def _config_path(station_config: GatewayConfig) -> Path:
    """The file the station_config fixture was loaded from (written next to its outbox)."""
    return Path(station_config.outbox.path).parent / f"{station_config.station}.yaml"


def _telemetry(obs: Subscriber) -> list[Telemetry]:
    return [parse_telemetry(p) for t, p in list(obs.messages) if t.endswith("/telemetry")]


def _outbox_rows(cfg: GatewayConfig) -> list[Telemetry]:
    db = sqlite3.connect(cfg.outbox.path)
    try:
        return [parse_telemetry(bytes(r[0])) for r in db.execute("SELECT payload FROM queue")]
    finally:
        db.close()


def _assert_gap_free(msgs: list[Telemetry], boot: str, up_to: int) -> None:
    seqs = {m.seq for m in msgs if m.boot == boot}
    missing = sorted(set(range(up_to + 1)) - seqs)
    assert not missing, f"boot {boot[:8]}: {len(missing)} committed messages never arrived: {missing[:10]}"


def _stop(procs: Processes, name: str) -> None:
    procs.procs[name].terminate()
    procs.procs[name].wait(15)


def test_broker_killed_for_60_s_while_polling(mosquitto: Mosquitto, procs: Processes,
                                             station_config: GatewayConfig, simulator: SimThread) -> None:
    obs = Subscriber(mosquitto.port, "heatwatch/v1/station/+/telemetry", persistent=True, receipts=True)
    procs.start("gateway", "gateway", str(_config_path(station_config)))
    time.sleep(12)  # past one autosave: the observer's session is on the broker's disk
    mosquitto.kill()
    killed_at = time.time() * 1000
    time.sleep(60)
    mosquitto.start()
    restarted_at = time.time() * 1000
    # the backlog (60 s ≈ 150 messages) replays oldest first while live polls continue
    wait_for(lambda: any(m.ts > restarted_at + 3000 for m in _telemetry(obs)), 30, "live data after restart")
    wait_for(lambda: not _outbox_rows(station_config), 30, "outbox drained")
    _stop(procs, "gateway")
    msgs = _telemetry(obs)
    boot = msgs[0].boot
    top = max(m.seq for m in msgs)
    _assert_gap_free(msgs, boot, top)
    during = [m for m in msgs if killed_at + 1000 < m.ts < restarted_at - 1000]
    assert len(during) >= 100  # polled while the broker was gone, and delivered afterwards
    # replayed from the outbox: marked backfill when older than BACKFILL_AFTER_S at publish time,
    # original timestamps kept. (What paho took in the few seconds before its keepalive noticed
    # the loss, it re-sends itself, unmarked.)
    noticed = killed_at + 2 * station_config.mqtt.keepalive_s * 1000
    stale = restarted_at - (BACKFILL_AFTER_S + 2) * 1000
    late = [m for m in during if noticed < m.ts < stale]
    assert len(late) >= 30 and all(m.backfill for m in late)  # ~18 s × 2.5 messages/s
    assert not any(m.backfill for m in msgs if m.ts > restarted_at + 5000)


def test_gateway_sigkilled_mid_stream(mosquitto: Mosquitto, procs: Processes,
                                      station_config: GatewayConfig, simulator: SimThread) -> None:
    obs = Subscriber(mosquitto.port, "heatwatch/v1/station/+/telemetry", receipts=True)
    cfg_path = _config_path(station_config)
    procs.start("gateway", "gateway", str(cfg_path))
    wait_for(lambda: len(_telemetry(obs)) >= 10, 20, "first messages")
    procs.procs["gateway"].kill()
    procs.procs["gateway"].wait()
    first = _telemetry(obs)
    boot1 = first[0].boot
    # everything boot 1 committed: what arrived, plus what its outbox still holds
    committed = max([m.seq for m in first if m.boot == boot1] +
                    [m.seq for m in _outbox_rows(station_config) if m.boot == boot1])
    procs.start("gateway", "gateway", str(cfg_path))
    wait_for(lambda: len({m.boot for m in _telemetry(obs)}) == 2 and len(_telemetry(obs)) > len(first) + 10,
             20, "the restarted gateway's messages")
    wait_for(lambda: not _outbox_rows(station_config), 20, "outbox drained")
    _stop(procs, "gateway")
    msgs = _telemetry(obs)
    _assert_gap_free(msgs, boot1, committed)
    boot2 = next(m.boot for m in msgs if m.boot != boot1)
    _assert_gap_free(msgs, boot2, max(m.seq for m in msgs if m.boot == boot2))


def test_a_dead_device_on_a_shared_bus_does_not_slow_the_others(
    mosquitto: Mosquitto, procs: Processes, station_config: GatewayConfig,
    simulator: SimThread,
) -> None:
    obs = Subscriber(mosquitto.port, "heatwatch/v1/station/+/telemetry", receipts=True)
    procs.start("gateway", "gateway", str(_config_path(station_config)))
    wait_for(lambda: len(_telemetry(obs)) >= 5, 20, "first messages")
    now = simulator.call(simulator.sim.now)
    assert isinstance(now, float)
    # the meter shares its RS-485 converter (one TCP port) with the room concentrator
    simulator.call(simulator.sim.add_event, "st001", Event("dead_device", start=now, device="makeup_meter"))
    simulator.call(simulator.sim.step)
    t0 = time.time() * 1000
    # a 15 s window, observed as it arrives (until a message stamped past its end)
    wait_for(lambda: any(m.ts > t0 + 16_000 for m in _telemetry(obs)), 40, "16 s of telemetry")
    window = [m for m in _telemetry(obs) if t0 + 1000 < m.ts <= t0 + 16_000]

    def rooms(m: Telemetry) -> list[str]:
        return [r.quality for r in m.values if r.point == "room_temp"]

    with_rooms = [m for m in window if rooms(m)]
    meter_points = {p.point for d in station_config.resolved if d.name == "makeup_meter" for p in d.points}
    group = next(p.group for d in station_config.resolved for p in d.points if p.point == "room_temp")
    interval_ms = station_config.poll_groups[group].interval_s * 1000
    # the rooms' group still publishes every cycle, with good readings, while the meter is bad
    assert len(with_rooms) >= 15_000 / interval_ms - 1
    gaps = [b.ts - a.ts for a, b in itertools.pairwise(with_rooms)]
    # the rooms keep their cadence: the dead meter's timeouts (0.5 s, one per backoff period)
    # never cost them a cycle (a skipped cycle is a gap of two intervals); the bound leaves a
    # loaded machine's scheduling room (interval + 0.7 s failed once under a full suite's load)
    assert max(gaps) < interval_ms + 1500, gaps
    assert all(set(rooms(m)) == {"good"} for m in with_rooms)
    meter = [r for m in window for r in m.values if r.point in meter_points]
    assert meter and {r.quality for r in meter} == {"bad"}
    plc = [r for m in window for r in m.values if r.point == "secondary_supply_temp"]
    assert len(plc) >= 13 and {r.quality for r in plc} == {"good"}  # fast group, 1 s, own link



def test_one_process_polls_several_stations(tmp_path: Path, mosquitto: Mosquitto,
                                            procs: Processes) -> None:
    """``heatwatch gateway A B``: two stations in one process, each with its own session,
    outbox and retained status; a config naming another's gateway id is refused up front."""
    paths = [write_gateway_config(tmp_path / s, s, mqtt_port=mosquitto.port, plc_port=free_port(),
                                  bus_port=free_port()) for s in ("st001", "st002")]
    cfgs = [load_gateway_config(p) for p in paths]
    sim = SimThread(cfgs)
    try:
        obs = Subscriber(mosquitto.port, "heatwatch/v1/#")
        procs.start("gateway", "gateway", *map(str, paths))
        def both_up() -> bool:
            topics = [t for t, _ in list(obs.messages)]
            return all(topics.count(f"heatwatch/v1/station/{s}/telemetry") >= 6
                       and f"heatwatch/v1/station/{s}/status" in topics for s in ("st001", "st002"))

        wait_for(both_up, 30, "telemetry and status of both stations")
        for s in ("st001", "st002"):
            msgs = [parse_telemetry(p) for t, p in list(obs.messages)
                    if t == f"heatwatch/v1/station/{s}/telemetry"]
            assert {m.gateway for m in msgs} == {f"gw-{s}"} and len({m.boot for m in msgs}) == 1
        assert all(Path(cfg.outbox.path).exists() for cfg in cfgs)  # each its own outbox
        obs.close()
    finally:
        sim.stop()
    dup = tmp_path / "dup.yaml"
    dup.write_text(paths[1].read_text().replace("gateway: gw-st002", "gateway: gw-st001"))
    out = subprocess.run([sys.executable, "-m", "heatwatch", "gateway", str(paths[0]), str(dup)],
                         capture_output=True, text=True, timeout=30, cwd=REPO)
    assert out.returncode != 0
    assert f"{dup}: gateway: gw-st001 is also the gateway of {paths[0]}" in out.stderr
