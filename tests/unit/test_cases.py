"""Runs every golden register-map folder under tests/cases (see its README)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from contract.config import ResolvedDevice, load_register_map
from contract.errors import ConfigError
from contract.payload import Quality
from gateway.app import decode_answers
from gateway.plan import plan_requests

CASES = sorted(p for p in (Path(__file__).parents[1] / "cases").iterdir() if p.is_dir())


def _key(name: str) -> tuple[str, str | None, str | None]:
    point, _, rest = name.partition("@")
    building, _, household = rest.partition("/")
    return point, building or None, household or None


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_case(case: Path) -> None:
    err_file = case / "expected_error.txt"
    if err_file.exists():
        with pytest.raises(ConfigError) as exc:
            load_register_map(case / "map.yaml")
        for line in err_file.read_text().splitlines():
            assert line in str(exc.value), f"{line!r} not in:\n{exc.value}"
        return
    rmap = load_register_map(case / "map.yaml")
    dev = ResolvedDevice(name="dev", host="-", port=1, device_id=1, timeout_s=1,
                         addressing=rmap.addressing,
                         max_registers_per_request=rmap.max_registers_per_request,
                         points=[p if p.word_order or p.words == 1 else
                                 p.model_copy(update={"word_order": rmap.word_order}) for p in rmap.points])
    raw: dict[str, Any] = yaml.safe_load((case / "words.yaml").read_text()) or {}
    failed = set(raw.pop("failed", []))
    requests = plan_requests(dev)
    words = [None if r.table in failed else
             [int(raw.get(r.table, {}).get(a, 0)) for a in range(r.address, r.address + r.count)]
             for r in requests]
    answers = list(zip(requests, words, strict=True))
    got = {(r.point, r.building, r.household): r for r in decode_answers(answers)}
    expected = yaml.safe_load((case / "expected.yaml").read_text())
    assert set(map(_key, expected)) == set(got), "expected.yaml must name every point"
    for name, want in expected.items():
        r = got[_key(name)]
        spec = want if isinstance(want, dict) else {"value": want, "quality": "good"}
        assert r.quality is Quality(spec["quality"]), (name, r)
        if isinstance(spec["value"], float):
            assert r.value == pytest.approx(spec["value"], rel=1e-9), name
        else:
            assert r.value == spec["value"], name
