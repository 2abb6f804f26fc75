"""The takeover report as a spreadsheet (openpyxl): a summary sheet, then one sheet per part —
make-up water, room temperature, information management, service, remote control — and what
is missing. Numbers stay numbers (an engineer sorts and sums them); times are local."""

from __future__ import annotations

import datetime as dt
import io
from collections.abc import Sequence
from typing import Any

from openpyxl import Workbook
from openpyxl.styles import Alignment, Font, PatternFill
from openpyxl.utils import get_column_letter
from openpyxl.worksheet.worksheet import Worksheet

from report.model import Report

_HEAD = Font(bold=True)
_FILL = PatternFill("solid", fgColor="DDE6F0")
_FAIL = PatternFill("solid", fgColor="F8D7D3")


def local(ms: int | None, tz_h: float, fmt: str = "%Y-%m-%d %H:%M") -> str:
    if ms is None:
        return ""
    return dt.datetime.fromtimestamp(ms / 1000, dt.timezone(dt.timedelta(hours=tz_h))).strftime(fmt)


class _Sheet:
    def __init__(self, ws: Worksheet) -> None:
        self.ws, self.row = ws, 1
        self.widths: dict[int, int] = {}

    def title(self, text: str) -> None:
        self.ws.cell(self.row, 1, text).font = Font(bold=True, size=12)
        self.row += 1

    def table(self, header: Sequence[str], rows: Sequence[Sequence[Any]], *,
              fail_col: int | None = None) -> None:
        for c, h in enumerate(header, 1):
            cell = self.ws.cell(self.row, c, h)
            cell.font, cell.fill = _HEAD, _FILL
            cell.alignment = Alignment(wrap_text=True, vertical="top")
            self.widths[c] = max(self.widths.get(c, 8), min(40, len(h) + 2))
        self.row += 1
        for r in rows:
            failed = fail_col is not None and r[fail_col] is False
            for c, v in enumerate(r, 1):
                cell = self.ws.cell(self.row, c, "yes" if v is True else "no" if v is False else v)
                if failed:
                    cell.fill = _FAIL
                self.widths[c] = max(self.widths.get(c, 8), min(50, len(str(v)) + 2))
            self.row += 1
        if not rows:
            self.ws.cell(self.row, 1, "(none)")
            self.row += 1
        self.row += 1

    def done(self) -> None:
        for c, w in self.widths.items():
            self.ws.column_dimensions[get_column_letter(c)].width = w
        self.ws.freeze_panes = None


