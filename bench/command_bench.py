"""Remote-command round trip with 50 stations polling (issue #14).

Every part real, each its own process on loopback: mosquitto, influxd, the simulator serving
``--stations`` stations (the shipped PLC, make-up meter and room-concentrator maps), ONE gateway
process polling them all every ``--interval`` s with remote control on, the collector, the
alerter (it records the results in the store), and the API (uvicorn). Then:

- idle window (``--window`` s, no commands): the other stations' poll cycle, seen from outside:
  the age of each telemetry message when it reaches an MQTT observer (sample time → arrival:
  the poll's duration plus the publish) and the messages per station per second (a missed poll
  shows as fewer);
- command window: ``--commands`` building-valve commands, one after another, round-robin over the
  first half of the stations: POST /v1/commands → GET until ``confirmed``; the round trip
  p50/p99 (target p99 ≤ 500 ms); the same poll-cycle figures for the other half of the stations,
  which are never commanded, so the two windows compare the poll cycle with and without writes.

The station maps' building valves get ``min_interval_s: 0`` (an override, as a site's 一站一案
would): the bench sends many commands to one point, which the shipped 15 minutes would refuse.
Values alternate 58/62 % (within the 10 % step). Run: ``.venv/bin/python bench/command_bench.py``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import orjson
import paho.mqtt.client as mqtt
import yaml
from measure import pct, proc_cpu_s
from paho.mqtt.enums import CallbackAPIVersion

from alerting.database import Database
from alerting.registry import SiteRegistry
from heatwatch.devstack import DEPLOY, REPO, Influxd, Mosquitto, free_port, port_open, wait_until

BUILDINGS = ("b01", "b02", "b03")


class Telemetry:
    """Every telemetry message's arrival: (station, sample ts ms, arrival ms)."""

    def __init__(self, port: int) -> None:
        self.seen: list[tuple[str, int, float]] = []
        self._lock = threading.Lock()
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-obs-{uuid.uuid4().hex[:6]}")
        self.c.on_connect = lambda c, *_: c.subscribe("heatwatch/v1/station/+/telemetry", qos=0)
        self.c.on_message = self._on
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()

    def _on(self, _c: Any, _u: Any, m: mqtt.MQTTMessage) -> None:
        now = time.time() * 1000
        head = orjson.loads(m.payload)
        with self._lock:
            self.seen.append((head["station"], int(head["ts"]), now))

    def window(self, t0: float, t1: float, stations: set[str]) -> dict[str, float]:
        with self._lock:
            rows = [r for r in self.seen if t0 <= r[2] <= t1 and r[0] in stations]
        ages = [arr - ts for _, ts, arr in rows]
        by: dict[str, list[int]] = {}
        for st, ts, _ in rows:
            by.setdefault(st, []).append(ts)
        secs = (t1 - t0) / 1000
        return {"messages": len(rows), "age_p50_ms": round(pct(ages, 50), 1),
                "age_p99_ms": round(pct(ages, 99), 1), "age_max_ms": round(max(ages, default=0), 1),
                # every poll of every group sends one message: fewer means polls were missed
                "messages_per_station_per_s": round(len(rows) / max(1, len(by)) / secs, 3)}

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def write_station(folder: Path, i: int, mqtt_port: int, plc: int, bus: int, pub: Path,
                  interval_s: float) -> Path:
    st = f"c{i:03d}"
    maps = DEPLOY / "maps"
    fast = {"write": {"min_interval_s": 0}}
    cfg = {
        "kind": "gateway", "gateway": f"gw-{st}", "station": st,
        "mqtt": {"host": "127.0.0.1", "port": mqtt_port},
        "outbox": {"path": str(folder / f"{st}.outbox.sqlite")},
        "control": {"public_keys": [str(pub)], "ledger": str(folder / f"{st}.ledger.sqlite")},
        "poll_groups": {"fast": {"interval_s": interval_s}, "status": {"interval_s": interval_s},
                        "slow": {"interval_s": interval_s * 5}},
        "devices": [
            {"name": "plc", "host": "127.0.0.1", "port": plc, "device_id": 1, "timeout_s": 1.0,
             "map": str(maps / "plc-s7-200smart-hx.yaml"),
             "overrides": [{"point": "building_valve_setpoint", "building": b, **fast} for b in BUILDINGS]},
            {"name": "makeup_meter", "host": "127.0.0.1", "port": bus, "device_id": 2, "timeout_s": 1.0,
             "map": str(maps / "tuf2000m-makeup.yaml")},
            {"name": "rooms", "host": "127.0.0.1", "port": bus, "device_id": 3, "timeout_s": 1.0,
             "map": str(maps / "room-concentrator.yaml")},
        ],
    }
    path = folder / f"{st}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _phases(store_url: str, since_ms: float) -> dict[str, dict[str, float]]:
    """Where the round trip goes, from the store's own times (ms, p50/p99): API commit →
    PUBACK handled (sent_at), → the gateway's decision (its result's ts), → the alerter's
    record (the result event)."""
    import sqlalchemy as sa

    from alerting import schema

    db = Database(store_url)
    t, ev = schema.commands, schema.command_events
    with db.engine.connect() as conn:
        rows = conn.execute(sa.select(t.c.id, t.c.created_at, t.c.sent_at, t.c.result_at)
                            .where(t.c.created_at >= since_ms)).all()
        recorded = dict(conn.execute(sa.select(ev.c.command_id, ev.c.ts).where(ev.c.kind == "result")).all())
    db.close()
    parts: dict[str, list[float]] = {"commit_to_puback_handled": [], "commit_to_gateway_result": [],
                                     "gateway_result_to_store": []}
    for cid, created, sent, result in rows:
        if sent is not None:
            parts["commit_to_puback_handled"].append(sent - created)
        if result is not None:
            parts["commit_to_gateway_result"].append(result - created)
            if cid in recorded:
                parts["gateway_result_to_store"].append(recorded[cid] - result)
    return {k: {"p50": pct(v, 50), "p99": pct(v, 99)} for k, v in parts.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--stations", type=int, default=50)
    ap.add_argument("--interval", type=float, default=2.0, help="fast poll interval of every station (s)")
    ap.add_argument("--commands", type=int, default=200)
    ap.add_argument("--window", type=float, default=30.0, help="the idle window (s)")
    ap.add_argument("--keep", action="store_true", help="keep the data folder")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="heatwatch-cmdbench-"))
    procs: dict[str, subprocess.Popen[bytes]] = {}
    broker = Mosquitto(tmp / "mosquitto", free_port())
    influx = Influxd(tmp / "influxd", free_port())
    broker.start()
    influx.start()
    obs: Telemetry | None = None
    try:
        keys = tmp / "keys"
        subprocess.run([sys.executable, "-m", "heatwatch", "keys", "generate", "--out", str(keys)],
                       check=True, capture_output=True, cwd=REPO)
        ports: list[int] = []
        while len(ports) < 2 * args.stations:
            if (p := free_port()) not in ports:
                ports.append(p)
        gw = tmp / "gw"
        gw.mkdir()
        configs = [write_station(gw, i, broker.port, ports[2 * i], ports[2 * i + 1],
                                 keys / "control-room.pub", args.interval) for i in range(args.stations)]
        store_url = f"sqlite:///{tmp / 'site.sqlite'}"
        registry = SiteRegistry(store_url)
        registry.migrate()
        now = int(time.time() * 1000)
        token = registry.add_token(name="eng1", role="engineer", actor="bench", now=now)
        registry.close()
        col = tmp / "collector.yaml"
        col.write_text(yaml.safe_dump({
            "kind": "collector", "client_id": "bench-collector", "mqtt": {"port": broker.port},
            "influx": {"url": influx.url, "database": "bench"},
            "spool": {"path": str(tmp / "spool.sqlite")}}))
        alerter = tmp / "alerter.yaml"  # it records the commands' results in the store
        alerter.write_text(yaml.safe_dump({
            "kind": "alerter", "member": "bench-alerter", "mqtt": {"port": broker.port},
            "alerts": {"store": store_url}}))
        api_port = free_port()
        api = tmp / "api.yaml"
        api.write_text(yaml.safe_dump({
            "kind": "api", "listen": {"port": api_port}, "store": store_url,
            "influx": {"url": influx.url, "database": "bench"},
            "control": {"signing_key": str(keys / "control-room.key"), "mqtt": {"port": broker.port}}}))
        log = open(tmp / "procs.log", "ab")  # noqa: SIM115
        run = [sys.executable, "-m", "heatwatch"]
        procs["sim"] = subprocess.Popen([*run, "simulate", *map(str, configs)], cwd=REPO, stdout=log,
                                        stderr=subprocess.STDOUT)
        wait_until(lambda: all(port_open(p) for p in ports), 120, "simulated stations")
        procs["collector"] = subprocess.Popen([*run, "collector", str(col)], cwd=REPO, stdout=log,
                                              stderr=subprocess.STDOUT)
        procs["alerter"] = subprocess.Popen([*run, "alerter", str(alerter)], cwd=REPO, stdout=log,
                                            stderr=subprocess.STDOUT)
        procs["gateway"] = subprocess.Popen([*run, "gateway", *map(str, configs)], cwd=REPO, stdout=log,
                                            stderr=subprocess.STDOUT)
        procs["api"] = subprocess.Popen([*run, "api", str(api)], cwd=REPO, stdout=log,
                                        stderr=subprocess.STDOUT)
        obs = Telemetry(broker.port)
        http = httpx.Client(base_url=f"http://127.0.0.1:{api_port}", timeout=10,
                            headers={"Authorization": f"Bearer {token}"})
        wait_until(lambda: port_open(api_port), 60, "the API")
        stations = [f"c{i:03d}" for i in range(args.stations)]
        commanded, quiet = set(stations[: args.stations // 2]), set(stations[args.stations // 2 :])
        for st in stations:  # every gateway status at the API, every station's data in InfluxDB
            wait_until(lambda st=st: http.get(f"/v1/commands/writable/{st}").status_code == 200, 120,
                       f"{st}'s gateway status at the API")
        for st in sorted(commanded):
            wait_until(lambda st=st: http.get(f"/v1/stations/{st}").status_code == 200, 120,
                       f"{st}'s telemetry in InfluxDB")
        time.sleep(args.interval * 5)  # past start-up: every group polled at least once
        t0 = time.time() * 1000
        cpu0 = {n: proc_cpu_s(p.pid) for n, p in procs.items()}
        time.sleep(args.window)
        t1 = time.time() * 1000
        idle = obs.window(t0, t1, quiet)
        idle_cpu = {n: round((proc_cpu_s(p.pid) - cpu0[n]) / (args.window), 3) for n, p in procs.items()}

        rtt: list[float] = []
        states: dict[str, int] = {}
        order = sorted(commanded)
        t2 = time.time() * 1000
        cpu1 = {n: proc_cpu_s(p.pid) for n, p in procs.items()}
        for k in range(args.commands):
            st = order[k % len(order)]
            b = BUILDINGS[(k // len(order)) % len(BUILDINGS)]
            value = 62.0 if (k // (len(order) * len(BUILDINGS))) % 2 == 0 else 58.0
            start = time.perf_counter()
            r = http.post("/v1/commands", json={
                "station": st, "device": "plc", "point": "building_valve_setpoint", "building": b,
                "value": value, "reason": "bench", "ticket": "BENCH-1"})
            if r.status_code != 201:
                states[f"http_{r.status_code}"] = states.get(f"http_{r.status_code}", 0) + 1
                print(r.text, file=sys.stderr)
                continue
            cid = r.json()["id"]
            while True:
                c = http.get(f"/v1/commands/{cid}").json()
                if c["state"] in ("confirmed", "mismatch", "rejected", "failed", "expired", "unknown"):
                    break
                time.sleep(0.005)
            rtt.append((time.perf_counter() - start) * 1000)
            states[c["state"]] = states.get(c["state"], 0) + 1
        t3 = time.time() * 1000
        busy = obs.window(t2, t3, quiet)
        secs = (t3 - t2) / 1000
        busy_cpu = {n: round((proc_cpu_s(p.pid) - cpu1[n]) / secs, 3) for n, p in procs.items()}
        phases = _phases(store_url, t2)
        out = {
            "stations": args.stations, "poll_interval_s": args.interval, "commands": len(rtt),
            "results": states,
            "round_trip_p50_ms": round(pct(rtt, 50), 1), "round_trip_p99_ms": round(pct(rtt, 99), 1),
            "round_trip_max_ms": round(max(rtt, default=0), 1),
            "other_stations_idle": idle, "other_stations_while_commanding": busy,
            "phases_ms": phases,
            "cpu_share_idle": idle_cpu, "cpu_share_commanding": busy_cpu,
            "note": "2 shared cores: compare the two windows' ratios, not absolute times",
        }
        print(json.dumps(out, indent=2))
        http.close()
        return 0
    finally:
        if obs is not None:
            obs.close()
        for p in procs.values():
            p.terminate()
        for p in procs.values():
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
        broker.stop()
        influx.stop()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"data kept in {tmp}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
