"""Drives the rule engine through part of a cold night, for test_rules_snapshot (run as a script so
each part is a fresh process, as an alerter restarting from its snapshot is).

    python tests/unit/rules_driver.py FIRST LAST SNAPSHOT_IN|- SNAPSHOT_OUT

Feeds rounds FIRST..LAST-1 (10 minutes of data time apart) of four stations — a cold building
and one cold flat (both fixed at round 45), make-up water, a totalizer that wraps, a station that
falls silent — restoring the engine from SNAPSHOT_IN first; writes its snapshot to SNAPSHOT_OUT
and prints the transitions as JSON lines.
"""

from __future__ import annotations

import sys

import msgspec

from alerting.engine import Engine
from contract.alerts import AlertRules
from contract.payload import Frame, Sample

T0 = 1_796_832_000_000  # 2026-12-10 00:00 +08:00, inside the heating season
STEP = 600_000


def samples(st: int, r: int) -> list[Sample]:
    out = [Sample(point="outdoor_temp", unit="°C", value=-5.0 + 0.1 * r),
           Sample(point="secondary_supply_temp", unit="°C", value=50.0 + (r % 3)),
           Sample(point="secondary_flow", unit="m³/h", value=120.0),
           Sample(point="makeup_flow", unit="m³/h", value=0.5 if st else 2.5),
           Sample(point="makeup_total", unit="m³", value=(99_990.0 + r * (0.4 if st else 3.0)) % 100_000),
           Sample(point="makeup_pump_running", unit="", value=r % 2 == 0)]
    for h in range(12):
        b = f"b{h // 6}"
        cold = ((st == 1 and b == "b0") or (st == 2 and h == 7)) and r < 45  # then fixed
        out.append(Sample(point="room_temp", unit="°C", building=b, household=f"{b}-{h:02d}",
                          value=(15.2 if cold else 20.5) + 0.1 * ((r + h) % 3)))
    return out


def main() -> None:
    first, last, snap_in, snap_out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    engine = Engine(AlertRules())
    if snap_in != "-":
        with open(snap_in, "rb") as f:
            engine.restore(f.read())
    out = []
    for r in range(first, last):
        t = T0 + r * STEP
        for st in range(4):
            if st == 3 and r >= 10:
                continue  # station 3 falls silent
            frame = Frame(f"st{st}", "gw1" if st < 3 else "gw2", "0badc0de", r + 1, t, False,
                          samples(st, r), None)
            out += engine.observe(frame, t)
        out += engine.tick(t)
    with open(snap_out, "wb") as f:
        f.write(engine.snapshot())
    for x in out:
        sys.stdout.write(msgspec.json.encode(x).decode() + "\n")


if __name__ == "__main__":
    main()
