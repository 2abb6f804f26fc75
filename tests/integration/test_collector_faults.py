"""Fault injection under load: after each fault, InfluxDB holds exactly what the gateways
published — every message, every value, no more and no less.

Synthetic gateways (``heatwatch.loadgen``) publish at a steady rate to a real mosquitto; the
collector runs as its own process (so it can be SIGKILLed) and writes to a real influxd. Values
are a function of (station, seq, point), so the check recomputes them instead of keeping copies.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from heatwatch.devstack import Influxd, Mosquitto, free_port
from heatwatch.loadgen import LoadGen, Shape, expected, station_name
from tests.collector_helpers import TELEMETRY, CollectorProc, TestGateway, telemetry
from tests.conftest import Processes, influx_query, rows, wait_for, write_collector_config

pytestmark = pytest.mark.slow
SHAPE = Shape(station_points=20, buildings=2, building_points=3, households=4)  # 30 values, 7 lines


def _count(db: Influxd, database: str, q: str) -> int:
    got = rows(influx_query(db, database, q))
    return int(got[0]["count"]) if got else 0


def assert_influx_holds_exactly(db: Influxd, database: str, gen: LoadGen, timeout: float = 60) -> None:
    n = gen.c.published
    wait_for(lambda: _count(db, database, "SELECT count(x_p000) FROM station") == n, timeout,
             f"{n} station rows")
    # every field of every message, each measurement; no duplicates either (== not >=)
    for field_count, q in ((n, "SELECT count(x_p019) FROM station"),
                           (n * SHAPE.buildings, "SELECT count(x_b02) FROM building"),
                           (n * SHAPE.households, "SELECT count(room_temp) FROM household")):
        assert _count(db, database, q) == field_count, q
    # spot checks: every value of 15 random messages, at the gateway's timestamp
    rnd = random.Random(1)
    for st in rnd.sample(sorted(gen.c.sent), min(5, len(gen.c.sent))):
        for seq, ts in rnd.sample(gen.c.sent[st], 3):
            want = expected(SHAPE, st, seq)
            where = f"station='{station_name(st)}' AND time = {ts}ms"
            got = rows(influx_query(db, database, f"SELECT * FROM station WHERE {where}"))
            assert len(got) == 1
            assert [got[0][f"x_p{p:03d}"] for p in range(SHAPE.station_points)] == want[:SHAPE.station_points]
            rooms = rows(influx_query(db, database, f"SELECT room_temp FROM household WHERE {where} "
                                                     "GROUP BY household"))
            assert sorted(r["room_temp"] for r in rooms) == sorted(want[-SHAPE.households:])


class Load:
    """A LoadGen running in a thread while the test injects its fault."""

    def __init__(self, port: int, rate: float, seconds: float) -> None:
        self.gen = LoadGen(port, gateways=3, stations=12, rate=rate, shape=SHAPE)
        self.thread = threading.Thread(target=self.gen.run, args=(seconds,), daemon=True)
        self.thread.start()

    def finish(self, timeout: float) -> LoadGen:
        self.thread.join(timeout)
        assert not self.thread.is_alive()
        assert self.gen.wait_acked(60), "the broker never confirmed everything"
        self.gen.close()
        return self.gen


@pytest.fixture
def start_collector(tmp_path: Path, procs: Processes, mosquitto: Mosquitto) -> Callable[..., int]:
    metrics_port = free_port()

    def start(db: Influxd, database: str) -> int:
        cfg = write_collector_config(tmp_path / "collector", mqtt_port=mosquitto.port, influx_url=db.url,
                                     database=database, stats={"interval_s": 1, "metrics_port": metrics_port})
        procs.start("collector", "collector", str(cfg))
        wait_for(lambda: '"subscribed"' in procs.log("collector"), 20, "collector subscribed")
        return metrics_port

    return start


def _metric(port: int, name: str) -> float:
    for line in httpx.get(f"http://127.0.0.1:{port}/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


def test_influxd_stopped_for_60_s_under_load(tmp_path: Path, mosquitto: Mosquitto,
                                             start_collector: Callable[..., int], influx_db: str) -> None:
    db = Influxd(tmp_path / "influxd-own", free_port())
    db.start()
    try:
        port = start_collector(db, influx_db)
        load = Load(mosquitto.port, rate=20, seconds=75)
        time.sleep(5)
        db.stop()
        time.sleep(60)
        spooled = _metric(port, "heatwatch_collector_spooled_total")
        assert spooled > 0 and _metric(port, "heatwatch_collector_spooling") == 1
        db.start()
        gen = load.finish(30)
        assert_influx_holds_exactly(db, influx_db, gen)
        wait_for(lambda: _metric(port, "heatwatch_collector_spool_rows") == 0, 30, "spool drained")
        assert _metric(port, "heatwatch_collector_drained_total") == _metric(
            port, "heatwatch_collector_spooled_total")  # the spool gave back what it took
        assert _metric(port, "heatwatch_collector_write_rejected_total") == 0
    finally:
        db.stop()


def test_collector_sigkilled_under_load(mosquitto: Mosquitto, procs: Processes, influxd: Influxd,
                                        start_collector: Callable[..., int], influx_db: str) -> None:
    start_collector(influxd, influx_db)
    load = Load(mosquitto.port, rate=50, seconds=20)
    for _ in range(2):  # twice, at different points of its batches
        time.sleep(random.uniform(4, 6))
        procs.procs["collector"].kill()
        procs.procs["collector"].wait()
        time.sleep(1)
        start_collector(influxd, influx_db)
    gen = load.finish(30)
    assert_influx_holds_exactly(influxd, influx_db, gen)


def test_broker_restarted_under_load(mosquitto: Mosquitto, influxd: Influxd,
                                     start_collector: Callable[..., int], influx_db: str) -> None:
    port = start_collector(influxd, influx_db)
    load = Load(mosquitto.port, rate=50, seconds=20)
    time.sleep(7)
    mosquitto.stop()  # SIGTERM: mosquitto saves its persistence file on the way out
    time.sleep(3)
    mosquitto.start()
    gen = load.finish(40)
    assert_influx_holds_exactly(influxd, influx_db, gen)
    assert _metric(port, "heatwatch_collector_write_rejected_total") == 0


def test_influxd_hung_spools_within_after_s_then_drains_exactly(
        tmp_path: Path, procs: Processes, mosquitto: Mosquitto, influx_db: str) -> None:
    """InfluxDB hangs (SIGSTOP) instead of refusing: each write attempt is bounded by what is left of
    spool.after_s, so spooling starts after_s after the write, not after the HTTP timeout
    (influx.timeout_s, 30 s here); nothing is receipted before it is durable; after SIGCONT the
    spool drains, nothing lost, nothing twice."""
    after_s, timeout_s = 2.0, 30.0  # far apart: which of the two starts the spooling is plain
    db = Influxd(tmp_path / "influxd-hung", free_port())
    db.start()
    gw = TestGateway(mosquitto.port)
    try:
        col = CollectorProc(procs, tmp_path, mqtt_port=mosquitto.port, db=db, database=influx_db,
                            spool={"path": str(tmp_path / "spool.sqlite"), "after_s": after_s},
                            influx={"url": db.url, "database": influx_db, "timeout_s": timeout_s})
        gw.publish([(TELEMETRY.format("st001"), telemetry("st001", s)) for s in range(20)])
        wait_for(lambda: col.count("SELECT count(primary_heat_total) FROM station") == 20, 20, "20 stored")
        assert db.proc is not None
        os.kill(db.proc.pid, signal.SIGSTOP)
        t0 = time.monotonic()
        gw.publish([(TELEMETRY.format("st001"), telemetry("st001", s)) for s in range(20, 70)])
        key = ("st001", "gw-st001", "aaaaaaaa")
        early: list[set[int]] = []

        def spooling() -> bool:
            seen = set(gw.receipted().get(key, ()))  # before the look at the metric: not yet durable
            if col.metric("heatwatch_collector_spooling") == 1:
                return True
            early.append(seen)
            return False

        wait_for(spooling, 15, "spooling")
        took = time.monotonic() - t0
        # (the margin: publishing the 50 and the first batch's cut, on a machine shared with others)
        assert took <= after_s + 5.0, f"spooling began {took:.1f} s after InfluxDB hung"
        assert early and all(seen == set(range(20)) for seen in early)  # nothing receipted before durable
        wait_for(lambda: gw.receipted()[key] == set(range(70)), 15, "receipts once spooled")
        os.kill(db.proc.pid, signal.SIGCONT)
        wait_for(lambda: col.metric("heatwatch_collector_spool_rows") == 0
                 and col.metric("heatwatch_collector_spooling") == 0, 60, "spool drained")
        # exactly: none lost, none twice
        assert col.count("SELECT count(primary_heat_total) FROM station") == 70
        m = col.metrics()
        assert m["heatwatch_collector_drained_total"] == m["heatwatch_collector_spooled_total"] > 0
        assert m["heatwatch_collector_write_rejected_total"] == 0
        assert m["heatwatch_collector_receipted_total"] == 70
    finally:
        gw.close()
        if db.proc is not None:
            os.kill(db.proc.pid, signal.SIGCONT)
        db.stop()
