"""Grafana dashboards as code: ``python -m dashboards.build`` writes ``dashboards/*.json``.

Four dashboards on the InfluxDB data source heatwatch writes (measurements in
``contract/influx.py``; points and their units in ``contract/points.py``):

- ``fleet.json`` — the landing page of the control room: every station's and gateway's state,
  messages per station in the last 5 minutes, the open alerts, the coldest rooms of the city,
  the make-up share of every station.
- ``station.json`` — one station (``$station``; buildings narrowed by ``$building``): its state
  and open alerts; primary temperatures, pressures, flow and heat rate; secondary supply against
  its setpoint, pressures; circulation and make-up flow on their own axes, make-up share, volume
  and tank; pumps running, faults and frequencies; building entrances (supply, return, valves);
  room temperatures against 18 °C; the station's alert transitions as annotations.
- ``alerts.json`` — the city's alerts: open now, transitions by rule and severity, the latest.
- ``collector.json`` — the pipeline: received / accepted / written per second, rejects by
  reason, spool, retries, sequence gaps, gateway restarts and re-stamped messages per station,
  alert pages.

Every panel of points takes its unit from the vocabulary (``unit_of``): one unit per panel, so
make-up flow (~0.5 m³/h) never shares an axis with circulation (~120 m³/h). Every query is raw
InfluxQL with Grafana's ``$timeFilter`` / ``$__interval`` macros and the ``$station`` /
``$building`` variables; ``tests/integration/test_dashboards.py`` runs each of them against a
real influxd holding pipeline data (macros filled in) and checks the committed JSON is what this
file builds. Provisioning for Grafana: ``deploy/grafana/``; loading over Grafana's HTTP API:
``heatwatch dashboards push`` (``dashboards/push.py``); the operator's set-up: docs/dashboards.md.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import orjson

from contract.influx import (
    MEASUREMENT_ALERTS,
    MEASUREMENT_BUILDING,
    MEASUREMENT_COLLECTOR,
    MEASUREMENT_COLLECTOR_REJECTS,
    MEASUREMENT_GATEWAY_STATUS,
    MEASUREMENT_HOUSEHOLD,
    MEASUREMENT_INGEST,
    MEASUREMENT_STATION,
    MEASUREMENT_STATION_STATUS,
)
from contract.points import Kind, Level, lookup

HERE = Path(__file__).parent
DS = {"type": "influxdb", "uid": "heatwatch-influxdb"}  # deploy/grafana/datasources.yaml
LANDING = "fleet.json"  # the home dashboard (docs/dashboards.md)
STATION_VAR = {
    "name": "station", "label": "Station", "type": "query", "datasource": DS,
    "query": f'SHOW TAG VALUES FROM "{MEASUREMENT_STATION}" WITH KEY = "station"', "refresh": 2, "sort": 1,
    "current": {}, "includeAll": False, "multi": False,
}
BUILDING_VAR = {
    "name": "building", "label": "Building", "type": "query", "datasource": DS,
    "query": f'SHOW TAG VALUES FROM "{MEASUREMENT_BUILDING}" WITH KEY = "building" '
             'WHERE "station" =~ /^$station$/',
    "refresh": 2, "sort": 1, "current": {}, "includeAll": True, "allValue": ".*", "multi": True,
}
ST = '"station" =~ /^$station$/'
BLD = '"building" =~ /^$building$/'
# Grafana's unit ids for the vocabulary's units; others are shown as a suffix (Grafana has no
# MPa, m³/h, GJ/h or GJ: its "joule" would scale 812 GJ to "812 J")
GRAFANA_UNITS = {"°C": "celsius", "%": "percent", "Hz": "hertz", "m": "lengthm", "m³": "m3"}
STATE_COLORS = {"online": "green", "degraded": "orange", "offline": "red", "true": "red", "false": "green"}
SEVERITIES = ("critical", "major", "warning", "info")
SEVERITY_COLORS = {"critical": "dark-red", "major": "red", "warning": "orange", "info": "blue"}
# open alerts from the transitions in InfluxDB: the newest transition of each alert (its rule
# and entity tags) unless it resolved it; the store stays the authority (GET /v1/alerts?open=true)
OPEN_WITHIN = "60d"


def unit_of(point: str) -> str:
    """The Grafana unit of a vocabulary point (its numbered instances too)."""
    d = lookup(point)
    if d is None:
        raise ValueError(f"{point} is not in the vocabulary (contract/points.py)")
    if d.kind is Kind.BOOL:
        return "bool_on_off"
    if not d.unit:
        return "none"
    return GRAFANA_UNITS.get(d.unit, f"suffix: {d.unit}")


def _measurement(point: str) -> str:
    d = lookup(point)
    assert d is not None, point
    return {Level.STATION: MEASUREMENT_STATION, Level.BUILDING: MEASUREMENT_BUILDING,
            Level.HOUSEHOLD: MEASUREMENT_HOUSEHOLD}[d.level]


def _q(ref: str, query: str, alias: str | None = None, fmt: str = "time_series") -> dict[str, Any]:
    t: dict[str, Any] = {"refId": ref, "datasource": DS, "rawQuery": True, "query": query,
                         "resultFormat": fmt}
    if alias:
        t["alias"] = alias
    return t


def _mappings(colors: dict[str, str]) -> list[dict[str, Any]]:
    if not colors:
        return []
    return [{"type": "value", "options": {v: {"color": c, "index": i, "text": v}
                                          for i, (v, c) in enumerate(colors.items())}}]


def open_alerts(where: str = "") -> str:
    """The open alerts as table rows, newest transition first (a subquery over the transitions)."""
    cond = f" AND {where}" if where else ""
    return (f'SELECT "severity", "st" AS "state", "rule", "station", "building", "household", "gateway", '
            f'"summary", "since" FROM (SELECT last("since") AS "since", "state" AS "st", "severity", '
            f'"summary" FROM "{MEASUREMENT_ALERTS}" WHERE time > now() - {OPEN_WITHIN}{cond} '
            f'GROUP BY "rule", "station", "building", "household", "gateway", "subject") '
            "WHERE \"st\" != 'resolved'")


class Board:
    def __init__(self, uid: str, title: str, *, tags: list[str], variables: list[dict[str, Any]],
                 annotations: list[dict[str, Any]] | None = None, time_from: str = "now-24h") -> None:
        self.d: dict[str, Any] = {
            "uid": uid, "title": title, "tags": tags, "schemaVersion": 39, "version": 1,
            "editable": True, "refresh": "30s", "timezone": "browser",
            "time": {"from": time_from, "to": "now"},
            "templating": {"list": variables},
            "annotations": {"list": annotations or []},
            "panels": [],
        }
        self.x = self.y = 0

    def row(self, title: str) -> None:
        if self.x:
            self.x, self.y = 0, self.y + 8
        self.d["panels"].append({"type": "row", "title": title, "collapsed": False, "id": self._id(),
                                 "gridPos": {"x": 0, "y": self.y, "w": 24, "h": 1}, "panels": []})
        self.y += 1

    def panel(self, title: str, targets: list[dict[str, Any]], *, unit: str = "none", w: int = 12,
              kind: str = "timeseries", thresholds: list[tuple[float | None, str]] | None = None,
              description: str = "", mappings: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        if self.x + w > 24:
            self.x, self.y = 0, self.y + 8
        steps = [{"value": v, "color": c} for v, c in (thresholds or [(None, "green")])]
        p: dict[str, Any] = {
            "type": kind, "title": title, "id": self._id(), "datasource": DS, "targets": targets,
            "description": description,
            "gridPos": {"x": self.x, "y": self.y, "w": w, "h": 8},
            "fieldConfig": {"defaults": {"unit": unit, "thresholds": {"mode": "absolute", "steps": steps},
                                         "mappings": mappings or []},
                            "overrides": []},
            "options": {"legend": {"displayMode": "list", "placement": "bottom"}},
        }
        if kind == "timeseries" and thresholds:
            p["fieldConfig"]["defaults"]["custom"] = {"thresholdsStyle": {"mode": "line"}}
        self.d["panels"].append(p)
        self.x += w
        return p

    def points(self, title: str, points: Sequence[str], *, agg: str = "mean", by: str | None = None,
               where: str = ST, **kw: Any) -> dict[str, Any]:
        """A panel of vocabulary points, one query each, in the unit they share."""
        units = {unit_of(p) for p in points}
        if len(units) != 1:
            raise ValueError(f"{title}: points of different units on one axis: {sorted(units)}")
        fill = "fill(previous)" if agg == "last" else "fill(none)"
        group = f'time($__interval), "{by}"' if by else "time($__interval)"
        targets = []
        for i, pt in enumerate(points):
            d = lookup(pt)
            assert d is not None
            alias = f"$tag_{by}" if by else f"{d.zh} {pt}"
            targets.append(_q(chr(65 + i), f'SELECT {agg}("{pt}") AS "{pt}" FROM "{_measurement(pt)}" '
                                           f"WHERE {where} AND $timeFilter GROUP BY {group} {fill}", alias))
        if agg == "last":
            kw.setdefault("kind", "state-timeline")
            kw.setdefault("mappings", _mappings({"true": "red", "false": "green"}
                                                if any("fault" in p for p in points) else {}))
        return self.panel(title, targets, unit=units.pop(), **kw)

    def _id(self) -> int:
        return len(self.d["panels"]) + 1


def fleet() -> dict[str, Any]:
    b = Board("heatwatch-fleet", "heatwatch · fleet", tags=["heatwatch"], variables=[], time_from="now-6h")
    b.row("Now")
    b.panel("Open alerts by severity",
            [_q(chr(65 + i), f'SELECT count("since") AS "{s}" FROM ({open_alerts()}) '
                             f"WHERE \"severity\" = '{s}'", s, fmt="table")
             for i, s in enumerate(SEVERITIES)],
            kind="stat", w=8, description="alerts whose newest transition is not a resolution")
    b.d["panels"][-1]["fieldConfig"]["defaults"]["noValue"] = "0"  # no rows: none open
    b.panel("Stations: state",
            [_q("A", f'SELECT last("state") AS "state", last("devices_not_online") AS "devices not online" '
                     f'FROM "{MEASUREMENT_STATION_STATUS}" WHERE time > now() - 30d GROUP BY "station"',
                fmt="table")],
            kind="table", w=8, mappings=_mappings(STATE_COLORS),
            description="as each station's gateway last reported it (it reports changes)")
    b.panel("Gateways: state",
            [_q("A", f'SELECT last("state") AS "state" FROM "{MEASUREMENT_GATEWAY_STATUS}" '
                     'WHERE time > now() - 30d GROUP BY "gateway"', fmt="table")],
            kind="table", w=8, mappings=_mappings(STATE_COLORS),
            description="offline: the broker published the gateway's will (connection lost)")
    b.panel("Open alerts", [_q("A", open_alerts(), fmt="table")], kind="table", w=24,
            mappings=_mappings(SEVERITY_COLORS),
            description="the alert store is the authority (GET /v1/alerts?open=true); this table is "
                        "what the transitions in InfluxDB say, over the last 60 days")
    b.panel("Coldest rooms now",
            [_q("A", f'SELECT bottom("room_temp", 20), "station", "building", "household" FROM '
                     f'(SELECT last("room_temp") AS "room_temp" FROM "{MEASUREMENT_HOUSEHOLD}" '
                     'WHERE time > now() - 2h GROUP BY "station", "building", "household")', fmt="table")],
            kind="table", unit=unit_of("room_temp"),
            thresholds=[(None, "red"), (16.0, "orange"), (18.0, "green")],
            description="each room's latest reading of the last 2 h, the 20 lowest; GB/T 33833: ≥ 18 °C")
    b.panel("Make-up as a share of circulation, last hour",
            [_q("A", 'SELECT mean("makeup_flow") / mean("secondary_flow") * 100 AS "makeup_share" '
                     f'FROM "{MEASUREMENT_STATION}" WHERE time > now() - 1h GROUP BY "station"',
                "$tag_station", fmt="table")],
            kind="bargauge", unit="percent", thresholds=[(None, "green"), (1.0, "orange"), (2.0, "red")],
            description="DOMAIN.md: above ~1 % of circulating flow is a leak to look at")
    b.panel("Messages per station, last 5 minutes",
            [_q("A", f'SELECT spread("messages") AS "messages" FROM "{MEASUREMENT_INGEST}" '
                     'WHERE time > now() - 5m GROUP BY "station"', "$tag_station", fmt="table")],
            kind="bargauge", w=24, thresholds=[(None, "red"), (1.0, "green")],
            description="telemetry the collector accepted; 0: the station is silent")
    return b.d


def station() -> dict[str, Any]:
    b = Board("heatwatch-station", "heatwatch · station", tags=["heatwatch"],
              variables=[STATION_VAR, BUILDING_VAR],
              annotations=[{
                  "name": "alerts", "datasource": DS, "enable": True, "iconColor": "red",
                  "query": f'SELECT "summary", "severity" FROM "{MEASUREMENT_ALERTS}" WHERE {ST} '
                           "AND $timeFilter",
                  "textColumn": "summary", "tagsColumn": "rule,state"}])
    b.row("State")
    b.panel("Station state",
            [_q("A", f'SELECT last("state") AS "state" FROM "{MEASUREMENT_STATION_STATUS}" WHERE {ST} '
                     "AND $timeFilter GROUP BY time($__interval) fill(previous)", "state"),
             _q("B", f'SELECT last("devices_not_online") AS "devices not online" FROM '
                     f'"{MEASUREMENT_STATION_STATUS}" WHERE {ST} AND $timeFilter '
                     "GROUP BY time($__interval) fill(previous)", "devices not online")],
            kind="state-timeline", mappings=_mappings(STATE_COLORS),
            description="from the gateway's station status (published on change)")
    b.panel("Open alerts", [_q("A", open_alerts(ST), fmt="table")], kind="table",
            mappings=_mappings(SEVERITY_COLORS))
    b.row("Primary (一次网)")
    b.points("Primary temperatures", ["primary_supply_temp", "primary_return_temp"])
    b.points("Primary pressures", ["primary_supply_pressure", "primary_return_pressure"])
    b.points("Primary flow", ["primary_flow"])
    b.points("Heat rate", ["primary_heat_rate"])
    b.points("Primary valve", ["primary_valve_position", "primary_valve_setpoint"])
    b.points("Outdoor", ["outdoor_temp"])
    b.row("Secondary (二次网)")
    b.points("Supply temperature against its setpoint",
             ["secondary_supply_temp", "secondary_supply_temp_setpoint", "secondary_return_temp"])
    b.points("Secondary pressures", ["secondary_supply_pressure", "secondary_return_pressure",
                                     "secondary_return_pressure_setpoint"])
    b.row("Water (补水)")
    b.points("Circulation flow", ["secondary_flow"])
    b.points("Make-up flow", ["makeup_flow"], description="its own axis: ~0.5 m³/h against ~120 m³/h "
             "of circulation")
    b.panel("Make-up as a share of circulation",
            [_q("A", 'SELECT mean("makeup_flow") / mean("secondary_flow") * 100 AS "makeup_share" '
                     f'FROM "{MEASUREMENT_STATION}" WHERE {ST} AND $timeFilter '
                     "GROUP BY time($__interval) fill(none)", "make-up share")],
            unit="percent", thresholds=[(None, "green"), (1.0, "orange"), (2.0, "red")],
            description="DOMAIN.md: above ~1 % of circulating flow is a leak to look at")
    b.panel("Make-up volume per hour",
            [_q("A", 'SELECT non_negative_difference(last("makeup_total")) AS "makeup_total" '
                     f'FROM "{MEASUREMENT_STATION}" WHERE {ST} AND $timeFilter GROUP BY time(1h) fill(none)',
                "补水量 per hour")],
            unit=unit_of("makeup_total"),
            description="from the totalizer: m³ per hour")
    b.points("Make-up tank level", ["tank_level"])
    b.row("Pumps (泵)")
    b.points("Pumps running", ["circ_pump_running", "makeup_pump_running"], agg="last")
    b.points("Pump faults", ["circ_pump_fault", "makeup_pump_fault"], agg="last")
    b.points("Pump frequencies", ["circ_pump_freq", "makeup_pump_freq"])
    b.row("Buildings and rooms")
    bw = f"{ST} AND {BLD}"
    b.points("Building supply temperatures", ["building_supply_temp"], by="building", where=bw)
    b.points("Building return temperatures", ["building_return_temp"], by="building", where=bw)
    b.points("Building entrance valves", ["building_valve_position"], by="building", where=bw)
    b.panel("Room temperatures by building (median of households)",
            [_q("A", f'SELECT median("room_temp") FROM "{MEASUREMENT_HOUSEHOLD}" WHERE {bw} '
                     'AND $timeFilter GROUP BY time($__interval), "building" fill(none)', "$tag_building")],
            unit=unit_of("room_temp"),
            thresholds=[(None, "red"), (16.0, "orange"), (18.0, "green")],
            description="GB/T 33833: ≥ 18 °C in bedrooms and living rooms")
    b.panel("Coldest households now",
            [_q("A", f'SELECT bottom("room_temp", "household", 10), "building" '
                     f'FROM "{MEASUREMENT_HOUSEHOLD}" WHERE {bw} AND time > now() - 1h', fmt="table")],
            unit=unit_of("room_temp"), kind="table")
    return b.d


def alerts() -> dict[str, Any]:
    b = Board("heatwatch-alerts", "heatwatch · alerts", tags=["heatwatch"], variables=[])
    b.row("Open now")
    b.panel("Open alerts", [_q("A", open_alerts(), fmt="table")], kind="table", w=24,
            mappings=_mappings(SEVERITY_COLORS),
            description="the newest transition of each alert is not a resolution (the alert store "
                        "is the authority: GET /v1/alerts?open=true)")
    b.row("Alert transitions")
    b.panel("Firing, by rule",
            [_q("A", f'SELECT count("since") FROM "{MEASUREMENT_ALERTS}" WHERE "state" = \'firing\' '
                     'AND $timeFilter GROUP BY time($__interval), "rule" fill(0)', "$tag_rule")])
    b.panel("Firing, by severity",
            [_q("A", f'SELECT count("since") FROM "{MEASUREMENT_ALERTS}" WHERE "state" = \'firing\' '
                     "AND $timeFilter GROUP BY time($__interval), \"severity\" fill(0)")])
    b.panel("Latest transitions",
            [_q("A", f'SELECT "station", "building", "household", "severity", "summary" FROM '
                     f'"{MEASUREMENT_ALERTS}" WHERE $timeFilter ORDER BY time DESC LIMIT 200', fmt="table")],
            kind="table", w=24)
    return b.d


def _rate(field: str, alias: str, unit_per: str = "1s") -> dict[str, Any]:
    return _q(alias[0].upper(), f'SELECT non_negative_derivative(last("{field}"), {unit_per}) AS "{alias}" '
                                f'FROM "{MEASUREMENT_COLLECTOR}" WHERE $timeFilter '
                                'GROUP BY time($__interval), "client_id" fill(none)',
              f"{alias} $tag_client_id")


def collector() -> dict[str, Any]:
    c = MEASUREMENT_COLLECTOR
    b = Board("heatwatch-collector", "heatwatch · collector", tags=["heatwatch"], variables=[],
              time_from="now-6h")
    b.row("Throughput")
    b.panel("Messages per second", [_rate("received", "received"), _rate("accepted", "accepted"),
                                    _rate("acked", "acked")], unit="mps")
    b.panel("Values and lines per second", [_rate("values", "values"), _rate("written", "written")],
            unit="cps")
    b.row("Trouble")
    b.panel("Rejected messages by reason",
            [_q("A", 'SELECT non_negative_derivative(last("count"), 1m) '
                     f'FROM "{MEASUREMENT_COLLECTOR_REJECTS}" '
                     'WHERE $timeFilter GROUP BY time($__interval), "reason" fill(none)', "$tag_reason"),
             _q("B", 'SELECT non_negative_derivative(last("lines"), 1m) '
                     f'FROM "{MEASUREMENT_COLLECTOR_REJECTS}" '
                     'WHERE $timeFilter GROUP BY time($__interval), "reason" fill(none)',
                "lines InfluxDB refused: $tag_reason")],
            unit="mpm", description="the messages themselves are in the rejects measurement; lines "
                                    "InfluxDB refused (unparsable, type_conflict) by their reason")
    b.panel("Spool (InfluxDB unavailable)",
            [_q("A", f'SELECT last("spool_rows") FROM "{c}" WHERE $timeFilter '
                     "GROUP BY time($__interval) fill(previous)", "batches waiting"),
             _q("B", f'SELECT non_negative_derivative(last("retried"), 1m) FROM "{c}" WHERE '
                     "$timeFilter GROUP BY time($__interval) fill(none)", "retries/min"),
             _q("C", f'SELECT last("spool_dropped") FROM "{c}" WHERE $timeFilter '
                     "GROUP BY time($__interval) fill(previous)", "dropped (total)")],
            thresholds=[(None, "green"), (1.0, "red")])
    b.panel("Sequence gaps per station (messages lost before the broker)",
            [_q("A", f'SELECT non_negative_difference(last("seq_gaps")) FROM "{MEASUREMENT_INGEST}" '
                     'WHERE $timeFilter GROUP BY time(10m), "station" fill(none)', "$tag_station")],
            description="per 10 minutes")
    b.panel("Gateway restarts per station",
            [_q("A", f'SELECT non_negative_difference(last("restarts")) FROM "{MEASUREMENT_INGEST}" '
                     'WHERE $timeFilter GROUP BY time(10m), "station" fill(none)', "$tag_station")],
            description="per 10 minutes")
    b.panel("Messages re-stamped on receipt per station (gateway clock fast)",
            [_q("A", f'SELECT non_negative_difference(last("restamped")) FROM "{MEASUREMENT_INGEST}" '
                     'WHERE $timeFilter GROUP BY time(10m), "station" fill(none)', "$tag_station")],
            description="per 10 minutes; stamped past ingest.max_future_s ahead, stored at their "
                        "receipt time (the gateway's clock_skew alert names it)")
    b.row("Alerts")
    b.panel("Alert transitions and pages per minute",
            [_q("A", f'SELECT count("severity") FROM "{MEASUREMENT_ALERTS}" '
                     "WHERE $timeFilter GROUP BY time(1m) fill(none)", "transitions"),
             _q("B", f'SELECT count("severity") FROM "{MEASUREMENT_ALERTS}" '
                     "WHERE $timeFilter AND \"page\" = true GROUP BY time(1m) fill(none)", "pages")],
            unit="cpm", description="what the alerters published, as the collector stored it; their webhook "
                                    "deliveries are on their /metrics (heatwatch_alerter_webhook_*)")
    return b.d


def report() -> dict[str, Any]:
    """The takeover report's figures (issue #17) per station over the dashboard's time range: the
    same definitions as ``heatwatch report`` where InfluxQL can hold them. What it cannot (days
    below the design outdoor temperature, sensor-fault episodes from the alert store, heated area,
    remote control) only the report has; each panel's description says so."""
    b = Board("heatwatch-report", "heatwatch · takeover report", tags=["heatwatch", "report"], variables=[],
              time_from="now-30d")
    hourly = ('SELECT non_negative_difference(last("makeup_total")) AS "d", mean("secondary_flow") AS "c" '
              f'FROM "{MEASUREMENT_STATION}" WHERE $timeFilter GROUP BY time(1h), "station"')
    rooms = (f'SELECT mean("room_temp") AS "m" FROM "{MEASUREMENT_HOUSEHOLD}" WHERE $timeFilter '
             'AND "room_temp" >= 5 AND "room_temp" <= 35 '
             'GROUP BY time(1h), "station", "building", "household"')
    b.row("Make-up water")
    b.panel("Make-up rate by station over the range (%)",
            [_q("A", f'SELECT sum("d") / sum("c") * 100 AS "makeup_rate_pct" FROM ({hourly}) '
                     'GROUP BY "station"', "$tag_station")],
            unit="percent", kind="bargauge", thresholds=[(None, "green"), (2.0, "red")],
            description="Hourly totalizer growth ÷ hourly mean circulation × 1 h, summed over the range; "
                        "red above the default secondary limit of 2 %. The report uses each station's limit, "
                        "drops meter resets and leaves out hours after a data gap (whose water lands in one "
                        "hour here)")
    b.panel("Make-up per day by station (m³)",
            [_q("A", 'SELECT non_negative_difference(last("makeup_total")) '
                     f'FROM "{MEASUREMENT_STATION}" WHERE $timeFilter '
                     'GROUP BY time($__interval), "station" fill(none)', "$tag_station")],
            unit=unit_of("makeup_total"),
            description="Totalizer growth per day (the panel's minimum interval); the report divides it by "
                        "heated area (t/10,000 m²/day)")
    b.d["panels"][-1]["interval"] = "1d"
    b.row("Room temperature")
    # a sensor-hour passes when its mean is ≥ 18 °C: 1 + floor((m − 18) / 100) is 1 then and 0
    # below (plausible means are 5–35 °C), so its mean is the pass rate
    b.panel("Room pass rate by station (%)",
            [_q("A", 'SELECT mean("p") * 100 AS "pass_rate_pct" FROM '
                     f'(SELECT 1 + floor(("m" - 18) / 100) AS "p" FROM ({rooms})) GROUP BY "station"',
                "$tag_station")],
            unit="percent", kind="bargauge", thresholds=[(None, "red"), (90.0, "orange"), (98.0, "green")],
            description="Share of sensor-hours ≥ 18 °C (GB/T 33833). The report also leaves out days below "
                        "the design outdoor temperature and sensor-fault hours, and names the households")
    b.panel("Sensor-hours below 18 °C by station",
            [_q("A", f'SELECT count("m") AS "hours_below" FROM ({rooms}) WHERE "m" < 18 GROUP BY "station"',
                "$tag_station")],
            unit="h", kind="bargauge", thresholds=[(None, "green"), (24.0, "orange")])
    b.row("Information management")
    b.panel("Samples per hour by station",
            [_q("A", f'SELECT count("secondary_supply_temp") FROM "{MEASUREMENT_STATION}" WHERE $timeFilter '
                     'GROUP BY time(1h), "station" fill(0)', "$tag_station")],
            description="Gaps show as zero; the report turns this into completeness against the gateway "
                        "config's poll rate, online time and a list of gaps")
    b.panel("Hours online by station",
            [_q("A", 'SELECT count("n") AS "hours_online" FROM (SELECT count("secondary_supply_temp") AS "n" '
                     f'FROM "{MEASUREMENT_STATION}" WHERE $timeFilter GROUP BY time(1h), "station") '
                     'GROUP BY "station"',
                "$tag_station")],
            kind="bargauge")
    b.row("Service")
    b.panel("Alerts raised by rule",
            [_q("A", f'SELECT count("since") AS "raised" FROM "{MEASUREMENT_ALERTS}" '
                     'WHERE "state" = \'firing\' AND $timeFilter GROUP BY "rule"', "$tag_rule")],
            kind="bargauge", description="Time to acknowledge and resolve and the hotline tickets are in the "
                                         "alert store: the report (GET /v1/report/service) has them")
    return b.d


BOARDS: dict[str, Callable[[], dict[str, Any]]] = {
    "fleet.json": fleet, "station.json": station, "alerts.json": alerts, "collector.json": collector,
    "report.json": report}


def render(build: Callable[[], dict[str, Any]]) -> bytes:
    return orjson.dumps(build(), option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"


def main() -> int:
    for name, build in BOARDS.items():
        (HERE / name).write_bytes(render(build))
        print(f"wrote dashboards/{name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
