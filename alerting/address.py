"""Addresses as the hotline types them: one normal form for the stored and the typed address,
and how close a typed address comes to a building's (the "did you mean" list). Pure.

A caller's address reaches the dispatcher as words typed in a hurry: ``幸福里3号楼301``,
``幸福里 3栋 2单元 301室``, ``幸福里３号楼３０１`` (a full-width IME), ``幸福里 3#楼 301``. The
register says ``幸福里小区3号楼`` with unit ``2`` and room ``301``. Both go through
``normalise``:

- NFKC: full-width digits, letters, spaces and punctuation become their ASCII forms;
- lower case; punctuation (``#``, ``，``, ``、``, brackets …) becomes a space, but for a ``-``
  inside a code (``xfl-3-301`` stays one word: split, its ``3`` would find every ``3号楼``);
- a building: a number (or letter) followed by 号楼, 号栋, 栋, 幢, 座 or 楼 becomes ``3号楼`` (three
  characters: the least a trigram index looks up);
- a unit: ``2单元``; a room: ``301室``, ``301户`` and ``301号`` (not ``8号院``) become ``301``;
- a space between Chinese text and the number after it (``幸福里 3号楼 301``).

A stored household is searched as `` <address> <unit>单元 <room> <code>`` in that form (with a
leading space: a word that starts with a digit or a letter is matched at the start of a word, so
``3号楼`` does not find ``13号楼`` nor ``301`` find ``1301``; Chinese words anywhere, so ``幸福里``
finds ``幸福里小区``).

``closeness`` scores a building's address against what was typed for the "did you mean" list:
the share of the typed Chinese/Latin text found in the address's text in order (a character
typed wrong costs its share: ``幸富里`` against ``幸福里小区`` is 2/3), plus a quarter when the
typed building number is the address's.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from difflib import SequenceMatcher
from typing import NamedTuple

_CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_PUNCT = re.compile(rf"[^0-9a-z{_CJK}\s-]+|(?<![0-9a-z])-+|-+(?![0-9a-z])")  # a code keeps its inner "-"
_BUILDING = re.compile(r"([0-9]+|[a-z])\s*(号楼|号栋|栋|幢|座|楼)")
_UNIT = re.compile(r"([0-9]+|[a-z])\s*单元")
_ROOM = re.compile(rf"([0-9]+)\s*(室|户|号)(?![{_CJK}])")
_CJK_THEN_ALNUM = re.compile(rf"(?<=[{_CJK}])(?=[0-9a-z])")
_SPACES = re.compile(r"\s+")
_TEXT = re.compile(rf"[{_CJK}a-z]+")


@functools.lru_cache(maxsize=65_536)  # the "did you mean" pass normalises every building address
def normalise(text: str) -> str:
    """The one form stored and typed addresses are compared in (words separated by one space)."""
    t = unicodedata.normalize("NFKC", text).lower()
    for _ in range(8):  # until nothing changes: "8号 室" is "8 室" after one pass, "8" after two
        was = t
        t = _PUNCT.sub(" ", t)
        t = _BUILDING.sub(r" \1号楼 ", t)
        t = _UNIT.sub(r" \1单元 ", t)
        t = _ROOM.sub(r" \1 ", t)
        t = _SPACES.sub(" ", t).strip()
        if t == was:
            break
    return _SPACES.sub(" ", _CJK_THEN_ALNUM.sub(" ", t))


def household_search(address: str, unit: str, room: str, code: str) -> str:
    """A household's search text: its address, unit, room and code, normalised, with a leading
    space (every word starts after one)."""
    unit = unit.strip()
    if unit and not unit.endswith("单元"):
        unit += "单元"
    return " " + normalise(" ".join(x for x in (address, unit, room, code) if x))


def words(text: str) -> list[str]:
    return normalise(text).split()


def like_pattern(word: str) -> str:
    """The LIKE pattern of one typed word (``%`` and ``_`` never reach here: ``normalise``
    turned them into spaces): a word that starts with a digit or a letter at a word start."""
    return f"% {word}%" if word[0].isascii() else f"%{word}%"


class Typed(NamedTuple):
    """What a typed address says: its text (names), building, unit and other numbers."""
    text: str
    building: str | None
    unit: str | None
    numbers: tuple[str, ...]


def typed(text: str) -> Typed:
    ws = words(text)
    building = next((w[:-2] for w in ws if w.endswith("号楼") and not _TEXT.fullmatch(w)), None)
    unit = next((w[:-2] for w in ws if w.endswith("单元") and len(w) > 2), None)
    numbers = tuple(w for w in ws if w.isdigit())
    return Typed("".join(w for w in ws if _TEXT.fullmatch(w)), building, unit, numbers)


@functools.lru_cache(maxsize=65_536)
def _text_of(address: str) -> tuple[str, str]:
    """An address's normal form with a leading space, and its text (names) alone."""
    a = normalise(address)
    return " " + a, "".join(_TEXT.findall(a))


@functools.lru_cache(maxsize=4096)
def _share(typed_text: str, text: str) -> float:
    # per distinct name, not per building: a community's 20 buildings share one (measured: the
    # "did you mean" pass over 2,000 buildings took 45-55 ms scoring each, see docs/api.md)
    if not text or set(typed_text).isdisjoint(text):
        return 0.0
    blocks = SequenceMatcher(None, typed_text, text, autojunk=False).get_matching_blocks()
    return sum(b.size for b in blocks) / len(typed_text)


def closeness(t: Typed, address: str) -> float:
    """How close a building's address is to what was typed: 0..1.25, the text's share (0..1)
    and 0.25 for the typed building number (it breaks ties: a misspelt name with the right
    community's other buildings ranks above another community's building of that number)."""
    a, text = _text_of(address)
    score = _share(t.text, text) if t.text else 0.0
    if t.building is not None and f" {t.building}号楼" in a:
        score += 0.25
    return score
