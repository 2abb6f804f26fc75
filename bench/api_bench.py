"""Hotline API latency under load (issues #6, #20): lookup and alert list at a fixed request rate,
with the collector ingesting at the same time.

Fills a SQLite alert store with 5,000 stations, 100,000 households (asset import) and 50,000
alerts, writes two hours of values (every station point of the vocabulary, building entrance
values) and ``--room-hours`` (24) of room temperatures of every household, every 20 minutes, into
a real influxd and, where the alerter keeps one (issue #20), into the store's ``latest`` table
through the alerter's own latest-value stage (with 24 h of a room there, the lookup does not ask
InfluxDB for it; ``--room-hours 2``: every lookup does, as on a site's first day);
starts the API (one uvicorn worker) as its own process. Before the load, ``--serial`` requests of
each kind are sent one at a time: their mean latency and the CPU the API process and influxd
spend per request (from /proc) say where the time goes. Then mosquitto, a collector, an alerter
(rules, alert store and latest values on the same store file) and a load generator ingesting
``--ingest`` messages/s of 200 values start, and once every ingest station has reported (its
InfluxDB series exist: creating 130,000 series stalls InfluxDB's queries) an open-loop load of
``--rate`` requests/s runs for ``--seconds``: 40 % lookups by household code, 20 % by address
words, 40 % alert lists with filters. Prints p50/p99 per kind, each process's share of a core
during the load, the API's and influxd's CPU per request answered during the load, and the
collector's ingest rate in that window, JSON. Another checkout's API (before/after): run this
script with ``PYTHONPATH=<that checkout>``, so every process it starts runs that code.

    .venv/bin/python bench/api_bench.py --rate 200 --seconds 30
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import httpx
import orjson
import yaml
from measure import pct, proc_cpu_s, scrape

from alerting.assets import Assets, search_text
from alerting.registry import SiteRegistry
from alerting.store import Store
from contract.alerts import Transition
from contract.payload import Frame, Sample, parse_station_status
from contract.points import VOCABULARY, Kind, Level
from heatwatch.devstack import REPO, Influxd, Mosquitto, free_port, port_open

if (REPO / "alerter" / "latest.py").exists():
    from alerter.latest import LatestValues
else:  # the code before issue #20 had no latest table: the same script measures both
    LatestValues = None  # type: ignore[assignment,misc]

DB = "bench"
# every station point of the vocabulary (33): a station's `last(*)` in InfluxDB costs by its fields
STATION_POINTS = {d.name: (True if d.kind is Kind.BOOL else round(((d.lo or 0) + (d.hi or 100)) / 3, 2))
                  for d in VOCABULARY.values() if d.level is Level.STATION}


def fill_store(store: Store, stations: int, per_station: int, alerts: int, now: int) -> None:
    a = Assets()
    for s in range(stations):
        st = f"st{s:05d}"
        a.stations[st] = {"station": st, "name": f"换热站{s}"}
        for h in range(per_station):
            b = f"b{h // 10:02d}"
            addr = f"区{s % 50}路{s}号 小区{s} {h // 10 + 1}号楼"
            a.buildings[(st, b)] = {"station": st, "building": b, "address": addr}
            code = f"HH{s:05d}{h:03d}"
            a.households[code] = {"code": code, "station": st, "building": b, "unit": str(h % 4 + 1),
                                  "room": f"{h % 10 + 1}01", "sensor": f"{b}-{h:03d}",
                                  "search": search_text(addr, str(h % 4 + 1), f"{h % 10 + 1}01", code)}
    SiteRegistry(store.db).import_assets(a, actor="bench", now=now)
    rnd = random.Random(1)
    trs = []
    for i in range(alerts):
        s, h = rnd.randrange(stations), rnd.randrange(per_station)
        b = f"b{h // 10:02d}"
        state = rnd.choice(["firing", "pending", "resolved"])
        trs.append(Transition(key=f"room_low:st{s:05d}/{b}/{b}-{h:03d}#{i}", rule="room_low",
                              state="firing" if state == "resolved" else state,
                              severity=rnd.choice(["warning", "major", "critical"]), station=f"st{s:05d}",
                              building=b, household=f"{b}-{h:03d}", ts=now - rnd.randrange(86_400_000),
                              since=now - 86_400_000, value=15.0, page=True))
    for i in range(0, len(trs), 5000):
        store.apply(trs[i:i + 5000])


ROOM_EVERY_MS = 1_200_000  # a room sensor every 20 minutes (DOMAIN: 20-60 min)


def frames(stations: int, per_station: int, now: int, room_hours: float) -> Iterator[Frame]:
    """What fill_influx writes, as the collector's frames (for the latest-value stage): the
    rooms for ``room_hours``, the station and building values for the last two hours."""
    steps = int(room_hours * 3_600_000 // ROOM_EVERY_MS)
    for k in range(steps):
        ts = now - (steps - k) * ROOM_EVERY_MS
        recent = steps - k <= 6
        for s in range(stations):
            samples = ([Sample(point=p, unit=VOCABULARY[p].unit, value=v) for p, v in STATION_POINTS.items()]
                       if recent else [])
            samples += [Sample(point="building_valve_position", unit="%", building=f"b{bi:02d}", value=40.0)
                        for bi in range(per_station // 10 if recent else 0)]
            samples += [Sample(point="room_temp", unit="°C", building=f"b{h // 10:02d}",
                               household=f"b{h // 10:02d}-{h:03d}", value=room_temp(h, k))
                        for h in range(per_station)]
            yield Frame(f"st{s:05d}", "gw", "0badc0de", k, ts, False, samples)


def room_temp(h: int, k: int) -> float:
    return round(19 + (h % 7) / 3 + (k % 3) / 10, 2)


def fill_latest(store: Store, stations: int, per_station: int, now: int, room_hours: float) -> None:
    if LatestValues is None:
        return
    latest = LatestValues(store.latest)
    for f in frames(stations, per_station, now, room_hours):
        latest.observe(f)
    for s in range(stations):
        latest.station_status(parse_station_status(orjson.dumps({
            "schema": 1, "station": f"st{s:05d}", "gateway": "gw", "state": "online", "devices": {},
            "ts": now})))
    asyncio.run(latest.flush())


async def fill_influx(url: str, stations: int, per_station: int, now: int, room_hours: float) -> None:
    fields = ",".join(f"{p}={'true' if v is True else v}" for p, v in STATION_POINTS.items())
    async with httpx.AsyncClient(timeout=60) as http:
        await http.post(f"{url}/query", params={"q": f"CREATE DATABASE {DB}"})
        lines: list[str] = []
        steps = int(room_hours * 3_600_000 // ROOM_EVERY_MS)
        for k in range(steps):
            ts = now - (steps - k) * ROOM_EVERY_MS
            for s in range(stations):
                st = f"st{s:05d}"
                if steps - k <= 6:  # the station and building values: two hours
                    lines.append(f"station,station={st} {fields} {ts}")
                    lines.append(f'station_status,station={st} state="online" {ts}')
                    for bi in range(per_station // 10):
                        lines.append(f"building,station={st},building=b{bi:02d} "
                                     f"building_valve_position=40.0 {ts}")
                for h in range(per_station):
                    b = f"b{h // 10:02d}"
                    lines.append(f"household,station={st},building={b},household={b}-{h:03d} "
                                 f"room_temp={room_temp(h, k)} {ts}")
                if len(lines) >= 20_000:
                    r = await http.post(f"{url}/write", params={"db": DB, "precision": "ms"},
                                        content="\n".join(lines))
                    r.raise_for_status()
                    lines = []
        if lines:
            (await http.post(f"{url}/write", params={"db": DB, "precision": "ms"},
                             content="\n".join(lines))).raise_for_status()


def request_for(kind: str, rnd: random.Random, stations: int, per_station: int
                ) -> tuple[str, dict[str, object]]:
    s, h = rnd.randrange(stations), rnd.randrange(per_station)
    if kind == "lookup_code":
        return "/v1/lookup", {"household": f"HH{s:05d}{h:03d}"}
    if kind == "lookup_words":
        return "/v1/lookup", {"q": f"小区{s} {h // 10 + 1}号楼 {h % 10 + 1}01"}
    if kind == "alert_list":
        return "/v1/alerts", {"station": f"st{s:05d}", "open": "true", "limit": 50}
    return "/v1/alerts", {"severity": "critical", "state": "firing", "limit": 50,
                          "offset": rnd.randrange(0, 1000, 50)}


async def serial(base: str, token: str, n: int, stations: int, per_station: int,
                 pids: dict[str, int]) -> dict[str, dict[str, float]]:
    """Each kind alone, one request at a time: latency and CPU per request of each process."""
    rnd = random.Random(3)
    out: dict[str, dict[str, float]] = {}
    async with httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {token}"},
                                 timeout=10) as http:
        for kind in ("lookup_code", "lookup_words", "alert_list", "alert_list_filtered"):
            for _ in range(5):  # warm the connection and caches
                path, params = request_for(kind, rnd, stations, per_station)
                await http.get(path, params=params)  # type: ignore[arg-type]
            cpu0 = {k: proc_cpu_s(p, children=True) for k, p in pids.items()}
            t0 = time.perf_counter()
            for _ in range(n):
                path, params = request_for(kind, rnd, stations, per_station)
                (await http.get(path, params=params)).raise_for_status()  # type: ignore[arg-type]
            ms = (time.perf_counter() - t0) * 1000 / n
            out[kind] = {"latency_ms": round(ms, 2)} | {
                f"{k}_cpu_ms": round((proc_cpu_s(p, children=True) - cpu0[k]) * 1000 / n, 2)
                for k, p in pids.items()}
    return out


async def load(base: str, token: str, rate: float, seconds: float, stations: int,
               per_station: int) -> tuple[dict[str, list[float]], dict[str, int]]:
    """Open loop: request i is due at start + i/rate and its latency counts from then, so a
    stalled server (or a lagging load generator) shows in the figures instead of hiding.
    The generator uses aiohttp: httpx costs ~1 ms CPU per request, which on these 2 shared
    cores would be taken from the server under test."""
    rnd = random.Random(2)
    lat: dict[str, list[float]] = {"lookup_code": [], "lookup_words": [], "alert_list": []}
    errors: list[str] = []
    incomplete: dict[str, int] = {}
    connector = aiohttp.TCPConnector(limit=64)
    async with aiohttp.ClientSession(base, headers={"Authorization": f"Bearer {token}"},
                                     timeout=aiohttp.ClientTimeout(total=30),
                                     connector=connector) as http:
        async def one(kind: str, due: float, path: str, params: dict[str, object]) -> None:
            try:
                async with http.get(path, params={k: str(v) for k, v in params.items()}) as r:
                    body = await r.read()
            except (TimeoutError, aiohttp.ClientError) as exc:  # counted at its time, not dropped
                lat[kind].append((time.perf_counter() - due) * 1000)
                errors.append(f"{type(exc).__name__} after {time.perf_counter() - due:.0f} s")
                return
            lat[kind].append((time.perf_counter() - due) * 1000)
            if b'"last_24h_complete":false' in body:
                incomplete[kind] = incomplete.get(kind, 0) + 1
            if r.status != 200:
                errors.append(f"{r.status} {body[:100]!r}")

        tasks = []
        start = time.perf_counter()
        n = int(rate * seconds)
        for i in range(n):
            due = start + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            x = rnd.random()
            kind = ("lookup_code" if x < 0.4 else "lookup_words" if x < 0.6
                    else "alert_list" if x < 0.8 else "alert_list_filtered")
            path, params = request_for(kind, rnd, stations, per_station)
            tasks.append(asyncio.create_task(one(kind.removesuffix("_filtered"), due, path, params)))
        await asyncio.gather(*tasks)
    if errors:
        print(f"{len(errors)} errors, e.g. {errors[:3]}", file=sys.stderr)
    return lat, incomplete


def settle(pid: int, timeout_s: float = 60) -> None:
    """Wait for influxd to finish digesting the fill (snapshots, compactions, index): its CPU
    would otherwise count against the first requests measured."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        c0 = proc_cpu_s(pid)
        time.sleep(1)
        if proc_cpu_s(pid) - c0 < 0.05:
            return


