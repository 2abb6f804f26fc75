"""The takeover report's statements over the 1-hour rollup (``rollup_1h``, contract/influx.py).

Plain aggregates and selectors per station or sensor over stored hours — no ``GROUP BY time`` and
no statement that returns a row per station-hour. Each function takes ``each(statements)``, which
sends the statements as concurrent requests (InfluxDB answers one request on one core) and gives
back the series of each, and returns what it read; report.source wires them.

What the costs are (bench/report_bench.py, on the 2-core machine shared with other work): each
aggregate or selector is one pass over one field's stored hours — 500 stations × 121 days (1.45 M
station-hours): a count or a first/last 0.3–0.4 s, a float sum 0.5–0.9 s, a spread 1.9 s, a
derivative in a subquery ~2.6 s (elapsed and difference together 4.6 s: a subquery's columns each
cost a pass); later, under heavier load, 0.7–1 µs an hour (a count over 1.44 M sensor-hours
1.0–1.4 s; a count and a min together twice that: docs/report.md). A row returned costs ~7 µs of
JSON on both sides (1.45 M hourly rows: 10–15 s). So make-up comes from
counts and first/last selectors with one derivative pass to find the hours that would break them,
and only the stations with such hours are read hour by hour.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

from contract.alerts import AlertRules
from contract.influx import (
    MEASUREMENT_BUILDING,
    MEASUREMENT_HOUSEHOLD,
    MEASUREMENT_STATION,
    PLAUSIBLE_MEAN,
    ROLLUP_1H,
)
from contract.points import QUALITY_SUFFIX
from contract.topics import IDENT_PATTERN
from report import compute
from report.compute import HOUR_MS, HourRow, MakeupTally, PointKey, Presence, Range, Sensor

Each = Callable[[list[str]], Awaitable[list[list[dict[str, Any]]]]]
RP = ROLLUP_1H.rp
PM = f'"{PLAUSIBLE_MEAN}"'
BY_SENSOR = ' GROUP BY "station", "building", "household"'
STATIONS_PER_READ = 50  # stations read hour by hour per statement: ~150k rows a season, ~1 s


def src(measurement: str) -> str:
    return f'"{RP}"."{measurement}"'


def t(start: int, end: int) -> str:
    return f"time >= {int(start)}ms AND time < {int(end)}ms"


def rows(series: list[dict[str, Any]]) -> list[tuple[dict[str, str], dict[str, Any]]]:
    out = []
    for s in series:
        tags = s.get("tags") or {}
        for v in s.get("values") or []:
            out.append((tags, dict(zip(s["columns"], v, strict=True))))
    return out


def per_station(series: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """One row per station (an aggregate or selector without GROUP BY time)."""
    return {tags["station"]: row for tags, row in rows(series)}


_IDENT = re.compile(IDENT_PATTERN)


def one_of(tag: str, values: Iterable[str]) -> str:
    """`` AND "tag" =~ /^(a|b)$/`` for identifiers (checked: they become InfluxQL text)."""
    vals = sorted(set(values))
    for v in vals:
        if not _IDENT.fullmatch(v):
            raise ValueError(f"unexpected identifier {v!r} in InfluxDB's answer")
    return f' AND "{tag}" =~ /^({"|".join(v.replace(".", chr(92) + ".") for v in vals)})$/'


def chunks(xs: Iterable[str], n: int = STATIONS_PER_READ) -> list[list[str]]:
    s = sorted(set(xs))
    return [s[j:j + n] for j in range(0, len(s), n)]


def outdoor(span: str, offset: str) -> str:
    """The company's daily outdoor mean: the mean of the stations' hourly means (the raw path
    averages the samples; the same where every hour holds as many samples)."""
    return (f'SELECT mean("mean_outdoor_temp") AS m FROM {src(MEASUREMENT_STATION)} WHERE {span} '
            f"GROUP BY time(1d, {offset}) fill(none)")


async def counts(each: Each, span: str) -> dict[str, dict[PointKey, int]]:
    """Samples received per point and entity: the hours' ``count_<point>`` summed."""
    levels = (("station", MEASUREMENT_STATION, ' GROUP BY "station"'),
              ("building", MEASUREMENT_BUILDING, ' GROUP BY "station", "building"'),
              ("household", MEASUREMENT_HOUSEHOLD, BY_SENSOR))
    res = await each([f"SELECT sum(/^count_/) FROM {src(m)} WHERE {span}{by}" for _, m, by in levels])
    out: dict[str, dict[PointKey, int]] = {}
    for (level, _, _), series in zip(levels, res, strict=True):
        for tags, row in rows(series):
            c = out.setdefault(tags["station"], {})
            b, h = tags.get("building"), tags.get("household")
            for col, n in row.items():
                if col.startswith("sum_count_") and n and not col.endswith(QUALITY_SUFFIX):
                    c[(col.removeprefix("sum_count_"), b if level != "station" else None,
                       h if level == "household" else None)] = int(n)
    return out


