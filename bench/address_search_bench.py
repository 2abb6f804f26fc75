"""The hotline's address search with a city's register (issue #20): 100,000 households in 2,000
buildings of 100 communities, in a SQLite site database (and PostgreSQL with ``--postgres``).

Times ``SiteRegistry.find_households`` for addresses typed the ways a dispatcher types them (one
household found; a building's 50) and ``suggest_households`` (the "did you mean" list the lookup
answers when nothing matches: a name typed wrong, a unit the register does not have), each
``--rounds`` times in this process, one at a time. Prints the median and the slowest per kind in
ms, JSON.

    .venv/bin/python bench/address_search_bench.py [--postgres]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from alerting.assets import Assets, search_text
from alerting.database import Database
from alerting.registry import SiteRegistry
from heatwatch.devstack import Postgres, free_port

NAMES = [a + b for a in ("幸福", "和平", "长江", "黄河", "光明", "朝阳", "建设", "人民", "胜利", "新华")
         for b in ("里小区", "家园", "花园", "新村", "苑", "公寓", "名邸", "雅居", "华府", "佳园")]


def fill(registry: SiteRegistry, buildings_per: int, units: int, rooms: int) -> int:
    a = Assets()
    for c, name in enumerate(NAMES):
        st = f"st{c:03d}"
        a.stations[st] = {"station": st, "name": f"{name}换热站"}
        for bn in range(1, buildings_per + 1):
            b = f"b{bn:02d}"
            addr = f"{name}{bn}号楼"
            a.buildings[(st, b)] = {"station": st, "building": b, "address": addr}
            for u in range(1, units + 1):
                for r in range(rooms):
                    room = f"{r // 5 + 1}{r % 5 + 1:02d}"
                    code = f"{st}-{bn}-{u}-{room}"
                    a.households[code] = {"code": code, "station": st, "building": b, "unit": str(u),
                                          "room": room, "sensor": None,
                                          "search": search_text(addr, str(u), room, code)}
    registry.import_assets(a, actor="bench", now=int(time.time() * 1000))
    return len(a.households)


def timed(fn: Callable[[], Any], rounds: int) -> tuple[dict[str, float], Any]:
    got, ms = None, []
    for _ in range(rounds):
        t0 = time.perf_counter()
        got = fn()
        ms.append((time.perf_counter() - t0) * 1000)
    return {"median_ms": round(statistics.median(ms), 2), "max_ms": round(max(ms), 2)}, got


def run(url: str, rounds: int) -> dict[str, Any]:
    db = Database(url)
    db.migrate()
    registry = SiteRegistry(db)
    n = fill(registry, buildings_per=20, units=2, rooms=25)
    rnd = random.Random(1)
    cases: dict[str, tuple[Callable[[], Any], Callable[[Any], bool]]] = {}
    for kind, text, method in (
        ("find: one household, typed without spaces", "幸福里3号楼301", "find"),
        ("find: one household, 栋 and 单元 and 室", "光明花园 12栋 2单元 405室", "find"),
        ("find: one household, full-width digits", "长江新村１８号楼１０２", "find"),
        ("find: a building's households", "和平家园 7号楼", "find"),
        ("find: nothing (a name typed wrong)", "幸富里 3号楼 301", "find"),
        ("suggest: a name typed wrong", "幸富里 3号楼 301", "suggest"),
        ("suggest: a unit the register does not have", "黄河苑 5号楼 3单元 201", "suggest"),
        ("suggest: nothing close", "东海路 9号楼 101", "suggest"),
    ):
        call = (lambda t=text: registry.find_households(t, 20)) if method == "find" else (
            lambda t=text: registry.suggest_households(t, 5))
        cases[kind] = (call, lambda got: True)
    out: dict[str, Any] = {"households": n, "buildings": len(NAMES) * 20, "store": url.split(":")[0]}
    rnd.shuffle(list(cases))
    for kind, (call, _) in cases.items():
        figures, got = timed(call, rounds)
        out[kind] = {**figures, "answered": [h.code for h in got][:3] + (["…"] if len(got) > 3 else [])}
    db.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--postgres", action="store_true", help="also on a throwaway PostgreSQL")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = [run(f"sqlite:///{Path(tmp) / 'site.sqlite'}", args.rounds)]
    if args.postgres:
        pg = Postgres(free_port())
        pg.start()
        try:
            results.append(run(pg.url, args.rounds))
        finally:
            pg.stop()
    print(json.dumps(results, ensure_ascii=False, indent=1))


if __name__ == "__main__":
    main()
