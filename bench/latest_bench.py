"""The alerter's latest-value tap alone (issue #20): CPU per value of ``observe`` and of a
flush in which every message's places are written (the case where each station reports at most
once per ``alerts.latest_s``), on a real SQLite alert store.

Decodes ``--stations`` load-generator messages (200 values: 150 station points, 5 buildings of 6
points, 20 rooms), feeds them to ``alerter.latest.LatestValues`` ``--rounds`` times, flushing
after each round. CPU is the thread's own (``thread_time``), so other work on the machine
inflates it less than wall time; compare with the line encoder's CPU per value, printed beside.
``--step-s`` apart (10 s) in sample time; ``--day`` first plays 48 unmeasured rounds 30 minutes
apart, so every room's 24 h (``alerting.latest.RoomDay``) is full, its largest to keep and write.

    .venv/bin/python bench/latest_bench.py --stations 5000 --rounds 3
    .venv/bin/python bench/latest_bench.py --stations 1000 --rounds 3 --day
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
from pathlib import Path
from time import thread_time_ns

import orjson

from alerter.latest import LatestValues
from alerting.store import Store
from contract.influx import telemetry_lines
from contract.payload import decode_telemetry
from heatwatch.loadgen import Shape, message


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--stations", type=int, default=5000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--step-s", type=float, default=10)
    ap.add_argument("--day", action="store_true", help="every room's 24 h full first")
    a = ap.parse_args()
    shape = Shape()
    tmp = Path(tempfile.mkdtemp(prefix="hw-latestbench-"))
    try:
        store = Store(f"sqlite:///{tmp / 'alerts.sqlite'}")
        store.migrate()
        lv = LatestValues(store.latest)
        rounds = []
        t0_ms = 1_796_000_000_000
        if a.day:  # 48 rounds, 30 minutes apart: each room's means of a whole day (not measured)
            for r in range(48):
                for s in range(a.stations):
                    lv.observe(decode_telemetry(message(shape, s, "gw", "0badc0de", r, t0_ms)))
                t0_ms += 1_800_000
            asyncio.run(lv.flush())
        for r in range(a.rounds + 1):  # the first round creates the places and rows (or a bucket)
            ts = t0_ms + int(r * a.step_s * 1000)
            frames = [decode_telemetry(message(shape, s, "gw", "0badc0de", r, ts)) for s in range(a.stations)]
            values = sum(len(f.samples) for f in frames)
            t0 = thread_time_ns()
            for f in frames:
                lv.observe(f)
            observe_ns = thread_time_ns() - t0
            t0 = thread_time_ns()
            for f in frames:
                telemetry_lines(f)
            encode_ns = thread_time_ns() - t0
            flush0 = lv.stats.flush_ns
            rows = asyncio.run(lv.flush())
            if r:
                rounds.append({"observe_ns_per_value": round(observe_ns / values),
                               "flush_ns_per_value": round((lv.stats.flush_ns - flush0) / values),
                               "rows": rows, "rows_per_message": round(rows / len(frames), 1),
                               "line_encoding_ns_per_value": round(encode_ns / values)})
        store.close()
        print(orjson.dumps({"stations": a.stations, "values_per_message": shape.values, "day": a.day,
                            "rounds": rounds},
                           option=orjson.OPT_INDENT_2).decode())
        return 0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
