"""The written contract follows the code: generated schemas and the vocabulary table."""

from __future__ import annotations

from contract.points import VOCABULARY
from contract.schema import render
from heatwatch.devstack import REPO


def test_json_schemas_are_up_to_date() -> None:
    for name, text in render().items():
        path = REPO / "docs" / "schema" / name
        assert path.exists() and path.read_text(encoding="utf-8") == text, (
            f"{path} is stale: run `.venv/bin/python -m contract.schema docs/schema`")


def test_every_point_is_documented() -> None:
    doc = (REPO / "docs" / "contract.md").read_text(encoding="utf-8")
    for name, d in VOCABULARY.items():
        assert f"| `{name}` | {d.zh} |" in doc, name
