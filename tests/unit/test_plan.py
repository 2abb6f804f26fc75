from __future__ import annotations

from contract.config import PointMap, ResolvedDevice, load_gateway_config
from gateway.plan import plan_requests
from heatwatch.devstack import DEPLOY


def _dev(points: list[dict[str, object]], maxreg: int = 125) -> ResolvedDevice:
    return ResolvedDevice(name="d", host="h", port=1, device_id=1, timeout_s=1, addressing="zero_based",
                          max_registers_per_request=maxreg,
                          points=[PointMap.model_validate(p) for p in points])


def _hr(point: str, address: int, type_: str = "int16", **kw: object) -> dict[str, object]:
    return {"point": point, "table": "holding_register", "address": address, "type": type_, **kw}


def test_adjacent_and_nearby_registers_share_a_request() -> None:
    reqs = plan_requests(_dev([_hr("outdoor_temp", 0), _hr("secondary_supply_temp", 1),
                               _hr("secondary_return_temp", 10), _hr("primary_flow", 100, "float32")]))
    assert [(r.address, r.count) for r in reqs] == [(0, 11), (100, 2)]


def test_request_size_limit_is_respected() -> None:
    pts = [_hr(f"x_p{i}", i * 2, "float32") for i in range(100)]  # 200 words
    for p in pts:
        p["unit"] = "u"
    reqs = plan_requests(_dev(pts, maxreg=120))
    assert [(r.address, r.count) for r in reqs] == [(0, 120), (120, 80)]
    assert sum(len(r.points) for r in reqs) == 100


def test_shipped_station_plan_is_optimal() -> None:
    cfg = load_gateway_config(DEPLOY / "gateway" / "st001.yaml")
    plc = cfg.resolved[0]
    # PLC holding registers 40001-40040 | 40101-40105 | 40201-40225 | 40301-40304 fall in three
    # spans more than 16 words apart per group; plus one coil and one discrete-input request
    per_group = {g: [str(r) for r in plan_requests(plc, g)] for g in cfg.poll_groups}
    assert per_group["fast"] == ["holding_register[0:26] (16 points)",
                                 "holding_register[200:224] (9 points)"]
    assert per_group["status"] == ["coil[0:2] (circ_pump_running, makeup_pump_running)",
                                   "discrete_input[0:1] (circ_pump_fault)",
                                   "holding_register[13:14] (makeup_pump_fault, local_mode)"]
    assert sum(len(plan_requests(d)) for d in cfg.resolved) == 9