def workbook(rep: Report) -> bytes:
    tz = rep.period.timezone_offset_h
    wb = Workbook()
    first = wb.active
    assert isinstance(first, Worksheet)
    s = _Sheet(first)
    s.ws.title = "Summary"
    s.title(f"{rep.company} — takeover report, {rep.period.title}")
    mk, rm, inf, sv, rc = rep.makeup, rep.rooms, rep.information, rep.service, rep.remote_control
    s.table(["figure", "value"], [
        ["period", f"{local(rep.period.start, tz)} – {local(rep.period.end, tz)} (UTC{tz:+g})"],
        ["generated", local(rep.generated_at, tz)],
        ["stations", len(rep.stations)],
        *[[f"make-up rate, {n.network} (%)", n.rate_pct] for n in mk.company],
        *[[f"make-up limit, {n.network} (%)", n.limit_pct] for n in mk.company],
        ["stations meeting the make-up limit", mk.passing], ["stations above it", mk.failing],
        ["stations without make-up data", mk.no_data], ["leak / theft incidents", len(mk.incidents)],
        ["room pass rate (%)", rm.rate_pct], ["sensor-hours", rm.hours],
        ["days below the design outdoor temperature", ", ".join(rep.period.cold_days) or "none"],
        ["data completeness (%)", inf.completeness_pct], ["online (%)", inf.online_pct],
        ["alerts raised", sv.raised], ["median time to acknowledge (min)", sv.to_acknowledge.median_min],
        ["median time to resolve (min)", sv.to_resolve.median_min], ["hotline tickets", len(sv.tickets)],
        ["remotely controllable buildings", rc.controllable],
        ["buildings proven by a confirmed command", rc.proven if rc.wired else "commands not read"],
        *[[f"commands {o}", n] for o, n in rc.commands.items()],
    ])
    s.done()

    s = _Sheet(wb.create_sheet("Make-up water"))
    s.title("Make-up rate per station and network (make-up ÷ circulating volume)")
    s.table(["station", "name", "network", "make-up m³", "judged make-up m³", "circulation m³",
             "judged hours", "rate %", "limit %", "meets limit", "margin pp", "heated area m²",
             "t/10,000 m²/day", "meter events", "maintenance m³", "incidents"],
            [[x.station, x.name, n.network, n.makeup_m3, n.judged_makeup_m3, n.circulation_m3, n.judged_hours,
              n.rate_pct, n.limit_pct, n.passed, n.margin_pp, x.area_m2, n.daily_t_per_10k_m2, n.meter_events,
              n.excluded_m3, x.incidents] for x in mk.stations for n in x.networks], fail_col=9)
    s.title("Company, per network")
    s.table(["network", "judged make-up m³", "circulation m³", "rate %", "limit %", "meets limit",
             "t/10,000 m²/day"],
            [[n.network, n.judged_makeup_m3, n.circulation_m3, n.rate_pct, n.limit_pct, n.passed,
              n.daily_t_per_10k_m2] for n in mk.company], fail_col=5)
    s.title("Leak and theft incidents of the period (alert store)")
    s.table(["alert", "station", "rule", "network", "severity", "kind", "from", "to", "value", "detail",
             "ticket"],
            [[x.alert_id, x.station, x.rule, x.network, x.severity, x.kind, local(x.since, tz),
              local(x.resolved_at, tz) or "open", x.value, x.detail, x.ticket] for x in mk.incidents])
    s.done()

    s = _Sheet(wb.create_sheet("Room temperature"))
    s.title("Room pass rate (室温合格率) per station")
    s.table(["station", "name", "sensor-hours", "≥ standard", "pass rate %", "fault hours left out",
             *[f"band {b}" for b in rm.band_counts]],
            [[x.station, x.name, x.hours, x.passing, x.rate_pct, x.fault_hours, *x.bands.values()]
             for x in rm.stations])
    s.title("Per building")
    s.table(["station", "building", "address", "standard °C", "sensors", "sensor-hours", "≥ standard",
             "pass rate %", "households below"],
            [[x.station, b.building, b.address, b.standard_c, b.sensors, b.hours, b.passing, b.rate_pct,
              b.households_low] for x in rm.stations for b in x.buildings])
    s.title(f"Households below the standard longest (refund after {rm.refund_after_h:g} h)")
    s.table(["station", "building", "sensor", "household", "address", "standard °C", "hours below",
             "longest run h", "from", "coldest °C", "band", "refund %"],
            [[x.station, x.building, x.sensor, x.code, x.address, x.standard_c, x.hours_below, x.longest_h,
              local(x.longest_from, tz), x.coldest_c, x.band, x.refund_pct] for x in rm.longest])
    s.title("Refund bands")
    s.table(["band", "shortfall above K", "up to K", "refund %", "households"],
            [[b.name, b.above_k, b.up_to_k, b.refund_pct, rm.band_counts.get(b.name, 0)] for b in rm.bands])
    s.done()

    s = _Sheet(wb.create_sheet("Information"))
    s.title("Data completeness, online time and gaps per station")
    s.table(["station", "name", "expected from", "expected samples", "received", "completeness %", "hours",
             "online hours", "online %", "gaps", "gap hours", "longest gap h"],
            [[x.station, x.name, x.source, x.expected, x.received, x.completeness_pct, x.period_hours,
              x.online_hours, x.online_pct, x.gaps, x.gap_hours, x.longest_gap_h] for x in inf.stations])
    s.title("Sensor coverage per building")
    s.table(["station", "building", "households", "sensors registered", "sensors reporting", "coverage %"],
            [[x.station, b.building, b.households, b.sensors_registered, b.sensors_reporting, b.coverage_pct]
             for x in inf.stations for b in x.buildings])
    s.title("Longest gaps")
    s.table(["station", "from", "to", "hours"],
            [[x.station, local(g.start, tz), local(g.end, tz), g.hours]
             for x in inf.stations for g in x.gap_list])
    s.done()

    s = _Sheet(wb.create_sheet("Service"))
    s.title("Alerts raised in the period, time to acknowledge and to resolve")
    rules = sorted({r for x in sv.stations for r in x.by_rule})
    s.table(["station", "raised", *rules, "acknowledged", "ack median min", "ack p90 min", "resolved",
             "resolve median min", "resolve p90 min", "tickets"],
            [[x.station, x.raised, *[x.by_rule.get(r, 0) for r in rules], x.acknowledged,
              x.to_acknowledge.median_min, x.to_acknowledge.p90_min, x.resolved, x.to_resolve.median_min,
              x.to_resolve.p90_min, x.tickets] for x in sv.stations])
    s.title("Acknowledgements and notes with a hotline ticket")
    s.table(["time", "station", "alert", "rule", "kind", "by", "ticket", "note"],
            [[local(t.ts, tz), t.station, t.alert_id, t.rule, t.kind, t.actor, t.ticket, t.note]
             for t in sv.tickets])
    s.done()

    s = _Sheet(wb.create_sheet("Remote control"))
    s.title("Building remote control" + ("" if rc.wired else " — commands not read"))
    outcomes = sorted({o for x in rc.stations for o in x.commands})
    s.table(["station", "controllable", "from", "proven by a confirmed command", "controllable buildings",
             "proven buildings", *[f"commands {o}" for o in outcomes]],
            [[x.station, len(x.controllable), x.source or "unknown", len(x.proven), ", ".join(x.controllable),
              ", ".join(x.proven), *[x.commands.get(o, 0) for o in outcomes]] for x in rc.stations])
    s.title("Valves proven: the first confirmed command of the period to each")
    s.table(["station", "building", "command", "read back at", "ticket"],
            [[x.station, x.building, x.command, local(x.at, tz), x.ticket] for x in rc.proofs])
    s.done()

    s = _Sheet(wb.create_sheet("Missing and notes"))
    s.table(["missing, and for want of what"], [[m] for m in rep.missing])
    s.table(["how the figures were obtained"], [[n] for n in rep.notes])
    s.done()
    buf = io.BytesIO()
    wb.save(buf)
    return buf.getvalue()
