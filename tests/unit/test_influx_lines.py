from __future__ import annotations

import re

import msgspec
import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from contract.influx import _fmt, _head, reject_line, split_lines, telemetry_lines
from contract.payload import Frame, Sample, decode_telemetry
from contract.points import QUALITY_SUFFIX, VOCABULARY
from tests.unit.test_payload import GOOD


def test_one_line_per_entity_numbers_as_floats_quality_fields() -> None:
    """Custom points on a line of their own: same series and time, so InfluxDB merges the two."""
    lines = telemetry_lines(decode_telemetry(orjson.dumps(GOOD)))
    assert lines == [
        'station,station=st001 secondary_supply_temp=55.2,circ_pump_running=true 1795000000000',
        "building,station=st001,building=b01 building_valve_position=45.0 1795000000000",
        'household,station=st001,building=b01,household=b01-0301 room_temp_quality="bad" 1795000000000',
        'station,station=st001 x_plc_program="HX-V1" 1795000000000',
    ]


def test_every_canonical_name_sorts_before_x() -> None:
    """telemetry_lines tells a custom point by ``point >= "x"``."""
    assert all(name < "x" for name in VOCABULARY)
    assert all(f"{name}_2" < "x" for name in VOCABULARY) and "x_" >= "x"


def test_string_fields_are_stored_exactly_and_reject_tags_escaped() -> None:
    """A newline stays a newline (InfluxDB 1.x does not unescape \\n); backslash and quote escaped."""
    line = reject_line("bad json", "st001", 'a"b', 'x\\y"\nz', 5)
    assert line == ('rejects,reason=bad\\ json,station=st001 count=1i,detail="x\\\\y\\"\nz",'
                    'topic="a\\"b" 5')
    assert split_lines(line + "\n" + line) == [line, line]


# -- the encoder against the plain one it replaced, for any readings ------------------------------
def _reference_lines(t: Frame) -> list[str]:
    """One value at a time (floats written as msgspec writes one float)."""
    fields: dict[tuple[str | None, str | None, bool], list[str]] = {}
    for r in t.samples:
        f = fields.setdefault((r.building, r.household, r.point.startswith("x_")), [])
        if type(r.value) is float:
            f.append(f"{r.point}={msgspec.json.encode(r.value).decode()}")
        elif r.value is not None:
            f.append(f"{r.point}={_fmt(r.value)}")
        if r.quality != "good":
            f.append(f'{r.point}{QUALITY_SUFFIX}="{r.quality}"')
    return [_head(t.station, b, h) + ",".join(fl) + f" {t.ts}" for (b, h, _x), fl in fields.items()]


_VALUES = (st.floats(allow_nan=False, allow_infinity=False) | st.booleans() | st.none()
           | st.text(max_size=12) | st.sampled_from(['a,b', '"', "\\", "x\ny", ",", "null", "1.5"]))
_SAMPLES = st.lists(st.builds(
    Sample, point=st.sampled_from(["p1", "p2", "room_temp", "x_a", "x_b"]), unit=st.just(""),
    building=st.sampled_from([None, "b1", "b2"]), household=st.sampled_from([None, "h1"]),
    value=_VALUES, quality=st.sampled_from(["good", "uncertain", "bad"])), min_size=1, max_size=40)


@settings(max_examples=1500, deadline=None)
@given(_SAMPLES)
def test_lines_equal_the_one_value_at_a_time_encoder(samples: list[Sample]) -> None:
    t = Frame("st001", "gw", "0badc0de", 1, 1795000000000, False, samples)
    lines = telemetry_lines(t)
    assert lines == _reference_lines(t)
    assert split_lines("\n".join(lines)) == lines  # InfluxDB cuts the body where we joined it


# InfluxDB 1.x reads these as floats (tried on influxd 1.6: 1e16, 1e-7, -0.0, 5e-324, 1.8e308)
_FLOAT_TEXT = re.compile(r"-?[0-9]+(\.[0-9]+)?(e-?[0-9]+)?")


@settings(max_examples=3000, deadline=None)
@given(st.lists(st.floats(allow_nan=False, allow_infinity=False), min_size=1, max_size=5))
def test_float_texts_read_back_exactly(values: list[float]) -> None:
    t = Frame("st001", "gw", "0badc0de", 1, 1795000000000, False,
              [Sample(point=f"p{i}", unit="", value=v) for i, v in enumerate(values)])
    [line] = telemetry_lines(t)
    texts = [f.split("=")[1] for f in line.split(" ")[1].split(",")]
    assert all(_FLOAT_TEXT.fullmatch(x) for x in texts), texts
    assert [float(x) for x in texts] == values
