"""Stopping a real collector process, many times, at random moments while telemetry streams in:
it ends within seconds with exit code 130 and no traceback or "never retrieved" on its output,
with SIGINT (Ctrl-C), SIGTERM, and both at once; what it took in is in InfluxDB, or comes again
from the broker (its session keeps what it did not acknowledge), so the next run stores it.
(The alerter's stop: tests/integration/test_alerter.py.)"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import orjson
import pytest

from heatwatch.devstack import REPO, Influxd, Mosquitto
from tests.conftest import influx_query, publish, wait_for, write_collector_config

pytestmark = pytest.mark.slow


def test_ctrl_c_and_sigterm_stop_the_collector_cleanly(tmp_path: Path, mosquitto: Mosquitto, influxd: Influxd,
                                                        influx_db: str) -> None:
    cfg = write_collector_config(tmp_path, mqtt_port=mosquitto.port, influx_url=influxd.url,
                                 database=influx_db)
    sent = 0
    stop = threading.Event()
    t0 = int(time.time() * 1000) - 3_600_000

    def load() -> None:  # ~100 messages a second, acknowledged by the broker (it keeps them for us)
        nonlocal sent
        while not stop.is_set():
            batch = [(f"heatwatch/v1/station/st{i % 20:03d}/telemetry", orjson.dumps({
                "schema": 1, "station": f"st{i % 20:03d}", "gateway": "gw1", "boot": "0badc0de", "seq": i,
                "ts": t0 + i, "values": [{"point": "secondary_supply_temp", "value": 50.0, "unit": "°C",
                                          "quality": "good"}]})) for i in range(sent, sent + 20)]
            publish(mosquitto.port, batch)
            sent += len(batch)
            time.sleep(0.2)

    rng = random.Random(18)
    loader = threading.Thread(target=load, daemon=True)
    try:
        for i in range(8):
            sig = signal.SIGTERM if i % 3 == 2 else signal.SIGINT
            err = tmp_path / f"stderr-{i}.txt"
            with open(err, "wb") as f:
                p = subprocess.Popen([sys.executable, "-m", "heatwatch", "collector", str(cfg)],
                                     stdout=subprocess.DEVNULL, stderr=f, cwd=REPO)
            wait_for(lambda: b'"subscribed"' in err.read_bytes() or p.poll() is not None, 30,  # noqa: B023
                     "the collector's subscription")
            if i == 0:
                loader.start()
            time.sleep(rng.uniform(0.1, 1.5))  # somewhere in its receiving, batching and writing
            p.send_signal(sig)
            if i % 5 == 4:  # Ctrl-C in a terminal and a supervisor's SIGTERM right after: one stop
                time.sleep(0.05)
                p.send_signal(signal.SIGTERM)
            try:
                rc = p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
                raise AssertionError(f"stop {i} ({sig.name}): still running 15 s later:\n"
                                     f"{err.read_text()[-2000:]}") from None
            text = err.read_text()
            assert rc == 130 or (i % 5 == 4 and rc == -signal.SIGTERM), (i, sig.name, rc, text[-2000:])
            assert "never retrieved" not in text and "Traceback" not in text, (i, sig.name, text[-3000:])
    finally:
        stop.set()
        if loader.is_alive():
            loader.join(10)
    # one more run takes what the stopped ones left at the broker: every message is stored
    err = tmp_path / "stderr-last.txt"
    with open(err, "wb") as f:
        p = subprocess.Popen([sys.executable, "-m", "heatwatch", "collector", str(cfg)],
                             stdout=subprocess.DEVNULL, stderr=f, cwd=REPO)
    try:
        def stored() -> int:
            got = influx_query(influxd, influx_db, "SELECT count(secondary_supply_temp) FROM station")
            return int(got[0]["values"][0][1]) if got else 0

        wait_for(lambda: stored() == sent, 30, f"all {sent} messages in InfluxDB")
    finally:
        p.send_signal(signal.SIGINT)
        assert p.wait(15) == 130
