"""The hotline's address search on a real site database (SQLite with its FTS5 trigram index, and
PostgreSQL with pg_trgm): an address typed any of the ways a dispatcher types it finds its
household; nothing found answers the closest few ("did you mean"); a register stored before the
normal form is rewritten by its migration."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import command
from alembic.config import Config as AlembicConfig

from alerting.assets import parse
from alerting.database import _MIGRATIONS, Database
from alerting.registry import SiteRegistry

CSV = """station,station_name,building,address,household,unit,room,sensor
st001,幸福里换热站,b01,幸福里小区1号楼,XFL-1-301,1,301,
st001,幸福里换热站,b03,幸福里小区3号楼,XFL-3-201,1,201,
st001,幸福里换热站,b03,幸福里小区3号楼,XFL-3-301,1,301,b03-0301
st001,幸福里换热站,b03,幸福里小区3号楼,XFL-3-302,2,302,
st001,幸福里换热站,b13,幸福里小区13号楼,XFL-13-301,1,301,
st002,和平路换热站,b01,和平路8号院3号楼,HPL-3-301,1,301室,
st003,幸福家园换热站,b03,幸福家园3号楼,XFJY-3-301,1,301,
"""


def _codes(found: list) -> list[str]:  # type: ignore[type-arg]
    return [h.code for h in found]


def test_the_ways_one_address_is_typed_find_its_household(site_db: Database) -> None:
    registry = SiteRegistry(site_db)
    registry.import_assets(parse(CSV), actor="t", now=1)
    for typed in ("幸福里 3号楼 301", "幸福里3号楼301", "幸福里 3栋 301", "幸福里3幢301室",
                  "幸福里３号楼３０１", "幸福里小区3号楼1单元301室", "幸福里 3#楼 301号", "301 3栋 幸福里",
                  "xfl-3-301"):
        assert _codes(registry.find_households(typed)) == ["XFL-3-301"], typed
    assert _codes(registry.find_households("幸福里 3栋")) == ["XFL-3-201", "XFL-3-301", "XFL-3-302"]
    assert _codes(registry.find_households("幸福里 13栋")) == ["XFL-13-301"]  # not 3号楼, nor 3号楼 of 13
    assert _codes(registry.find_households("和平路 8号院 3栋 301")) == ["HPL-3-301"]  # 301室 in the CSV
    assert registry.find_households("幸福里 3栋 2单元 301") == []  # 301 is in unit 1


def test_nothing_found_answers_the_closest_few(site_db: Database) -> None:
    registry = SiteRegistry(site_db)
    registry.import_assets(parse(CSV), actor="t", now=1)
    assert registry.find_households("幸富里 3号楼 301") == []
    near = _codes(registry.suggest_households("幸富里 3号楼 301"))
    # the misspelt name's building 3 and its room first; the same community's other 301s next
    assert near[0] == "XFL-3-301" and set(near[1:3]) == {"XFL-1-301", "XFL-13-301"}, near
    assert len(near) <= 5 and "HPL-3-301" not in near
    assert _codes(registry.suggest_households("幸福里 3栋 2单元 301"))[:2] == ["XFL-3-301", "XFL-3-302"]
    assert registry.suggest_households("长江路 9号楼 101") == []  # nothing close: no guesses


def test_the_migration_rewrites_a_register_stored_before_the_normal_form(site_db: Database) -> None:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(_MIGRATIONS))
    with site_db.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0010")
    registry = SiteRegistry(site_db)
    registry.import_assets(parse(CSV), actor="t", now=1)
    with site_db.engine.begin() as conn:  # what the import wrote before this version
        conn.execute(sa.text("UPDATE households SET search = lower(code)"))
    assert registry.find_households("幸福里3号楼301") == []
    site_db.migrate()
    assert _codes(registry.find_households("幸福里3号楼301")) == ["XFL-3-301"]
