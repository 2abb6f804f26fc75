"""The collector's hand-written fast path agrees with the pydantic model on every input.

``decode_telemetry`` accepts the common case by hand and hands the rest to the model; if the two
ever disagreed, the collector would store what the contract forbids (or refuse what it allows).
Hypothesis builds messages from valid parts and near-misses of every kind and compares.
"""

from __future__ import annotations

import math
from typing import Any

import orjson
from hypothesis import event, given, settings
from hypothesis import strategies as st

from contract.errors import PayloadError
from contract.payload import Frame, decode_telemetry, parse_telemetry

BAD_IDENTS = ["", "-bad", "a b", "b01\n", "é", 7, None]
# valid readings of every level and kind: (point, building, household, unit, a fitting value)
TEMPLATES = [
    ("room_temp", "b01", "b01-0301", "°C", 19.5), ("secondary_supply_temp", None, None, "°C", 55),
    ("circ_pump_running", None, None, "", True), ("building_valve_position", "b02", None, "%", 45.0),
    ("x_custom", None, None, "kPa", 1.5), ("x_text", "b03", None, "", "HX-V1"),
]
NEAR_MISS = {
    "point": st.sampled_from(["unknown_point", "room_temp_quality", "Bad Name", "room_temp", "x_y", 3, None]),
    "building": st.sampled_from(["b01", None, *BAD_IDENTS]),
    "household": st.sampled_from(["b01-0101", None, *BAD_IDENTS]),
    "unit": st.sampled_from(["°C", "%", "", "K", "x" * 17, 1, None]),
    "quality": st.sampled_from(["good", "uncertain", "bad", "GOOD", "", 1, None]),
    "value": st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-(2**63), 2**64 - 1),
                       st.booleans(), st.text(max_size=5), st.none(), st.just([1]), st.just({"a": 1})),
}


@st.composite
def readings(draw: st.DrawFn) -> dict[str, Any]:
    point, building, household, unit, value = draw(st.sampled_from(TEMPLATES))
    r: dict[str, Any] = {"point": point, "unit": unit, "value": value}
    if building:
        r["building"] = building
    if household:
        r["household"] = household
    if draw(st.booleans()):
        r["quality"] = draw(st.sampled_from(["good", "uncertain"]))
    if draw(st.integers(0, 9)) == 0:
        r["quality"], r["value"] = "bad", None
    elif draw(st.integers(0, 7)) == 0:  # a value of another point's kind
        r["value"] = draw(st.sampled_from(TEMPLATES))[4]
    for _ in range(draw(st.sampled_from([0] * 12 + [1, 1, 1, 2]))):  # near misses in one or two keys
        key = draw(st.sampled_from(sorted(NEAR_MISS)))
        if draw(st.integers(0, 5)) == 0:
            r.pop(key, None)
        else:
            r[key] = draw(NEAR_MISS[key])
    if draw(st.integers(0, 40)) == 0:
        r["extra"] = 1
    return r


def _maybe(draw: st.DrawFn, good: Any, bad: st.SearchStrategy[Any]) -> Any:
    return draw(bad) if draw(st.integers(0, 12)) == 0 else good


@st.composite
def messages(draw: st.DrawFn) -> dict[str, Any]:
    m: dict[str, Any] = {
        "schema": _maybe(draw, 1, st.sampled_from([1.0, True, 2])),
        "station": _maybe(draw, "st001", st.sampled_from(BAD_IDENTS)),
        "gateway": _maybe(draw, "gw-st001", st.sampled_from(BAD_IDENTS)),
        "boot": _maybe(draw, "5f0c1a2b", st.sampled_from(["5F0C1A2B", "abc", "5f0c1a2b\n", 5])),
        "seq": _maybe(draw, draw(st.integers(0, 2**63)), st.sampled_from([-1, 1.0, "1", True, 2**64 - 1])),
        "ts": _maybe(draw, draw(st.integers(946_684_800_000, 4_102_444_800_000)),
                     st.sampled_from([946_684_799_999, 4_102_444_800_001, 1.79e12, 1_795_000_000])),
        "backfill": _maybe(draw, draw(st.booleans()), st.sampled_from([0, "true", None])),
        "values": draw(st.lists(readings(), min_size=0, max_size=3)) if draw(st.integers(0, 30)) == 0
        else draw(st.lists(readings(), min_size=1, max_size=3)),
    }
    if draw(st.integers(0, 5)) == 0:  # report by exception: may carry no values
        m["heartbeat_s"] = _maybe(draw, draw(st.sampled_from([300, 60.0, 0.5, 86400])),
                                  st.sampled_from([0, -1, 86401, "300", None, True]))
        if draw(st.booleans()):
            m["values"] = []
    for key in list(m):
        if key != "schema" and draw(st.integers(0, 40)) == 0:
            del m[key]
    if draw(st.integers(0, 40)) == 0:
        m["extra"] = True
    return m


def _model(raw: bytes) -> Frame | str:
    try:
        return Frame.of(parse_telemetry(raw))
    except PayloadError as exc:
        return f"{exc.reason}: {exc}"


def _fast(raw: bytes) -> Frame | str:
    try:
        return decode_telemetry(raw)
    except PayloadError as exc:
        return f"{exc.reason}: {exc}"


@settings(max_examples=3000, deadline=None)
@given(messages())
def test_fast_path_agrees_with_model(doc: dict[str, Any]) -> None:
    try:
        raw = orjson.dumps(doc)
    except TypeError:  # integers beyond 64 bits cannot be JSON here
        return
    expected = _model(raw)
    event("accepted" if isinstance(expected, Frame) else expected.split(":")[0])
    assert _fast(raw) == expected  # cold caches
    assert _fast(raw) == expected  # warm caches


def test_fast_path_keeps_types() -> None:
    raw = orjson.dumps({"schema": 1, "station": "st001", "gateway": "gw", "boot": "5f0c1a2b", "seq": 1,
                        "ts": 1_795_000_000_000, "values": [
                            {"point": "building_valve_position", "building": "b01", "value": 45, "unit": "%"},
                            {"point": "circ_pump_running", "value": True, "unit": ""}]})
    f = decode_telemetry(raw)
    assert f.samples[0].value == 45.0 and type(f.samples[0].value) is float
    assert f.samples[1].value is True and f.samples[1].quality == "good"
    assert not math.isnan(f.samples[0].value)


def test_only_a_report_by_exception_message_may_be_empty() -> None:
    base = {"schema": 1, "station": "st001", "gateway": "gw", "boot": "5f0c1a2b", "seq": 1,
            "ts": 1_795_000_000_000, "values": []}
    assert _fast(orjson.dumps(base)) == _model(orjson.dumps(base))
    assert "values: empty; only a report-by-exception message" in str(_fast(orjson.dumps(base)))
    f = decode_telemetry(orjson.dumps({**base, "heartbeat_s": 300}))
    assert f.samples == [] and f.heartbeat_s == 300.0
