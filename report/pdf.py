"""The takeover report as a printable PDF (reportlab): the company and the period on every page,
a summary, two charts (room pass rate by station; make-up rate by station against the limit),
then the tables of each part and what is missing.

reportlab draws the charts itself (reportlab.graphics), so the PDF needs no plotting stack. Chinese
names need a font with CJK and Latin glyphs embedded: the first of ``CJK_FONTS`` found (Debian's
fonts-wqy-microhei, which bootstrap installs); without one the PDF names reportlab's built-in
STSong-Light, which a viewer substitutes."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from reportlab.graphics.charts.barcharts import HorizontalBarChart
from reportlab.graphics.shapes import Drawing, Line, String
from reportlab.lib import colors
from reportlab.lib.pagesizes import A4, landscape
from reportlab.lib.styles import ParagraphStyle
from reportlab.lib.units import mm
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.cidfonts import UnicodeCIDFont
from reportlab.pdfbase.ttfonts import TTFont
from reportlab.platypus import (
    KeepTogether,
    PageBreak,
    Paragraph,
    SimpleDocTemplate,
    Spacer,
    Table,
    TableStyle,
)

from report.model import Report
from report.xlsx import local

# fonts with Latin and CJK glyphs both (reportlab does no per-glyph fallback between fonts)
CJK_FONTS = ("/usr/share/fonts/truetype/wqy/wqy-microhei.ttc", "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc")
CHART_MAX = 30  # stations per chart: the worst ones (a chart of 500 bars reads as nothing)
PROOFS_MAX = 300  # rows of proven valves in the PDF (a season of a large company has thousands)
PAGE = landscape(A4)
_FONT: str | None = None


def _font() -> str:
    global _FONT
    if _FONT is None:
        for f in CJK_FONTS:
            if Path(f).exists():
                pdfmetrics.registerFont(TTFont("HW-CJK", f, subfontIndex=0))
                _FONT = "HW-CJK"
                break
        else:
            pdfmetrics.registerFont(UnicodeCIDFont("STSong-Light"))
            _FONT = "STSong-Light"
    return _FONT


def _styles() -> dict[str, ParagraphStyle]:
    f = _font()
    return {"h1": ParagraphStyle("h1", fontName=f, fontSize=18, leading=24, spaceAfter=6),
            "h2": ParagraphStyle("h2", fontName=f, fontSize=13, leading=18, spaceBefore=10, spaceAfter=4),
            "p": ParagraphStyle("p", fontName=f, fontSize=9, leading=12),
            "small": ParagraphStyle("small", fontName=f, fontSize=7.5, leading=10),
            "cell": ParagraphStyle("cell", fontName=f, fontSize=7.5, leading=9)}


def _fmt(v: Any) -> str:
    if v is None:
        return "—"
    if v is True:
        return "yes"
    if v is False:
        return "NO"
    if isinstance(v, float):
        return f"{v:,.2f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], st: dict[str, ParagraphStyle], *,
           fail_col: int | None = None, widths: Sequence[float] | None = None) -> Table:
    data: list[list[Paragraph | str]] = [[Paragraph(h, st["cell"]) for h in header]]
    data += [[Paragraph(_fmt(v), st["cell"]) for v in r] for r in rows] or [
        [Paragraph("(none)", st["cell"]), *[""] * (len(header) - 1)]]
    t = Table(data, repeatRows=1, colWidths=widths, hAlign="LEFT")
    style: list[Any] = [("GRID", (0, 0), (-1, -1), 0.25, colors.grey),
             ("BACKGROUND", (0, 0), (-1, 0), colors.HexColor("#DDE6F0")),
             ("VALIGN", (0, 0), (-1, -1), "TOP"),
             ("TOPPADDING", (0, 0), (-1, -1), 1.5), ("BOTTOMPADDING", (0, 0), (-1, -1), 1.5)]
    if fail_col is not None:
        for i, r in enumerate(rows, 1):
            if r[fail_col] is False:
                style.append(("BACKGROUND", (0, i), (-1, i), colors.HexColor("#F8D7D3")))
    t.setStyle(TableStyle(style))
    return t


def _bars(title: str, labels: list[str], values: list[float], *, limit: float | None, limit_label: str,
          unit: str, fail_above: bool) -> Drawing:
    """A horizontal bar chart, one bar per station, with the limit as a vertical line."""
    font = _font()
    n = max(1, len(labels))
    height = 40.0 + 14 * n
    d = Drawing(250 * mm, height + 20)
    d.add(String(0, height + 8, title, fontName=font, fontSize=11))
    c = HorizontalBarChart()
    c.x, c.y = 70, 20
    c.width, c.height = int(160 * mm), int(height - 30)
    c.data = [values or [0.0]]
    c.categoryAxis.categoryNames = labels or ["(no data)"]
    c.categoryAxis.labels.fontName = font
    c.categoryAxis.labels.fontSize = 7
    c.categoryAxis.reverseDirection = True
    top = max([*values, limit or 0.0, 1e-9]) * 1.15
    c.valueAxis.valueMin, c.valueAxis.valueMax = 0, top
    c.valueAxis.labels.fontName = font
    c.valueAxis.labels.fontSize = 7
    c.valueAxis.labelTextFormat = "%g" + unit
    c.barWidth = 8
    c.barLabelFormat = "%.2f"  # the figure itself at each bar's end: a printout is read, not hovered
    c.barLabels.fontName = font
    c.barLabels.fontSize = 7
    c.barLabels.boxAnchor = "w"
    c.barLabels.dx = 3
    c.bars[0].fillColor = colors.HexColor("#4E79A7")
    for i, v in enumerate(values):
        bad = limit is not None and (v > limit if fail_above else v < limit)
        if bad:
            c.bars[(0, i)].fillColor = colors.HexColor("#E15759")
    d.add(c)
    if limit is not None:
        x = c.x + c.width * limit / top
        d.add(Line(x, c.y - 4, x, c.y + c.height + 4, strokeColor=colors.HexColor("#B22222"), strokeWidth=1.2,
                   strokeDashArray=[3, 2]))
        d.add(String(x + 3, c.y + c.height + 2, limit_label, fontName=font, fontSize=7,
                     fillColor=colors.HexColor("#B22222")))
    return d


def document(rep: Report) -> bytes:
    st = _styles()
    tz = rep.period.timezone_offset_h
    heading = f"{rep.company} · takeover report · {rep.period.title}"

    def on_page(canvas: Any, doc: Any) -> None:
        canvas.saveState()
        canvas.setFont(_font(), 8)
        canvas.drawString(12 * mm, PAGE[1] - 8 * mm, heading)
        canvas.drawRightString(PAGE[0] - 12 * mm, PAGE[1] - 8 * mm,
                               f"generated {local(rep.generated_at, tz)}")
        canvas.drawRightString(PAGE[0] - 12 * mm, 7 * mm, f"page {doc.page}")
        canvas.restoreState()

    mk, rm, inf, sv, rc = rep.makeup, rep.rooms, rep.information, rep.service, rep.remote_control
    out: list[Any] = [
        Paragraph(f"{rep.company}", st["h1"]),
        Paragraph(f"Takeover report — {rep.period.title}", st["h2"]),
        Paragraph(f"{local(rep.period.start, tz)} – {local(rep.period.end, tz)} (UTC{tz:+g}); "
                  f"{len(rep.stations)} stations. Make-up water, room temperature (GB/T 33833: ≥ 18 °C), "
                  "information management, service and building remote control, per station and for the "
                  "company.", st["p"]),
        Spacer(1, 4 * mm),
    ]
    summary = [
        *[[f"Make-up rate, {n.network} network", f"{_fmt(n.rate_pct)} % (limit {n.limit_pct:g} %)",
           "meets the limit" if n.passed else "ABOVE the limit" if n.passed is False else "no data"]
          for n in mk.company],
        ["Stations meeting / above the make-up limit", f"{mk.passing} / {mk.failing}",
         f"{mk.no_data} without data; {len(mk.incidents)} leak/theft incidents"],
        ["Room pass rate (室温合格率)", f"{_fmt(rm.rate_pct)} %",
         f"{rm.hours:,} sensor-hours; {len(rep.period.cold_days)} day(s) below the design "
         f"{rep.period.design_outdoor_temp:g} °C left out"],
        ["Data completeness / online", f"{_fmt(inf.completeness_pct)} % / {_fmt(inf.online_pct)} %",
         f"{inf.received:,} of {inf.expected:,} expected samples"],
        ["Alerts raised / hotline tickets", f"{sv.raised} / {len(sv.tickets)}",
         f"median {_fmt(sv.to_acknowledge.median_min)} min to acknowledge, "
         f"{_fmt(sv.to_resolve.median_min)} min to resolve"],
        ["Remotely controllable buildings / proven", f"{rc.controllable} / {rc.proven if rc.wired else '—'}",
         (", ".join(f"{n} {o}" for o, n in rc.commands.items()) or "no commands") if rc.wired
         else "commands not read"],
    ]
    out.append(_table(["figure", "value", ""], summary, st, widths=[70 * mm, 50 * mm, 140 * mm]))
    # the two charts: the stations that need looking at first
    rated = [s for s in rm.stations if s.rate_pct is not None]
    worst = sorted(rated, key=lambda s: (s.rate_pct or 0.0, s.station))[:CHART_MAX]
    out.append(Spacer(1, 4 * mm))
    lowest = f" — the {CHART_MAX} lowest" if len(rated) > CHART_MAX else ""
    out.append(KeepTogether(_bars(
        f"Room pass rate by station (%){lowest}",
        [s.station for s in worst], [s.rate_pct or 0.0 for s in worst], limit=90.0, limit_label="90 %",
        unit="", fail_above=False)))
    out.append(PageBreak())
    for net in mk.company:
        nets = [(s.station, n) for s in mk.stations for n in s.networks if n.network == net.network
                and n.rate_pct is not None]
        top = sorted(nets, key=lambda x: (-(x[1].rate_pct or 0.0), x[0]))[:CHART_MAX]
        out.append(KeepTogether(_bars(
            f"Make-up rate by station, {net.network} network (%), against the limit"
            f"{' — the ' + str(CHART_MAX) + ' highest' if len(nets) > CHART_MAX else ''}",
            [s for s, _ in top], [n.rate_pct or 0.0 for _, n in top], limit=net.limit_pct,
            limit_label=f"limit {net.limit_pct:g} %", unit="", fail_above=True)))
    out.append(Paragraph("Make-up water per station", st["h2"]))
    out.append(_table(
        ["station", "name", "network", "make-up m³", "circulation m³", "rate %", "limit %", "meets",
         "margin pp", "area m²", "t/10⁴m²/day", "incidents"],
        [[s.station, s.name, n.network, n.makeup_m3, n.circulation_m3, n.rate_pct, n.limit_pct, n.passed,
          n.margin_pp, s.area_m2, n.daily_t_per_10k_m2, s.incidents]
         for s in mk.stations for n in s.networks],
        st, fail_col=7))
    out.append(Paragraph("Leak and theft incidents", st["h2"]))
    out.append(_table(["station", "rule", "network", "kind", "from", "to", "value", "detail", "ticket"],
                      [[x.station, x.rule, x.network, x.kind, local(x.since, tz),
                        local(x.resolved_at, tz) or "open", x.value, x.detail, x.ticket]
                       for x in mk.incidents],
                      st))
    out.append(PageBreak())
    out.append(Paragraph("Room temperature", st["h2"]))
    bands = list(rm.band_counts)
    out.append(_table(["station", "name", "sensor-hours", "≥ standard", "pass rate %", "fault hours",
                       *[f"band {b}" for b in bands]],
                      [[s.station, s.name, s.hours, s.passing, s.rate_pct, s.fault_hours,
                        *[s.bands.get(b, 0) for b in bands]] for s in rm.stations], st))
    out.append(Paragraph("Per building", st["h2"]))
    out.append(_table(["station", "building", "address", "sensors", "sensor-hours", "pass rate %",
                       "households below"],
                      [[s.station, b.building, b.address, b.sensors, b.hours, b.rate_pct, b.households_low]
                       for s in rm.stations for b in s.buildings], st))
    out.append(Paragraph(f"Households below the standard longest (a refund band after "
                         f"{rm.refund_after_h:g} h below)", st["h2"]))
    out.append(_table(["station", "building", "household", "address", "hours below", "longest h", "from",
                       "coldest °C", "band", "refund %"],
                      [[x.station, x.building, x.code or x.sensor, x.address, x.hours_below, x.longest_h,
                        local(x.longest_from, tz), x.coldest_c, x.band, x.refund_pct]
                       for x in rm.longest], st))
    out.append(PageBreak())
    out.append(Paragraph("Information management", st["h2"]))
    out.append(_table(["station", "name", "expected from", "expected", "received", "completeness %",
                       "online %", "gaps", "gap hours", "longest gap h"],
                      [[s.station, s.name, s.source, s.expected, s.received, s.completeness_pct, s.online_pct,
                        s.gaps, s.gap_hours, s.longest_gap_h] for s in inf.stations], st))
    out.append(Paragraph("Sensor coverage per building", st["h2"]))
    out.append(_table(["station", "building", "households", "sensors registered", "reporting", "coverage %"],
                      [[s.station, b.building, b.households, b.sensors_registered, b.sensors_reporting,
                        b.coverage_pct] for s in inf.stations for b in s.buildings], st))
    out.append(Paragraph("Service", st["h2"]))
    rules = sorted({r for s in sv.stations for r in s.by_rule})
    out.append(_table(["station", "raised", *rules, "acked", "ack median min", "resolved",
                       "resolve median min", "tickets"],
                      [[s.station, s.raised, *[s.by_rule.get(r, 0) for r in rules], s.acknowledged,
                        s.to_acknowledge.median_min, s.resolved, s.to_resolve.median_min, s.tickets]
                       for s in sv.stations], st))
    out.append(Paragraph("Acknowledgements with hotline tickets", st["h2"]))
    out.append(_table(["time", "station", "rule", "kind", "by", "ticket", "note"],
                      [[local(t.ts, tz), t.station, t.rule, t.kind, t.actor, t.ticket, t.note]
                       for t in sv.tickets[:200]], st))
    wired = "" if rc.wired else " (commands not read)"
    out.append(Paragraph(f"Building remote control{wired}", st["h2"]))
    outcomes = sorted({o for s in rc.stations for o in s.commands})
    out.append(_table(["station", "controllable buildings", "from", "proven by a confirmed command",
                       *outcomes],
                      [[s.station, ", ".join(s.controllable) or "—", s.source or "unknown",
                        ", ".join(s.proven) or "—", *[s.commands.get(o, 0) for o in outcomes]]
                       for s in rc.stations], st))
    more = f" (the first {PROOFS_MAX}; all in the spreadsheet)" if len(rc.proofs) > PROOFS_MAX else ""
    out.append(Paragraph(f"Valves proven: the first confirmed command of the period{more}", st["h2"]))
    out.append(_table(["station", "building", "command", "read back at", "ticket"],
                      [[x.station, x.building, x.command, local(x.at, tz), x.ticket]
                       for x in rc.proofs[:PROOFS_MAX]], st))
    out.append(Paragraph("Missing figures, and for want of what", st["h2"]))
    out += [Paragraph(f"• {m}", st["small"]) for m in rep.missing] or [Paragraph("nothing", st["small"])]
    out.append(Paragraph("How the figures were obtained", st["h2"]))
    out += [Paragraph(f"• {n}", st["small"]) for n in rep.notes]
    buf = io.BytesIO()
    doc = SimpleDocTemplate(buf, pagesize=PAGE, leftMargin=12 * mm, rightMargin=12 * mm, topMargin=14 * mm,
                            bottomMargin=12 * mm, title=heading, author=rep.company)
    doc.build(out, onFirstPage=on_page, onLaterPages=on_page)
    return buf.getvalue()
