"""Collector throughput, latency, CPU and memory on real mosquitto and influxd (issue #4).

Synthetic gateways (``heatwatch.loadgen`` processes) publish 200-value station messages at a
controlled rate; one collector process writes them to InfluxDB. Reports

- sustained values/s from first publish to the last value visible in InfluxDB,
- collector CPU per 1,000 values (from /proc, user + system),
- side by side over the same steady window: the collector's CPU per value and InfluxDB's (influxd's
  CPU over the values the collector wrote in that window), and their ratio (issue #18's target:
  the collector at most 1/3 of InfluxDB),
- collector peak memory (VmHWM),
- end-to-end latency p50/p99: a probe station publishes one message every 100 ms stamped with
  its send time; a poller sees it appear in InfluxDB (100 ms polling resolution); and the
  collector's own histogram (sample time → durable, every message; bucket upper bounds),
- the CPU share of every process on the machine over the steady window (the load generator,
  mosquitto, influxd and this script share the collector's two cores),
- with ``--outage S``: InfluxDB is stopped S seconds into the run for S seconds; reports the
  collector's peak memory during the outage and the drain afterwards.

Run: ``.venv/bin/python bench/collector_bench.py --rate 1500 --seconds 30`` (see bench/README.md).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import orjson
import paho.mqtt.client as mqtt
import yaml
from measure import pct, proc_cpu_s, proc_cpu_split_s, proc_mem_kb, scrape
from paho.mqtt.enums import CallbackAPIVersion

from contract.influx import MEASUREMENT_STATION
from heatwatch.devstack import REPO, Influxd, Mosquitto, free_port
from heatwatch.loadgen import Shape

DB = "bench"


_HTTP = threading.local()


def query(db: Influxd, q: str) -> list[list[int]]:
    http = getattr(_HTTP, "client", None) or httpx.Client(timeout=30)  # one connection per thread
    _HTTP.client = http
    r = http.get(f"{db.url}/query", params={"db": DB, "q": q, "epoch": "ms"}).json()
    series = r["results"][0].get("series") or []
    return series[0]["values"] if series else []


class Probe:
    """One tiny message every 100 ms; latency = when InfluxDB shows it − when it was sent."""

    def __init__(self, mqtt_port: int, db: Influxd) -> None:
        self.db = db
        self.latencies_ms: list[float] = []
        self.sent_at: list[float] = []  # when each of latencies_ms was sent (time.time())
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-probe", clean_session=False)
        self.client.connect("127.0.0.1", mqtt_port)
        self.client.loop_start()
        self.stop_ev = threading.Event()
        self.sent: dict[int, float] = {}
        self.threads = [threading.Thread(target=self._send, daemon=True),
                        threading.Thread(target=self._poll, daemon=True)]
        for t in self.threads:
            t.start()

    def _send(self) -> None:
        seq = 0
        while not self.stop_ev.wait(0.1):
            ts = int(time.time() * 1000)
            self.sent[ts] = time.time()
            msg = {"schema": 1, "station": "probe", "gateway": "bench-probe", "boot": "00000000",
                   "seq": seq, "ts": ts, "values": [{"point": "x_probe", "value": float(seq), "unit": ""}]}
            self.client.publish("heatwatch/v1/station/probe/telemetry", orjson.dumps(msg), qos=1)
            seq += 1

    def _poll(self) -> None:
        seen = 0
        while not self.stop_ev.is_set():
            try:
                got = query(self.db, f"SELECT x_probe FROM {MEASUREMENT_STATION} WHERE station='probe' "
                                     f"AND time > {seen}ms")
            except (httpx.HTTPError, KeyError, ValueError):
                got = []
            now = time.time()
            for ts, _v in got:
                sent = self.sent.get(int(ts))
                if sent is not None:
                    self.latencies_ms.append((now - sent) * 1000)
                    self.sent_at.append(sent)
                seen = max(seen, int(ts))
            time.sleep(0.1)

    def close(self) -> None:
        self.stop_ev.set()
        for t in self.threads:
            t.join(5)
        self.client.disconnect()
        self.client.loop_stop()


def gc_figures(port: int) -> tuple[list[float], list[int]]:
    """Seconds in and number of garbage collections per generation, from the collector's /metrics."""
    m = scrape(port)

    def per_gen(name: str) -> list[float]:
        return [m.get(f'heatwatch_collector_gc_{name}_total{{generation="{g}"}}', 0.0) for g in range(3)]

    return [round(x, 2) for x in per_gen("seconds")], [int(x) for x in per_gen("collections")]


