"""Garbage through the real broker (issue #16): the collector stays up, its memory stays bounded
by bytes, every good message is stored and every bad one counted with its reason — exact counts.

The broker here takes packets up to 256 MB, as a site that raised ``max_packet_size`` (or another
broker) would: the shipped limit (1 MiB, deploy/mosquitto/heatwatch.conf) refuses the 10 MB
messages before they reach any collector (tests/integration/test_broker_limits.py).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import orjson
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from heatwatch.devstack import Influxd, Mosquitto, free_port
from tests.collector_helpers import (
    BASE_TS,
    TELEMETRY,
    CollectorProc,
    TestGateway,
    canonical,
    rss_kb,
    telemetry,
)
from tests.conftest import Processes, influx_query, rows, wait_for

pytestmark = pytest.mark.slow
MB = 1024 * 1024


@pytest.fixture
def open_broker(tmp_path: Path) -> Iterator[Mosquitto]:
    b = Mosquitto(tmp_path / "mosquitto-open", free_port())
    b.conf.write_text(b.conf.read_text() + "\nmax_packet_size 268435455\n")  # the later line wins
    b.start()
    yield b
    b.stop()


class PeakRss:
    """The collector's VmRSS sampled every 20 ms (its highest while the load lasts)."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak, self._stop = pid, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            try:
                self.peak = max(self.peak, rss_kb(self.pid))
            except (OSError, AssertionError):
                return

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(5)
        return self.peak


def padded(station: str, seq: int, size: int) -> bytes:
    """A valid telemetry message of ``size`` bytes: JSON whitespace after the object."""
    body = telemetry(station, seq)
    return body + b" " * (size - len(body))


def test_memory_is_bounded_by_bytes_while_influxdb_is_stopped(
        tmp_path: Path, procs: Processes, open_broker: Mosquitto, influx_db: str) -> None:
    """30 messages of 10 MB and 100 valid ones of 0.9 MB arrive while InfluxDB is stopped (and the
    spool not yet used): the 10 MB ones are rejected without being kept, the inbox holds at most
    ``receive_max_bytes`` of the rest and the receive stage stops reading; RSS grows by less than
    BOUND_MB. (Before: the inbox was bounded by count only, 1,000 messages: 30 × 10 MB took RSS from
    79 to 407 MB.) Then InfluxDB is back: all 100 stored, exactly."""
    bound_mb = 80  # 16 MiB of inbox + one 10 MB packet in paho's buffer and its copy + batches
    db = Influxd(tmp_path / "influxd-own", free_port())
    db.start()
    gw = TestGateway(open_broker.port)
    try:
        col = CollectorProc(procs, tmp_path, mqtt_port=open_broker.port, db=db, database=influx_db,
                            receive_max_bytes=16 * MB,
                            # a batch a message: the writes (stuck) hold five, the rest must wait
                            batch={"max_lines": 1, "max_delay_s": 0.2},
                            spool={"path": str(tmp_path / "spool.sqlite"), "after_s": 300})
        db.stop()
        time.sleep(1.5)  # the first stats writes start failing: their retries are part of the base
        before = rss_kb(col.pid)
        peak = PeakRss(col.pid)
        big = orjson.dumps({"schema": 1, "station": "st001", "blob": "x" * (10 * MB)})
        gw.publish([(TELEMETRY.format("st001"), big)] * 30, timeout=120)
        gw.publish([(TELEMETRY.format("st001"), padded("st001", s, 900_000)) for s in range(100)],
                   timeout=120)
        # the inbox fills to its byte bound and the receive stage stops reading
        wait_for(lambda: col.metric("heatwatch_collector_inbox_bytes") >= 15 * MB, 60, "inbox full by bytes")
        time.sleep(2)  # and stays so
        m = col.metrics()
        high = peak.stop()
        grew = (high - before) / 1024
        print(f"collector RSS {before / 1024:.0f} MB before, peak {high / 1024:.0f} MB (+{grew:.0f} MB); "
              f"inbox {m['heatwatch_collector_inbox_bytes'] / MB:.1f} MB, "
              f"{m['heatwatch_collector_inbox']:.0f} messages; validated "
              f"{m['heatwatch_collector_received_total']:.0f}")
        assert m["heatwatch_collector_inbox_bytes"] <= 16 * MB + 900_000
        assert m["heatwatch_collector_inbox_full"] == 1  # what HeatwatchCollectorInboxFull watches
        # the rest waits at the broker
        assert m["heatwatch_collector_received_total"] + m["heatwatch_collector_inbox"] < 130
        assert grew < bound_mb, f"RSS grew by {grew:.0f} MB"
        db.start()
        wait_for(lambda: col.count("SELECT count(primary_heat_total) FROM station") == 100, 90, "100 stored")
        # (a write retried through the outage may wait out its backoff, up to 30 s, once more)
        wait_for(lambda: col.metric("heatwatch_collector_receipted_total") == 100, 60, "100 receipted")
        assert col.rejected() == {"too_large": 30}
        assert col.alive()
    finally:
        gw.close()
        db.stop()


