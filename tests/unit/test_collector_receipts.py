"""The collector's issue #16 parts that need no process: the receipt stage (one receipt per station
and boot per batch, exact ranges, bounded), what the batch stage collects for it, the inbox's byte
bound, the validate stage's kinds and envelopes."""

from __future__ import annotations

import asyncio
import time

import orjson
import pytest

from collector.batch import Batcher
from collector.lines import lines
from collector.metrics import Stats
from collector.receipt import MAX_PENDING, Receipts
from collector.stages import Batch, Delivery, Inbox, Rejected, Trimmed
from collector.validate import MAX_CUSTOM_POINTS, Validate
from contract.config import BatchSettings, IngestSettings
from contract.influx import split_lines
from contract.payload import SEQ_MAX, decode_telemetry, telemetry_envelope
from contract.receipt import MAX_RANGES, parse_receipt
from tests.unit.test_payload import GOOD

TOPIC = "heatwatch/v1/station/st001/telemetry"


# -- the receipt stage -------------------------------------------------------------------------
def test_one_receipt_per_station_and_boot_with_exactly_the_batchs_seqs() -> None:
    sent: list[tuple[str, bytes]] = []
    stats = Stats()
    r = Receipts(lambda items: sent.extend(items) or len(items), lambda: 100, stats)
    b = Batch(receipts={("st001", "gw-st001", "aaaaaaaa"): [5, 3, 4, 9, 4],
                        ("st002", "gw-st002", "aaaaaaaa"): [0],
                        ("st001", "gw-st001", "bbbbbbbb"): [0, 1]})
    r(b)
    got = [(t, parse_receipt(p)) for t, p in sent]
    assert [(t, x.station, x.boot, x.seqs) for t, x in got] == [
        ("heatwatch/v1/station/st001/receipt", "st001", "aaaaaaaa", [(3, 5), (9, 9)]),
        ("heatwatch/v1/station/st002/receipt", "st002", "aaaaaaaa", [(0, 0)]),
        ("heatwatch/v1/station/st001/receipt", "st001", "bbbbbbbb", [(0, 1)])]
    assert (stats.receipts, stats.receipted, stats.receipts_dropped) == (3, 4 + 1 + 2, 0)
    assert r.pending == {}


def test_many_gaps_split_into_receipts_and_what_paho_does_not_take_is_counted() -> None:
    sent: list[bytes] = []

    def publish(items: list[tuple[str, bytes]]) -> int:
        sent.extend(p for _t, p in items)
        return 2  # the third not taken (paho's bound)

    stats = Stats()
    seqs = list(range(0, 2 * (2 * MAX_RANGES + 10), 2))  # every other seq: 2 × 512 + 10 ranges
    Receipts(publish, lambda: 100, stats)(Batch(receipts={("st001", "gw-st001", "aaaaaaaa"): seqs}))
    assert [len(parse_receipt(p).seqs) for p in sent] == [MAX_RANGES, MAX_RANGES, 10]
    assert (stats.receipts, stats.receipts_dropped, stats.receipted) == (2, 1, 2 * MAX_RANGES)


def test_without_room_receipts_wait_and_merge_then_go_out_once() -> None:
    """The broker's Receive Maximum reached: a station's receipts of several batches become one."""
    sent: list[bytes] = []
    room = [0]
    stats = Stats()
    r = Receipts(lambda items: sent.extend(p for _t, p in items) or len(items), lambda: room[0], stats)
    key = ("st001", "gw-st001", "aaaaaaaa")
    for batch in ([1, 2], [3], [7]):
        r(Batch(receipts={key: list(batch), ("st002", "gw-st002", "aaaaaaaa"): [batch[0]]}))
    assert sent == [] and list(r.pending) == [key, ("st002", "gw-st002", "aaaaaaaa")]
    room[0] = 1  # room for one: the oldest station goes first
    r.flush()
    assert [parse_receipt(p).seqs for p in sent] == [[(1, 3), (7, 7)]]
    room[0] = 5
    asyncio.run(_one_retry(r))
    assert [parse_receipt(p).seqs for p in sent][1:] == [[(1, 1), (3, 3), (7, 7)]]
    assert r.pending == {} and stats.receipts == 2 and stats.receipted == 4 + 3


