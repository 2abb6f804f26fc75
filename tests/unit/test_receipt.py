"""The receipt contract (contract/receipt.py): ranges, validation and splitting."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from contract.errors import PayloadError
from contract.receipt import MAX_RANGES, SEQ_MAX, Receipt, parse_receipt, ranges, receipt_topic, receipts


@given(st.lists(st.integers(0, 5000), max_size=300))
def test_ranges_cover_exactly_the_sequence_numbers(seqs: list[int]) -> None:
    rs = ranges(seqs)
    covered = {s for a, b in rs for s in range(a, b + 1)}
    assert covered == set(seqs)
    assert all(a <= b for a, b in rs)
    assert all(rs[i][1] + 1 < rs[i + 1][0] for i in range(len(rs) - 1))  # sorted, disjoint, apart


@given(st.sets(st.integers(0, 10**6), max_size=3000))
def test_receipts_round_trip_and_cover_exactly(seqs: set[int]) -> None:
    got = receipts("st001", "gw1", "0badc0de", seqs)
    assert all(len(r.seqs) <= MAX_RANGES for r in got)
    back = [parse_receipt(r.encode()) for r in got]
    assert back == got
    assert {s for r in back for a, b in r.seqs for s in range(a, b + 1)} == seqs


def test_a_receipt_covers_what_it_lists_and_nothing_else() -> None:
    r = Receipt(station="st001", gateway="gw1", boot="b1", seqs=[(0, 3), (5, 5)])
    assert [s for s in range(8) if r.covers(s)] == [0, 1, 2, 3, 5]
    assert receipt_topic("st001") == "heatwatch/v1/station/st001/receipt"


@pytest.mark.parametrize(("body", "why"), [
    (b'{"schema":1,"station":"st001","gateway":"gw1","boot":"b","seqs":[]}', "seqs"),
    (b'{"schema":1,"station":"st001","gateway":"gw1","boot":"b","seqs":[[3,2]]}', "range [3, 2]"),
    (b'{"schema":1,"station":"st001","gateway":"gw1","boot":"b","seqs":[[0,4],[4,6]]}', "range [4, 6]"),
    (b'{"schema":1,"station":"st001","gateway":"gw1","boot":"b","seqs":[[0,4],[5,6]]}', "range [5, 6]"),
    (b'{"schema":1,"station":"st001","gateway":"gw1","boot":"b","seqs":[[0,' + str(SEQ_MAX + 1).encode()
     + b']]}', "range"),
    (b'{"schema":2,"station":"st001","gateway":"gw1","boot":"b","seqs":[[0,1]]}', "schema version 2"),
    (b'{"schema":1,"station":"st/1","gateway":"gw1","boot":"b","seqs":[[0,1]]}', "station"),
    (b'{"schema":1,"station":"st001","gateway":"gw1","boot":"b","seqs":[[0,1]],"x":1}', "x"),
])
def test_a_bad_receipt_is_refused_with_a_reason(body: bytes, why: str) -> None:
    with pytest.raises(PayloadError) as e:
        parse_receipt(body)
    assert why in str(e.value)
