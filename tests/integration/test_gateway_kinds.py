"""What a gateway process publishes for custom points and 64-bit counters, over real Modbus
(the simulator) and the real broker (docs/contract.md, "Kinds" and "Numbers"): each custom
point's kind announced in its birth and kept in every reading; a 64-bit integer within ±2^53
arrives exactly, one beyond is refused (bad, counted by the metrics endpoint), never rounded."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import yaml

from contract.config import load_gateway_config
from contract.payload import parse_gateway_status
from heatwatch.devstack import Mosquitto, SimThread, free_port
from tests.conftest import Processes, Subscriber, wait_for
from tests.integration.test_metrics import scrape, value

EXACT = 2**53


def _config(folder: Path, mqtt_port: int, plc_port: int, metrics_port: int) -> Path:
    points: list[dict[str, Any]] = [
        {"point": "x_heat_wh", "table": "holding_register", "address": 0, "type": "uint64", "unit": "Wh"},
        {"point": "x_heat_wh_over", "table": "holding_register", "address": 4, "type": "uint64",
         "unit": "Wh"},
        {"point": "x_plc_program", "table": "holding_register", "address": 8, "type": "string",
         "length": 3, "unit": "", "kind": "text"},
        {"point": "x_sump_pump_running", "table": "coil", "address": 0, "type": "bool"},
        {"point": "outdoor_temp", "table": "holding_register", "address": 12, "type": "int16", "scale": 0.1},
    ]
    cfg = {"kind": "gateway", "gateway": "gw-st009", "station": "st009",
           "mqtt": {"port": mqtt_port, "keepalive_s": 5},
           "outbox": {"path": str(folder / "outbox.sqlite"), "receipts": False},
           "metrics": {"port": metrics_port},
           "poll_groups": {"fast": {"interval_s": 0.3}},
           "devices": [{"name": "plc", "host": "127.0.0.1", "port": plc_port, "addressing": "zero_based",
                        "points": [{**p, "group": "fast"} for p in points]}]}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "st009.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def test_custom_kinds_are_announced_and_kept_and_64_bit_counters_are_exact_or_refused(
        tmp_path: Path, mosquitto: Mosquitto, procs: Processes) -> None:
    port = free_port()
    path = _config(tmp_path / "gw", mosquitto.port, free_port(), port)
    sim = SimThread([load_gateway_config(path)])
    try:
        model = sim.sim.models["st009"]

        def counters() -> None:  # held values of the PLC (as setpoints are); exact as float64
            model.setpoints[("x_heat_wh", None, None)] = float(EXACT)
            model.setpoints[("x_heat_wh_over", None, None)] = float(EXACT + 2)
            sim.sim.step()

        sim.call(counters)
        telemetry = Subscriber(mosquitto.port, "heatwatch/v1/station/st009/telemetry")
        status = Subscriber(mosquitto.port, "heatwatch/v1/gateway/gw-st009/status")
        procs.start("gateway", "gateway", str(path))
        wait_for(lambda: len(telemetry.messages) >= 3, 30, "three telemetry messages")
        birth = parse_gateway_status(wait_for(lambda: status.messages, 10, "the birth")[0][1])
        assert birth.custom == {"x_heat_wh": "number", "x_heat_wh_over": "number",
                                "x_plc_program": "text", "x_sump_pump_running": "bool"}
        for _, raw in list(telemetry.messages):
            values = {v["point"]: v for v in orjson.loads(raw)["values"]}
            assert values["x_heat_wh"]["value"] == EXACT and values["x_heat_wh"]["quality"] == "good"
            # the JSON text itself: 9007199254740992.0, an exact float64
            assert b'"x_heat_wh","value":9007199254740992.0' in raw
            assert values["x_heat_wh_over"] == {"point": "x_heat_wh_over", "unit": "Wh", "quality": "bad"}
            assert isinstance(values["x_plc_program"]["value"], str)
            assert isinstance(values["x_sump_pump_running"]["value"], bool)
        refused = wait_for(lambda: value(scrape(port), "heatwatch_gateway_readings_refused_total",
                                         station="st009", reason="inexact"), 10, "the refusal counted")
        assert refused >= 3
        assert value(scrape(port), "heatwatch_gateway_readings_refused_total", reason="kind") is None
        assert procs.log("gateway").count("reading refused") == 1  # logged once, counted always
        telemetry.close()
        status.close()
    finally:
        sim.stop()