async def _one_retry(r: Receipts) -> None:
    task = asyncio.create_task(r.run())
    await asyncio.sleep(0.5)  # RETRY_S is 0.2
    task.cancel()


def test_pending_stations_are_bounded() -> None:
    stats = Stats()
    r = Receipts(lambda items: len(items), lambda: 0, stats)
    r(Batch(receipts={(f"s{i}", "g", "aaaaaaaa"): [0] for i in range(MAX_PENDING + 5)}))
    assert len(r.pending) == MAX_PENDING and stats.receipts_dropped == 5
    assert ("s0", "g", "aaaaaaaa") not in r.pending  # the oldest went


# -- what the batch stage collects for it ----------------------------------------------------------
def _batcher() -> tuple[Batcher, Validate]:
    v = Validate(IngestSettings(known_stations=["st001"]), Stats())
    b = Batcher(BatchSettings(), Inbox(10), asyncio.Queue(), validate=v, lines=lines, clock=time.time)
    return b, v


def test_the_batch_collects_stored_and_rejected_for_good_never_the_rest() -> None:
    b, _v = _batcher()
    now = int(time.time() * 1000)
    batch = Batch()
    good = {**GOOD, "ts": now}
    msgs = [
        orjson.dumps({**good, "seq": 1}),  # stored
        orjson.dumps({**good, "seq": 2,  # invalid (schema): receipted
                      "values": [{"point": "room_temp", "unit": "K", "value": 1.0}]}),
        orjson.dumps({**good, "seq": 3, "ts": now - 40 * 86_400_000}),  # too old: receipted
        orjson.dumps({**good, "seq": 4, "schema": 2}),  # another schema version: not
        orjson.dumps({**good, "seq": 5, "boot": "nothex!!"}),  # a malformed envelope: not
        b"{",
    ]
    for m in msgs:
        b.handle(TOPIC, m, now, batch, len(m))
    b.handle("heatwatch/v1/station/st009/telemetry", orjson.dumps({**good, "station": "st009"}), now, batch)
    assert batch.receipts == {("st001", "gw-st001", GOOD["boot"]): [1, 2, 3]}
    assert len(batch.lines) == len(split_lines("\n".join(batch.lines)))
    assert batch.bytes == sum(map(len, batch.lines))


# -- the inbox's byte bound ------------------------------------------------------------------------
def test_the_inbox_is_full_by_bytes_and_one_delivery_always_fits() -> None:
    box = Inbox(100, max_bytes=1000)
    box.put(Delivery(1, "t", b"x" * 5000, 5000))  # bigger than the bound: admitted alone
    assert box.full and box.bytes == 5000
    assert box.take(1)[0].mid == 1 and not box.full and box.bytes == 0
    for i in range(3):
        box.put(Delivery(i, "t", b"x" * 400, 400))
    assert box.full and len(box.deliveries) == 3
    box.take(1)
    assert not box.full and box.bytes == 800


def test_a_full_inbox_wakes_the_batch_stage_whatever_it_waits_for() -> None:
    async def main() -> float:
        box = Inbox(100, max_bytes=1000)
        t0 = time.monotonic()
        waiter = asyncio.create_task(box.wait(5.0, 50))  # 50 deliveries or 5 s
        await asyncio.sleep(0)
        box.put(Delivery(1, "t", b"x" * 2000, 2000))
        await waiter
        return time.monotonic() - t0

    assert asyncio.run(main()) < 1.0


# -- kinds -------------------------------------------------------------------------------------------
def _msg(seq: int, *values: dict[str, object]) -> bytes:
    return orjson.dumps({**GOOD, "ts": int(time.time() * 1000), "seq": seq, "values": list(values)})


