"""``heatwatch demo``: the whole pipeline on simulated stations, on loopback.

Starts mosquitto and influxd with their data under DIR, the simulator, one gateway per
station, the collector and the API as child processes; prints where to look; stops everything
on Ctrl-C (or after ``--seconds``). Safe to re-run: data persists under DIR, nothing else is
touched.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from heatwatch.devstack import DEPLOY, Influxd, Mosquitto, port_open

MQTT_PORT = int(os.environ.get("HEATWATCH_MQTT_PORT", "11883"))
INFLUX_PORT = int(os.environ.get("HEATWATCH_INFLUX_PORT", "18086"))
API_PORT = int(os.environ.get("HEATWATCH_API_PORT", "8000"))


def _influx_count(url: str) -> int:
    try:
        r = httpx.get(f"{url}/query", params={"db": "heatwatch", "epoch": "ms",
                                              "q": "SELECT count(secondary_supply_temp) FROM station"},
                      timeout=2)
        series = r.json()["results"][0].get("series") or []
        return int(series[0]["values"][0][1]) if series else 0
    except (httpx.HTTPError, KeyError, ValueError, IndexError):
        return 0


def run_demo(stations: int, folder: str, seconds: float | None) -> int:
    root = Path(folder).resolve()
    configs = sorted((DEPLOY / "gateway").glob("st*.yaml"))[:stations]
    if not configs:
        print("no gateway configs under deploy/gateway", file=sys.stderr)
        return 2
    busy = [p for p in (MQTT_PORT, INFLUX_PORT, API_PORT) if port_open(p)]
    if busy:
        print(f"port(s) {busy} already in use: is another demo running? Stop it, or set "
              "HEATWATCH_MQTT_PORT / HEATWATCH_INFLUX_PORT / HEATWATCH_API_PORT.", file=sys.stderr)
        return 1
    influx_url = f"http://127.0.0.1:{INFLUX_PORT}"
    env = {**os.environ, "HEATWATCH_STATE_DIR": str(root / "state"),
           "HEATWATCH_MQTT_PORT": str(MQTT_PORT), "HEATWATCH_INFLUX_URL": influx_url,
           "HEATWATCH_API_PORT": str(API_PORT)}
    (root / "logs").mkdir(parents=True, exist_ok=True)
    broker = Mosquitto(root / "mosquitto", MQTT_PORT)
    db = Influxd(root / "influxdb", INFLUX_PORT)
    children: list[tuple[str, subprocess.Popen[bytes]]] = []

    def spawn(name: str, *args: str) -> None:
        log = open(root / "logs" / f"{name}.log", "ab")  # noqa: SIM115 (lives as long as the child)
        p = subprocess.Popen([sys.executable, "-m", "heatwatch", *args], env=env, stdout=log,
                             stderr=subprocess.STDOUT, start_new_session=True)
        children.append((name, p))

    stop = {"now": False}
    try:
        print(f"starting mosquitto on 127.0.0.1:{MQTT_PORT} and influxd on {influx_url} (data in {root})")
        broker.start()
        db.start()
        # The collector first: the broker queues messages only for subscriptions that exist,
        # so its persistent session must be there before the gateways publish.
        spawn("collector", "collector", str(DEPLOY / "collector" / "collector.yaml"))
        spawn("api", "api", str(DEPLOY / "api" / "api.yaml"))
        spawn("simulator", "simulate", *map(str, configs))
        collector_log = root / "logs" / "collector.log"
        deadline = time.monotonic() + 30
        while b'"subscribed"' not in collector_log.read_bytes():  # its JSON log line
            if time.monotonic() > deadline or children[0][1].poll() is not None:
                print(f"the collector did not subscribe; see {collector_log}", file=sys.stderr)
                return 1
            time.sleep(0.1)
        for c in configs:
            spawn(f"gateway-{c.stem}", "gateway", str(c))
        print(f"{len(configs)} simulated stations, their gateways, the collector and the API are starting;"
              f" logs in {root / 'logs'}")
        start = time.monotonic()
        base = _influx_count(influx_url)
        shown = False
        while not stop["now"] and (seconds is None or time.monotonic() - start < seconds):
            for name, p in children:
                if p.poll() is not None:
                    print(f"{name} exited with code {p.returncode}; see {root / 'logs' / (name + '.log')}",
                          file=sys.stderr)
                    return 1
            if not shown and _influx_count(influx_url) > base:
                shown = True
                print(f"""
data is arriving ({time.monotonic() - start:.0f} s after start).

  API:        http://127.0.0.1:{API_PORT}/v1/stations      (docs: http://127.0.0.1:{API_PORT}/docs)
  InfluxDB:   influx -port {INFLUX_PORT} -database heatwatch -precision rfc3339 -execute \\
                'SELECT secondary_supply_temp, outdoor_temp, makeup_flow FROM station
                 WHERE time > now() - 1m GROUP BY station'
  MQTT:       mosquitto_sub -p {MQTT_PORT} -t 'heatwatch/v1/#' -v

Ctrl-C stops everything.""", flush=True)
            time.sleep(0.5)
        if not shown:
            print("no data arrived in InfluxDB; see the logs", file=sys.stderr)
            return 1
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        print("stopping …", flush=True)
        for _, p in reversed(children):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for _, p in reversed(children):
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        db.stop()
        broker.stop()
