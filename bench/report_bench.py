"""The takeover report for a large company and a full heating season: how long it takes, from
the raw data and from the 1-hour rollup.

A throwaway influxd gets ``--stations`` stations over ``--days`` days (default 500 and 121: the
Beijing season, 2025-11-15 … 2026-03-15) at ``--every`` seconds (default 3600: one sample an hour
per point, which is what the raw path's GROUP BY time(1h) reads either way; finer raw data costs
InfluxDB more per raw statement, none per rollup statement): make-up totalizer, circulation,
outdoor and supply temperature per station, and ``--rooms`` room sensors per station (every 10th
station has a cold building; every 50th has a sensor reading an implausible 1 °C a quarter of the
time). ``heatwatch influx setup``'s own code (collector/lifecycle.py) then creates the rollups and
backfills the 1-hour one — once: ``--keep`` keeps the folder, ``--reuse FOLDER`` starts from it. An alert
store holds a few alerts a station. Then ``report.source.report`` runs the season as the API and
``heatwatch report`` do, from the raw data (``rollups: off``) and from the rollup (``auto``), one
right after the other (the machine may be shared: compare the ratio), checks both give the same
figures, and renders the PDF and spreadsheet of the second.

    .venv/bin/python bench/report_bench.py --stations 500 --days 121 --rooms 4 --keep
    .venv/bin/python bench/report_bench.py --reuse /tmp/report-bench-XXXX --only rollup --profile

With ``--reuse`` give the folder's ``--stations``/``--days`` again: they only label the output (the
report always asks for the season). Each run prints the elapsed seconds and the CPU seconds
influxd and the report's own process spent: on a shared machine the elapsed time swings 2x from
run to run, the CPU seconds far less (docs/report.md). ``--profile`` times each statement, but the
report's three chains still run side by side: a statement's time includes the others'.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
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
from collector.lifecycle import InfluxAdmin, backfill, raw_rp, setup
from contract.alerts import Transition
from contract.config import InfluxSettings, LifecycleSettings
from contract.influx import ROLLUP_1H
from contract.report import ReportSettings
from heatwatch.devstack import Influxd, free_port
from report import source
from report.model import Report

TZ = dt.timezone(dt.timedelta(hours=8))
START = dt.datetime(2025, 11, 15, tzinfo=TZ)
DB = "bench"


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
            if st % 50 == 1 and h == 0 and k % 4 == 0:
                out.append(f"household,station={name},building={b},household={b}-{h:02d}01 "
                           f'room_temp=1.0,room_temp_quality="uncertain" {ts}')
                continue
            out.append(f"household,station={name},building={b},household={b}-{h:02d}01 "
                       f"room_temp={temp:.2f} {ts}")
    return out


def write(db: Influxd, a: argparse.Namespace) -> dict[str, Any]:
    http = httpx.Client(timeout=300)
    http.post(f"{db.url}/query", params={"q": f"CREATE DATABASE {DB}"}).raise_for_status()
    t0 = int(START.timestamp() * 1000)
    n = int(a.days * 86400 // a.every)
    rnd = random.Random(1)
    written, t = 0, time.monotonic()
    batch: list[str] = []
    for st in range(a.stations):
        batch += lines(st, t0, n, a.every * 1000, a.rooms, rnd)
        if len(batch) >= 50_000 or st == a.stations - 1:
            for i in range(0, len(batch), 10_000):
                r = http.post(f"{db.url}/write", params={"db": DB, "precision": "ms"},
                              content="\n".join(batch[i:i + 10_000]).encode())
                r.raise_for_status()
            written += len(batch)
            batch = []
    out: dict[str, Any] = {"lines_written": written, "write_s": round(time.monotonic() - t, 1)}
    # `heatwatch influx setup`'s own code: retention policies and continuous queries, then the
    # backfill of the season (raw data kept: the report reads it too, for the comparison) — of the
    # 1-hour rollup only, the one the report reads: the 5-minute one (dashboards) doubled the load
    # time of 100 stations × 121 days (> 15 min on the shared machine) for nothing measured here
    t = time.monotonic()
    lc = LifecycleSettings(raw_days=3650, rollup_5m_days=3650, rollup_1h_days=3650, setup_at_start=False)
    settings = InfluxSettings(url=db.url, database=DB, timeout_s=3600, lifecycle=lc)
    end = t0 + n * a.every * 1000

    async def rollups() -> dict[str, int]:
        await setup(settings, backfill_new=False)
        admin = InfluxAdmin(settings, timeout_s=3600)
        try:
            return await backfill(admin, DB, raw_rp(settings), t0, end, (ROLLUP_1H,))
        finally:
            await admin.close()

    out["rollup_points"] = asyncio.run(rollups())
    out["rollup_setup_s"] = round(time.monotonic() - t, 1)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--stations", type=int, default=500)
    ap.add_argument("--days", type=float, default=121)
    ap.add_argument("--every", type=int, default=3600, help="seconds between samples")
    ap.add_argument("--rooms", type=int, default=4, help="room sensors per station")
    ap.add_argument("--keep", action="store_true", help="keep the data folder")
    ap.add_argument("--reuse", metavar="FOLDER", help="a data folder kept by --keep: skip writing")
    ap.add_argument("--only", choices=("raw", "rollup"), help="time one source only")
    ap.add_argument("--profile", action="store_true", help="time each InfluxQL statement on its own")
    a = ap.parse_args()
    folder = Path(a.reuse) if a.reuse else Path(tempfile.mkdtemp(prefix="report-bench-"))
    db = Influxd(folder / "influxdb", free_port())
    db.start()
    result: dict[str, Any] = {"stations": a.stations, "days": a.days, "every_s": a.every, "rooms": a.rooms,
                              "folder": str(folder)}
    try:
        result |= write(db, a) if not a.reuse else {"lines_written": "reused"}
        (folder / "alerts.sqlite").unlink(missing_ok=True)
        store = Store(f"sqlite:///{folder / 'alerts.sqlite'}")
        store.migrate()
        t0 = int(START.timestamp() * 1000)
        trs = []
        for st in range(a.stations):
            for j in range(4):
                since = t0 + (j * 25 + st % 24) * 86_400_000
                trs.append(Transition(key=f"room_low:bs{st:04d}/b01/b01-{j:02d}01", rule="room_low",
                                      state="firing", severity="warning", station=f"bs{st:04d}",
                                      building="b01", household=f"b01-{j:02d}01", ts=since, since=since,
                                      summary="x"))
        store.apply(trs)
        reports: dict[str, Report] = {}
        for name in ("raw", "rollup") if a.only is None else (a.only,):
            ctx = source.Context(settings=ReportSettings(rollups="off" if name == "raw" else "auto"))
            reports[name], result[name] = run(db, store, ctx, a.profile)
        if len(reports) == 2:
            raw, rolled = (reports[k].model_dump(mode="json") for k in ("raw", "rollup"))
            same = {k: raw[k] == rolled[k] for k in ("makeup", "rooms", "information", "service",
                                                      "remote_control")}
            result["same_figures"] = same
            result["speed_up"] = round(result["raw"]["report_s"] / result["rollup"]["report_s"], 1)
        rep = reports[a.only or "rollup"]
        result["notes"] = rep.notes[:1]
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
        store.close()
    finally:
        db.stop()
        if not a.keep and not a.reuse:
            shutil.rmtree(folder, ignore_errors=True)
    print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
    return 0


def run(db: Influxd, store: Store, ctx: source.Context, profile: bool) -> tuple[Report, dict[str, Any]]:
    reader = InfluxReader(InfluxSettings(url=db.url, database=DB, timeout_s=900))
    sizes: dict[str, Any] = {"statements": 0, "rows": 0}

    async def go() -> Report:
        async def counted(stmts: list[str], bind: Any) -> Any:
            if profile:  # one statement a round trip, each timed
                out = []
                for q in stmts:
                    t1 = time.monotonic()
                    out += await reader.query_many([q], bind)
                    sizes[f"{time.monotonic() - t1:8.3f}s {q[:150]}"] = len(out[-1])
            else:
                out = await reader.query_many(stmts, bind)
            sizes["statements"] += len(stmts)
            sizes["rows"] += sum(len(s.get("values") or []) for r in out for s in r)
            return out
        try:
            return await source.report(counted, store, ctx, "season:2025", int(time.time() * 1000),
                                       database=DB)
        finally:
            await reader.close()

    t, cpu0, mine0 = time.monotonic(), _cpu_s(db), time.process_time()
    rep = asyncio.run(go())
    # CPU seconds besides the elapsed ones: on a machine shared with other work the elapsed time
    # swings 2x from run to run (load average 6-9 on 2 cores), the CPU each side spent much less
    return rep, {"report_s": round(time.monotonic() - t, 2), "influxd_cpu_s": round(_cpu_s(db) - cpu0, 2),
                 "report_cpu_s": round(time.process_time() - mine0, 2), **sizes,
                 "json_bytes": len(orjson.dumps(rep.model_dump()))}


def _cpu_s(db: Influxd) -> float:
    """influxd's user + system CPU seconds so far (/proc/PID/stat, clock ticks)."""
    assert db.proc is not None
    fields = Path(f"/proc/{db.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


if __name__ == "__main__":
    raise SystemExit(main())
