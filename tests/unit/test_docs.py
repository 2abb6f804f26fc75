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


def test_the_dashboards_doc_lists_every_dashboard_the_build_writes() -> None:
    built = sorted(p.name for p in (REPO / "dashboards").glob("*.json"))
    text = (REPO / "docs" / "dashboards.md").read_text(encoding="utf-8")
    listed = sorted(line.split("`")[1] for line in text.splitlines() if line.startswith("| `"))
    assert listed == built
    words = {3: "Three", 4: "Four", 5: "Five", 6: "Six", 7: "Seven"}
    assert text.split("\n\n")[1].startswith(f"{words[len(built)]} Grafana dashboards")


def test_the_readme_runs_python_from_the_venv_and_a_second_demo_in_its_own_folder() -> None:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    assert "`python -m" not in text and "[docs/dashboards.md](docs/dashboards.md)" in text
    assert "HEATWATCH_DEMO_PORT_OFFSET=100\nmake demo" not in text
    assert "`.venv/bin/heatwatch demo --dir .demo-b --port-offset 100`" in text
    assert "rm -rf .demo" in text
