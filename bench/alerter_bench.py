"""The alerter's CPU per value on real mosquitto (issue #18): one member (SQLite, the default) or
several sharing the stations by partition leases (PostgreSQL).

Synthetic gateways (``heatwatch.loadgen``: 200-value station messages, 20 room sensors each, every
10th station with a cold building) publish at ``--rate`` messages/s; the alerter member processes
judge them. Over the same steady window (after ``--warmup``) it reports, per member and in total:

- CPU per value the member received (every member receives every message; it judges those of its
  partitions and keeps the rest in standby) and per value it judged (its own stations');
- the rule engines' own CPU (``heatwatch_alerter_rules_cpu_seconds_total``) against the rest of
  the member's (receive, decode, commit, acknowledge, standby);
- the members' CPU together per value of the stream, and whether every member kept up (every
  message acknowledged by the end).

Run: ``.venv/bin/python bench/alerter_bench.py --rate 250 --stations 1000 --seconds 60``
(``--members 3`` for three on PostgreSQL).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson
import yaml
from measure import proc_cpu_s, proc_mem_kb, scrape

from heatwatch.devstack import REPO, Mosquitto, Postgres, free_port
from heatwatch.loadgen import Shape

P = "heatwatch_alerter_"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rate", type=float, default=250, help="messages/s in total (200 values each)")
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--warmup", type=float, default=20, help="seconds before the CPU window opens")
    ap.add_argument("--stations", type=int, default=1000)
    ap.add_argument("--gateways", type=int, default=20)
    ap.add_argument("--members", type=int, default=1, help="alerter members (more than 1: PostgreSQL)")
    ap.add_argument("--partitions", type=int, default=64)
    ap.add_argument("--snapshot-s", type=float, default=30, help="alerts.snapshot_s of the members")
    a = ap.parse_args()
    shape = Shape()
    tmp = Path(tempfile.mkdtemp(prefix="hw-alerter-bench-"))
    broker = Mosquitto(tmp / "mosquitto", free_port())
    broker.start()
    pg = None
    if a.members > 1:
        pg = Postgres(free_port())
        pg.start()
    rules = tmp / "rules.yaml"  # every day in the season: the rules judge whatever day it runs
    rules.write_text('kind: rules\nseason: {start: "01-01", end: "12-31", start_grace_days: 0}\n')
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    members: dict[str, tuple[subprocess.Popen[bytes], int]] = {}
    try:
        for i in range(a.members):
            name = f"m{i + 1}"
            port = free_port()
            store = pg.url if pg is not None else f"sqlite:///{tmp / 'alerts.sqlite'}"
            cfg = {"kind": "alerter", "member": name, "mqtt": {"port": broker.port}, "receive_maximum": 2000,
                   "alerts": {"rules": str(rules), "store": store, "snapshot_s": a.snapshot_s},
                   "partitions": {"count": a.partitions, "standby_s": a.snapshot_s + 30},
                   "metrics": {"port": port}}
            (tmp / f"{name}.yaml").write_text(yaml.safe_dump(cfg))
            log = open(tmp / f"{name}.log", "wb")  # noqa: SIM115
            members[name] = (subprocess.Popen([sys.executable, "-m", "heatwatch", "alerter",
                                               str(tmp / f"{name}.yaml")], stdout=log,
                                              stderr=subprocess.STDOUT, cwd=REPO, env=env), port)
        deadline = time.monotonic() + 120
        while True:  # every partition owned, by the members sharing them out
            owned = 0
            for name, (p, port) in members.items():
                if p.poll() is not None:
                    raise SystemExit(f"{name} exited; see {tmp / (name + '.log')}")
                with contextlib.suppress(Exception):  # not listening yet
                    owned += int(scrape(port).get(P + "partitions_owned", 0))
            if owned == a.partitions:
                break
            if time.monotonic() > deadline:
                raise SystemExit(f"partitions not shared out; see the logs in {tmp}")
            time.sleep(0.5)
        gen = subprocess.Popen([sys.executable, "-m", "heatwatch.loadgen", "--port", str(broker.port),
                                "--gateways", str(a.gateways), "--stations", str(a.stations),
                                "--rate", str(a.rate), "--seconds", str(a.seconds), "--fixed-values"],
                               stdout=subprocess.PIPE, cwd=REPO)
        time.sleep(a.warmup)
        before = {n: (proc_cpu_s(p.pid), scrape(port)) for n, (p, port) in members.items()}
        t0 = time.monotonic()
        gen_out = gen.communicate(timeout=a.seconds + 120)[0]
        window = time.monotonic() - t0
        after = {n: (proc_cpu_s(p.pid), scrape(port)) for n, (p, port) in members.items()}
        published = orjson.loads(gen_out)["published"]
        deadline = time.monotonic() + 300  # every member through every message
        while any(scrape(port).get(P + "acked_total", 0) < published for _, port in members.values()):
            if time.monotonic() > deadline:
                break
            time.sleep(0.5)
        caught_up = all(scrape(port).get(P + "acked_total", 0) >= published for _, port in members.values())
        per: dict[str, dict[str, object]] = {}
        total_cpu = stream_values = 0.0
        for name, (p, _port) in members.items():
            (c0, m0), (c1, m1) = before[name], after[name]
            cpu = c1 - c0
            received = (m1[P + "received_total"] - m0[P + "received_total"]) * shape.values
            judged = m1[P + "rule_samples_total"] - m0[P + "rule_samples_total"]
            rules_s = m1[P + "rules_cpu_seconds_total"] - m0[P + "rules_cpu_seconds_total"]
            commit_s = m1[P + "commit_seconds_total"] - m0[P + "commit_seconds_total"]
            total_cpu += cpu
            stream_values = max(stream_values, received)
            per[name] = {
                "partitions": int(m1[P + "partitions_owned"]),
                "cpu_share_of_one_core": round(cpu / window, 2),
                "cpu_us_per_value_received": round(cpu / received * 1e6, 3) if received else None,
                "cpu_us_per_value_judged": round(cpu / judged * 1e6, 3) if judged else None,
                "rules_cpu_us_per_value_judged": round(rules_s / judged * 1e6, 3) if judged else None,
                "rules_share_of_cpu": round(rules_s / cpu, 3) if cpu else None,
                "rest_cpu_us_per_value_received": round((cpu - rules_s) / received * 1e6, 3)
                if received else None,
                "commit_wall_s": round(commit_s, 2),
                "peak_rss_mb": round(proc_mem_kb(p.pid, "VmHWM") / 1024, 1),
            }
        print(orjson.dumps({
            "members": a.members, "partitions": a.partitions, "store": "postgresql" if pg else "sqlite",
            "target_msgs_per_s": a.rate, "offered_values_per_s": round(a.rate * shape.values),
            "stations": a.stations, "window_s": round(window, 1), "published_msgs": published,
            "every_member_caught_up": caught_up,
            "stream_values_in_window": int(stream_values),
            "members_cpu_us_per_stream_value": round(total_cpu / stream_values * 1e6, 3)
            if stream_values else None,
            "per_member": per, "code": str(REPO),
        }, option=orjson.OPT_INDENT_2).decode())
        return 0 if caught_up else 1
    finally:
        for p, _ in members.values():
            p.terminate()
        for p, _ in members.values():
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
        if pg is not None:
            pg.stop()
        broker.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
