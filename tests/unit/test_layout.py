"""Imports flow one way: gateway, collector, alerter, api and simulator import contract, durable,
alerting and messaging, never each other; alerting (rules and the alert store, shared by
collector and api) imports no stage; messaging (the one MQTT client) imports only contract;
durable (storage) knows nothing of heatwatch's contract; contract imports none of them. report
(the takeover report, a library the api and the command use) imports no stage."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STAGES = {"gateway", "collector", "alerter", "api", "simulator"}


def _imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module.split(".")[0])
    return out


def test_stages_do_not_import_each_other() -> None:
    bad = []
    extra = {"durable": {"contract", "alerting", "messaging", "report"},
             "contract": {"alerting", "durable", "messaging", "report"},
             "alerting": {"messaging", "report"},
             "messaging": {"alerting", "durable", "report"}}
    for stage in STAGES | {"contract", "durable", "alerting", "messaging", "report"}:
        for f in (ROOT / stage).rglob("*.py"):
            forbidden = (STAGES | {"heatwatch"} | extra.get(stage, set())) - {stage}
            hit = _imports(f) & forbidden
            if hit:
                bad.append(f"{f.relative_to(ROOT)} imports {sorted(hit)}")
    assert not bad, bad


def test_contract_does_no_io() -> None:
    io_modules = {"socket", "sqlite3", "httpx", "paho", "pymodbus", "asyncio", "subprocess",
                  "sqlalchemy"}
    for f in (ROOT / "contract").rglob("*.py"):
        assert not (_imports(f) & io_modules), f
