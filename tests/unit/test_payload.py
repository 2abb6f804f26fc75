"""Telemetry contract: round trips, and every malformed payload rejected with a reason."""

from __future__ import annotations

import contextlib
import copy
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from contract.errors import PayloadError
from contract.payload import Quality, Reading, Telemetry, parse_telemetry

GOOD: dict[str, Any] = {
    "schema": 1, "station": "st001", "gateway": "gw-st001", "boot": "5f0c1a2b3c4d5e6f", "seq": 7,
    "ts": 1_795_000_000_000, "backfill": False,
    "values": [
        {"point": "secondary_supply_temp", "value": 55.2, "unit": "°C", "quality": "good"},
        {"point": "circ_pump_running", "value": True, "unit": "", "quality": "good"},
        {"point": "building_valve_position", "building": "b01", "value": 45, "unit": "%"},
        {"point": "room_temp", "building": "b01", "household": "b01-0301", "value": None,
         "unit": "°C", "quality": "bad"},
        {"point": "x_plc_program", "value": "HX-V1", "unit": "", "quality": "good"},
    ],
}


def test_round_trip() -> None:
    msg = parse_telemetry(orjson.dumps(GOOD))
    assert parse_telemetry(msg.to_json()) == msg
    assert msg.values[2].value == 45.0 and isinstance(msg.values[2].value, float)
    assert msg.values[1].value is True
    assert msg.values[3].quality is Quality.BAD


def _mutate(path: list[Any], value: Any) -> bytes:
    d = copy.deepcopy(GOOD)
    node: Any = d
    for k in path[:-1]:
        node = node[k]
    if value is _DELETE:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return orjson.dumps(d)


_DELETE = object()

CASES = [
    (b"{not json", "bad_json", "not JSON"),
    (b"[1,2]", "bad_json", "JSON object"),
    (_mutate(["schema"], 2), "schema_version", "schema version 2"),
    (_mutate(["station"], "st 001"), "schema", "station"),
    (_mutate(["station"], "st/001"), "schema", "station"),
    (_mutate(["seq"], -1), "schema", "seq"),
    (_mutate(["ts"], 1_795_000_000), "schema", "ts"),  # seconds, not ms
    (_mutate(["values"], []), "schema", "values"),
    (_mutate(["extra"], 1), "schema", "extra"),
    (_mutate(["values", 0, "value"], "hot"), "schema", "must be a number"),
    (_mutate(["values", 1, "value"], 1.0), "schema", "true or false"),
    (_mutate(["values", 0, "unit"], "K"), "schema", "unit must be '°C'"),
    (_mutate(["values", 0, "point"], "supply_temp"), "schema", "vocabulary"),
    (_mutate(["values", 0, "value"], None), "schema", "only allowed with quality 'bad'"),
    (_mutate(["values", 2, "building"], _DELETE), "schema", "building point"),
    (_mutate(["values", 3, "building"], _DELETE), "schema", "needs its building"),
    (_mutate(["values", 0, "quality"], "ok"), "schema", "quality"),
    (_mutate(["boot"], "XYZ"), "schema", "boot"),
    (b"{" + b" " * 1_000_001 + b"}", "too_large", "exceeds"),
]


@pytest.mark.parametrize(("raw", "reason", "words"), CASES)
def test_malformed_payloads_are_rejected_with_a_reason(raw: bytes, reason: str, words: str) -> None:
    with pytest.raises(PayloadError) as exc:
        parse_telemetry(raw)
    assert exc.value.reason == reason
    assert words in str(exc.value)


def test_reason_names_the_value_index_and_point() -> None:
    with pytest.raises(PayloadError, match=r"values\.0 \(secondary_supply_temp\)"):
        parse_telemetry(_mutate(["values", 0, "unit"], "K"))


@given(st.binary(max_size=300))
def test_arbitrary_bytes_raise_only_payload_error(raw: bytes) -> None:
    with contextlib.suppress(PayloadError):
        parse_telemetry(raw)


@given(st.recursive(st.none() | st.booleans() | st.floats() | st.text(max_size=5) | st.integers(),
                    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c, max_size=4),
                    max_leaves=12))
def test_arbitrary_json_raises_only_payload_error(obj: Any) -> None:
    doc = dict(GOOD, values=[obj]) if not isinstance(obj, dict) else {**GOOD, **obj}
    with contextlib.suppress(PayloadError, orjson.JSONEncodeError):
        parse_telemetry(orjson.dumps(doc, option=orjson.OPT_NON_STR_KEYS))


def test_reading_level() -> None:
    r = Reading(point="room_temp", building="b1", household="h1", value=20.0, unit="°C")
    assert r.level == "household"
    assert Telemetry.model_validate(GOOD).values[0].level == "station"