def histogram_quantiles(port: int, name: str, qs: tuple[float, ...]) -> list[float | None]:
    """Quantiles of a /metrics histogram, as the upper bound of the bucket that holds each."""
    m = scrape(port)
    buckets = sorted((float(k.split('le="')[1].rstrip('"}')), v) for k, v in m.items()
                     if k.startswith(f"{name}_bucket{{"))
    n = buckets[-1][1] if buckets else 0
    return [next((le for le, c in buckets if c >= q * n), None) if n else None for q in qs]


def cpu_shares(pids: dict[str, int], seconds: float, before: dict[str, float]) -> dict[str, float]:
    return {k: round((proc_cpu_s(pid) - before[k]) / seconds, 2) for k, pid in pids.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rate", type=float, default=1500, help="messages/s in total (200 values each)")
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--stations", type=int, default=500)
    ap.add_argument("--gateways", type=int, default=20)
    ap.add_argument("--loadgens", type=int, default=1, help="publisher processes")
    ap.add_argument("--outage", type=float, default=0, help="stop InfluxDB this many seconds")
    ap.add_argument("--concurrency", type=int, default=2, help="InfluxDB writes in flight")
    ap.add_argument("--max-lines", type=int, default=5000, help="lines per InfluxDB write")
    ap.add_argument("--keep", action="store_true", help="keep the data folder (printed as dir)")
    ap.add_argument("--warmup", type=float, default=30,
                    help="seconds before the steady-state CPU window opens (engine built, caches warm)")
    a = ap.parse_args()
    shape = Shape()
    tmp = Path(tempfile.mkdtemp(prefix="hw-bench-"))
    broker, db = Mosquitto(tmp / "mosquitto", free_port()), Influxd(tmp / "influxd", free_port())
    broker.start()
    db.start()
    metrics_port = free_port()
    cfg: dict[str, object] = {
        "kind": "collector", "client_id": "bench-collector", "mqtt": {"port": broker.port},
        "receive_maximum": 2000, "influx": {"url": db.url, "database": DB},
        "batch": {"max_lines": a.max_lines, "max_delay_s": 0.2, "concurrency": a.concurrency},
        "spool": {"path": str(tmp / "spool.sqlite"), "after_s": 2},
        "stats": {"metrics_port": metrics_port}}
    (tmp / "collector.yaml").write_text(yaml.safe_dump(cfg))
    log = open(tmp / "collector.log", "wb")  # noqa: SIM115
    collector = subprocess.Popen(
        [sys.executable, "-m", "heatwatch", "collector", str(tmp / "collector.yaml")],
        stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    try:
        deadline = time.monotonic() + 30
        while b'"subscribed"' not in (tmp / "collector.log").read_bytes():
            if time.monotonic() > deadline or collector.poll() is not None:
                raise SystemExit(f"collector did not start; see {tmp / 'collector.log'}")
            time.sleep(0.1)
        probe = Probe(broker.port, db)
        cpu0, t0 = proc_cpu_s(collector.pid), time.time()
        per = a.stations // a.loadgens
        gens = [subprocess.Popen([sys.executable, "-m", "heatwatch.loadgen", "--port", str(broker.port),
                                  "--gateways", str(max(1, a.gateways // a.loadgens)), "--stations", str(per),
                                  "--first-station", str(i * per), "--rate", str(a.rate / a.loadgens),
                                  "--seconds", str(a.seconds), "--fixed-values"],
                                 stdout=subprocess.PIPE, cwd=REPO)
                for i in range(a.loadgens)]
        port = metrics_port
        steady0: tuple[float, float] | None = None
        pids = {"collector": collector.pid, "influxd": db.proc.pid if db.proc else 0,
                "mosquitto": broker.proc.pid if broker.proc else 0, "bench+probe": os.getpid(),
                **{f"loadgen{i}": g.pid for i, g in enumerate(gens)}}
        shares: dict[str, float] = {}
        if not a.outage and a.warmup < a.seconds:
            time.sleep(a.warmup)
            steady0 = (proc_cpu_s(collector.pid), scrape(port)["heatwatch_collector_values_total"])
            influx_cpu0 = proc_cpu_s(pids["influxd"])
            split0 = proc_cpu_split_s(collector.pid)
            gc0 = sum(gc_figures(port)[0])
            cpu_before, t_before = {k: proc_cpu_s(p) for k, p in pids.items()}, time.monotonic()
            time.sleep(max(0.0, a.seconds - a.warmup - 2))
            shares = cpu_shares(pids, time.monotonic() - t_before, cpu_before)
        peak_outage_kb = 0
        if a.outage:
            time.sleep(min(5, a.seconds / 4))
            db.stop()
            end = time.monotonic() + a.outage
            while time.monotonic() < end:
                peak_outage_kb = max(peak_outage_kb, proc_mem_kb(collector.pid, "VmRSS"))
                time.sleep(1)
            peak_outage_kb = max(peak_outage_kb, proc_mem_kb(collector.pid, "VmHWM"))
            db.start()
        steady: float | None = None
        influx_steady: float | None = None
        sys_share: float | None = None
        steady_gc_share: float | None = None
        if steady0 is not None:
            gens[0].wait(a.seconds + 60)  # the window closes with the load, before the drain
            done_values = scrape(port)["heatwatch_collector_values_total"] - steady0[1]
            steady_cpu = proc_cpu_s(collector.pid) - steady0[0]
            influx_cpu = proc_cpu_s(pids["influxd"]) - influx_cpu0
            steady = steady_cpu / done_values * 1e9 if done_values else None
            influx_steady = influx_cpu / done_values * 1e9 if done_values else None
            user1, sys1 = proc_cpu_split_s(collector.pid)
            spent = user1 - split0[0] + sys1 - split0[1]
            sys_share = round((sys1 - split0[1]) / spent, 3) if spent else None  # the kernel's part
            steady_gc_share = round((sum(gc_figures(port)[0]) - gc0) / steady_cpu, 3) if steady_cpu else None
        results = [orjson.loads(g.communicate(timeout=a.seconds + a.outage + 300)[0]) for g in gens]
        published = sum(r["published"] for r in results)
        first_ts = min(r["first_ts"] for r in results) / 1000
        deadline = time.monotonic() + 600
        while True:
            got = query(db, f"SELECT count(x_p000) FROM {MEASUREMENT_STATION} WHERE station != 'probe'")
            stored = int(got[0][1]) if got else 0
            if stored >= published or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        t_done = time.time()
        cpu = proc_cpu_s(collector.pid) - cpu0
        gc_s, gc_n = gc_figures(port)
        own_p50, own_p99 = histogram_quantiles(port, "heatwatch_collector_latency_seconds", (0.5, 0.99))
        probe.close()
        values = published * shape.values
        lat = probe.latencies_ms
        # the steady window leaves out the start (InfluxDB creating every station's series)
        lat_steady = [x for x, at in zip(lat, probe.sent_at, strict=True) if at >= t0 + a.warmup]
        print(orjson.dumps({
            "target_msgs_per_s": a.rate, "concurrency": a.concurrency, "max_lines": a.max_lines,
            "seconds": a.seconds, "stations": a.stations,
            "published_msgs": published, "stored_msgs": stored, "values": values,
            "sustained_values_per_s": round(values / (t_done - first_ts)),
            "offered_values_per_s": round(a.rate * shape.values),
            "collector_cpu_s": round(cpu, 2),
            "collector_cpu_us_per_1000_values": round(cpu / values * 1e9, 1),
            "collector_cpu_share_of_one_core": round(cpu / (t_done - t0), 2),
            "collector_steady_cpu_us_per_1000_values": round(steady, 1) if steady else None,
            "influxd_steady_cpu_us_per_1000_values": round(influx_steady, 1) if influx_steady else None,
            "collector_to_influxd_cpu_ratio": round(steady / influx_steady, 3)
            if steady and influx_steady else None,
            "collector_steady_system_share_of_cpu": sys_share,
            "steady_window_s": f"{a.warmup:.0f}..{a.seconds:.0f}" if steady else None,
            "collector_gc_s_by_generation": gc_s, "collector_gc_collections_by_generation": gc_n,
            "collector_gc_share_of_cpu": round(sum(gc_s) / cpu, 3) if cpu else None,
            "collector_steady_gc_share_of_cpu": steady_gc_share,
            "collector_peak_rss_mb": round(proc_mem_kb(collector.pid, "VmHWM") / 1024, 1),
            "outage_s": a.outage,
            "collector_peak_rss_during_outage_mb": round(peak_outage_kb / 1024, 1) if a.outage else None,
            "latency_ms_p50": round(pct(lat, 50)), "latency_ms_p99": round(pct(lat, 99)),
            "latency_samples": len(lat),
            "latency_ms_p50_steady": round(pct(lat_steady, 50)) if lat_steady else None,
            "latency_ms_p99_steady": round(pct(lat_steady, 99)) if lat_steady else None,
            "collector_latency_s_p50_at_most": own_p50, "collector_latency_s_p99_at_most": own_p99,
            "steady_cpu_share_by_process": shares,
            "steady_cpu_share_whole_machine": round(sum(shares.values()) / (os.cpu_count() or 1), 2)
            if shares else None,
            "collector_code": str(REPO),  # the checkout the collector ran from
            "dir": str(tmp) if a.keep else None,
        }, option=orjson.OPT_INDENT_2).decode())
        return 0 if stored == published else 1
    finally:
        collector.terminate()
        collector.wait(30)
        db.stop()
        broker.stop()
        if not a.keep:
            shutil.rmtree(tmp, ignore_errors=True)  # InfluxDB's files: ~1 GB a run at 5,000 stations


if __name__ == "__main__":
    sys.exit(main())
