"""Decode: the words of answered requests → canonical readings with a quality flag.

good       decoded, finite, not a sentinel, inside the plausible range
uncertain  decoded, but outside the point's plausible range (kept: the value may be real)
bad        not read (timeout, exception), a NaN, or the device's "no value" sentinel
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from contract.codec import FLOATS, INTEGERS, DataType, WordOrder, decode
from contract.config import PointMap
from contract.errors import DecodeError
from contract.payload import Quality, Reading


def bad(p: PointMap) -> Reading:
    return Reading(point=p.point, building=p.building, household=p.household, value=None,
                   unit=p.unit or "", quality=Quality.BAD)


def reading(p: PointMap, words: Sequence[int]) -> Reading:
    """One point's reading from its raw words (bits for coils and discrete inputs)."""
    try:
        raw = decode(words, p.type, p.word_order or WordOrder.ABCD, p.bit or 0)
    except DecodeError:
        return bad(p)
    value: float | bool | str
    if p.type in INTEGERS:
        if raw in p.invalid_raw:
            return bad(p)
        value = float(raw) * p.scale + p.offset
        if p.scale != 1.0 or p.offset:
            value = round(value, 9)  # 948 × 0.1 is 94.80000000000001; 9 decimals lose nothing real
    elif p.type in FLOATS:
        assert isinstance(raw, float)
        if not math.isfinite(raw):
            return bad(p)
        value = raw * p.scale + p.offset
    elif p.type in (DataType.BOOL, DataType.BIT):
        value = bool(raw)
    else:
        value = str(raw)
    quality = Quality.GOOD
    if isinstance(value, float):
        lo, hi = p.plausible
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            quality = Quality.UNCERTAIN
    return Reading(point=p.point, building=p.building, household=p.household, value=value,
                   unit=p.unit or "", quality=quality)