def test_a_custom_point_keeps_its_first_kind_and_only_the_other_reading_is_refused() -> None:
    v = Validate(IngestSettings(), Stats())
    now = int(time.time() * 1000)
    temp = {"point": "secondary_supply_temp", "value": 50.0, "unit": "°C"}
    first = v(TOPIC, _msg(1, temp, {"point": "x_prog", "value": 7.0, "unit": ""}), now)
    assert type(first).__name__ == "Frame"
    second = v(TOPIC, _msg(2, temp, {"point": "x_prog", "value": "HX", "unit": ""},
                           {"point": "x_prog2", "value": None, "unit": "", "quality": "bad"}), now)
    assert isinstance(second, Trimmed)
    assert [s.point for s in second.frame.samples] == ["secondary_supply_temp", "x_prog2"]
    assert second.refused.reason == "kind_conflict" and second.refused.count == 1
    assert "x_prog: text, stored as number" in second.refused.detail
    assert v.stats.rejected == {"kind_conflict": 1} and v.stats.accepted == 2
    out = lines(second)
    assert out[-1].startswith("rejects,reason=kind_conflict,station=st001 count=1i")


def test_kinds_from_influxdb_win_and_the_custom_names_are_bounded() -> None:
    v = Validate(IngestSettings(), Stats())
    assert v.seed_kinds({"x_prog": "string", "x_n": "integer", "x_prog_quality": "string",
                         "secondary_supply_temp": "float"}) == 2
    now = int(time.time() * 1000)
    got = v(TOPIC, _msg(1, {"point": "x_prog", "value": 1.0, "unit": ""},
                        {"point": "x_n", "value": 1.0, "unit": ""}), now)
    assert isinstance(got, Trimmed) and got.refused.count == 2 and "stored as integer" in got.refused.detail
    for i in range(MAX_CUSTOM_POINTS):
        v._learn(f"x_{i}", float)
    got = v(TOPIC, _msg(2, {"point": "x_new", "value": 1.0, "unit": ""},
                        {"point": "x_1", "value": 1.0, "unit": ""}), now)
    assert isinstance(got, Trimmed) and got.refused.reason == "too_many_custom_points"
    assert [s.point for s in got.frame.samples] == ["x_1"]


def test_the_fast_path_per_reading_check_keeps_the_message_whole() -> None:
    v = Validate(IngestSettings(), Stats())
    raw = orjson.dumps({**GOOD, "ts": int(time.time() * 1000)})
    first = v(TOPIC, raw, int(time.time() * 1000))
    again = v(TOPIC, raw, int(time.time() * 1000))
    assert type(first).__name__ == type(again).__name__ == "Frame"


# -- the wire's bounds -------------------------------------------------------------------------------
@pytest.mark.parametrize(("seq", "ok"), [(0, True), (SEQ_MAX, True), (SEQ_MAX + 1, False), (-1, False),
                                         (10**19, False)])
def test_seq_is_bounded_to_int64(seq: int, ok: bool) -> None:
    raw = orjson.dumps({**GOOD, "seq": 0}).replace(b'"seq":0', f'"seq":{seq}'.encode())
    try:
        decode_telemetry(raw)
        accepted = True
    except Exception:
        accepted = False
    assert accepted is ok
    assert (telemetry_envelope(raw) is not None) is ok


def test_invalid_utf8_is_bad_json_not_an_exception() -> None:
    v = Validate(IngestSettings(), Stats())
    raw = orjson.dumps(GOOD).replace(b'"gw-st001"', b'"gw-\xff"')
    got = v(TOPIC, raw, int(time.time() * 1000))
    assert isinstance(got, Rejected) and got.reason == "bad_json"


def test_envelope_needs_every_field_well_formed() -> None:
    assert telemetry_envelope(orjson.dumps(GOOD)) == ("st001", "gw-st001", GOOD["boot"], GOOD["seq"])
    for bad in ({"station": "a b"}, {"gateway": ""}, {"boot": "XYZ"}, {"seq": 1.5}, {"seq": "1"}):
        assert telemetry_envelope(orjson.dumps({**GOOD, **bad})) is None
    assert telemetry_envelope(b"\xff") is None and telemetry_envelope(b"[]") is None


def test_split_lines_cuts_only_outside_quotes() -> None:
    body = 'm,s=a t="x\ny\\"z\n" 1\nm,s=a f=1.0 2\n\nm,s=a t="\\\\" 3'
    assert split_lines(body) == ['m,s=a t="x\ny\\"z\n" 1', "m,s=a f=1.0 2", 'm,s=a t="\\\\" 3']