def test_garbage_through_the_broker_every_good_stored_every_bad_counted(
        tmp_path: Path, procs: Processes, open_broker: Mosquitto, influxd: Influxd, influx_db: str) -> None:
    """Type conflicts, huge numbers, forged sequences, 10 MB payloads, a thousand unknown stations,
    control characters, invalid UTF-8, deep nesting: exact counts of what is stored, refused (by
    reason) and receipted; the collector stays up and its RSS grows by less than 80 MB.
    (mosquitto itself disconnects a client whose topic holds a control character: those never
    reach a collector.)"""
    stations = ["st001", "st002", "st003"]
    col = CollectorProc(procs, tmp_path, mqtt_port=open_broker.port, db=influxd, database=influx_db,
                        ingest={"known_stations": stations})
    gw = TestGateway(open_broker.port)
    before = rss_kb(col.pid)
    peak = PeakRss(col.pid)
    notes = ["tab\there", "line\nbreak", "nul\x00", "bell\x07esc\x1b", "quote\"back\\", "\u200b\ufeff"]
    t = TELEMETRY.format

    def with_(station: str, seq: int, *extra: dict[str, object]) -> bytes:
        return telemetry(station, seq, values=[*canonical(seq), *extra])

    good = [(t("st001"), with_("st001", s, {"point": "x_plc_program", "value": 7.0, "unit": ""},
                                  {"point": "x_note", "value": notes[s % len(notes)], "unit": ""}))
            for s in range(30)]
    conflicts = [(t("st002"), with_("st002", s, {"point": "x_plc_program", "value": "HX", "unit": ""}))
                 for s in range(30)]
    huge = [(t("st003"), with_("st003", s, {"point": "x_big", "value": 1e308, "unit": ""}).replace(
        b'"values":[', b'"values":[{"point":"x_int","value":1' + b"0" * 30 + b',"unit":""},'))
        for s in range(10)]
    ok = telemetry("st001", 100)
    bad: dict[str, list[bytes]] = {
        "schema": [
            telemetry("st003", 10**19, ts=BASE_TS), telemetry("st003", -1), telemetry("st003", 1.5),
            with_("st001", 100, {"point": "x_a\x01", "value": 1.0, "unit": ""}),
            telemetry("st001", 5, gateway="gw\x00st001"),
            telemetry("st001", 101, ts=10**19),
            telemetry("st001", 102, values=[{"point": f"x_{i}", "value": 1.0, "unit": ""}
                                            for i in range(5001)]),
            telemetry("st001", 103, heartbeat_s=1e308),
            telemetry("st001", 104, values="x"),  # type: ignore[arg-type]
        ],
        "bad_json": [
            ok.replace(b'"values":[', b'"values":[{"point":"x_inf","value":1e400,"unit":""},'),
            ok.replace(b'"gw-st001"', b'"gw-\xff\xfe"'),  # invalid UTF-8 inside strings
            ok.replace(b'"aaaaaaaa"', b'"aaaa\xc3\x28aa"'),
            ok.replace(b'"m\xc2\xb3"', b'"m\xed\xa0\x80"', 1),  # a UTF-8-encoded surrogate
            b"[" * 10_000 + b"]" * 10_000,
            b"\xff\xfe\x00",
            b"",
        ],
        "too_large": [orjson.dumps({"schema": 1, "station": "st001", "pad": "x" * (10 * MB)})] * 5,
    }
    unknown = [(t(f"zz{i:04d}"), telemetry(f"zz{i:04d}", 0)) for i in range(1000)]
    messages = good + conflicts + huge + unknown
    messages += [(t("st001" if b'"st001"' in p or not p.startswith(b'{"') else "st003"), p)
                 for ps in bad.values() for p in ps]
    gw.publish(messages, timeout=120)
    weird = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"weird-{uuid.uuid4().hex[:6]}",
                        protocol=mqtt.MQTTv5)
    weird.connect("127.0.0.1", open_broker.port)
    weird.loop_start()
    for topic in ("heatwatch/v1/station/a b/telemetry", "heatwatch/v1/station/中文/telemetry"):
        weird.publish(topic, telemetry("st001", 0), qos=1).wait_for_publish(10)
    weird.disconnect()
    weird.loop_stop()
    total = len(messages) + 2
    wait_for(lambda: col.metric("heatwatch_collector_acked_total") >= total, 60, f"{total} handled")
    high = peak.stop()
    print(f"collector RSS {before / 1024:.0f} MB before, peak {high / 1024:.0f} MB")
    assert col.alive()
    assert (high - before) / 1024 < 80

    # every bad one counted with its reason
    want = {reason: len(ps) for reason, ps in bad.items()}
    want.update(kind_conflict=30, unknown_station=1000, bad_topic=2)
    assert col.rejected() == want
    m = col.metrics()
    assert m["heatwatch_collector_received_total"] == total
    assert m["heatwatch_collector_write_rejected_total"] == 0
    n_rejects = sum(want.values())  # one rejects line each (a kind conflict: one per message here)
    wait_for(lambda: col.count("SELECT count(count) FROM rejects") == n_rejects, 20, "rejects stored")
    assert rows(influx_query(influxd, influx_db, "SELECT sum(count) FROM rejects"))[0]["sum"] == n_rejects
    assert len(rows(influx_query(influxd, influx_db, "SHOW SERIES FROM rejects"))) <= 10

    # every good one stored, exactly
    for st, n in (("st001", 30), ("st002", 30), ("st003", 10)):
        for f in ("primary_flow_total", "primary_heat_total", "secondary_supply_temp", "circ_pump_running"):
            assert col.count(f"SELECT count({f}) FROM station WHERE station='{st}'") == n, (st, f)
    assert col.count("SELECT count(x_plc_program) FROM station") == 30  # st001's; st002's refused
    got = rows(influx_query(influxd, influx_db,
                            "SELECT x_note FROM station WHERE station='st001' ORDER BY time"))
    assert [r["x_note"] for r in got] == [notes[s % len(notes)] for s in range(30)]
    big = rows(influx_query(influxd, influx_db, "SELECT x_big, x_int FROM station WHERE station='st003'"))
    assert {(r["x_big"], r["x_int"]) for r in big} == {(1e308, 1e30)}

    # receipted: what was stored, and what was rejected for good with a well-formed envelope
    assert gw.receipted() == {("st001", "gw-st001", "aaaaaaaa"): set(range(30)) | {100, 101, 102, 103, 104},
                              ("st002", "gw-st002", "aaaaaaaa"): set(range(30)),
                              ("st003", "gw-st003", "aaaaaaaa"): set(range(10))}
    gw.close()

