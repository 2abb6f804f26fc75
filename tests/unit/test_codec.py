"""The struct codec against pymodbus's own convert_to_registers, for every type and order."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pymodbus.client.mixin import ModbusClientMixin

from contract.codec import ByteOrder, DataType, WordOrder, decode, encode, order_of, word_count
from contract.config import PointMap
from contract.errors import DecodeError
from contract.payload import Quality, Telemetry, decode_telemetry
from contract.points import Kind
from gateway.decode import PointDecoder

PM = ModbusClientMixin.DATATYPE
_PM_TYPE = {
    DataType.INT16: PM.INT16, DataType.UINT16: PM.UINT16, DataType.INT32: PM.INT32,
    DataType.UINT32: PM.UINT32, DataType.INT64: PM.INT64, DataType.UINT64: PM.UINT64,
    DataType.FLOAT32: PM.FLOAT32, DataType.FLOAT64: PM.FLOAT64,
}
_RANGES = {
    DataType.INT16: st.integers(-(2**15), 2**15 - 1), DataType.UINT16: st.integers(0, 2**16 - 1),
    DataType.INT32: st.integers(-(2**31), 2**31 - 1), DataType.UINT32: st.integers(0, 2**32 - 1),
    DataType.INT64: st.integers(-(2**63), 2**63 - 1), DataType.UINT64: st.integers(0, 2**64 - 1),
    DataType.FLOAT32: st.floats(width=32, allow_nan=False),
    DataType.FLOAT64: st.floats(allow_nan=False),
}
MULTI = [DataType.INT32, DataType.UINT32, DataType.INT64, DataType.UINT64, DataType.FLOAT32,
         DataType.FLOAT64]


def _swap(words: list[int]) -> list[int]:
    return [((w & 0xFF) << 8) | (w >> 8) for w in words]


def pymodbus_words(value: float, dtype: DataType, order: WordOrder) -> list[int]:
    """What a device in ``order`` sends, built from pymodbus (which knows word order only)."""
    little = order in (WordOrder.CDAB, WordOrder.DCBA)
    words = ModbusClientMixin.convert_to_registers(value, _PM_TYPE[dtype],
                                                   word_order="little" if little else "big")
    return _swap(words) if order in (WordOrder.BADC, WordOrder.DCBA) else words


@st.composite
def typed_values(draw: st.DrawFn) -> tuple[DataType, WordOrder, float]:
    dtype = draw(st.sampled_from(MULTI))
    order = draw(st.sampled_from(list(WordOrder)))
    return dtype, order, draw(_RANGES[dtype])


@given(typed_values())
def test_decode_matches_pymodbus_for_every_type_and_order(case: tuple[DataType, WordOrder, float]) -> None:
    dtype, order, value = case
    words = pymodbus_words(value, dtype, order)
    assert len(words) == word_count(dtype)
    assert decode(words, dtype, order) == value
    assert encode(value, dtype, order) == words


@given(st.sampled_from([DataType.INT16, DataType.UINT16]).flatmap(
    lambda t: st.tuples(st.just(t), _RANGES[t])))
def test_16_bit_types_match_pymodbus(case: tuple[DataType, int]) -> None:
    dtype, value = case
    words = ModbusClientMixin.convert_to_registers(value, _PM_TYPE[dtype])
    assert decode(words, dtype) == value
    assert encode(value, dtype) == words


@given(st.sampled_from([DataType.INT16, DataType.UINT16]).flatmap(
    lambda t: st.tuples(st.just(t), _RANGES[t])))
def test_byte_swapped_16_bit_registers_match_pymodbus_both_ways(case: tuple[DataType, int]) -> None:
    # a meter that sends a 16-bit value low byte first: pymodbus's big-endian word, bytes swapped
    dtype, value = case
    wire = _swap(ModbusClientMixin.convert_to_registers(value, _PM_TYPE[dtype]))
    order = order_of(None, ByteOrder.BA)
    assert decode(wire, dtype, order) == value
    assert encode(value, dtype, order) == wire  # the command path's writes
    assert ModbusClientMixin.convert_from_registers(_swap(wire), _PM_TYPE[dtype]) == value
    # and the gateway's own decoder for a point mapped with byte_order: BA
    p = PointMap(point="x_p", type=dtype, table="holding_register", address=0, unit="", byte_order="BA")
    assert PointDecoder(p)(wire).value == float(value)
    plain = PointMap(point="x_p", type=dtype, table="holding_register", address=0, unit="")
    assert PointDecoder(plain)(_swap(wire)).value == float(value)


@pytest.mark.parametrize(("order", "words"), [
    (WordOrder.ABCD, [0x47F1, 0x2000]), (WordOrder.CDAB, [0x2000, 0x47F1]),
    (WordOrder.BADC, [0xF147, 0x0020]), (WordOrder.DCBA, [0x0020, 0xF147]),
])
def test_libmodbus_reference_float(order: WordOrder, words: list[int]) -> None:
    # libmodbus's test value: 123456.0 = 0x47F12000, in each byte order a device may use
    assert decode(words, DataType.FLOAT32, order) == 123456.0


@given(st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), max_size=16),
       st.sampled_from([WordOrder.ABCD, WordOrder.BADC]))
def test_strings_round_trip(text: str, order: WordOrder) -> None:
    assert decode(encode(text, DataType.STRING, order, length=8), DataType.STRING, order) == text


def test_string_matches_pymodbus() -> None:
    words = ModbusClientMixin.convert_to_registers("HX-V1.2", PM.STRING)
    assert decode(words, DataType.STRING) == "HX-V1.2"


@given(st.integers(0, 0xFFFF), st.integers(0, 15))
def test_bits(word: int, bit: int) -> None:
    assert decode([word], DataType.BIT, bit=bit) is bool(word >> bit & 1)


def test_nan_decodes_as_nan_for_the_quality_check() -> None:
    assert math.isnan(float(decode(encode(math.nan, DataType.FLOAT32), DataType.FLOAT32)))


def test_wrong_word_count_and_non_ascii_are_decode_errors() -> None:
    with pytest.raises(DecodeError, match="needs 2 registers"):
        decode([1], DataType.FLOAT32)
    with pytest.raises(DecodeError, match="not ASCII"):
        decode([0xC3A9], DataType.STRING)


def _near(t: DataType) -> st.SearchStrategy[int]:
    lo, hi = (-(2**63), 2**63 - 1) if t is DataType.INT64 else (0, 2**64 - 1)
    edges = st.one_of(st.integers(2**53 - 3, 2**53 + 3), st.integers(-(2**53) - 3, -(2**53) + 3))
    return st.one_of(_RANGES[t], edges.filter(lambda v: lo <= v <= hi))


@given(st.sampled_from([DataType.INT64, DataType.UINT64]).flatmap(lambda t: st.tuples(st.just(t), _near(t))))
def test_64_bit_integers_travel_exactly_or_are_refused(case: tuple[DataType, int]) -> None:
    # every number on the wire is a float64: a 64-bit raw value within ±2^53 arrives at the
    # collector as exactly that integer; beyond, the reading is refused (bad, counted), never rounded
    dtype, raw = case
    dec = PointDecoder(PointMap(point="x_total", type=dtype, table="input_register", address=0, unit="Wh"))
    r = dec(encode(raw, dtype))
    msg = Telemetry(schema=1, station="st001", gateway="gw1", boot="0badc0de", seq=0, ts=1_795_000_000_000,
                    values=[r]).to_json()
    stored = decode_telemetry(msg).samples[0].value  # the collector's own decoder
    if abs(raw) <= 2**53:
        assert r.quality is Quality.GOOD and stored == raw and int(stored) == raw  # type: ignore[arg-type]
        assert dec.refused == {}
    else:
        assert r.quality is Quality.BAD and stored is None and dec.refused == {"inexact": 1}


@pytest.mark.parametrize(("dtype", "kind", "words"), [
    (DataType.UINT16, Kind.TEXT, [5]), (DataType.STRING, Kind.NUMBER, [0x4142]),
    (DataType.BIT, Kind.NUMBER, [1]), (DataType.FLOAT32, Kind.BOOL, [0x4148, 0])])
def test_a_value_of_another_kind_than_the_points_is_refused(dtype: DataType, kind: Kind,
                                                           words: list[int]) -> None:
    # the map cannot say it (kind and type must agree: tests/cases/error-kind-against-type); the
    # decoder holds the line all the same: InfluxDB fixes a field's type at its first write
    p = PointMap.model_construct(point="x_p", type=dtype, kind=kind, table="holding_register", address=0,
                                 unit="", length=1 if dtype is DataType.STRING else None,
                                 bit=0 if dtype is DataType.BIT else None)
    dec = PointDecoder(p)
    assert [dec(words).quality for _ in range(3)] == [Quality.BAD] * 3
    assert dec.refused == {"kind": 3}
