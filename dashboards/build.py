"""Grafana dashboards as code: ``python -m dashboards.build`` writes ``dashboards/*.json``.

Three dashboards on the InfluxDB data source heatwatch writes (measurements in
``contract/influx.py``; points in ``contract/points.py``):

- ``station.json`` — one station for the control room: primary/secondary temperatures and
  pressures, circulation and make-up flow, make-up rate as a share of circulation, tank and
  pumps, outdoor temperature, building entrances, room temperatures against 18 °C, and the
  station's alert transitions as annotations.
- ``alerts.json`` — the city: alert transitions by rule and severity, the latest transitions.
- ``collector.json`` — the pipeline: received / accepted / written per second, rejects by reason,
  spool, retries, sequence gaps and gateway restarts per station, alert pages.

Every panel query is raw InfluxQL with Grafana's ``$timeFilter`` / ``$__interval`` macros and the
``$station`` variable; ``tests/unit/test_dashboards.py`` runs each of them against a real influxd
holding pipeline data (macros filled in) and checks the committed JSON is what this file builds.
Provisioning for Grafana: ``deploy/grafana/``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import orjson

from contract.influx import (
    MEASUREMENT_ALERTS,
    MEASUREMENT_BUILDING,
    MEASUREMENT_COLLECTOR,
    MEASUREMENT_COLLECTOR_REJECTS,
    MEASUREMENT_HOUSEHOLD,
    MEASUREMENT_INGEST,
    MEASUREMENT_STATION,
)

# the measurements' names, short for the queries below
ALERTS, BUILDING, COLLECTOR, COLLECTOR_REJECTS, HOUSEHOLD, INGEST, STATION = (
    MEASUREMENT_ALERTS, MEASUREMENT_BUILDING, MEASUREMENT_COLLECTOR, MEASUREMENT_COLLECTOR_REJECTS,
    MEASUREMENT_HOUSEHOLD, MEASUREMENT_INGEST, MEASUREMENT_STATION)
HERE = Path(__file__).parent
DS = {"type": "influxdb", "uid": "heatwatch-influxdb"}  # deploy/grafana/datasources.yaml
STATION_VAR = {
    "name": "station", "label": "Station", "type": "query", "datasource": DS,
    "query": f'SHOW TAG VALUES FROM "{STATION}" WITH KEY = "station"', "refresh": 2, "sort": 1,
    "current": {}, "includeAll": False, "multi": False,
}


def _q(ref: str, query: str, alias: str | None = None) -> dict[str, Any]:
    t: dict[str, Any] = {"refId": ref, "datasource": DS, "rawQuery": True, "query": query,
                         "resultFormat": "time_series"}
    if alias:
        t["alias"] = alias
    return t


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
              description: str = "") -> None:
        if self.x + w > 24:
            self.x, self.y = 0, self.y + 8
        steps = [{"value": v, "color": c} for v, c in (thresholds or [(None, "green")])]
        p: dict[str, Any] = {
            "type": kind, "title": title, "id": self._id(), "datasource": DS, "targets": targets,
            "description": description,
            "gridPos": {"x": self.x, "y": self.y, "w": w, "h": 8},
            "fieldConfig": {"defaults": {"unit": unit, "thresholds": {"mode": "absolute", "steps": steps}},
                            "overrides": []},
            "options": {"legend": {"displayMode": "list", "placement": "bottom"}},
        }
        if kind == "timeseries" and thresholds:
            p["fieldConfig"]["defaults"]["custom"] = {"thresholdsStyle": {"mode": "line"}}
        self.d["panels"].append(p)
        self.x += w

    def _id(self) -> int:
        return len(self.d["panels"]) + 1


def _mean(field: str, where: str = '"station" =~ /^$station$/', m: str = STATION) -> str:
    return (f'SELECT mean("{field}") AS "{field}" FROM "{m}" WHERE {where} AND $timeFilter '
            f"GROUP BY time($__interval) fill(none)")


def station() -> dict[str, Any]:
    b = Board("heatwatch-station", "heatwatch · station", tags=["heatwatch"], variables=[STATION_VAR],
              annotations=[{
                  "name": "alerts", "datasource": DS, "enable": True, "iconColor": "red",
                  "query": f'SELECT "summary", "severity" FROM "{ALERTS}" WHERE "station" =~ /^$station$/ '
                           "AND $timeFilter",
                  "textColumn": "summary", "tagsColumn": "rule,state"}])
    b.row("Supply")
    temps = ("primary_supply_temp", "primary_return_temp", "secondary_supply_temp", "secondary_return_temp")
    b.panel("Temperatures", [_q("ABCD"[i], _mean(f)) for i, f in enumerate(temps)], unit="celsius")
    b.panel("Pressures", [_q("A", _mean("secondary_supply_pressure")),
                          _q("B", _mean("secondary_return_pressure"))], unit="pressurempa")
    b.panel("Outdoor", [_q("A", _mean("outdoor_temp"))], unit="celsius")
    b.panel("Primary valve", [_q("A", _mean("primary_valve_position")),
                              _q("B", _mean("primary_valve_setpoint"))], unit="percent")
    b.row("Water")
    b.panel("Circulation and make-up flow", [_q("A", _mean("secondary_flow")), _q("B", _mean("makeup_flow"))],
            description="m³/h")
    b.panel("Make-up as a share of circulation",
            [_q("A", 'SELECT mean("makeup_flow") / mean("secondary_flow") * 100 AS "makeup_share" '
                     f'FROM "{STATION}" WHERE "station" =~ /^$station$/ AND $timeFilter '
                     "GROUP BY time($__interval) fill(none)")],
            unit="percent", thresholds=[(None, "green"), (1.0, "orange"), (2.0, "red")],
            description="DOMAIN.md: above ~1 % of circulating flow is a leak to look at")
    b.panel("Make-up volume per hour",
            [_q("A", f'SELECT non_negative_difference(last("makeup_total")) AS "makeup_m3" FROM "{STATION}" '
                     'WHERE "station" =~ /^$station$/ AND $timeFilter GROUP BY time(1h) fill(none)')],
            description="m³ per hour from the totalizer")
    b.panel("Make-up tank level", [_q("A", _mean("tank_level"))], unit="lengthm")
    # booleans: InfluxQL has no mean() of a bool, and running/stopped is a state, not a curve
    b.panel("Pumps running", [
        _q(ref, f'SELECT last("{f}") AS "{f}" FROM "{STATION}" WHERE "station" =~ /^$station$/ '
                "AND $timeFilter GROUP BY time($__interval) fill(previous)")
        for ref, f in (("A", "circ_pump_running"), ("B", "makeup_pump_running"))], kind="state-timeline")
    b.row("Buildings and rooms")
    b.panel("Building entrance valves",
            [_q("A", f'SELECT mean("building_valve_position") FROM "{BUILDING}" '
                     'WHERE "station" =~ /^$station$/ '
                     'AND $timeFilter GROUP BY time($__interval), "building" fill(none)', "$tag_building")],
            unit="percent")
    b.panel("Building return temperatures",
            [_q("A", f'SELECT mean("building_return_temp") FROM "{BUILDING}" WHERE "station" =~ /^$station$/ '
                     'AND $timeFilter GROUP BY time($__interval), "building" fill(none)', "$tag_building")],
            unit="celsius")
    b.panel("Room temperatures by building (median of households)",
            [_q("A", f'SELECT median("room_temp") FROM "{HOUSEHOLD}" WHERE "station" =~ /^$station$/ '
                     'AND $timeFilter GROUP BY time($__interval), "building" fill(none)', "$tag_building")],
            unit="celsius", thresholds=[(None, "red"), (16.0, "orange"), (18.0, "green")],
            description="GB/T 33833: ≥ 18 °C in bedrooms and living rooms")
    b.panel("Coldest households now",
            [_q("A", f'SELECT bottom("room_temp", "household", 10) FROM "{HOUSEHOLD}" WHERE '
                     '"station" =~ /^$station$/ AND time > now() - 1h')],
            unit="celsius", kind="table")
    return b.d


def alerts() -> dict[str, Any]:
    b = Board("heatwatch-alerts", "heatwatch · alerts", tags=["heatwatch"], variables=[])
    b.row("Alert transitions")
    b.panel("Firing, by rule",
            [_q("A", f'SELECT count("since") FROM "{ALERTS}" WHERE "state" = \'firing\' AND $timeFilter '
                     'GROUP BY time($__interval), "rule" fill(0)', "$tag_rule")])
    b.panel("Firing, by severity",
            [_q("A", f'SELECT count("since") FROM "{ALERTS}" WHERE "state" = \'firing\' AND $timeFilter '
                     'GROUP BY time($__interval), "severity" fill(0)')])
    b.panel("Latest transitions",
            [_q("A", f'SELECT "station", "building", "household", "severity", "summary" FROM "{ALERTS}" '
                     "WHERE $timeFilter ORDER BY time DESC LIMIT 200")], kind="table", w=24)
    return b.d


def _rate(field: str, alias: str) -> dict[str, Any]:
    return _q(alias[0].upper(), f'SELECT non_negative_derivative(last("{field}"), 1s) AS "{alias}" '
                                f'FROM "{COLLECTOR}" WHERE $timeFilter '
                                'GROUP BY time($__interval), "client_id" fill(none)',
              f"{alias} $tag_client_id")


def collector() -> dict[str, Any]:
    b = Board("heatwatch-collector", "heatwatch · collector", tags=["heatwatch"], variables=[],
              time_from="now-6h")
    b.row("Throughput")
    b.panel("Messages per second", [_rate("received", "received"), _rate("accepted", "accepted"),
                                    _rate("acked", "acked")], unit="short")
    b.panel("Values and lines per second", [_rate("values", "values"), _rate("written", "written")],
            unit="short")
    b.row("Trouble")
    b.panel("Rejected messages by reason",
            [_q("A", f'SELECT non_negative_derivative(last("count"), 1m) FROM "{COLLECTOR_REJECTS}" '
                     'WHERE $timeFilter GROUP BY time($__interval), "reason" fill(none)', "$tag_reason")],
            description="per minute; the messages themselves are in the rejects measurement")
    b.panel("Spool (InfluxDB unavailable)",
            [_q("A", f'SELECT last("spool_rows") FROM "{COLLECTOR}" WHERE $timeFilter '
                     "GROUP BY time($__interval) fill(previous)", "batches waiting"),
             _q("B", f'SELECT non_negative_derivative(last("retried"), 1m) FROM "{COLLECTOR}" WHERE '
                     "$timeFilter GROUP BY time($__interval) fill(none)", "retries/min"),
             _q("C", f'SELECT last("spool_dropped") FROM "{COLLECTOR}" WHERE $timeFilter '
                     "GROUP BY time($__interval) fill(previous)", "dropped (total)")],
            thresholds=[(None, "green"), (1.0, "red")])
    b.panel("Sequence gaps per station (messages lost before the broker)",
            [_q("A", f'SELECT non_negative_difference(last("seq_gaps")) FROM "{INGEST}" WHERE $timeFilter '
                     'GROUP BY time(10m), "station" fill(none)', "$tag_station")])
    b.panel("Gateway restarts per station",
            [_q("A", f'SELECT non_negative_difference(last("restarts")) FROM "{INGEST}" WHERE $timeFilter '
                     'GROUP BY time(10m), "station" fill(none)', "$tag_station")])
    b.row("Alerts")
    b.panel("Alert transitions and pages per minute",
            [_q("A", f'SELECT non_negative_derivative(last("alert_transitions"), 1m) FROM "{COLLECTOR}" '
                     "WHERE $timeFilter GROUP BY time($__interval) fill(none)", "transitions"),
             _q("B", f'SELECT non_negative_derivative(last("alert_pages"), 1m) FROM "{COLLECTOR}" '
                     "WHERE $timeFilter GROUP BY time($__interval) fill(none)", "pages")])
    b.panel("Webhook deliveries",
            [_q("A", f'SELECT last("webhook_sent") FROM "{COLLECTOR}" WHERE $timeFilter '
                     "GROUP BY time($__interval) fill(previous)", "sent"),
             _q("B", f'SELECT last("webhook_failed") FROM "{COLLECTOR}" WHERE $timeFilter '
                     "GROUP BY time($__interval) fill(previous)", "failed")])
    return b.d


BOARDS = {"station.json": station, "alerts.json": alerts, "collector.json": collector}


def render(build: Any) -> bytes:
    return orjson.dumps(build(), option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"


def main() -> int:
    for name, build in BOARDS.items():
        (HERE / name).write_bytes(render(build))
        print(f"wrote dashboards/{name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
