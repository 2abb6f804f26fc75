"""The collector on real mosquitto and influxd: bad input is rejected, counted, recorded, and
the next good message is stored; data InfluxDB cannot take is spooled to disk and drained."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from collector.app import Collector
from contract.config import load_collector_config
from heatwatch.devstack import Influxd, Mosquitto, free_port
from tests.conftest import influx_query, publish, rows, wait_for, write_collector_config
from tests.unit.test_payload import GOOD

TOPIC = "heatwatch/v1/station/st001/telemetry"


class CollectorThread:
    def __init__(self, config_path: Path) -> None:
        self.loop = asyncio.new_event_loop()
        self.collector: Collector | None = None
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self.loop)

            async def main() -> None:
                self.collector = Collector(load_collector_config(config_path))
                ready.set()
                await self.collector.run()

            self.task = self.loop.create_task(main())
            with contextlib.suppress(BaseException):
                self.loop.run_until_complete(self.task)

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        ready.wait(10)
        assert self.collector is not None
        wait_for(self.collector.receive.subscribed.is_set, 10, "collector subscribed")

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.task.cancel)
        self.thread.join(10)


@pytest.fixture
def collector(tmp_path: Path, mosquitto: Mosquitto, influxd: Influxd, influx_db: str) -> Iterator[Collector]:
    ct = CollectorThread(write_collector_config(tmp_path, mqtt_port=mosquitto.port,
                                                influx_url=influxd.url, database=influx_db,
                                                stats={"interval_s": 0.5, "metrics_port": 0}))
    assert ct.collector is not None
    yield ct.collector
    ct.stop()


def _msg(seq: int, ts: int, value: float = 55.5, **change: object) -> bytes:
    return orjson.dumps({**GOOD, "seq": seq, "ts": ts,
                         "values": [{"point": "secondary_supply_temp", "value": value, "unit": "°C"}],
                         **change})


def test_bad_input_is_rejected_counted_recorded_and_the_next_good_one_stored(
    collector: Collector, mosquitto: Mosquitto, influxd: Influxd, influx_db: str,
) -> None:
    now = int(time.time() * 1000)
    bad = [
        (TOPIC, b"\xff\xfe not json"),
        (TOPIC, _msg(1, now, schema=9)),
        (TOPIC, _msg(3, now - 40 * 86_400_000)),  # 40 days old
        (TOPIC, orjson.dumps({**orjson.loads(_msg(4, now)), "values": [{"point": "room_temp",
                                                                         "value": 20, "unit": "°C"}]})),
        ("heatwatch/v1/station/st002/telemetry", _msg(5, now)),  # payload says st001
        ("heatwatch/v1/station/st001/status", b"{}"),
        ("heatwatch/v1/station/st 1/telemetry", _msg(6, now)),
    ]
    publish(mosquitto.port, [*bad, (TOPIC, _msg(7, now, 61.25))])

    def good_stored() -> list[dict[str, object]]:
        return rows(influx_query(influxd, influx_db, "SELECT * FROM station"))

    stored = wait_for(good_stored, 20, "the good message")
    assert [(r["time"], r["secondary_supply_temp"]) for r in stored] == [(now, 61.25)]
    wait_for(lambda: collector.stats.acked == len(bad) + 1, 10, "every message acknowledged")
    assert dict(collector.stats.rejected) == {
        "bad_json": 1, "schema_version": 2, "ts_too_old": 1, "schema": 1,
        "station_mismatch": 1, "bad_topic": 1}
    recorded = rows(influx_query(influxd, influx_db, 'SELECT * FROM "rejects" GROUP BY *'))
    assert sorted(r["reason"] for r in recorded) == sorted(
        ["bad_json", "schema_version", "schema_version", "ts_too_old", "schema",
         "station_mismatch", "bad_topic"])
    detail = {r["reason"]: r["detail"] for r in recorded}
    assert "st 1" in detail["bad_topic"]

    # the same counters, for Prometheus and in InfluxDB for Grafana
    gc.collect(0)  # a young collection for the GC clock to count (an idle test may not trigger one)
    metrics = httpx.get(f"http://127.0.0.1:{collector.metrics_port}/metrics").text
    assert 'heatwatch_collector_rejected_total{reason="schema_version"} 2.0' in metrics
    assert 'heatwatch_collector_messages_total{station="st001"} 1.0' in metrics
    gc_runs = [line for line in metrics.splitlines()
               if line.startswith('heatwatch_collector_gc_collections_total{generation="0"}')]
    assert gc_runs and float(gc_runs[0].rsplit(" ", 1)[1]) > 0
    # sample time → durable, for the one good (live) message only
    assert "heatwatch_collector_latency_seconds_count 1.0" in metrics
    assert 'heatwatch_collector_latency_seconds_bucket{le="10.0"} 1.0' in metrics

    def counters() -> list[dict[str, object]]:
        got = rows(influx_query(influxd, influx_db, "SELECT last(*) FROM collector"))
        return got if got and got[0]["last_acked"] == len(bad) + 1 else []

    last = wait_for(counters, 10, "counters in InfluxDB")[0]
    assert last["last_rejected"] == 7 and last["last_accepted"] == 1 and last["last_values"] == 1


def test_redelivered_message_overwrites(collector: Collector, mosquitto: Mosquitto,
                                        influxd: Influxd, influx_db: str) -> None:
    now = int(time.time() * 1000)
    publish(mosquitto.port, [(TOPIC, _msg(1, now, 50.0)), (TOPIC, _msg(1, now, 50.0, backfill=True))])
    wait_for(lambda: collector.stats.acked == 2, 10, "both acknowledged")
    got = rows(influx_query(influxd, influx_db, "SELECT * FROM station"))
    assert [(r["time"], r["secondary_supply_temp"]) for r in got] == [(now, 50.0)]


def test_influxdb_down_batches_are_spooled_acknowledged_and_drained_after_a_restart(
    tmp_path: Path, mosquitto: Mosquitto, influx_db: str,
) -> None:
    db = Influxd(tmp_path / "influx2", free_port())
    cfg = write_collector_config(tmp_path / "c", mqtt_port=mosquitto.port, influx_url=db.url,
                                 database=influx_db)
    db.start()
    ct = CollectorThread(cfg)
    try:
        db.stop()
        now = int(time.time() * 1000)
        publish(mosquitto.port, [(TOPIC, _msg(i, now + i, float(i))) for i in range(50)])
        time.sleep(0.5)
        assert ct.collector is not None and ct.collector.stats.acked == 0  # not durable yet
        # after spool.after_s (2 s) of failed writes the batch goes to disk and is acknowledged
        wait_for(lambda: ct.collector is not None and ct.collector.stats.acked == 50, 15, "spooled + acked")
        assert ct.collector.spooling and ct.collector.spool.count >= 1
        assert ct.collector.stats.spooled == 50
        publish(mosquitto.port, [(TOPIC, _msg(i, now + i, float(i))) for i in range(50, 60)])
        wait_for(lambda: ct.collector is not None and ct.collector.stats.acked == 60, 15, "spooled at once")
        ct.stop()  # gone, with everything in its spool and nothing left at the broker
        db.start()
        ct = CollectorThread(cfg)  # a new process would find the same file
        want = [float(i) for i in range(60)]
        wait_for(lambda: sorted(r["secondary_supply_temp"] for r in rows(
            influx_query(db, influx_db, "SELECT * FROM station"))) == want, 30, "all 60 drained")
        wait_for(lambda: ct.collector is not None and ct.collector.spool.count == 0, 10, "spool empty")
        assert ct.collector is not None and not ct.collector.spooling
        publish(mosquitto.port, [(TOPIC, _msg(60, now + 60, 60.0))])  # and live data flows again
        wait_for(lambda: len(rows(influx_query(db, influx_db, "SELECT * FROM station"))) == 61, 10, "live")
    finally:
        ct.stop()
        db.stop()


def test_gzip_writes(tmp_path: Path, mosquitto: Mosquitto, influxd: Influxd, influx_db: str) -> None:
    cfg = write_collector_config(tmp_path, mqtt_port=mosquitto.port, influx_url=influxd.url,
                                 database=influx_db,
                                 influx={"url": influxd.url, "database": influx_db, "gzip": "on"})
    ct = CollectorThread(cfg)
    try:
        assert ct.collector is not None and ct.collector.writer.gzip
        now = int(time.time() * 1000)
        publish(mosquitto.port, [(TOPIC, _msg(i, now + i, float(i))) for i in range(20)])
        wait_for(lambda: len(rows(influx_query(influxd, influx_db, "SELECT * FROM station"))) == 20, 10,
                 "20 rows")
    finally:
        ct.stop()


def test_garbage_through_the_real_broker_is_all_recorded_and_consumption_goes_on(
    collector: Collector, mosquitto: Mosquitto, influxd: Influxd, influx_db: str,
) -> None:
    rnd = random.Random(7)
    now = int(time.time() * 1000)
    stations = ["st001", "st 1", "站点1", "a\\b", 'q"x', "x=y,z", "-"]
    garbage: list[tuple[str, bytes]] = []
    for i in range(300):
        # every topic inside what the collector subscribes to (it never sees the others)
        kind_of_topic = "station/{}/telemetry" if i % 3 else "gateway/{}/status"
        topic = "heatwatch/v1/" + kind_of_topic.format(rnd.choice(stations))
        kind = i % 4
        if kind == 0:
            payload = rnd.randbytes(rnd.randint(0, 200))
        elif kind == 1:  # good JSON, one key replaced by something odd
            doc = orjson.loads(_msg(i, now))
            doc[rnd.choice(sorted(doc))] = rnd.choice([None, -1, 'x\n"\\', [1, {"a": "\\"}], 1e308, "é" * 40])
            payload = orjson.dumps(doc)
        elif kind == 2:
            payload = _msg(i, now)[: rnd.randint(0, 60)]  # truncated
        else:
            payload = orjson.dumps({"values": [{"point": 'x_"\\,= ', "value": "\\", "unit": "\\n"}]})
        garbage.append((topic, payload))
    publish(mosquitto.port, [*garbage, (TOPIC, _msg(999, now, 42.0))])
    wait_for(lambda: collector.stats.acked == len(garbage) + 1, 20, "everything acknowledged")
    stored = rows(influx_query(influxd, influx_db, "SELECT * FROM station"))
    assert [r["secondary_supply_temp"] for r in stored] == [42.0]
    assert sum(collector.stats.rejected.values()) == len(garbage)
    assert collector.stats.write_rejected == 0  # every reject record was valid line protocol
    recorded = rows(influx_query(influxd, influx_db, 'SELECT count("count") FROM "rejects"'))
    assert recorded[0]["count"] == len(garbage)


def test_two_collectors_share_the_telemetry_through_a_subscription_group(
    tmp_path: Path, mosquitto: Mosquitto, influxd: Influxd, influx_db: str,
) -> None:
    members = [CollectorThread(write_collector_config(
        tmp_path / name, mqtt_port=mosquitto.port, influx_url=influxd.url, database=influx_db,
        client_id=name, subscription_group="writers")) for name in ("member-a", "member-b")]
    try:
        now = int(time.time() * 1000) - 600_000
        n = 300
        publish(mosquitto.port, [(TOPIC, _msg(i + 1, now + i * 1000, 40.0 + i / 100)) for i in range(n)])
        cs = [m.collector for m in members if m.collector is not None]
        wait_for(lambda: sum(c.stats.acked for c in cs) == n, 20, "every message acknowledged")
        got = [c.stats.accepted for c in cs]
        assert sum(got) == n and min(got) > 0, got  # each message to exactly one member, both working

        def stored() -> int:
            res = rows(influx_query(influxd, influx_db, "SELECT count(secondary_supply_temp) FROM station"))
            return int(res[0]["count"]) if res else 0

        wait_for(lambda: stored() == n, 20, f"{n} points in InfluxDB")
    finally:
        for m in members:
            m.stop()
