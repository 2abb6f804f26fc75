"""The collector on real mosquitto and influxd: bad input is rejected, counted, recorded, and
the next good message is stored; data it could not write stays with the broker."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path

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
        wait_for(self.collector.connected.is_set, 10, "collector connected")
        time.sleep(0.3)  # SUBACK follows CONNACK

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.task.cancel)
        self.thread.join(10)


@pytest.fixture
def collector(tmp_path: Path, mosquitto: Mosquitto, influxd: Influxd, influx_db: str) -> Iterator[Collector]:
    ct = CollectorThread(write_collector_config(tmp_path, mqtt_port=mosquitto.port,
                                                influx_url=influxd.url, database=influx_db))
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
        (TOPIC, _msg(2, now + 3_600_000)),  # an hour in the future
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
        "bad_json": 1, "schema_version": 2, "ts_future": 1, "ts_too_old": 1, "schema": 1,
        "station_mismatch": 1, "bad_topic": 1}
    recorded = rows(influx_query(influxd, influx_db, 'SELECT * FROM "rejects" GROUP BY *'))
    assert sorted(r["reason"] for r in recorded) == sorted(
        ["bad_json", "schema_version", "schema_version", "ts_future", "ts_too_old", "schema",
         "station_mismatch", "bad_topic"])
    detail = {r["reason"]: r["detail"] for r in recorded}
    assert "in the future" in detail["ts_future"]
    assert "st 1" in detail["bad_topic"]


def test_redelivered_message_overwrites(collector: Collector, mosquitto: Mosquitto,
                                        influxd: Influxd, influx_db: str) -> None:
    now = int(time.time() * 1000)
    publish(mosquitto.port, [(TOPIC, _msg(1, now, 50.0)), (TOPIC, _msg(1, now, 50.0, backfill=True))])
    wait_for(lambda: collector.stats.acked == 2, 10, "both acknowledged")
    got = rows(influx_query(influxd, influx_db, "SELECT * FROM station"))
    assert [(r["time"], r["secondary_supply_temp"]) for r in got] == [(now, 50.0)]


def test_data_waits_on_the_broker_while_influxdb_is_down(
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
        time.sleep(2)
        assert ct.collector is not None and ct.collector.stats.acked == 0  # nothing durable yet
        ct.stop()  # the collector goes away with 50 unacknowledged messages
        db.start()
        ct = CollectorThread(cfg)
        got = wait_for(lambda: rows(influx_query(db, influx_db, "SELECT * FROM station")), 30, "data")
        wait_for(lambda: len(rows(influx_query(db, influx_db, "SELECT * FROM station"))) == 50, 20, "all 50")
        got = rows(influx_query(db, influx_db, "SELECT * FROM station"))
        assert sorted(r["secondary_supply_temp"] for r in got) == [float(i) for i in range(50)]
    finally:
        ct.stop()
        db.stop()
