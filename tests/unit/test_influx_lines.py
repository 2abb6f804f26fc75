from __future__ import annotations

import orjson

from contract.influx import reject_line, telemetry_lines
from contract.payload import decode_telemetry
from tests.unit.test_payload import GOOD


def test_one_line_per_entity_numbers_as_floats_quality_fields() -> None:
    lines = telemetry_lines(decode_telemetry(orjson.dumps(GOOD)))
    assert lines == [
        'station,station=st001 secondary_supply_temp=55.2,circ_pump_running=true,'
        'x_plc_program="HX-V1" 1795000000000',
        "building,station=st001,building=b01 building_valve_position=45.0 1795000000000",
        'household,station=st001,building=b01,household=b01-0301 room_temp_quality="bad" 1795000000000',
    ]


def test_string_fields_and_reject_tags_are_escaped() -> None:
    line = reject_line("bad json", "st001", 'a"b', 'x\\y"\nz', 5)
    assert line == ('rejects,reason=bad\\ json,station=st001 count=1i,detail="x\\\\y\\"\\nz",'
                    'topic="a\\"b" 5')
