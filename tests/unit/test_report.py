"""Report by exception (gateway/report.py): what the collector holds never strays from the truth
by a deadband or more, and no point is silent for a heartbeat or longer."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from contract.config import PointMap
from contract.payload import Quality, Reading
from gateway.report import ExceptionFilter

POINTS = [
    PointMap(point="secondary_supply_temp", table="holding_register", address=0, type="int16",
             scale=0.1, deadband=0.5),
    PointMap(point="secondary_flow", table="holding_register", address=1, type="float32"),  # any change
    PointMap(point="circ_pump_running", table="coil", address=0, type="bool"),
]
INTERVAL_MS, SILENCE_S = 10_000, 60.0


def _reading(p: PointMap, value: float | bool | None, quality: Quality) -> Reading:
    return Reading(point=p.point, value=None if quality is Quality.BAD else value, unit=p.unit or "",
                   quality=quality)


cycle = st.tuples(st.floats(40, 80, allow_nan=False).map(lambda v: round(v, 1)),
                  st.floats(0, 300, allow_nan=False), st.booleans(),
                  st.sampled_from([Quality.GOOD] * 8 + [Quality.BAD, Quality.UNCERTAIN]),
                  st.booleans())  # hold: repeat the previous cycle's values


@settings(max_examples=300, deadline=None)
@given(st.lists(cycle, min_size=1, max_size=60))
def test_the_sent_view_stays_within_the_deadband_and_the_heartbeat(cycles: list[tuple]) -> None:
    f = ExceptionFilter(POINTS, SILENCE_S)
    held: dict[str, Reading] = {}  # what the collector has: the last reading sent of each point
    sent_at: dict[str, int] = {}
    prev: tuple | None = None
    for i, c in enumerate(cycles):
        if c[4] and prev is not None:
            c = prev
        prev = c
        ts = 1_795_000_000_000 + i * INTERVAL_MS
        temp, flow, pump, quality, _ = c
        readings = [_reading(POINTS[0], temp, quality), _reading(POINTS[1], flow, Quality.GOOD),
                    _reading(POINTS[2], pump, Quality.GOOD)]
        out = f.select(readings, ts)
        f.sent_at(out, ts)
        for r in out:
            held[r.point], sent_at[r.point] = r, ts
        for r in readings:
            have = held[r.point]  # every point was sent on its first cycle
            assert ts - sent_at[r.point] < SILENCE_S * 1000
            assert have.quality is r.quality
            if r.point == "secondary_supply_temp" and r.value is not None:
                assert abs(have.value - r.value) < 0.5  # type: ignore[operator]
            else:
                assert have.value == r.value
    if len(cycles) > 1 and all(c[4] for c in cycles[1:6]):
        assert f.suppressed > 0  # unchanged cycles really send less


def test_unchanged_values_wait_for_the_heartbeat() -> None:
    f = ExceptionFilter(POINTS, SILENCE_S)
    readings = [_reading(POINTS[0], 55.0, Quality.GOOD), _reading(POINTS[1], 12.0, Quality.GOOD),
                _reading(POINTS[2], True, Quality.GOOD)]
    sent = []
    for i in range(13):  # 120 s at 10 s
        ts = i * INTERVAL_MS
        out = f.select(readings, ts)
        f.sent_at(out, ts)
        sent.append(len(out))
    assert sent == [3, 0, 0, 0, 0, 0, 3, 0, 0, 0, 0, 0, 3]
    moved = [_reading(POINTS[0], 55.4, Quality.GOOD), _reading(POINTS[1], 12.01, Quality.GOOD),
             _reading(POINTS[2], True, Quality.GOOD)]
    assert [r.point for r in f.select(moved, 13 * INTERVAL_MS)] == ["secondary_flow"]
