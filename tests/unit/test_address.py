"""The hotline's address normal form: what a dispatcher types and what the register says meet
in one form (alerting/address.py)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from alerting.address import closeness, household_search, normalise, typed, words

STORED = household_search("幸福里小区3号楼", "2", "301", "XFL-3-301")


def _finds(query: str, stored: str = STORED) -> bool:
    """What the store's LIKE does with each word (alerting/registry.py)."""
    return all((f" {w}" if w[0].isascii() else w) in stored for w in words(query))


@pytest.mark.parametrize("query", [
    "幸福里 3号楼 301", "幸福里3号楼301", "幸福里 3栋 301", "幸福里3幢301", "幸福里 3楼 301",
    "幸福里3#楼301", "幸福里小区3号楼2单元301室", "幸福里 3栋 2单元 301号", "幸福里３号楼３０１",
    "幸福里　３栋　３０１室", "３０１ 幸福里", "xfl-3-301", "ＸＦＬ－３－３０１", "幸福里，3号楼、301",
])
def test_the_ways_a_dispatcher_types_one_address_all_find_it(query: str) -> None:
    assert _finds(query), (query, words(query), STORED)


@pytest.mark.parametrize("query", ["幸福里 13栋 301", "幸福里 3栋 1301", "幸福里 3栋 1单元 301",
                                   "和平路 3栋"])
def test_another_building_unit_or_room_is_not_found(query: str) -> None:
    assert not _finds(query), (query, words(query), STORED)


def test_the_stored_form() -> None:
    assert STORED == " 幸福里小区 3号楼 2单元 301 xfl-3-301"
    assert normalise("和平路8号院1号楼") == "和平路 8号院 1号楼"  # 号 before 院 is the compound's number
    assert (household_search("和平路8号院1号楼", "1单元", "501室", "HH-1001")
            == " 和平路 8号院 1号楼 1单元 501 hh-1001")


@given(st.text(alphabet=st.sampled_from(list("幸福里小区号楼栋幢单元室0123456789abc -#，、()")), max_size=30))
def test_normalise_is_idempotent_and_blind_to_full_width(text: str) -> None:
    once = normalise(text)
    assert normalise(once) == once
    wide = "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else "\u3000" if c == " " else c for c in text)
    assert normalise(wide) == once
    assert "%" not in once and "_" not in once  # never a LIKE wildcard


def test_closeness_ranks_the_misspelt_name_and_its_building_first() -> None:
    t = typed("幸富里 3号楼 301")
    assert (t.text, t.building, t.numbers) == ("幸富里", "3", ("301",))
    got = sorted(((closeness(t, a), a) for a in ("幸福里小区3号楼", "幸福里小区5号楼", "幸福家园3号楼",
                                                 "和平路8号院3号楼")), reverse=True)
    assert [a for _, a in got] == ["幸福里小区3号楼", "幸福里小区5号楼", "幸福家园3号楼", "和平路8号院3号楼"]
    assert got[0][0] == pytest.approx(2 / 3 + 0.25)
