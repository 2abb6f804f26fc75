"""A heating season from the rollups vs raw: one station's 5-month history query, timed.

    .venv/bin/python bench/rollup_bench.py [--days 150] [--interval 10] [--fields 10]

Starts its own influxd (throwaway folder), writes ``days`` of one station sampled every
``interval`` seconds (``fields`` numeric points, one bool), rolls them up with the setup's own
backfill (collector/lifecycle.py), then times the history query the API would send for the whole
range at 500 points, once from raw data and once from the source ``pick_source`` picks (the
1-hour rollup). Raw data is kept in full here (no 90-day retention) so the two can be compared.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from collector.lifecycle import InfluxAdmin, backfill
from contract.config import InfluxSettings
from contract.influx import ROLLUPS, pick_source
from heatwatch.devstack import Influxd, free_port


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--days", type=int, default=150)
    ap.add_argument("--interval", type=int, default=10)
    ap.add_argument("--fields", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="rollup-bench-") as tmp:
        db = Influxd(Path(tmp), free_port())
        db.start()
        try:
            run(db, args)
        finally:
            db.stop()


def run(db: Influxd, args: argparse.Namespace) -> None:
    http = httpx.Client(timeout=600)
    name = "bench"
    http.post(f"{db.url}/query", data={"q": f'CREATE DATABASE "{name}"'}).raise_for_status()
    for r in ROLLUPS:
        http.post(f"{db.url}/query", data={"q": f'CREATE RETENTION POLICY "{r.rp}" ON "{name}" '
                                                  "DURATION 0s REPLICATION 1"}).raise_for_status()
    now = int(time.time()) // 3600 * 3600 * 1000
    start = now - args.days * 86_400_000
    step = args.interval * 1000
    n = (now - start) // step
    t = time.perf_counter()
    batch: list[str] = []
    for k in range(n):
        ts = start + k * step
        f = ",".join(f"p{j}={50 + (k * (j + 1)) % 97 * 0.25}" for j in range(args.fields))
        batch.append(f"station,station=st001 {f},pump_running={'true' if k % 360 < 300 else 'false'} {ts}")
        if len(batch) == 10_000:
            http.post(f"{db.url}/write", params={"db": name, "precision": "ms"},
                      content="\n".join(batch)).raise_for_status()
            batch = []
    if batch:
        http.post(f"{db.url}/write", params={"db": name, "precision": "ms"}, content="\n".join(batch))
    write_s = time.perf_counter() - t
    print(f"raw: {n:,} samples × {args.fields + 1} fields over {args.days} days, written in {write_s:.1f} s")

    async def roll() -> dict[str, int]:
        conn = InfluxAdmin(InfluxSettings(url=db.url, database=name))
        try:
            return await backfill(conn, name, "autogen", start, now)
        finally:
            await conn.close()

    t = time.perf_counter()
    written = asyncio.run(roll())
    print(f"rollups backfilled in {time.perf_counter() - t:.1f} s: {written}")

    src = pick_source(start, now, now, 500, raw_days=90)
    where = f"station = 'st001' AND time >= {start}ms AND time < {now}ms"
    queries = {
        "raw": f"SELECT mean(p0), max(p1) FROM station WHERE {where} GROUP BY time({src.bucket_s}s)",
        f"rollup_{src.rollup.name if src.rollup else 'raw'}":
            f"SELECT {src.expr('mean', 'p0')}, {src.expr('max', 'p1')} FROM {src.measurement('station')} "
            f"WHERE {where} GROUP BY time({src.bucket_s}s)",
    }
    results = {}
    for label, q in queries.items():
        times = []
        for _ in range(args.repeat):
            t = time.perf_counter()
            r = http.get(f"{db.url}/query", params={"db": name, "q": q, "epoch": "ms"})
            r.raise_for_status()
            times.append(time.perf_counter() - t)
        rows = r.json()["results"][0]["series"][0]["values"]
        results[label] = rows
        print(f"{label:>10}: {len(rows)} buckets of {src.bucket_s} s, "
              f"median {statistics.median(times) * 1000:.1f} ms "
              f"(min {min(times) * 1000:.1f}, max {max(times) * 1000:.1f}) over {args.repeat} runs")
    a, b = results.values()
    worst = max(abs(x[1] - y[1]) for x, y in zip(a, b, strict=True) if x[1] is not None and y[1] is not None)
    print(f"largest difference of the means, raw vs rollup: {worst:.3g}")


if __name__ == "__main__":
    main()
