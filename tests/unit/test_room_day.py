"""A room sensor's last 24 h kept by the alerter (``alerting.latest.RoomDay``) against the means
computed from the readings it counted (each newer than the newest counted: a late one is the
station's sequence gap, tests/integration/test_latest.py), bucket by bucket as InfluxDB's
``GROUP BY time(30m)`` does (the same file compares it with a real influxd)."""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from alerting.latest import BUCKET_MS, DAY_MS, RoomDay, _json, day_means

T0 = 1_796_832_000_000 + 7 * 60_000  # not on a bucket edge


def counted(readings: list[tuple[int, float]]) -> list[tuple[int, float]]:
    """What the ring counts: each reading newer than every one counted before it."""
    out: list[tuple[int, float]] = []
    for ts, v in readings:
        if not out or ts > out[-1][0]:
            out.append((ts, v))
    return out


def expected(readings: list[tuple[int, float]], now: int) -> list[tuple[int, float]]:
    """The 30-minute means of the buckets from the one holding now - 24 h to now's, whole."""
    buckets: dict[int, list[float]] = {}
    for ts, v in counted(readings):
        buckets.setdefault(ts // BUCKET_MS, []).append(v)
    lo, hi = (now - DAY_MS) // BUCKET_MS, now // BUCKET_MS
    out = []
    for b in sorted(buckets):
        if lo <= b <= hi:
            total = 0.0
            for x in buckets[b]:
                total += x
            out.append((b * BUCKET_MS, round(total / len(buckets[b]), 2)))
    return out


def ring(readings: list[tuple[int, float]], *, store_at: int | None = None) -> dict[str, Any]:
    """The ring after ``readings``, stored as JSON and read back after the first ``store_at``
    of them (an alerter restarting, or another member taking the partition over)."""
    day: RoomDay | None = None
    for i, (ts, v) in enumerate(readings):
        if i == store_at and day is not None:
            day = RoomDay.from_json(orjson.loads(orjson.dumps(day, default=_json)))
            assert day is not None
        if day is None:
            day = RoomDay.first(ts, v)
        else:
            day.add(ts, v)
    assert day is not None
    stored: dict[str, Any] = orjson.loads(orjson.dumps({"day": day}, default=_json))["day"]
    return stored


temps = st.floats(-40, 95, allow_nan=False).map(lambda x: round(x, 2))
# gaps between readings: a second, a sensor's 20-60 min, an outage of hours or days
steps = st.one_of(st.integers(1_000, 120_000), st.integers(1_200_000, 3_600_000),
                  st.integers(3_600_000, 3 * DAY_MS))
# a reading sent again (redelivery: same ts) or late (a message resent after newer ones)
late = st.integers(-2 * 3_600_000, 0)


@st.composite
def readings(draw: st.DrawFn) -> list[tuple[int, float]]:
    ts, out = T0, []
    for _ in range(draw(st.integers(1, 150))):
        if out and draw(st.integers(0, 9)) == 0:
            ts_late = out[-1][0] + draw(late)
            out.append((ts_late, draw(temps)))
            continue
        ts += draw(steps)
        out.append((ts, draw(temps)))
    return out


@settings(max_examples=300, deadline=None)
@given(readings(), st.integers(0, 2 * DAY_MS), st.data())
def test_the_ring_holds_the_means_of_what_it_counted(rs: list[tuple[int, float]], after: int,
                                                      data: st.DataObject) -> None:
    now = max(ts for ts, _ in rs) + after
    stored = ring(rs, store_at=data.draw(st.integers(0, len(rs))))
    assert stored == ring(rs)  # written and read back mid-way: the same as kept in memory
    means = day_means(stored, now, written_at=now)
    if rs[0][0] > now - DAY_MS:
        assert means is None  # it does not reach back a day: the lookup asks InfluxDB
    else:
        assert means == expected(rs, now)
    assert len(stored["means"]) <= DAY_MS // BUCKET_MS + 1


def test_a_sensor_every_20_minutes_for_two_days() -> None:
    rs = [(T0 + i * 1_200_000, 18.0 + (i % 5) / 10) for i in range(144)]
    now = rs[-1][0] + 60_000
    means = day_means(ring(rs), now, written_at=now)
    assert means is not None and len(means) == 49 and means == expected(rs, now)
    assert means[-1][0] == now - now % BUCKET_MS


def test_a_young_ring_does_not_answer_and_a_silent_one_answers_nothing() -> None:
    rs = [(T0 + i * 1_200_000, 19.0) for i in range(10)]  # 3 h of readings
    assert day_means(ring(rs), rs[-1][0], written_at=rs[-1][0]) is None
    # a day after its first reading it answers, the buckets without a reading left out
    assert day_means(ring(rs), T0 + DAY_MS, written_at=T0 + DAY_MS) == expected(rs, T0 + DAY_MS) != []
    # silent for two days (its station's row still written: other points): an empty 24 h,
    # complete (InfluxDB has nothing newer either)
    later = rs[-1][0] + 2 * DAY_MS
    assert day_means(ring(rs), later, written_at=later - 60_000) == []
    assert day_means(None, T0, written_at=T0) is None


def test_a_ring_whose_station_row_is_not_current_or_had_a_gap_does_not_answer() -> None:
    rs = [(T0 + i * 1_200_000, 19.0) for i in range(80)]
    now = rs[-1][0] + 60_000
    day = ring(rs)
    assert day_means(day, now, written_at=now - 590_000) is not None
    assert day_means(day, now, written_at=now - 610_000) is None  # the alerter down, or the station silent
    assert day_means(day, now) is None  # no station row
    assert day_means(day, now, gap_at=now - DAY_MS + 1, written_at=now) is None  # a gap less than a day ago
    assert day_means(day, now, gap_at=now - DAY_MS, written_at=now) is not None


def test_a_malformed_ring_does_not_answer() -> None:
    good = ring([(T0 + i * 1_200_000, 19.0) for i in range(80)])
    now = T0 + 2 * DAY_MS
    assert day_means(good, now, written_at=now) is not None
    for bad in ({**good, "since": None}, {k: v for k, v in good.items() if k != "means"},
                {**good, "bucket": "x"}, {**good, "means": 5}):
        assert day_means(bad, now, written_at=now) is None, bad


def test_redelivered_and_late_readings_are_not_counted_twice() -> None:
    a, b = T0, T0 + 60_000
    rs = [(a, 18.0), (b, 20.0), (b, 20.0), (a, 18.0), (b - 1, 30.0)]
    assert ring(rs)["means"] == [19.0] and ring(rs)["n"] == 2


def test_buckets_without_a_reading_are_stored_as_null() -> None:
    stored = ring([(T0, 18.0), (T0 + 3 * BUCKET_MS, 19.0)])
    assert stored["means"] == [18.0, None, None, 19.0]
    assert RoomDay.from_json(stored) is not None


def test_a_row_that_is_not_a_ring_starts_again() -> None:
    good = ring([(T0, 18.0), (T0 + BUCKET_MS, 19.0)])
    assert RoomDay.from_json(good) is not None
    for bad in ({}, {**good, "means": "x"}, {**good, "n": 0}, {**good, "since": None}, [], None,
                {**good, "means": []}):
        assert RoomDay.from_json(bad) is None, bad
