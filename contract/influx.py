"""The InfluxDB schema, and the pure encoder from telemetry to line protocol.

One line per entity per sample time, all of a message's points for that entity as fields::

    station,station=st001 secondary_supply_temp=55.2,circ_pump_running=true 1763700000000
    building,station=st001,building=b01 building_valve_position=45.0 1763700000000
    household,station=st001,building=b01,household=b01-0301 room_temp=19.6 1763700000000

- measurements ``station``, ``building``, ``household`` (the entity level of the point);
- tags ``station`` [, ``building`` [, ``household``]]: identifiers, never escaped (see topics);
- one field per point, named by its canonical name; numbers are always floats (so an int16
  register and a float32 one never conflict), booleans booleans, text strings;
- a reading whose quality is not good also writes ``<point>_quality`` = "uncertain" | "bad";
  a bad reading has no value field at all;
- timestamp: the gateway's sample time in ms (``precision=ms``). ``backfill`` is deliberately
  not a tag: a tag would put a replayed sample in a second series instead of overwriting.

Alert transitions go to ``alerts`` (Grafana annotations): tags ``rule``, ``state`` and the entity
(``station``, ``building``, ``household``, ``gateway``, ``subject`` where set); fields
``severity``, ``key``, ``summary`` strings, ``value`` float, ``page`` bool, ``since`` ms; at the
transition's time.

Rejected input goes to ``rejects`` (tags ``reason``, ``station``; fields ``count``=1i,
``detail`` string, ``topic`` string), timestamped at receipt.

Status: ``station_status`` (tag ``station``; fields ``state`` string, ``devices_not_online``
integer) at the gateway's status time; ``gateway_status`` (tag ``gateway``; fields ``state``,
``boot`` strings) at receipt (a last will's own time is when it was registered, not when it fired).

The collector's own counters (``collector/metrics.py`` holds the one table of them): ``collector``
(tag ``client_id``), ``collector_rejects`` (tags ``client_id``, ``reason``), ``collector_gc`` (tags
``client_id``, ``generation``) and, per station, ``ingest`` (tag ``station``).
"""

from __future__ import annotations

from collections.abc import Callable
from operator import attrgetter

import msgspec

from contract.alerts import Transition
from contract.payload import Frame, GatewayStatus, StationStatus
from contract.points import QUALITY_SUFFIX

MEASUREMENT_STATION = "station"
MEASUREMENT_BUILDING = "building"
MEASUREMENT_HOUSEHOLD = "household"
MEASUREMENT_REJECTS = "rejects"
MEASUREMENT_ALERTS = "alerts"
MEASUREMENT_STATION_STATUS = "station_status"
MEASUREMENT_GATEWAY_STATUS = "gateway_status"
MEASUREMENT_COLLECTOR = "collector"
MEASUREMENT_COLLECTOR_REJECTS = "collector_rejects"
MEASUREMENT_COLLECTOR_GC = "collector_gc"
MEASUREMENT_INGEST = "ingest"
PRECISION = "ms"


def escape_string_field(s: str) -> str:
    return s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _escape_tag(s: str) -> str:
    return s.replace("\\", "\\\\").replace(",", "\\,").replace("=", "\\=").replace(" ", "\\ ")


def _fmt(v: bool | float | str) -> str:
    if v is True:
        return "true"
    if v is False:
        return "false"
    if isinstance(v, str):
        return f'"{escape_string_field(v)}"'
    return repr(float(v))


_HEADS: dict[tuple[str, str | None, str | None], str] = {}


def _head(s: str, b: str | None, h: str | None) -> str:
    key = (s, b, h)
    head = _HEADS.get(key)
    if head is None:
        if h is not None:
            head = f"{MEASUREMENT_HOUSEHOLD},station={s},building={b},household={h} "
        elif b is not None:
            head = f"{MEASUREMENT_BUILDING},station={s},building={b} "
        else:
            head = f"{MEASUREMENT_STATION},station={s} "
        if len(_HEADS) > 1_000_000:
            _HEADS.clear()
        _HEADS[key] = head
    return head


_ENCODE = msgspec.json.Encoder().encode
_VALUE = attrgetter("value")
_NOWHERE = object()  # no reading's building or household


def telemetry_lines(t: Frame) -> list[str]:
    """Line protocol for one validated telemetry message."""
    samples = t.samples
    # The collector's hottest loop. Every value's text at once: msgspec writes a message's values
    # as JSON in C (floats shortest round-trip, e.g. 1e16, 1e-7, which InfluxDB reads as floats),
    # ~50 ns a value against ~170 ns for repr() one by one. Only floats take their text from it;
    # a string with a comma in it splits into more pieces, and then each float is written alone.
    # Readings of one entity come in runs, so the group is looked up only when the entity
    # changes; good floats take the first branch.
    texts = _ENCODE(list(map(_VALUE, samples)))[1:-1].decode().split(",")
    if len(texts) != len(samples):
        texts = [_ENCODE(v).decode() if type(v) is float else "" for v in map(_VALUE, samples)]
    groups: dict[tuple[str | None, str | None], list[str]] = {}
    kb: object = _NOWHERE  # the first reading opens a group
    kh: object = _NOWHERE
    nowhere: list[str] = []
    add: Callable[[str], None] = nowhere.append
    for r, text in zip(samples, texts, strict=True):
        b = r.building
        if b != kb or r.household != kh:
            h = r.household
            got = groups.get((b, h))
            if got is None:
                got = groups[(b, h)] = []
            add, kb, kh = got.append, b, h
        v = r.value
        if type(v) is float and r.quality == "good":
            add(f"{r.point}={text}")
            continue
        if v is not None:
            add(f"{r.point}={text if type(v) is float else _fmt(v)}")
        if r.quality != "good":
            add(f'{r.point}{QUALITY_SUFFIX}="{r.quality}"')
    s, ts = t.station, f" {t.ts}"
    return [_head(s, b, h) + ",".join(fl) + ts for (b, h), fl in groups.items()]


def station_status_line(st: StationStatus) -> str:
    offline = sum(1 for d in st.devices.values() if d.state != "online")
    return (f'{MEASUREMENT_STATION_STATUS},station={st.station} state="{st.state.value}",'
            f"devices_not_online={offline}i {st.ts}")


def gateway_status_line(gs: GatewayStatus, received_ms: int) -> str:
    return (f'{MEASUREMENT_GATEWAY_STATUS},gateway={gs.gateway} state="{gs.state}",'
            f'boot="{escape_string_field(gs.boot)}" {received_ms}')


def reject_line(reason: str, station: str | None, topic: str, detail: str, ts_ms: int) -> str:
    tags = f"reason={_escape_tag(reason)}"
    if station:
        tags += f",station={_escape_tag(station)}"
    return (f'{MEASUREMENT_REJECTS},{tags} count=1i,detail="{escape_string_field(detail[:500])}",'
            f'topic="{escape_string_field(topic[:200])}" {ts_ms}')


def alert_line(tr: Transition) -> str:
    tags = f"rule={tr.rule},state={tr.state}"
    for k in ("station", "building", "household", "gateway", "subject"):
        v = getattr(tr, k)
        if v is not None:
            tags += f",{k}={_escape_tag(v)}"
    fields = (f'severity="{tr.severity}",key="{escape_string_field(tr.key)}",'
              f'summary="{escape_string_field(tr.summary[:300])}",page={"true" if tr.page else "false"},'
              f"since={tr.since}i")
    if tr.value is not None:
        fields += f",value={float(tr.value)!r}"
    return f"{MEASUREMENT_ALERTS},{tags} {fields} {tr.ts}"
