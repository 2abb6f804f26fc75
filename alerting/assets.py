"""Assets from the company's CSV: stations, buildings (address), households (code, unit, sensor).

One file, one row per household, a header naming the columns (any order)::

    station,station_name,building,address,household,unit,room,sensor
    st001,幸福里换热站,b01,幸福里小区3号楼,HH-0001,2,301,b01-0301

``sensor`` is the household id its room sensor reports under (empty when it has none). Two
optional columns give heated area in m² (the takeover report's make-up per heated area):
``building_area_m2`` (the building's, the same on each of its rows) and ``station_area_m2`` (for a
company that knows only the station's total). Without a column the stored areas stay as they
were; with it, an empty cell means unknown. The file
may be UTF-8 (with or without BOM) or GB18030 (what a Chinese Excel saves). Every row is checked
before anything is written; problems come back with their line numbers, and an import with any
problem writes nothing. Re-importing updates rows by key (station; station+building; household
code), never duplicates them.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass, field

from alerting.address import household_search
from contract.topics import IDENT_PATTERN

COLUMNS = ("station", "station_name", "building", "address", "household", "unit", "room", "sensor",
           "building_area_m2", "station_area_m2")
REQUIRED = ("station", "building", "address", "household")
MAX_ROWS = 500_000
_IDENT = re.compile(IDENT_PATTERN)
_CODE = re.compile(r"^[^\s,;]{1,64}$")
MAX_AREA_M2 = 10_000_000.0  # 1,000 ha: more than any one station heats; a bigger number is a typo


def _area(text: str) -> float | None:
    """An area cell: None when empty; ValueError naming what is wrong otherwise."""
    if not text:
        return None
    try:
        v = float(text.replace(",", ""))
    except ValueError:
        raise ValueError(f"{text!r} is not a number of m²") from None
    if not 0 < v <= MAX_AREA_M2:
        raise ValueError(f"{text} m² is not between 0 and {MAX_AREA_M2:,.0f}")
    return v


@dataclass
class Assets:
    stations: dict[str, dict[str, str | float | None]] = field(default_factory=dict)
    buildings: dict[tuple[str, str], dict[str, str | float | None]] = field(default_factory=dict)
    households: dict[str, dict[str, str | None]] = field(default_factory=dict)


class ImportProblems(ValueError):
    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        more = f" (+{len(problems) - 20} more)" if len(problems) > 20 else ""
        super().__init__("; ".join(problems[:20]) + more)


def decode(raw: bytes) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        try:
            return raw.decode("gb18030")
        except UnicodeDecodeError:
            raise ImportProblems(["the file is neither UTF-8 nor GB18030 text"]) from None


def search_text(address: str, unit: str, room: str, code: str) -> str:
    """The household's text the hotline's address search matches (alerting/address.py)."""
    return household_search(address, unit, room, code)


def parse(text: str) -> Assets:
    """Check every row; raise ImportProblems listing each problem with its line number."""
    try:
        return _parse(text)
    except csv.Error as exc:  # a broken quote or a stray carriage return (found by schemathesis)
        raise ImportProblems([f"not readable as CSV: {exc}"]) from None


def _area_clash(out: Assets, st: str, b: str, areas: dict[str, float | None],
                area_line: dict[tuple[str, str], int], n: int) -> str | None:
    """A building's (or station's) area must be the same on each row that gives one."""
    for c, key, have in (("building_area_m2", (st, b), out.buildings.get((st, b))),
                         ("station_area_m2", (st, ""), out.stations.get(st))):
        v = areas[c]
        if v is None:
            continue
        before = have.get("heated_area_m2") if have is not None else None
        if before is not None and before != v:
            what = f"building {st}/{b}" if c == "building_area_m2" else f"station {st}"
            return f"line {n}: {what} has {c} {v:g} here but {before:g} on line {area_line[key]}"
        area_line.setdefault(key, n)
    return None


def _parse(text: str) -> Assets:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = [h.strip() for h in reader.fieldnames or []]
    missing = [c for c in REQUIRED if c not in header]
    unknown = [c for c in header if c not in COLUMNS]
    if missing or unknown:
        raise ImportProblems([f"line 1: header {'misses ' + ', '.join(missing) if missing else ''}"
                              f"{'; ' if missing and unknown else ''}"
                              f"{'has unknown column(s) ' + ', '.join(unknown) if unknown else ''}"
                              f" (columns: {', '.join(COLUMNS)})"])
    reader.fieldnames = header
    out, problems = Assets(), []
    seen: dict[str, int] = {}
    addr_line: dict[tuple[str, str], int] = {}
    area_line: dict[tuple[str, str], int] = {}
    for n, row in enumerate(reader, start=2):
        if n - 1 > MAX_ROWS:
            problems.append(f"more than {MAX_ROWS} rows: split the file")
            break
        r = {k: (v or "").strip() for k, v in row.items() if k is not None}
        if None in row:
            problems.append(f"line {n}: more fields than the header has columns")
            continue
        bad = [f"{c} is empty" for c in REQUIRED if not r.get(c)]
        for c in ("station", "building", "sensor"):
            if r.get(c) and not _IDENT.fullmatch(r[c]):
                bad.append(f"{c} {r[c]!r} must be 1-64 letters, digits, '_', '.' or '-'")
        if r.get("household") and not _CODE.fullmatch(r["household"]):
            bad.append(f"household {r['household']!r} must be 1-64 characters without spaces, ',' or ';'")
        for c, limit in (("address", 300), ("station_name", 200), ("unit", 32), ("room", 32)):
            if len(r.get(c, "")) > limit:
                bad.append(f"{c} is longer than {limit} characters")
        areas: dict[str, float | None] = {}
        for c in ("building_area_m2", "station_area_m2"):
            try:
                areas[c] = _area(r.get(c, ""))
            except ValueError as exc:
                bad.append(f"{c}: {exc}")
        if bad:
            problems += [f"line {n}: {b}" for b in bad]
            continue
        st, b, code = r["station"], r["building"], r["household"]
        if code in seen:
            problems.append(f"line {n}: household {code!r} already on line {seen[code]}")
            continue
        seen[code] = n
        prev = out.buildings.get((st, b))
        if prev is not None and prev["address"] != r["address"]:
            problems.append(f"line {n}: building {st}/{b} has address {r['address']!r} here but "
                            f"{prev['address']!r} on line {addr_line[(st, b)]}")
            continue
        clash = _area_clash(out, st, b, areas, area_line, n)
        if clash:
            problems.append(clash)
            continue
        addr_line.setdefault((st, b), n)
        before_st = out.stations.get(st, {})
        if r.get("station_name") or st not in out.stations:
            out.stations[st] = {"station": st, "name": r.get("station_name", "")}
        out.buildings[(st, b)] = {"station": st, "building": b, "address": r["address"]}
        # an area column present in the header is written (empty on every row = unknown); an
        # absent one is not touched, so a register imported without areas keeps earlier ones
        if "building_area_m2" in header:
            given = areas["building_area_m2"]
            out.buildings[(st, b)]["heated_area_m2"] = given if given is not None else (
                prev or {}).get("heated_area_m2")
        if "station_area_m2" in header:
            given = areas["station_area_m2"]
            out.stations[st]["heated_area_m2"] = given if given is not None else before_st.get(
                "heated_area_m2")
        out.households[code] = {"code": code, "station": st, "building": b, "unit": r.get("unit", ""),
                                "room": r.get("room", ""), "sensor": r.get("sensor") or None,
                                "search": search_text(r["address"], r.get("unit", ""), r.get("room", ""),
                                                      code)}
    if not problems and not out.households:
        problems.append("the file has no rows")
    if problems:
        raise ImportProblems(problems)
    return out
