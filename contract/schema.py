"""JSON Schema of every payload and config, generated from the pydantic models.

``python -m contract.schema docs/schema`` writes them; a test fails when the committed files
drift from the models.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import msgspec
from pydantic import BaseModel

from contract.alerts import AlertRules, Transition
from contract.commands import CommandResult, SignedCommand
from contract.config import AlerterConfig, ApiConfig, CollectorConfig, GatewayConfig, RegisterMap
from contract.payload import GatewayStatus, StationStatus, Telemetry
from contract.report import ReportSettings

MODELS: dict[str, type[BaseModel]] = {
    "telemetry": Telemetry, "station-status": StationStatus, "gateway-status": GatewayStatus,
    "register-map": RegisterMap, "gateway-config": GatewayConfig,
    "collector-config": CollectorConfig, "alerter-config": AlerterConfig, "api-config": ApiConfig,
    "alert-rules": AlertRules,
    "report-settings": ReportSettings,
    "command": SignedCommand, "command-result": CommandResult,
}


def render() -> dict[str, str]:
    return {f"{name}.schema.json": json.dumps(m.model_json_schema(by_alias=True), indent=2,
                                              ensure_ascii=False, sort_keys=True) + "\n"
            for name, m in MODELS.items()} | {
        "alert-transition.schema.json": json.dumps(msgspec.json.schema(Transition), indent=2,
                                                   ensure_ascii=False, sort_keys=True) + "\n"}


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/schema")
    out.mkdir(parents=True, exist_ok=True)
    for name, text in render().items():
        (out / name).write_text(text, encoding="utf-8")
