"""Register words ⇄ values, for every Modbus data type and word order. Pure, table-driven.

Word orders name where the bytes of the big-endian value A B C D … land on the wire:

    ABCD  big-endian words, high word first (Modbus default; most PLCs)
    CDAB  low word first ("word swap"; the TUF-2000M flow meter, many meters)
    BADC  high word first, bytes swapped inside each word
    DCBA  little-endian throughout

For 64-bit values the same rule is applied to all four words (CDAB reverses the word order).
A 16-bit value has one word and so no word order, but some meters send its two bytes swapped
(low byte first): its byte order is ``AB`` (Modbus's big-endian, the default) or ``BA``, which
the codec takes as the orders that swap bytes inside a word (BADC, DCBA) and :func:`order_of`
maps to BADC.
Written with ``struct`` rather than pymodbus's ``convert_from_registers`` so that the property
tests can check one implementation against the other.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from enum import StrEnum

from contract.errors import DecodeError


class DataType(StrEnum):
    BOOL = "bool"  # a coil or discrete input
    BIT = "bit"  # one bit inside a 16-bit register
    INT16 = "int16"
    UINT16 = "uint16"
    INT32 = "int32"
    UINT32 = "uint32"
    INT64 = "int64"
    UINT64 = "uint64"
    FLOAT32 = "float32"
    FLOAT64 = "float64"
    STRING = "string"  # ASCII, two characters per register


class WordOrder(StrEnum):
    ABCD = "ABCD"
    BADC = "BADC"
    CDAB = "CDAB"
    DCBA = "DCBA"


class ByteOrder(StrEnum):
    """The byte order of a 16-bit register's value: AB (big-endian, Modbus's) or BA (swapped)."""

    AB = "AB"
    BA = "BA"


def order_of(word_order: WordOrder | None, byte_order: ByteOrder | None) -> WordOrder:
    """The codec order of a point from its map keys: a 16-bit point's byte order, or its word order."""
    if byte_order is ByteOrder.BA:
        return WordOrder.BADC
    return word_order or WordOrder.ABCD


_STRUCTS: dict[DataType, struct.Struct] = {
    DataType.INT16: struct.Struct(">h"),
    DataType.UINT16: struct.Struct(">H"),
    DataType.INT32: struct.Struct(">i"),
    DataType.UINT32: struct.Struct(">I"),
    DataType.INT64: struct.Struct(">q"),
    DataType.UINT64: struct.Struct(">Q"),
    DataType.FLOAT32: struct.Struct(">f"),
    DataType.FLOAT64: struct.Struct(">d"),
}
MULTI_WORD = frozenset(t for t, s in _STRUCTS.items() if s.size > 2)
FLOATS = frozenset((DataType.FLOAT32, DataType.FLOAT64))
INTEGERS = frozenset(_STRUCTS) - FLOATS
SIXTEEN_BIT = frozenset((DataType.INT16, DataType.UINT16))


def word_count(dtype: DataType, length: int | None = None) -> int:
    """Registers one value occupies (bits and bools count as one)."""
    if dtype is DataType.STRING:
        if not length:
            raise ValueError("string needs a length in registers")
        return length
    s = _STRUCTS.get(dtype)
    return s.size // 2 if s else 1


def _reorder(words: Sequence[int], order: WordOrder) -> list[int]:
    """Self-inverse: turns wire order into ABCD order and back."""
    out = list(words)
    if order in (WordOrder.BADC, WordOrder.DCBA):
        out = [((w & 0xFF) << 8) | (w >> 8) for w in out]
    if order in (WordOrder.CDAB, WordOrder.DCBA):
        out.reverse()
    return out


def decode(
    words: Sequence[int], dtype: DataType, order: WordOrder = WordOrder.ABCD, bit: int = 0
) -> int | float | str | bool:
    """Decode the raw words of one value. Raises DecodeError if they cannot be that type."""
    if dtype is DataType.BIT:
        return bool((words[0] >> bit) & 1)
    if dtype is DataType.BOOL:
        return bool(words[0])
    if any(not 0 <= w <= 0xFFFF for w in words):
        raise DecodeError(f"register word out of range 0..65535 in {list(words)[:8]}")
    ordered = _reorder(words, order)
    raw = struct.pack(f">{len(ordered)}H", *ordered)
    if dtype is DataType.STRING:
        try:
            return raw.rstrip(b"\x00 ").decode("ascii")
        except UnicodeDecodeError:
            raise DecodeError(f"string registers are not ASCII: {raw[:32]!r}") from None
    s = _STRUCTS[dtype]
    if len(raw) != s.size:
        raise DecodeError(f"{dtype} needs {s.size // 2} registers, got {len(words)}")
    value: int | float = s.unpack(raw)[0]
    return value


def encode(
    value: int | float | str | bool,
    dtype: DataType,
    order: WordOrder = WordOrder.ABCD,
    length: int | None = None,
) -> list[int]:
    """Encode one raw value into register words (the inverse of :func:`decode`)."""
    if dtype in (DataType.BOOL, DataType.BIT):
        return [1 if value else 0]
    if dtype is DataType.STRING:
        n = word_count(dtype, length)
        b = str(value).encode("ascii")
        if len(b) > 2 * n:
            raise ValueError(f"string {value!r} does not fit in {n} registers")
        b = b.ljust(2 * n, b"\x00")
        return _reorder(list(struct.unpack(f">{n}H", b)), order)
    s = _STRUCTS[dtype]
    v = float(value) if dtype in FLOATS else int(value)
    raw = s.pack(v)
    return _reorder(list(struct.unpack(f">{s.size // 2}H", raw)), order)
