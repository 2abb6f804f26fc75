"""The takeover report for a large company and a full heating season: how long it takes.

A throwaway influxd gets ``--stations`` stations over ``--days`` days (default 500 and 121: the
Beijing season, 2025-11-15 … 2026-03-15) at ``--every`` seconds (default 3600: one sample an hour
per point, which is what the report's GROUP BY time(1h) reads either way; finer raw data costs
InfluxDB more per statement, see ``--every``): make-up totalizer, circulation, outdoor and supply
temperature per station, and ``--rooms`` room sensors per station (every 10th station has a cold
building). An alert store holds a few alerts a station. Then ``report.source.report`` runs the
season as the API and ``heatwatch report`` do, and the PDF and spreadsheet are rendered.

The 5-minute / 1-hour rollups of the site issue (H5) are not used: the report reads the raw
measurements.

    .venv/bin/python bench/report_bench.py --stations 500 --days 121 --rooms 4
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import orjson

from alerting.store import Store
from api.influx import InfluxReader
from contract.alerts import Transition
from contract.config import InfluxSettings
from contract.report import HourlyRooms, ReportSettings
from heatwatch.devstack import Influxd, free_port
from report import source

TZ = dt.timezone(dt.timedelta(hours=8))
START = dt.datetime(2025, 11, 15, tzinfo=TZ)


def lines(st: int, t0: int, n: int, every_ms: int, rooms: int, rnd: random.Random) -> list[str]:
    name = f"bs{st:04d}"
    total = rnd.uniform(100, 900)
    cold = st % 10 == 0
    out = []
    for k in range(n):
        ts = t0 + k * every_ms
        flow = 120.0 + rnd.gauss(0, 0.5)
        total += (0.004 + (0.02 if st % 25 == 0 else 0.0)) * flow * every_ms / 3_600_000
        outdoor = -4.0 + 5.0 * rnd.random()
        out.append(f"station,station={name} makeup_total={total!r},secondary_flow={flow!r},"
                   f"outdoor_temp={outdoor!r},secondary_supply_temp={55.0 + rnd.random()!r} {ts}")
        for h in range(rooms):
            b = f"b{h % 2 + 1:02d}"
            temp = (15.0 if cold and b == "b01" else 19.5) + rnd.random()
            out.append(f"household,station={name},building={b},household={b}-{h:02d}01 "
                       f"room_temp={temp:.2f} {ts}")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--stations", type=int, default=500)
    ap.add_argument("--days", type=float, default=121)
    ap.add_argument("--every", type=int, default=3600, help="seconds between samples")
    ap.add_argument("--rooms", type=int, default=4, help="room sensors per station")
    ap.add_argument("--keep", action="store_true", help="keep the data folder")
    ap.add_argument("--profile", action="store_true", help="time each InfluxQL statement on its own")
    ap.add_argument("--rooms-hourly", action="store_true",
                    help="read room sensor-hours as stored hourly means (rooms_hourly, the rollup seam): "
                         "the raw data here is hourly already, so the raw measurement serves")
    ap.add_argument("--reuse", metavar="FOLDER", help="a data folder kept by --keep: skip writing")
    a = ap.parse_args()
    folder = Path(a.reuse) if a.reuse else Path(tempfile.mkdtemp(prefix="report-bench-"))
    db = Influxd(folder / "influxdb", free_port())
    db.start()
    result: dict[str, Any] = {"stations": a.stations, "days": a.days, "every_s": a.every, "rooms": a.rooms}
    try:
        http = httpx.Client(timeout=300)
        http.post(f"{db.url}/query", params={"q": "CREATE DATABASE bench"}).raise_for_status()
        t0 = int(START.timestamp() * 1000)
        n = int(a.days * 86400 // a.every)
        rnd = random.Random(1)
        written, t = 0, time.monotonic()
        batch: list[str] = []
        for st in range(0 if a.reuse else a.stations):
            batch += lines(st, t0, n, a.every * 1000, a.rooms, rnd)
            if len(batch) >= 50_000 or st == a.stations - 1:
                for i in range(0, len(batch), 10_000):
                    r = http.post(f"{db.url}/write", params={"db": "bench", "precision": "ms"},
                                  content="\n".join(batch[i:i + 10_000]).encode())
                    r.raise_for_status()
                written += len(batch)
                batch = []
        result["lines_written"] = written if not a.reuse else "reused"
        result["write_s"] = round(time.monotonic() - t, 1)
        (folder / "alerts.sqlite").unlink(missing_ok=True)
        store = Store(f"sqlite:///{folder / 'alerts.sqlite'}")
        store.migrate()
        trs = []
        for st in range(a.stations):
            for j in range(4):
                since = t0 + (j * 25 + st % 24) * 86_400_000
                trs.append(Transition(key=f"room_low:bs{st:04d}/b01/b01-{j:02d}01", rule="room_low",
                                      state="firing", severity="warning", station=f"bs{st:04d}",
                                      building="b01", household=f"b01-{j:02d}01", ts=since, since=since,
                                      summary="x"))
        store.apply(trs)
        reader = InfluxReader(InfluxSettings(url=db.url, database="bench", timeout_s=600))
        ctx = source.Context(settings=ReportSettings(rooms_hourly=HourlyRooms()) if a.rooms_hourly
                             else ReportSettings())
        result["rooms_from"] = "stored hourly means (rooms_hourly)" if a.rooms_hourly else "raw readings"
        sizes: dict[str, int] = {}

        async def run() -> Any:
            async def counted(stmts: list[str], bind: Any) -> Any:
                if a.profile:  # one statement a round trip, each timed
                    out = []
                    for q in stmts:
                        t1 = time.monotonic()
                        out += await reader.query_many([q], bind)
                        sizes[f"{time.monotonic() - t1:8.3f}s {q[:150]}"] = 0
                else:
                    out = await reader.query_many(stmts, bind)
                sizes["statements"] = sizes.get("statements", 0) + len(stmts)
                sizes["rows"] = sizes.get("rows", 0) + sum(len(s.get("values") or []) for r in out for s in r)
                return out
            try:
                return await source.report(counted, store, ctx, "season:2025", int(time.time() * 1000))
            finally:
                await reader.close()

        t = time.monotonic()
        rep = asyncio.run(run())
        result["report_s"] = round(time.monotonic() - t, 2)
        result.update(sizes)
        result["json_bytes"] = len(orjson.dumps(rep.model_dump()))
        from report.pdf import document
        from report.xlsx import workbook
        t = time.monotonic()
        pdf = document(rep)
        result["pdf_s"], result["pdf_bytes"] = round(time.monotonic() - t, 2), len(pdf)
        t = time.monotonic()
        xlsx = workbook(rep)
        result["xlsx_s"], result["xlsx_bytes"] = round(time.monotonic() - t, 2), len(xlsx)
        result["room_pass_rate_pct"] = rep.rooms.rate_pct
        result["makeup_failing"] = rep.makeup.failing
        result["rollups"] = ("H5's 5m/1h rollups are not merged: make-up and presence GROUP BY time(1h) on "
                             "raw measurements" + ("; rooms from hourly means" if a.rooms_hourly else ""))
        store.close()
    finally:
        db.stop()
        if not a.keep and not a.reuse:
            shutil.rmtree(folder, ignore_errors=True)
    print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