class Ingest:
    """mosquitto, a collector, an alerter (the rule engine and the latest values) writing the
    bench's store, and a load generator publishing ``rate`` messages/s of 200 values for
    ``seconds``."""

    def __init__(self, tmp: Path, db: Influxd, store_url: str, rate: float, stations: int,
                 seconds: float) -> None:
        self.broker = Mosquitto(tmp / "mosquitto", free_port())
        self.broker.start()
        self.metrics_port = free_port()
        (tmp / "collector.yaml").write_text(yaml.safe_dump({
            "kind": "collector", "client_id": "bench-collector", "mqtt": {"port": self.broker.port},
            "influx": {"url": db.url, "database": DB},
            "spool": {"path": str(tmp / "spool.sqlite")}, "stats": {"metrics_port": self.metrics_port}}))
        (tmp / "alerter.yaml").write_text(yaml.safe_dump({
            "kind": "alerter", "member": "bench-alerter", "mqtt": {"port": self.broker.port},
            "alerts": {"store": store_url}}))
        started: dict[str, subprocess.Popen[bytes]] = {}
        for name, ready in (("collector", b'"subscribed"'), ("alerter", b'"partitions taken over"')):
            log = tmp / f"{name}.log"
            started[name] = subprocess.Popen(
                [sys.executable, "-m", "heatwatch", name, str(tmp / f"{name}.yaml")],
                stdout=open(log, "wb"), stderr=subprocess.STDOUT, cwd=REPO)  # noqa: SIM115
            deadline = time.monotonic() + 60
            while ready not in log.read_bytes():
                if time.monotonic() > deadline or started[name].poll() is not None:
                    raise SystemExit(f"the {name} did not start; see {log}")
                time.sleep(0.1)
        self.collector, self.alerter = started["collector"], started["alerter"]
        self.loadgen = subprocess.Popen(
            [sys.executable, "-m", "heatwatch.loadgen", "--port", str(self.broker.port), "--gateways", "50",
             "--stations", str(stations), "--rate", str(rate), "--seconds", str(seconds), "--fixed-values"],
            stdout=subprocess.DEVNULL, cwd=REPO)

    def pids(self) -> dict[str, int]:
        assert self.broker.proc is not None
        return {"collector": self.collector.pid, "alerter": self.alerter.pid,
                "mosquitto": self.broker.proc.pid, "loadgen": self.loadgen.pid}

    def values(self) -> float:
        return scrape(self.metrics_port)["heatwatch_collector_values_total"]

    def stop(self) -> None:
        for p in (self.loadgen, self.collector, self.alerter):
            p.terminate()
            p.wait(30)
        self.broker.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--rate", type=float, default=200)
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--stations", type=int, default=5000)
    ap.add_argument("--households", type=int, default=20, help="per station (100,000 in all)")
    ap.add_argument("--alerts", type=int, default=50_000)
    ap.add_argument("--room-hours", type=float, default=24,
                    help="hours of room readings (every 20 min) before the load: 24 or more is a site's "
                         "steady state (the lookup's 24 h from the store); less, and every lookup asks "
                         "InfluxDB for it, as a site does on the first day (and as the API did before)")
    ap.add_argument("--workers", type=int, default=1, help="uvicorn worker processes of the API")
    ap.add_argument("--serial", type=int, default=200, help="requests per kind, one at a time")
    ap.add_argument("--ingest", type=float, default=170,
                    help="messages/s of 200 values the collector ingests during the load (0: none); "
                         "170 = 5,000 stations every 30 s")
    ap.add_argument("--ingest-stations", type=int, default=5000)
    ap.add_argument("--ingest-warmup", type=float, default=None,
                    help="seconds of ingest before the load starts; default: every ingest station "
                         "once, + 10 s")
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="hw-apibench-"))
    db = Influxd(tmp / "influxd", free_port())
    db.start()
    api = None
    ingest: Ingest | None = None
    try:
        now = int(time.time() * 1000)
        t0 = time.perf_counter()
        store_url = f"sqlite:///{tmp / 'alerts.sqlite'}"
        store = Store(store_url)
        store.migrate()
        fill_store(store, a.stations, a.households, a.alerts, now)
        fill_latest(store, a.stations, a.households, now, a.room_hours)
        token = SiteRegistry(store.db).add_token(name="bench", role="dispatcher", actor="bench", now=now)
        store.close()
        asyncio.run(fill_influx(db.url, a.stations, a.households, now, a.room_hours))
        fill_s = time.perf_counter() - t0
        port = free_port()
        (tmp / "api.yaml").write_text(yaml.safe_dump({
            "kind": "api", "listen": {"host": "127.0.0.1", "port": port},
            "influx": {"url": db.url, "database": DB}, "store": store_url,
            "workers": a.workers}))
        log = open(tmp / "api.log", "wb")  # noqa: SIM115
        api = subprocess.Popen([sys.executable, "-m", "heatwatch", "api", str(tmp / "api.yaml")],
                               stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        deadline = time.monotonic() + 30
        while not port_open(port):
            if time.monotonic() > deadline or api.poll() is not None:
                raise SystemExit(f"the API did not start; see {tmp / 'api.log'}")
            time.sleep(0.1)
        assert db.proc is not None
        settle(db.proc.pid)
        one_by_one = asyncio.run(serial(f"http://127.0.0.1:{port}", token, a.serial, a.stations,
                                        a.households, {"api": api.pid, "influxd": db.proc.pid}))
        warmup = a.ingest_warmup if a.ingest_warmup is not None else a.ingest_stations / a.ingest + 10
        if a.ingest:
            ingest = Ingest(tmp, db, store_url, a.ingest, a.ingest_stations,
                            warmup + a.seconds + 10)
            time.sleep(warmup)
        gc.collect()
        gc.freeze()  # the filled data stays: a full collection in the generator would stall it
        pids = {"api": api.pid, "influxd": db.proc.pid}
        if ingest is not None:
            pids |= ingest.pids()
        cpu0 = {k: proc_cpu_s(p, children=k == "api") for k, p in pids.items()}
        values0, t_load = ingest.values() if ingest is not None else 0.0, time.monotonic()
        lat, incomplete = asyncio.run(load(f"http://127.0.0.1:{port}", token, a.rate, a.seconds, a.stations,
                               a.households))
        took = time.monotonic() - t_load
        spent = {k: proc_cpu_s(p, children=k == "api") - cpu0[k] for k, p in pids.items()}
        shares = {k: round(spent[k] / took, 2) for k in pids}
        answered = sum(len(xs) for xs in lat.values())
        out = {"rate": a.rate, "seconds": a.seconds, "workers": a.workers, "stations": a.stations,
               "households": a.stations * a.households, "alerts": a.alerts, "room_hours": a.room_hours,
               "fill_s": round(fill_s, 1),
               "latest_table": LatestValues is not None, "serial": one_by_one,
               "load_cpu_share_by_process": shares,
               # the API's and influxd's CPU over the load window / the requests answered in it
               # (ingest's share of influxd included: compare runs with the same --ingest)
               "load_cpu_ms_per_request": {k: round(spent[k] * 1000 / max(1, answered), 2)
                                           for k in ("api", "influxd")},
               "load_cpu_share_whole_machine": round(sum(shares.values()) / (os.cpu_count() or 1), 2)}
        if ingest is not None:
            out["ingest"] = {"offered_values_per_s": round(a.ingest * 200),
                             "collector_values_per_s_during_load": round((ingest.values() - values0) / took)}
        for kind, xs in lat.items():
            out[kind] = {"n": len(xs), "p50_ms": round(pct(xs, 50), 1), "p99_ms": round(pct(xs, 99), 1)}
            if kind in incomplete:  # the 24 h did not come from InfluxDB in time (api/rooms.py)
                out[kind]["without_complete_24h"] = incomplete[kind]
        all_ms = [x for xs in lat.values() for x in xs]
        out["all"] = {"n": len(all_ms), "p50_ms": round(pct(all_ms, 50), 1),
                      "p99_ms": round(pct(all_ms, 99), 1)}
        print(orjson.dumps(out, option=orjson.OPT_INDENT_2).decode())
        return 0
    finally:
        if ingest is not None:
            ingest.stop()
        if api is not None:
            api.terminate()
            api.wait(10)
        db.stop()
        shutil.rmtree(tmp, ignore_errors=True)  # ~60 MB of store and InfluxDB per run


if __name__ == "__main__":
    sys.exit(main())
