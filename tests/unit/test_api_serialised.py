"""The answers the API serialises itself (issue #20: no model validation on the hot paths) are
byte for byte what their response models give: the alert list from the store's rows, and the
hotline lookup's whole answer. Property tests over the rows' value space (ints where floats are
declared, unicode, NaN, nested context), so a field added to a row but not to its model, or a
type the model would coerce, fails here rather than reaching a client."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from alerting.rows import AlertEvent, AlertRow, HouseholdNow
from api.alerts import AlertList, AlertPublic, alert_list_json
from api.lookup import Lookup, _Chain, _full

text = st.text(max_size=12)
opt_text = st.none() | text
ms = st.integers(min_value=0, max_value=2**53)
opt_ms = st.none() | ms
number = st.floats(allow_nan=True, allow_infinity=False) | st.integers(min_value=-(2**53), max_value=2**53)
json_leaf = st.none() | st.booleans() | number | text
json_value = st.recursive(json_leaf, lambda inner: st.lists(inner, max_size=3)
                          | st.dictionaries(text, inner, max_size=3), max_leaves=8)
# a point's latest value: what the latest table holds (pydantic's float | bool | str)
point = st.booleans() | number | text
points = st.none() | st.dictionaries(text, point, max_size=5)

alert_rows = st.builds(
    AlertRow, id=st.integers(1, 2**31), key=text, rule=text,
    state=st.sampled_from(["pending", "firing", "resolved"]),
    severity=st.sampled_from(["info", "warning", "major", "critical"]),
    station=opt_text, building=opt_text, household=opt_text, gateway=opt_text, subject=opt_text,
    since=ms, last_ts=ms, fired_at=opt_ms, resolved_at=opt_ms,
    value=st.none() | st.floats(allow_nan=True, allow_infinity=False),
    summary=text, context=st.dictionaries(text, json_value, max_size=4), quiet=text, paged=st.booleans(),
    ack_by=opt_text, ack_at=opt_ms, ack_note=opt_text, ack_ticket=opt_text,
    tickets=st.lists(text, max_size=3), resolved_by=opt_text)
events = st.builds(AlertEvent, id=st.integers(1, 2**31), alert_id=st.integers(1, 2**31), ts=ms,
                   kind=st.sampled_from(["ack", "note"]), state=text, severity=text,
                   value=st.none() | st.floats(allow_nan=False), actor=opt_text, note=opt_text,
                   ticket=opt_text, quiet=text)
households = st.builds(
    HouseholdNow, code=text, station=text, building=text, unit=text, room=text, sensor=opt_text,
    address=text, station_name=opt_text, gateway=opt_text, station_ts=opt_ms, station_points=points,
    station_state=st.none() | st.sampled_from(["online", "degraded", "offline"]),
    gateway_state=st.none() | st.sampled_from(["online", "offline"]), building_ts=opt_ms,
    building_points=points, room_ts=opt_ms, room_points=st.none() | st.fixed_dictionaries(
        {}, optional={"room_temp": st.floats(-30, 40) | st.integers(-30, 40)}), room_day=st.none())


def test_alert_row_is_alert_public_field_for_field() -> None:
    # the list's JSON is the rows' dataclass fields: they must be the model's, in its order
    assert [f.name for f in dataclasses.fields(AlertRow)] == list(AlertPublic.model_fields)


@settings(max_examples=200, deadline=None)
@given(rows=st.lists(alert_rows, max_size=5), total=st.integers(0, 10**6))
def test_alert_list_bytes_are_the_models(rows: list[AlertRow], total: int) -> None:
    body = alert_list_json(rows, total)
    expected = AlertList(data=[AlertPublic.model_validate(r) for r in rows], count=total)
    assert body == expected.model_dump_json().encode()
    assert AlertList.model_validate_json(body) == AlertList.model_validate_json(expected.model_dump_json())


class _History:
    """What ``RoomHistory.last_24h`` answers, given: the input of the serialisation under test."""

    def __init__(self, means: list[tuple[int, float]], complete: bool) -> None:
        self.means, self.complete = means, complete

    async def last_24h(self, station: str, building: str, household: str,
                       day: dict[str, Any] | None = None, gap_at: int | None = None,
                       written_at: int | None = None) -> tuple[Any, bool]:
        return self.means, self.complete


@settings(max_examples=200, deadline=None)
@given(row=households, alerts=st.lists(alert_rows, max_size=3), acks=st.lists(events, max_size=3),
       means=st.lists(st.tuples(ms, st.floats(-30, 40)), max_size=4), complete=st.booleans())
def test_lookup_bytes_are_the_models(row: HouseholdNow, alerts: list[AlertRow], acks: list[AlertEvent],
                                     means: list[tuple[int, float]], complete: bool) -> None:
    from api.lookup import Ack, HouseholdRef, Place, Room, _station_state, verdict

    body = asyncio.run(_full(_History(means, complete), _Chain(row, alerts, acks)))  # type: ignore[arg-type]
    ref = HouseholdRef.model_validate(row)
    now = (row.room_points or {}).get("room_temp")
    expected = Lookup(
        candidates=[ref], household=ref, verdict=verdict(alerts, row.sensor),
        room=Room(now=now, at=row.room_ts if now is not None else None, last_24h=means,
                  last_24h_complete=complete) if row.sensor else None,
        building=Place(last_seen=row.building_ts, values=row.building_points or {}),
        station=Place(state=_station_state(row), last_seen=row.station_ts, values=row.station_points or {}),
        alerts=[AlertPublic.model_validate(a) for a in alerts],
        acknowledgements=[Ack.model_validate(e) for e in acks])
    assert body == expected.model_dump_json().encode()
