"""Issue #16, the collector's half, on real mosquitto, influxd and collector processes: receipts
after the durable write, no message harming another (type conflicts, forged sequence numbers,
made-up station ids), text stored exactly, and lines InfluxDB cannot parse counted as rejects."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest

from collector.influx import InfluxWriter
from contract.config import InfluxSettings
from heatwatch.devstack import Influxd, Mosquitto
from tests.collector_helpers import BASE_TS, TELEMETRY, CollectorProc, TestGateway, canonical, telemetry
from tests.conftest import Processes, influx_query, rows, wait_for

ST1, ST2 = "st001", "st002"


@pytest.fixture
def gateway(mosquitto: Mosquitto) -> TestGateway:
    gw = TestGateway(mosquitto.port)
    yield gw  # type: ignore[misc]
    gw.close()


def _collector(procs: Processes, tmp_path: Path, mosquitto: Mosquitto, db: Influxd, database: str,
               **extra: object) -> CollectorProc:
    return CollectorProc(procs, tmp_path, mqtt_port=mosquitto.port, db=db, database=database, **extra)


# -- 1. receipts ---------------------------------------------------------------------------------
def test_receipts_list_exactly_the_stored_seqs_one_per_station_and_batch(
        tmp_path: Path, procs: Processes, mosquitto: Mosquitto, influxd: Influxd, influx_db: str,
        gateway: TestGateway) -> None:
    col = _collector(procs, tmp_path, mosquitto, influxd, influx_db,
                     ingest={"known_stations": [ST1, ST2]})
    now = int(time.time() * 1000)
    bad_unit = [{"point": "secondary_supply_temp", "value": 50.0, "unit": "K"}]
    msgs = [(TELEMETRY.format(ST1), telemetry(ST1, s)) for s in range(60)]
    msgs += [(TELEMETRY.format(ST2), telemetry(ST2, s)) for s in range(40)]
    msgs += [
        (TELEMETRY.format(ST1), telemetry(ST1, 60, values=bad_unit)),  # invalid for good: receipted
        (TELEMETRY.format(ST1), telemetry(ST1, 61, ts=now + 3_600_000)),  # ahead: re-stamped, stored
        (TELEMETRY.format(ST1), telemetry(ST1, 62, ts=now - 40 * 86_400_000)),  # too old: receipted
        (TELEMETRY.format("st999"), telemetry("st999", 0)),  # outside the inventory: not
        (TELEMETRY.format(ST1), b"{not json"),  # nothing to receipt it by
    ]
    msgs += [(TELEMETRY.format(ST1), telemetry(ST1, s, boot="bbbbbbbb", ts=BASE_TS + (100 + s) * 1000))
             for s in range(5)]  # a restart
    gateway.publish(msgs)
    wait_for(lambda: col.metric("heatwatch_collector_receipted_total") >= 108, 30, "108 receipted")
    time.sleep(1.5)  # a later receipt would be a defect: give it time to show
    assert gateway.bad_receipts == []
    assert gateway.receipted() == {(ST1, "gw-st001", "aaaaaaaa"): set(range(60)) | {60, 61, 62},
                                   (ST2, "gw-st002", "aaaaaaaa"): set(range(40)),
                                   (ST1, "gw-st001", "bbbbbbbb"): set(range(5))}
    # batched: one receipt per station and boot per batch, not one per message
    assert len(gateway.receipts) <= 3 * 10, len(gateway.receipts)
    m = col.metrics()
    assert m["heatwatch_collector_receipts_total"] == len(gateway.receipts)
    assert m["heatwatch_collector_receipted_total"] == 108
    assert m["heatwatch_collector_receipts_dropped_total"] == 0
    assert col.count(f"SELECT count(primary_heat_total) FROM station WHERE station='{ST1}'") == 60 + 1 + 5
    assert col.rejected() == {"schema": 1, "ts_too_old": 1, "unknown_station": 1, "bad_json": 1}


def test_shared_subscription_members_each_receipt_what_they_stored(
        tmp_path: Path, procs: Processes, mosquitto: Mosquitto, influxd: Influxd, influx_db: str,
        gateway: TestGateway) -> None:
    cols = [_collector(procs, tmp_path, mosquitto, influxd, influx_db, name=f"member{i}",
                       subscription_group="collectors") for i in (1, 2)]
    n = 300
    gateway.publish([(TELEMETRY.format(f"st{s % 3:03d}"), telemetry(f"st{s % 3:03d}", s)) for s in range(n)])
    wait_for(lambda: sum(c.metric("heatwatch_collector_receipted_total") for c in cols) >= n, 30,
             "all receipted")
    got = [c.metric("heatwatch_collector_receipted_total") for c in cols]
    assert sum(got) == n and all(g > 0 for g in got), got  # each its own share, each message once
    receipted = gateway.receipted()
    assert {k: v for k, v in receipted.items()} == {
        (f"st{i:03d}", f"gw-st{i:03d}", "aaaaaaaa"): set(range(i, n, 3)) for i in range(3)}


# -- 2. a type conflict never takes other fields down ----------------------------------------------
def test_a_custom_points_kind_conflict_never_loses_a_canonical_point(
        tmp_path: Path, procs: Processes, mosquitto: Mosquitto, influxd: Influxd, influx_db: str,
        gateway: TestGateway) -> None:
    """One station sends x_plc_program as a number, another as text: every canonical point of
    every station is stored; the text readings are refused (kind_conflict), counted, receipted.
    After a restart the collector knows the kind from InfluxDB's field types. And a conflict the
    collector cannot know of (a field another writer made) costs the custom line only."""
    col = _collector(procs, tmp_path, mosquitto, influxd, influx_db)
    n = 20

    def msgs(station: str, program: object, seqs: range) -> list[tuple[str, bytes]]:
        return [(TELEMETRY.format(station), telemetry(station, s, values=[
            *canonical(s), {"point": "x_plc_program", "value": program, "unit": ""}])) for s in seqs]

    gateway.publish(msgs(ST1, 7.0, range(n)))
    wait_for(lambda: col.count("SELECT count(x_plc_program) FROM station") == n, 20, "st001 stored")
    gateway.publish(msgs(ST2, "HX-V2", range(n)))
    wait_for(lambda: col.metric("heatwatch_collector_acked_total") >= 2 * n, 20, "st002 handled")
    fields = ("primary_flow_total", "primary_heat_total", "secondary_supply_temp", "circ_pump_running")
    for st in (ST1, ST2):
        for field in fields:
            assert col.count(f"SELECT count({field}) FROM station WHERE station='{st}'") == n, (st, field)
    assert gateway.receipted()[(ST2, "gw-st002", "aaaaaaaa")] == set(range(n))
    assert col.count(f"SELECT count(x_plc_program) FROM station WHERE station='{ST2}'") == 0
    assert col.rejected() == {"kind_conflict": n}  # readings refused; their messages stored
    assert col.metric("heatwatch_collector_write_rejected_total") == 0
    refused = rows(influx_query(influxd, influx_db, "SELECT count, detail FROM rejects GROUP BY *"))
    assert len(refused) == n and {(r["station"], r["reason"], r["count"]) for r in refused} == {
        (ST2, "kind_conflict", 1)}
    assert "x_plc_program: text, stored as number" in refused[0]["detail"]

    # restart: the kind comes from InfluxDB's own field types before the first message
    procs.procs["collector"].terminate()
    procs.procs["collector"].wait(15)
    col.start()
    assert '"custom point kinds read from InfluxDB"' in procs.log("collector")
    gateway.publish(msgs(ST2, "HX-V2", range(n, 2 * n)))
    wait_for(lambda: col.metric("heatwatch_collector_receipted_total") >= n, 20, "after restart")
    assert col.rejected() == {"kind_conflict": n}
    assert col.count(f"SELECT count(primary_heat_total) FROM station WHERE station='{ST2}'") == 2 * n

    # a field someone else wrote as text, which the collector has not seen: InfluxDB refuses the
    # custom line (counted as a type_conflict reject, never as written), the canonical one is stored
    r = httpx.post(f"{influxd.url}/write", params={"db": influx_db, "precision": "ms"},
                   content=f"station,station=other x_meter_id=\"A-17\" {BASE_TS}".encode())
    assert r.status_code == 204
    gateway.publish([(TELEMETRY.format(ST1), telemetry(ST1, s, values=[
        *canonical(s), {"point": "x_meter_id", "value": 17.0, "unit": ""}])) for s in range(100, 110)])
    wait_for(lambda: col.metric("heatwatch_collector_write_rejected_total") >= 10, 20,
             "refused lines counted")
    m = col.metrics()
    assert m['heatwatch_collector_influx_rejects_total{reason="type_conflict"}'] == 10
    assert m["heatwatch_collector_write_rejected_total"] == 10
    assert col.count(f"SELECT count(primary_heat_total) FROM station WHERE station='{ST1}'") == n + 10


# -- 3. every number the wire allows is bounded ----------------------------------------------------
def test_forged_sequence_numbers_never_make_a_line_unwritable(
        tmp_path: Path, procs: Processes, mosquitto: Mosquitto, influxd: Influxd, influx_db: str,
        gateway: TestGateway) -> None:
    col = _collector(procs, tmp_path, mosquitto, influxd, influx_db)
    big = 2**63 - 1
    forged: list[object] = [0, 10**19, -1, 1.5, 1e19, "10" * 15, big, 0]  # the last: a new boot
    msgs = [(TELEMETRY.format(ST1), telemetry(ST1, s, boot="bbbbbbbb" if i == 7 else "aaaaaaaa",
                                                ts=BASE_TS + i * 1000)) for i, s in enumerate(forged)]
    # 10^30 as a JSON number (beyond what orjson writes)
    msgs[5] = (msgs[5][0], msgs[5][1].replace(b'"seq":"' + b"10" * 15 + b'"', b'"seq":1' + b"0" * 30))
    for st in ("st002", "st003"):  # two more stations jumping to the bound: their sum passes int64
        msgs += [(TELEMETRY.format(st), telemetry(st, s, ts=BASE_TS + i * 1000))
                 for i, s in enumerate((0, big))]
    gateway.publish(msgs)
    wait_for(lambda: col.metric("heatwatch_collector_received_total") >= len(msgs), 20, "all received")
    assert col.rejected() == {"schema": 5}  # 10^19, -1, 1.5, 1e19, 10^30
    ingest = "SELECT last(seq_gaps) FROM ingest GROUP BY station"
    wait_for(lambda: len(rows(influx_query(influxd, influx_db, ingest))) == 3, 20, "ingest lines")
    time.sleep(2.5)  # two more stats rounds
    gaps = {r["station"]: r["last"] for r in rows(influx_query(influxd, influx_db, ingest))}
    assert gaps == {ST1: big - 1, "st002": big - 1, "st003": big - 1}
    total = rows(influx_query(influxd, influx_db, "SELECT last(seq_gaps), last(received) FROM collector"))
    assert total[0]["last"] == big  # clamped, still written
    assert col.metric("heatwatch_collector_write_rejected_total") == 0
    assert gateway.receipted()[(ST1, "gw-st001", "aaaaaaaa")] == {0, big}
    assert col.alive()


# -- 4. lines InfluxDB cannot parse are rejects, the rest is stored ---------------------------------
def test_unparsable_lines_are_counted_as_rejects_and_the_good_ones_stored(influxd: Influxd,
                                                                          influx_db: str) -> None:
    """InfluxDB 1.6 answers 400 ``partial write: unable to parse … dropped=0`` and stores the other
    lines; with a type conflict in the same batch it reports only the conflict."""

    async def main() -> list[tuple[int, int, dict[str, int]]]:
        w = InfluxWriter(InfluxSettings(url=influxd.url, database=influx_db))
        await w.ensure_database()
        good = [f"m,s=a f={i}.0 {BASE_TS + i}" for i in range(10)]
        bad = ["m,s=a f=1x 1", "m,s=a g=99999999999999999999i 2"]  # not a number; past int64
        out = []
        for lines in (good[:5] + bad + good[5:],  # parse failures only
                      [f'm,s=b f="text" {BASE_TS + 100}'] + [f"m,s=b h={i}.0 {BASE_TS + i}" for i in range(6)]
                      + bad,
                      bad):
            o = await w.write(lines)
            out.append((o.written, o.rejected, dict(getattr(o, "rejects", {}))))
        await w.close()
        return out

    out = asyncio.run(main())
    assert [o[:2] for o in out] == [(10, 2), (6, 3), (0, 2)]  # written, refused
    assert [o[2] for o in out] == [{"unparsable": 2},
                                   {"type_conflict": 1, "unparsable": 2},  # only the conflict reported
                                   {"unparsable": 2}]
    got = rows(influx_query(influxd, influx_db, "SELECT count(f) FROM m WHERE s='a'"))
    assert got[0]["count"] == 10
    assert rows(influx_query(influxd, influx_db, "SELECT count(h) FROM m WHERE s='b'"))[0]["count"] == 6


# -- 6. cardinality ----------------------------------------------------------------------------------
@pytest.mark.slow
def test_two_thousand_unknown_stations_make_one_rejects_series(
        tmp_path: Path, procs: Processes, mosquitto: Mosquitto, influxd: Influxd, influx_db: str,
        gateway: TestGateway) -> None:
    col = _collector(procs, tmp_path, mosquitto, influxd, influx_db, ingest={"known_stations": [ST1, ST2]})
    unknown = 2000
    msgs = [(TELEMETRY.format(f"x{i:05d}"), telemetry(f"x{i:05d}", 0)) for i in range(unknown)]
    msgs += [(f"heatwatch/v1/station/x{i:05d}/status", b"{}") for i in range(200)]
    msgs += [(TELEMETRY.format(st), telemetry(st, s)) for s in range(20) for st in (ST1, ST2)]
    gateway.publish(msgs)
    wait_for(lambda: col.metric("heatwatch_collector_received_total") >= len(msgs), 60, "all received")
    wait_for(lambda: col.count("SELECT count(count) FROM rejects") == unknown + 200, 30, "rejects stored")
    series = rows(influx_query(influxd, influx_db, "SHOW SERIES FROM rejects"))
    assert [s["key"] for s in series] == ["rejects,reason=unknown_station"]
    for q in ("SHOW SERIES FROM station_status", "SHOW SERIES FROM ingest", "SHOW SERIES FROM station"):
        assert len(rows(influx_query(influxd, influx_db, q))) <= 2, q
    for st in (ST1, ST2):
        assert col.count(f"SELECT count(primary_heat_total) FROM station WHERE station='{st}'") == 20
    assert col.rejected() == {"unknown_station": unknown + 200}
    logged = procs.log("collector").count('"message rejected"')
    assert 0 < logged <= 1000 + 1  # once per id, bounded
    assert gateway.receipted().keys() == {(ST1, "gw-st001", "aaaaaaaa"), (ST2, "gw-st002", "aaaaaaaa")}


# -- 7. text stored exactly --------------------------------------------------------------------------
def test_text_values_round_trip_exactly(tmp_path: Path, procs: Processes, mosquitto: Mosquitto,
                                        influxd: Influxd, influx_db: str, gateway: TestGateway) -> None:
    col = _collector(procs, tmp_path, mosquitto, influxd, influx_db)
    texts = ["line one\nline two", "back\\slash", 'say "hi"', "tab\tcr\rnul\x00bell\x07", "trailing\\",
             "\\n literally", "多行\n文本", "a,b=c d"]
    gateway.publish([(TELEMETRY.format(ST1), telemetry(ST1, i, values=[
        {"point": "x_note", "value": t, "unit": ""}, *canonical(i)])) for i, t in enumerate(texts)])
    wait_for(lambda: col.count("SELECT count(x_note) FROM station") == len(texts), 20, "texts stored")
    got = rows(influx_query(influxd, influx_db, "SELECT x_note FROM station ORDER BY time"))
    assert [r["x_note"] for r in got] == texts
    assert col.metric("heatwatch_collector_write_rejected_total") == 0