async def presence(each: Each, span: str, ref_point: dict[str, str], samples: dict[str, int],
                   no_plan: set[str], start: int, end: int) -> dict[str, Presence]:
    """Each station's hours with a sample of its reference point: how many, the most in one hour,
    the first and the last. A station whose hours run without a gap between those two (and,
    without a gateway config, whose ``samples`` are the most × the hours: the same count every
    hour, its rate) needs no more; the others are read hour by hour. A rollup row holds a point's
    count only when the point had a sample in that hour (``fill(none)``)."""
    by_ref: dict[str, list[str]] = defaultdict(list)
    for st, r in ref_point.items():
        by_ref[r].append(st)
    refs = sorted(by_ref)
    stmts: list[str] = []
    for r in refs:
        c, w = f'"count_{r}"', f'WHERE {span} GROUP BY "station"'
        stmts += [f"SELECT count({c}) AS n, max({c}) AS hi FROM {src(MEASUREMENT_STATION)} {w}",
                  f"SELECT first({c}) AS v FROM {src(MEASUREMENT_STATION)} {w}",
                  f"SELECT last({c}) AS v FROM {src(MEASUREMENT_STATION)} {w}"]
    res = await each(stmts)
    out: dict[str, Presence] = {}
    odd: dict[str, list[str]] = defaultdict(list)
    for j, r in enumerate(refs):
        n, first, last = (per_station(res[3 * j + k]) for k in range(3))
        for st in by_ref[r]:
            if st not in n:
                continue
            hours, hi = int(n[st]["n"]), int(n[st]["hi"])
            f, lt = int(first[st]["time"]), int(last[st]["time"])
            if hours != (lt - f) // HOUR_MS + 1 or (st in no_plan and samples.get(st) != hours * hi):
                odd[r].append(st)
                continue
            p = compute.presence(((h, 1) for h in range(f, lt + HOUR_MS, HOUR_MS)), start, end)
            p.rate = hi if st in no_plan else None
            out[st] = p
    stmts = [f'SELECT "count_{r}" AS n FROM {src(MEASUREMENT_STATION)} WHERE {span}{one_of("station", c)} '
             'GROUP BY "station"' for r, sts in sorted(odd.items()) for c in chunks(sts)]
    for series in await each(stmts) if stmts else []:
        hourly: dict[str, list[tuple[int, int]]] = defaultdict(list)
        for tags, row in rows(series):
            hourly[tags["station"]].append((int(row["time"]), int(row["n"])))
        for st, hs in hourly.items():
            out[st] = compute.presence(hs, start, end)
    return out


