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


def telemetry_lines(t: Frame) -> list[str]:
    """Line protocol for one validated telemetry message."""
    # the collector's hottest loop (~0.3 µs a value): readings of one entity come in runs, so
    # the group is looked up only when the entity changes; good floats take the first branch
    fields: dict[tuple[str | None, str | None], list[str]] = {}
    key: tuple[str | None, str | None] | None = None
    f: list[str] = []
    for r in t.samples:
        k = (r.building, r.household)
        if k != key:
            got = fields.get(k)
            if got is None:
                got = fields[k] = []
            f, key = got, k
        v = r.value
        if type(v) is float and r.quality == "good":
            f.append(f"{r.point}={v!r}")
            continue
        if v is not None:
            f.append(f"{r.point}={_fmt(v)}")
        if r.quality != "good":
            f.append(f'{r.point}{QUALITY_SUFFIX}="{r.quality}"')
    s, ts = t.station, f" {t.ts}"
    return [_head(s, b, h) + ",".join(fl) + ts for (b, h), fl in fields.items()]


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
