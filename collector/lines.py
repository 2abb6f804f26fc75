"""Ingest stage lines: a validated message → the InfluxDB lines that store it.

Takes a ``Validated`` (see ``collector/stages.py``) and returns its line protocol, built by the
pure encoders of ``contract/influx.py`` (the schema lives there): telemetry, status, a command
result, an alert transition (Grafana's annotations), or the ``rejects`` record of a message that
failed validation (or of the readings refused from a stored one: a ``Trimmed`` message).
"""

from __future__ import annotations

from collector.stages import GatewaySeen, Rejected, Trimmed, Validated
from contract.alerts import Transition
from contract.commands import CommandResult
from contract.influx import (
    alert_line,
    command_line,
    gateway_status_line,
    reject_line,
    station_status_line,
    telemetry_lines,
)
from contract.payload import Frame


def reject(r: Rejected) -> str:
    return reject_line(r.reason, r.station, r.topic, r.detail, r.ts_ms, r.count)


def lines(item: Validated) -> list[str]:
    if isinstance(item, Frame):
        return telemetry_lines(item)
    if isinstance(item, Rejected):
        return [reject(item)]
    if isinstance(item, Trimmed):
        return [*telemetry_lines(item.frame), reject(item.refused)]
    if isinstance(item, GatewaySeen):
        return [gateway_status_line(item.status, item.received_ms)]
    if isinstance(item, CommandResult):
        return [command_line(item)]
    if isinstance(item, Transition):
        return [alert_line(item)]
    return [station_status_line(item)]
