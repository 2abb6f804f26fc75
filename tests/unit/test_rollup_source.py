"""Which data a time range reads (contract.influx.pick_source): raw while the buckets are finer
than five minutes and the raw data is still kept, else the coarsest rollup that fits."""

from __future__ import annotations

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from contract.influx import ROLLUP_1H, ROLLUP_5M, pick_source

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
