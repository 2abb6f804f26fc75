"""Command payloads, signatures and bounds (contract/commands.py): property tests for the parse
and the signature (any command round-trips and verifies; any change to any field, or another
key, fails), and the bound checks worded with the bound that was hit."""

from __future__ import annotations

import contextlib
import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contract.commands import (
    Bounds,
    Command,
    CommandResult,
    Reason,
    SignatureError,
    State,
    bounds_problem,
    generate_keypair,
    key_id,
    load_private_key,
    load_public_key,
    parse_command_result,
    parse_signed_command,
    shown_state,
    sign,
    verify,
)
from contract.errors import PayloadError
from contract.payload import TS_MAX_MS, TS_MIN_MS

PRIV, PUB = generate_keypair()
KEY = load_private_key(PRIV, "test")
PUBKEY = load_public_key(PUB, "test")
KEYS = {key_id(PUBKEY): PUBKEY}

_ident = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9_.-]{0,20}\Z")
_points = st.sampled_from(["building_valve_setpoint", "secondary_supply_temp_setpoint", "x_custom_1",
                           "local_mode", "work_mode"])
_values = st.one_of(st.booleans(), st.floats(allow_nan=False, allow_infinity=False))
_text = st.text(min_size=1, max_size=60)


@st.composite
def commands(draw: st.DrawFn) -> Command:
    issued = draw(st.integers(TS_MIN_MS, TS_MAX_MS - 10_000))
    building = draw(st.none() | _ident)
    return Command(
        id=draw(_ident), station=draw(_ident), device=draw(_ident), point=draw(_points),
        building=building, household=draw(_ident) if building is not None and draw(st.booleans()) else None,
        value=draw(_values), issued_at=issued, deadline=issued + draw(st.integers(1, 9_999)),
        issuer=draw(st.text(min_size=1, max_size=64)), reason=draw(_text),
        ticket=draw(st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9_.:/-]{0,30}\Z")))


@given(commands())
@settings(max_examples=300)
def test_any_signed_command_round_trips_and_verifies(cmd: Command) -> None:
    signed = sign(cmd, KEY)
    back = parse_signed_command(signed.to_json())
    assert back == signed
    assert verify(back, KEYS) == cmd
    assert back.command.canonical() == cmd.canonical()


_CHANGES = {
    "id": "other-id", "station": "st999", "device": "meter", "point": "primary_valve_setpoint",
    "building": "b77", "value": 12345.5, "deadline": TS_MAX_MS, "issued_at": TS_MIN_MS,
    "issuer": "mallory", "reason": "because", "ticket": "T-forged",
}


@given(commands(), st.sampled_from(sorted(_CHANGES)))
@settings(max_examples=300)
def test_a_change_to_any_field_breaks_the_signature(cmd: Command, field: str) -> None:
    signed = sign(cmd, KEY)
    new = _CHANGES[field]
    if getattr(cmd, field) == new:
        return
    data = signed.command.model_dump()
    data[field] = new
    try:
        forged = signed.model_copy(update={"command": Command.model_validate(data)})
    except ValueError:
        return  # the change alone makes the command invalid (e.g. deadline before issue)
    with pytest.raises(SignatureError) as err:
        verify(parse_signed_command(forged.to_json()), KEYS)
    assert err.value.reason == "bad_signature"


def test_another_key_is_refused_whether_named_or_disguised() -> None:
    cmd = Command(id="c1", station="st001", device="plc", point="building_valve_setpoint", building="b01",
                  value=70, issued_at=TS_MIN_MS, deadline=TS_MIN_MS + 60_000, issuer="li", reason="cold",
                  ticket="T-1")
    other = load_private_key(generate_keypair()[0], "other")
    with pytest.raises(SignatureError) as err:
        verify(sign(cmd, other), KEYS)
    assert err.value.reason == "unknown_key"
    disguised = sign(cmd, other).model_copy(update={"key": key_id(PUBKEY)})  # claims to be ours
    with pytest.raises(SignatureError) as err:
        verify(disguised, KEYS)
    assert err.value.reason == "bad_signature"


@given(st.binary(max_size=400) | st.text(alphabet=string.printable, max_size=400).map(str.encode))
@settings(max_examples=300)
def test_any_bytes_parse_or_fail_with_a_payload_error(raw: bytes) -> None:
    for fn in (parse_signed_command, parse_command_result):
        with contextlib.suppress(PayloadError):
            fn(raw)


def test_results_need_a_reason_when_refused() -> None:
    with pytest.raises(ValueError, match="needs its reason"):
        CommandResult(id="c1", station="st001", gateway="gw", state="rejected", ts=TS_MIN_MS)
    r = CommandResult(id="c1", station="st001", gateway="gw", state="failed", reason=Reason.MODBUS_EXCEPTION,
                      code=4, ts=TS_MIN_MS)
    assert parse_command_result(r.to_json()) == r


def test_bounds_name_the_bound_that_was_hit() -> None:
    b = Bounds(min=30, max=85, max_step=3, min_interval_s=900)
    p = "secondary_supply_temp_setpoint"
    assert bounds_problem(p, 95, b, is_bool=False) == (
        Reason.BOUNDS, "value 95 above max 85 of secondary_supply_temp_setpoint")
    assert bounds_problem(p, 20.5, b, is_bool=False) == (
        Reason.BOUNDS, "value 20.5 below min 30 of secondary_supply_temp_setpoint")
    step = bounds_problem(p, 70, b, is_bool=False, current=65)
    assert step is not None and step[0] is Reason.STEP and "max_step 3" in step[1]
    assert bounds_problem(p, 68, b, is_bool=False, current=65) is None  # exactly one step
    assert bounds_problem(p, 68, b, is_bool=False, current=None) is None  # present value unknown
    rate = bounds_problem(p, 66, b, is_bool=False, current=65, last_write_ms=1_000_000, now_ms=1_600_000)
    assert rate is not None and rate[0] is Reason.RATE_LIMIT and "min_interval_s 900" in rate[1]
    assert bounds_problem(p, 66, b, is_bool=False, current=65, last_write_ms=0, now_ms=900_001) is None
    assert bounds_problem("x_pump_on", 1.0, Bounds(), is_bool=True) == (
        Reason.BOUNDS, "x_pump_on takes true or false, not 1.0")
    assert bounds_problem(p, True, b, is_bool=False) is not None


def test_a_sent_command_without_result_shows_unknown_after_its_grace() -> None:
    assert shown_state(State.SENT, 10_000, 10_000 + 59_999, 60) is State.SENT
    assert shown_state(State.SENT, 10_000, 10_000 + 60_001, 60) is State.UNKNOWN
    assert shown_state(State.REQUESTED, 10_000, 10_000 + 60_001, 60) is State.UNKNOWN  # API down meanwhile
    assert shown_state(State.CONFIRMED, 10_000, 10_000_000, 60) is State.CONFIRMED
    assert shown_state(State.AWAITING_CONFIRMATION, 10_000, 10_000_000, 60) is State.AWAITING_CONFIRMATION
