"""Gateway acquisition and store-and-forward figures for a 300-register station (issue #3).

- requests per poll, against the optimum (ceil(300 / 125) = 3 for 300 contiguous registers),
- poll-cycle time (plan → Modbus TCP reads on loopback → decode with quality → outbox commit),
- gateway CPU per 1,000 registers polled, and what 200 such stations every 10 s would cost,
- outbox write rate (one fsync'd commit per message) and replay rate of a 24 h backlog
  through real mosquitto, as a multiple of real time.

The simulator runs as its own process (``heatwatch simulate``) so its CPU is not counted.
Run: ``.venv/bin/python bench/gateway_bench.py`` (see bench/README.md).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson
import yaml

from contract.config import load_gateway_config
from durable.queue import DiskQueue
from gateway.app import Gateway, blocking
from gateway.publisher import Publisher
from heatwatch.devstack import REPO, Mosquitto, free_port, port_open, wait_until

REGISTERS = 300


def write_station(folder: Path, mqtt_port: int, plc_port: int, interval_s: float) -> Path:
    """300 holding registers: 150 int16, 50 float32 (CDAB), 50 uint16, laid out contiguously."""
    points: list[dict[str, object]] = []
    for i in range(150):
        points.append({"point": f"x_t{i:03d}", "table": "holding_register", "address": i,
                       "type": "int16", "unit": "°C", "scale": 0.1})
    for i in range(50):
        points.append({"point": f"x_f{i:03d}", "table": "holding_register", "address": 150 + 2 * i,
                       "type": "float32", "word_order": "CDAB", "unit": "kPa"})
    for i in range(50):
        points.append({"point": f"x_u{i:03d}", "table": "holding_register", "address": 250 + i,
                       "type": "uint16", "unit": "%"})
    (folder / "map.yaml").write_text(yaml.safe_dump({
        "kind": "register_map", "model": "bench-300", "addressing": "zero_based", "points": points}))
    cfg = {"kind": "gateway", "gateway": "gw-bench", "station": "bench",
           "mqtt": {"port": mqtt_port}, "outbox": {"path": str(folder / "outbox.sqlite")},
           "poll_groups": {"fast": {"interval_s": interval_s}},
           "devices": [{"name": "plc", "host": "127.0.0.1", "port": plc_port, "map": "map.yaml"}]}
    path = folder / "gateway.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


async def polling(cfg_path: Path, cycles: int) -> dict[str, float]:
    cfg = load_gateway_config(cfg_path)
    gw = Gateway(cfg)
    try:
        plan = gw.devices[0].plans["fast"]
        registers = sum(r.count for r in plan)
        for _ in range(20):  # connect, warm up
            await gw.poll_once("fast")
        times = []
        cpu0 = time.process_time()
        for _ in range(cycles):
            t = time.perf_counter()
            msg = await gw.poll_once("fast")
            times.append(time.perf_counter() - t)
        cpu = time.process_time() - cpu0
        good = sum(1 for r in msg.values if r.quality == "good")
        per_poll_cpu = cpu / cycles
        return {
            "points": len(msg.values), "good_points": good, "registers": registers,
            "requests_per_poll": len(plan), "optimum_requests": math.ceil(REGISTERS / 125),
            "poll_cycle_ms_p50": round(statistics.median(times) * 1000, 2),
            "poll_cycle_ms_p99": round(sorted(times)[int(cycles * 0.99)] * 1000, 2),
            "cpu_ms_per_poll": round(per_poll_cpu * 1000, 3),
            "cpu_ms_per_1000_registers": round(per_poll_cpu / registers * 1000 * 1000, 3),
            "cpu_share_200_stations_every_10s": round(per_poll_cpu * 200 / 10, 3),
            "message_bytes": len(msg.to_json()),
        }
    finally:
        for link in gw.links:
            link.close()
        gw.outbox.close()


def outbox_rates(folder: Path, payload: bytes, n: int) -> dict[str, object]:
    q = DiskQueue(folder / "write.sqlite", max_bytes=10**10, max_age_s=86400 * 3)
    t = time.perf_counter()
    for _ in range(n):
        q.append("t", payload)
    took = time.perf_counter() - t
    q.close()
    return {"outbox_appends_per_s": round(n / took), "outbox_append_ms": round(took / n * 1000, 3)}


async def replay(cfg_path: Path, payload: bytes, backlog: int, interval_s: float) -> dict[str, object]:
    cfg = load_gateway_config(cfg_path)
    q = DiskQueue(cfg.outbox.path, max_bytes=10**10, max_age_s=86400 * 3)
    q.close()
    db = sqlite3.connect(cfg.outbox.path)  # prefill fast: one transaction (the rate is measured above)
    old = int(time.time() * 1000) - 86_400_000
    db.executemany("INSERT INTO queue (key, payload, created_ms) VALUES (?, ?, ?)",
                   (("heatwatch/v1/station/bench/telemetry", payload, old + i) for i in range(backlog)))
    db.commit()
    db.close()
    q = DiskQueue(cfg.outbox.path, max_bytes=10**10, max_age_s=86400 * 3)
    pub = Publisher(cfg, q, blocking=blocking, birth=b"{}", will=b"{}",
                    will_topic="heatwatch/v1/gateway/gw-bench/status")
    task = asyncio.create_task(pub.run())
    t = time.perf_counter()
    while q.count:  # the publisher deletes rows as PUBACKs arrive  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    took = time.perf_counter() - t
    task.cancel()
    q.close()
    covered_s = backlog * interval_s
    return {"replay_messages": backlog, "replay_s": round(took, 2),
            "replay_msgs_per_s": round(backlog / took),
            "backlog_covers_hours": round(covered_s / 3600, 1),
            "replay_times_real_time": round(covered_s / took)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cycles", type=int, default=500)
    ap.add_argument("--interval", type=float, default=10.0, help="the station's poll interval (s)")
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="hw-gwbench-"))
    broker = Mosquitto(tmp / "mosquitto", free_port())
    broker.start()
    plc_port = free_port()
    cfg_path = write_station(tmp, broker.port, plc_port, a.interval)
    sim = subprocess.Popen([sys.executable, "-m", "heatwatch", "simulate", str(cfg_path)], cwd=REPO,
                           stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: port_open(plc_port), 20, "simulator")
        poll = asyncio.run(polling(cfg_path, a.cycles))
        out: dict[str, object] = dict(poll)
        payload = orjson.dumps({"n": "x" * (int(poll["message_bytes"]) - 10)})
        out |= outbox_rates(tmp, payload, 2000)
        backlog = int(86400 / a.interval)  # 24 h of this station's messages
        out |= asyncio.run(replay(cfg_path, payload, backlog, a.interval))
        print(orjson.dumps(out, option=orjson.OPT_INDENT_2).decode())
        return 0
    finally:
        sim.terminate()
        sim.wait(10)
        broker.stop()


if __name__ == "__main__":
    sys.exit(main())