async def makeup(each: Each, span: str, rules: AlertRules, nets: dict[str, tuple[str, str]],
                 hours: Range) -> dict[tuple[str, str], MakeupTally]:
    """Each station network's make-up (``nets``: network → totalizer and circulation points).

    Per station, from the rollup's hourly ``last_`` totalizer and ``mean_`` flow: how many hours
    hold each, the first and last of each (value and hour), the flows' sum; and one derivative
    pass for the hours whose totalizer went back or rose faster than the smallest
    ``max_plausible_flow``. A station whose totalizer and flow hours are the same unbroken run,
    with no such hour and no maintenance window, has volume = judged = last − first, circulation =
    the flows' sum less the first hour's (nothing to judge it against), judged hours = n − 1 —
    what ``compute.tally`` gives hour by hour. The others are read hour by hour and tallied."""
    step = min([rules.makeup.max_plausible_flow,
                *(rules.makeup_for(s).max_plausible_flow for s in rules.stations)])
    pairs = sorted(set(nets.values()))
    stmts: list[str] = []
    for tot, circ in pairs:
        tt, ff, w = f'"last_{tot}"', f'"mean_{circ}"', f'WHERE {span} GROUP BY "station"'
        s = src(MEASUREMENT_STATION)
        stmts += [f"SELECT count({tt}) AS n, count({ff}) AS nf, sum({ff}) AS sf FROM {s} {w}",
                  f"SELECT first({tt}) AS v FROM {s} {w}", f"SELECT last({tt}) AS v FROM {s} {w}",
                  f"SELECT first({ff}) AS v FROM {s} {w}", f"SELECT last({ff}) AS v FROM {s} {w}",
                  f"SELECT r FROM (SELECT derivative({tt}, 1h) AS r FROM {s} {w}) "
                  f'WHERE r < 0 OR r > {float(step)!r} GROUP BY "station"']
    res = await each(stmts)
    serviced = {w.station for w in rules.maintenance if w.building is None and w.station is not None
                and int(w.start.timestamp() * 1000) < hours[1] and int(w.end.timestamp() * 1000) > hours[0]}
    out: dict[tuple[str, str], MakeupTally] = {}
    odd: dict[tuple[str, str], list[str]] = defaultdict(list)
    for j, pair in enumerate(pairs):
        sums, t0, t1, f0, f1 = (per_station(res[6 * j + k]) for k in range(5))
        broken = {tags["station"] for tags, _ in rows(res[6 * j + 5])}
        for st, x in sums.items():
            n = int(x["n"] or 0)
            if n == 0:
                continue
            first, last = int(t0[st]["time"]), int(t1[st]["time"])
            same = (int(x["nf"] or 0) == n and st in f0 and int(f0[st]["time"]) == first
                    and int(f1[st]["time"]) == last)
            if st in broken or st in serviced or not same or n != (last - first) // HOUR_MS + 1:
                odd[pair].append(st)
                continue
            vol = float(t1[st]["v"]) - float(t0[st]["v"])
            got = MakeupTally(volume=vol, judged=vol, circulation=float(x["sf"]) - float(f0[st]["v"]),
                              hours=n - 1, first=first, last=last)
            out.update({(st, nn): got for nn, p in nets.items() if p == pair})
    order = [(pair, c) for pair, sts in sorted(odd.items()) for c in chunks(sts)]
    res = await each([f'SELECT "last_{tot}" AS total, "mean_{circ}" AS circ FROM {src(MEASUREMENT_STATION)} '
                      f'WHERE {span}{one_of("station", c)} GROUP BY "station"' for (tot, circ), c in order])
    for (pair, _), series in zip(order, res, strict=True):
        hourly: dict[str, list[HourRow]] = defaultdict(list)
        for tags, row in rows(series):
            hourly[tags["station"]].append((int(row["time"]), row.get("total"), row.get("circ")))
        for st, hs in hourly.items():
            out.update({(st, nn): compute.tally(rules, st, nn, hs) for nn, p in nets.items() if p == pair})
    return out


async def rooms(each: Each, ranges: Sequence[Range], stds: Sequence[float]
                ) -> tuple[dict[Sensor, compute.RoomTotal], dict[Sensor, list[tuple[int, float]]]]:
    """Sensor-hours (the plausible hourly means) per sensor, and every hour below the highest
    standard with its mean; a sensor's hours at or above a standard are its hours less those
    below it. Two passes over the sensor-hours, run side by side: a count, and a filter."""
    top = max(stds)
    res = await each([f"SELECT count({PM}) AS n FROM {src(MEASUREMENT_HOUSEHOLD)} WHERE {t(s, e)}{BY_SENSOR}"
                      for s, e in ranges] +
                     [f"SELECT {PM} AS m FROM {src(MEASUREMENT_HOUSEHOLD)} WHERE {t(s, e)} AND {PM} < {top!r}"
                      f"{BY_SENSOR}" for s, e in ranges])
    totals: dict[Sensor, compute.RoomTotal] = {}
    low: dict[Sensor, list[tuple[int, float]]] = {}
    for series in res[:len(ranges)]:
        for tags, row in rows(series):
            totals.setdefault((tags["station"], tags["building"], tags["household"]),
                              compute.RoomTotal()).hours += int(row["n"] or 0)
    for series in res[len(ranges):]:
        for tags, row in rows(series):
            low.setdefault((tags["station"], tags["building"], tags["household"]), []).append(
                (int(row["time"]), float(row["m"])))
    for k, tot in totals.items():
        below = [v for _, v in low.get(k, [])]
        tot.passing = {std: tot.hours - sum(1 for v in below if v < std) for std in stds}
    return totals, low


def sensor_hours(s: int, e: int, n: int) -> str:
    """One sensor's plausible hourly means in [s, e) (station, building, household bound as $s<n> …)."""
    return (f'SELECT {PM} AS m FROM {src(MEASUREMENT_HOUSEHOLD)} WHERE "station" = $s{n} '
            f'AND "building" = $b{n} AND "household" = $h{n} AND {t(s, e)}')
