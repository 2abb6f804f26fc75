"""Gateway acquisition and store-and-forward figures for a 300-register station (issue #3).

- requests per poll, against the optimum (ceil(300 / 125) = 3 for 300 contiguous registers),
- poll-cycle time (plan → Modbus TCP reads on loopback → decode with quality → outbox commit),
- gateway CPU per 1,000 registers polled, and what 200 such stations every 10 s would cost,
- outbox write rate (one fsync'd commit per message) and replay rate of a 24 h backlog
  through real mosquitto, as a multiple of real time,
- a fleet: one ``heatwatch gateway`` process polling ``--fleet`` such stations (default 200,
  each its own PLC port, MQTT session and outbox) every ``--interval`` s: its CPU share from
  /proc and the messages that reached the broker against those due,
- side by side with modbus4mqtt (a YAML-defined Modbus→MQTT bridge on PyPI, installed into
  ``.venv-modbus4mqtt`` on first use): the same station polled every second by each as its own
  process, requests per poll counted on the wire by a proxy, CPU per 1,000 registers from /proc,
- what receipts cost (issue #16): one gateway process polling ``--receipt-stations`` stations,
  with a stand-in collector that receipts every message it gets (per station, every 0.5 s, as
  the collector's batches do), against the same run with ``outbox.receipts: false`` (a row
  deleted at its PUBACK) and, with ``--before PATH``, the gateway of an older checkout: gateway
  CPU per message from /proc, and the outbox's rows sampled through the window.

The simulator runs as its own process (``heatwatch simulate``) so its CPU is not counted.
Run: ``.venv/bin/python bench/gateway_bench.py`` (see bench/README.md).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import paho.mqtt.client as mqtt
import yaml
from measure import ModbusCounter, proc_cpu_s
from paho.mqtt.enums import CallbackAPIVersion

from contract.config import load_gateway_config
from contract.receipt import receipt_topic, receipts
from durable.queue import DiskQueue
from gateway.app import Gateway, blocking
from gateway.publisher import Publisher
from heatwatch.devstack import REPO, Mosquitto, free_port, port_open, wait_until

REGISTERS = 300


M4M_VENV = REPO / ".venv-modbus4mqtt"
M4M_VERSION = "0.7.1"


def write_station(folder: Path, mqtt_port: int, plc_port: int, interval_s: float,
                  station: str = "bench", map_path: Path | None = None) -> Path:
    """300 holding registers: 150 int16, 50 float32 (CDAB), 50 uint16, laid out contiguously."""
    folder.mkdir(parents=True, exist_ok=True)
    if map_path is None:
        map_path = folder / "map.yaml"
        write_map(map_path)
    cfg = {"kind": "gateway", "gateway": f"gw-{station}", "station": station,
           "mqtt": {"port": mqtt_port}, "outbox": {"path": str(folder / f"{station}.outbox.sqlite")},
           "poll_groups": {"fast": {"interval_s": interval_s}},
           "devices": [{"name": "plc", "host": "127.0.0.1", "port": plc_port, "map": str(map_path)}]}
    path = folder / f"{station}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def write_map(path: Path, registers: int = REGISTERS) -> None:
    if registers != REGISTERS:  # a small station: the publish path's cost shows over the poll's
        path.write_text(yaml.safe_dump({
            "kind": "register_map", "model": f"bench-{registers}", "addressing": "zero_based",
            "points": [{"point": f"x_t{i:03d}", "table": "holding_register", "address": i,
                        "type": "int16", "unit": "°C", "scale": 0.1} for i in range(registers)]}))
        return
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
    path.write_text(yaml.safe_dump({
        "kind": "register_map", "model": "bench-300", "addressing": "zero_based", "points": points}))


def write_m4m_station(folder: Path, modbus_port: int) -> Path:
    """The same 300 registers for modbus4mqtt. It has no float types: the 50 float32 slots are
    read as int32 (same words on the wire; its word order is global, lowhigh for the CDAB ones).
    One JSON message per poll, every value each time, as heatwatch sends them."""
    regs: list[dict[str, object]] = []
    for i in range(150):
        regs.append({"address": i, "type": "int16", "scale": 0.1, "json_key": f"x_t{i:03d}"})
    for i in range(50):
        regs.append({"address": 150 + 2 * i, "type": "int32", "json_key": f"x_f{i:03d}"})
    for i in range(50):
        regs.append({"address": 250 + i, "type": "uint16", "json_key": f"x_u{i:03d}"})
    for r in regs:
        r.update(table="holding", pub_topic="values", pub_only_on_change=False)
    path = folder / "modbus4mqtt.yaml"
    path.write_text(yaml.safe_dump({"ip": "127.0.0.1", "port": modbus_port, "device_address": 1,
                                    "update_rate": 1, "scan_batching": 100, "word_order": "lowhigh",
                                    "registers": regs}))
    return path


class Counter:
    """Messages per topic prefix arriving at the broker (a plain paho subscriber)."""

    def __init__(self, port: int, topic: str) -> None:
        self.counts: dict[str, int] = {}
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2)
        self.client.on_message = self._on_message
        self.client.on_connect = lambda c, *_: c.subscribe(topic, qos=0)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_message(self, _c: mqtt.Client, _u: object, m: mqtt.MQTTMessage) -> None:
        self.counts[m.topic] = self.counts.get(m.topic, 0) + 1

    def total(self, prefix: str = "") -> int:
        return sum(n for t, n in list(self.counts.items()) if t.startswith(prefix))

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


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


def confirm_costs(folder: Path, payload: bytes, n: int, per: int) -> dict[str, object]:
    """The outbox's side of confirming ``n`` rows ``per`` at a time: the PUBACK path (append,
    delete by row ids) against receipts (append with boot and seq, delete by a seq range), CPU
    of this process per row (the fsyncs are the disk's, not counted)."""
    out: dict[str, object] = {}
    for mode in ("puback", "receipt"):
        q = DiskQueue(folder / f"confirm-{mode}.sqlite", max_bytes=10**10, max_age_s=86400 * 3)
        c0 = time.process_time()
        ids = [q.append("t", payload, boot="0badc0de" if mode == "receipt" else None, seq=i if
                        mode == "receipt" else None) for i in range(n)]
        c1 = time.process_time()
        for i in range(0, n, per):
            if mode == "puback":
                q.delete(ids[i:i + per])
            else:
                q.receipted("0badc0de", [(i, i + per - 1)])
        c2 = time.process_time()
        q.close()
        out[f"outbox_{mode}_append_cpu_us"] = round((c1 - c0) / n * 1e6, 1)
        out[f"outbox_{mode}_confirm_cpu_us_per_row"] = round((c2 - c1) / n * 1e6, 1)
    return out


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


def _window(pid: int, count: Callable[[], int], seconds: float) -> tuple[float, int, float]:
    """CPU seconds of ``pid`` and the change of ``count`` over ``seconds`` of wall time."""
    c0, n0, t0 = proc_cpu_s(pid), count(), time.monotonic()
    time.sleep(seconds)
    return proc_cpu_s(pid) - c0, count() - n0, time.monotonic() - t0


def fleet(tmp: Path, mqtt_port: int, stations: int, interval_s: float, seconds: float) -> dict[str, object]:
    folder = tmp / "fleet"
    folder.mkdir()
    map_path = folder / "map.yaml"
    write_map(map_path)  # one cabinet, one map: every station shares it
    ports: list[int] = []
    while len(ports) < stations:  # free_port can hand out a port twice; each PLC needs its own
        if (port := free_port()) not in ports:
            ports.append(port)
    paths = [write_station(folder, mqtt_port, port, interval_s, station=f"b{i:03d}", map_path=map_path)
             for i, port in enumerate(ports)]
    sim = subprocess.Popen([sys.executable, "-m", "heatwatch", "simulate", *map(str, paths)], cwd=REPO,
                           stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    counter = Counter(mqtt_port, "heatwatch/v1/station/+/telemetry")
    gw: subprocess.Popen[bytes] | None = None
    try:
        wait_until(lambda: all(port_open(p) for p in ports), 120, "simulated PLCs")
        gw = subprocess.Popen([sys.executable, "-m", "heatwatch", "gateway", *map(str, paths)], cwd=REPO,
                              stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        wait_until(lambda: len(counter.counts) == stations, 120, "every station's first message")
        time.sleep(interval_s)  # past start-up
        cpu, msgs, took = _window(gw.pid, counter.total, seconds)
        rss = int(Path(f"/proc/{gw.pid}/status").read_text().split("VmHWM:")[1].split()[0])
        return {"fleet_stations": stations, "fleet_interval_s": interval_s, "fleet_window_s": round(took, 1),
                "fleet_gateway_cpu_share": round(cpu / took, 3),
                "fleet_messages_due_per_s": round(stations / interval_s, 1),
                "fleet_messages_delivered_per_s": round(msgs / took, 1),
                "fleet_cpu_ms_per_1000_registers": round(cpu * 1e6 / (msgs * REGISTERS), 3) if msgs else None,
                "fleet_gateway_peak_rss_mb": round(rss / 1024)}
    finally:
        counter.close()
        for p in (gw, sim):
            if p is not None:
                p.terminate()
                p.wait(30)


class ReceiptingCollector:
    """Receipts every telemetry message it gets, per (station, gateway, boot), every ``every_s``."""

    def __init__(self, port: int, every_s: float = 0.5) -> None:
        self.pending: dict[tuple[str, str, str], list[int]] = {}
        self.lock = threading.Lock()
        self.received = 0
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-collector")
        self.client.on_message = self._on_message
        self.client.on_connect = lambda c, *_: c.subscribe("heatwatch/v1/station/+/telemetry", qos=1)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._flush, args=(every_s,), daemon=True)
        self.thread.start()

    def _on_message(self, _c: mqtt.Client, _u: object, m: mqtt.MQTTMessage) -> None:
        t = orjson.loads(m.payload)
        with self.lock:
            self.pending.setdefault((t["station"], t["gateway"], t["boot"]), []).append(t["seq"])
            self.received += 1

    def _flush(self, every_s: float) -> None:
        while not self.stop.wait(every_s):
            with self.lock:
                batch, self.pending = self.pending, {}
            for (station, gateway, boot), seqs in batch.items():
                for r in receipts(station, gateway, boot, seqs):
                    self.client.publish(receipt_topic(station), r.encode(), qos=1)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.client.loop_stop()
        self.client.disconnect()


def receipt_cost(tmp: Path, mqtt_port: int, stations: int, interval_s: float, seconds: float,
                 mode: str, repo: Path = REPO, registers: int = REGISTERS) -> dict[str, object]:
    """One gateway process polling ``stations`` 300-register stations; ``mode``: ``receipts``
    (a stand-in collector receipts everything), ``puback`` (receipts off) or ``before`` (the
    gateway of ``repo``, an older checkout without receipts)."""
    folder = tmp / f"receipts-{mode}"
    folder.mkdir()
    map_path = folder / "map.yaml"
    write_map(map_path, registers)
    ports: list[int] = []
    while len(ports) < stations:
        if (port := free_port()) not in ports:
            ports.append(port)
    paths = [write_station(folder, mqtt_port, port, interval_s, station=f"r{i:03d}", map_path=map_path)
             for i, port in enumerate(ports)]
    if mode != "before":
        for path in paths:
            cfg = yaml.safe_load(path.read_text())
            cfg["outbox"]["receipts"] = mode == "receipts"
            path.write_text(yaml.safe_dump(cfg))
    sim = subprocess.Popen([sys.executable, "-m", "heatwatch", "simulate", *map(str, paths)], cwd=REPO,
                           stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    collector = ReceiptingCollector(mqtt_port) if mode == "receipts" else None
    counter = Counter(mqtt_port, "heatwatch/v1/station/+/telemetry")
    gw: subprocess.Popen[bytes] | None = None
    outboxes = [folder / f"r{i:03d}.outbox.sqlite" for i in range(stations)]

    def rows() -> int:
        n = 0
        for o in outboxes:
            db = sqlite3.connect(f"file:{o}?mode=ro", uri=True)
            try:
                n += int(db.execute("SELECT COUNT(*) FROM queue").fetchone()[0])
            finally:
                db.close()
        return n

    try:
        wait_until(lambda: all(port_open(p) for p in ports), 120, "simulated PLCs")
        gw = subprocess.Popen([sys.executable, "-m", "heatwatch", "gateway", *map(str, paths)], cwd=repo,
                              stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        wait_until(lambda: len(counter.counts) == stations, 120, "every station's first message")
        time.sleep(max(5.0, 2 * interval_s))  # past start-up
        c0, n0, t0 = proc_cpu_s(gw.pid), counter.total(), time.monotonic()
        samples: list[int] = []
        while time.monotonic() - t0 < seconds:
            samples.append(rows())
            time.sleep(1.0)
        cpu, msgs, took = proc_cpu_s(gw.pid) - c0, counter.total() - n0, time.monotonic() - t0
        return {"mode": mode, "stations": stations, "registers": registers, "interval_s": interval_s,
                "window_s": round(took, 1), "messages_due_per_s": round(stations / interval_s, 1),
                "messages_per_s": round(msgs / took, 1),
                "gateway_cpu_us_per_message": round(cpu * 1e6 / msgs, 1) if msgs else None,
                "gateway_cpu_share": round(cpu / took, 3),
                "outbox_rows_mean": round(statistics.mean(samples), 1), "outbox_rows_max": max(samples),
                "outbox_rows_per_station_mean": round(statistics.mean(samples) / stations, 2),
                "receipted_by_stand_in": collector.received if collector else None}
    finally:
        counter.close()
        if collector is not None:
            collector.close()
        for p in (gw, sim):
            if p is not None:
                p.terminate()
                p.wait(30)


def ensure_modbus4mqtt() -> Path:
    exe = M4M_VENV / "bin" / "modbus4mqtt"
    if not exe.exists():
        print(f"installing modbus4mqtt {M4M_VERSION} into {M4M_VENV} (first run only)", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(M4M_VENV)], check=True)
        subprocess.run([str(M4M_VENV / "bin" / "pip"), "install", "-q", "--disable-pip-version-check",
                        f"modbus4mqtt=={M4M_VERSION}"], check=True)
    return exe


def side_by_side(tmp: Path, mqtt_port: int, plc_port: int, seconds: float) -> dict[str, object]:
    """The same station, polled every second by heatwatch and by modbus4mqtt, each its own process."""
    folder = tmp / "side-by-side"
    folder.mkdir()
    proxy = ModbusCounter(plc_port, free_port())
    counter = Counter(mqtt_port, "#")
    runs = {
        "heatwatch": ([sys.executable, "-m", "heatwatch", "gateway",
                       str(write_station(folder, mqtt_port, proxy.port, 1.0, station="sbs"))],
                      "heatwatch/v1/station/sbs/telemetry"),
        "modbus4mqtt": ([str(ensure_modbus4mqtt()), "--hostname", "127.0.0.1", "--port", str(mqtt_port),
                         "--config", str(write_m4m_station(folder, proxy.port)),
                         "--mqtt_topic_prefix", "m4m"], "m4m/values"),
    }
    out: dict[str, object] = {}
    try:
        for name, (cmd, topic) in runs.items():
            p = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
            try:
                def polled(t: str = topic) -> int:
                    return counter.total(t)

                wait_until(lambda: polled() >= 3, 60, f"{name} publishing")
                r0 = proxy.requests
                cpu, polls, took = _window(p.pid, polled, seconds)
                requests = proxy.requests - r0
                out[name] = {"polls": polls, "requests_per_poll": round(requests / polls, 2),
                             "poll_rate_per_s": round(polls / took, 2),
                             "cpu_ms_per_1000_registers": round(cpu * 1e6 / (polls * REGISTERS), 3)}
            finally:
                p.terminate()
                p.wait(15)
    finally:
        counter.close()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cycles", type=int, default=500)
    ap.add_argument("--interval", type=float, default=10.0, help="the station's poll interval (s)")
    ap.add_argument("--fleet", type=int, default=200, help="stations in the one-process fleet run (0: skip)")
    ap.add_argument("--fleet-seconds", type=float, default=60.0)
    ap.add_argument("--compare-seconds", type=float, default=30.0,
                    help="window of the modbus4mqtt side-by-side run (0: skip)")
    ap.add_argument("--receipt-stations", type=int, default=50,
                    help="stations in the receipts-cost runs (0: skip them)")
    ap.add_argument("--receipt-interval", type=float, default=1.0)
    ap.add_argument("--receipt-registers", type=int, default=REGISTERS,
                    help="registers per station in the receipt runs (a few: the publish path's share grows)")
    ap.add_argument("--receipt-seconds", type=float, default=60.0)
    ap.add_argument("--receipt-rounds", type=int, default=2, help="alternating runs of each mode")
    ap.add_argument("--before", type=Path, help="a checkout without receipts: its gateway is run too")
    ap.add_argument("--only-receipts", action="store_true", help="skip everything but the receipt runs")
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
        out: dict[str, object] = {}
        if not a.only_receipts:
            poll = asyncio.run(polling(cfg_path, a.cycles))
            out |= poll
            payload = orjson.dumps({"n": "x" * (int(poll["message_bytes"]) - 10)})
            out |= outbox_rates(tmp, payload, 2000)
            out |= confirm_costs(tmp, payload, 2000, 2)
            backlog = int(86400 / a.interval)  # 24 h of this station's messages
            out |= asyncio.run(replay(cfg_path, payload, backlog, a.interval))
            if a.compare_seconds:
                out["side_by_side"] = side_by_side(tmp, broker.port, plc_port, a.compare_seconds)
            if a.fleet:
                out |= fleet(tmp, broker.port, a.fleet, a.interval, a.fleet_seconds)
        if a.receipt_stations:
            modes = ["puback", "receipts", *(["before"] if a.before else [])]
            runs = []
            for r in range(a.receipt_rounds):  # alternating: the machine's load drifts
                (tmp / f"round{r}").mkdir()
                for m in modes:
                    runs.append(receipt_cost(tmp / f"round{r}", broker.port, a.receipt_stations,
                                             a.receipt_interval, a.receipt_seconds, m,
                                             a.before if m == "before" else REPO, a.receipt_registers))
            out["receipt_runs"] = runs
            cpu = {m: statistics.mean(float(str(x["gateway_cpu_us_per_message"])) for x in runs
                                      if x["mode"] == m) for m in modes}
            out["receipts_cpu_per_message_vs_puback"] = round(cpu["receipts"] / cpu["puback"], 3)
            if a.before:
                out["receipts_cpu_per_message_vs_before"] = round(cpu["receipts"] / cpu["before"], 3)
                out["puback_cpu_per_message_vs_before"] = round(cpu["puback"] / cpu["before"], 3)
        print(orjson.dumps(out, option=orjson.OPT_INDENT_2).decode())
        return 0
    finally:
        sim.terminate()
        sim.wait(10)
        broker.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
