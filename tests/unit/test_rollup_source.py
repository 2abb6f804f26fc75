"""Which data a time range reads (contract.influx.pick_source): raw while the buckets are finer
than five minutes and the raw data is still kept, else the coarsest rollup that fits."""

from __future__ import annotations

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from contract.influx import (
    ROLLUP_1H,
    ROLLUP_5M,
    backfill_select,
    pick_source,
    rollup_cqs,
    rooms_cq_range,
)

NOW = 1_800_000_000_000
DAY = 86_400_000


@given(start_ago=st.integers(1, 800 * DAY), length=st.integers(1000, 800 * DAY),
       points=st.integers(10, 5000), raw_days=st.floats(1, 365))
@example(start_ago=1, length=2_675_348_890, points=810, raw_days=1.0)  # 3,303 s rounded to 1 h: 1-h rollup
def test_every_choice_fits(start_ago: int, length: int, points: int, raw_days: float) -> None:
    start = NOW - start_ago
    end = start + length
    src = pick_source(start, end, NOW, points, raw_days=raw_days)
    assert -(-length // 1000) / src.bucket_s <= points  # no more buckets than asked
    if src.rollup is None:
        assert src.bucket_s < ROLLUP_5M.bucket_s and start >= NOW - raw_days * DAY  # raw only while kept
    else:
        assert src.bucket_s % src.rollup.bucket_s == 0  # whole rollup rows per bucket
    if src.rollup is ROLLUP_5M:
        assert src.bucket_s >= ROLLUP_5M.bucket_s or start < NOW - raw_days * DAY
    if src.bucket_s >= 3600 and src.rollup is not None:
        assert src.rollup is ROLLUP_1H  # the coarsest that fits


def test_names_and_measurements() -> None:
    raw = pick_source(NOW - DAY, NOW, NOW, 500, raw_days=90)
    assert raw.expr("mean", "supply_temp") == 'mean("supply_temp")'
    assert raw.measurement("station") == '"station"'
    r = pick_source(NOW - 150 * DAY, NOW, NOW, 500, raw_days=90)
    assert r.expr("max", "supply_temp") == 'max("max_supply_temp")'
    assert r.expr("count", "supply_temp") == 'sum("count_supply_temp")'  # samples: the rows' counts summed
    assert raw.expr("count", "supply_temp") == 'count("supply_temp")'
    assert r.measurement("household") == '"rollup_1h"."household"' and r.retention_policy == "rollup_1h"
    # a short range in the past beyond the raw data reads the 5-minute rollup, beyond that the hourly
    old = pick_source(NOW - 100 * DAY, NOW - 100 * DAY + 3_600_000, NOW, 500, raw_days=90)
    assert old.rollup is ROLLUP_5M and old.bucket_s == 300
    older = pick_source(NOW - 800 * DAY, NOW - 800 * DAY + 3_600_000, NOW, 500, raw_days=90,
                        rollup_5m_days=730)
    assert older.rollup is ROLLUP_1H
    assert pick_source(NOW - 150 * DAY, NOW, NOW, 500, raw_days=None).rollup is None  # no rollups set up
    with pytest.raises(ValueError, match="aggregate"):
        r.expr("median", "x")
    with pytest.raises(ValueError, match="start < end"):
        pick_source(NOW, NOW, NOW, 10, raw_days=90)


def test_the_rollups_continuous_queries_and_their_names() -> None:
    """The 1-hour rollup keeps the plausible room means in a second CQ whose name carries its range
    (the report compares it with its rule file's); a changed range changes every name of the set,
    so setup replaces the set whole. A backfill adds its time range to a body's own WHERE."""
    five = rollup_cqs("hw", "autogen", ROLLUP_5M)
    assert len(five) == 1 and "count(*)" in five[0][1] and "fill(none)" in five[0][1]
    hour = rollup_cqs("hw", "autogen", ROLLUP_1H, (5.0, 35.0))
    (main, _), (rooms, body) = hour
    assert rooms == f"{main}_rooms_5.0_35.0" and rooms_cq_range(rooms) == ("1h", (5.0, 35.0))
    assert rooms_cq_range(main) is None and rooms_cq_range("heatwatch_rollup_1h_zz_rooms_a_b") is None
    assert 'AS "plausible_mean_room_temp"' in body and '"room_temp" >= 5.0 AND "room_temp" <= 35.0' in body
    other = rollup_cqs("hw", "autogen", ROLLUP_1H, (-2.5, 35.0))
    assert other[0][0] != main and rooms_cq_range(other[1][0]) == ("1h", (-2.5, 35.0))
    select = body[body.index("BEGIN ") + 6:body.rindex(" END")]
    assert backfill_select(select, 0, 3_600_000).endswith(
        '"room_temp" <= 35.0 AND time >= 0ms AND time < 3600000ms GROUP BY time(3600s), * fill(none)')
