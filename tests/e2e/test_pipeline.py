"""simulator → gateway → mosquitto → collector → influxd, all real processes and sockets.

The simulator's clock is paused, so every point holds one value; the values InfluxDB returns
must equal what the simulator served (quantised by each point's own register type, computed
independently of the codec), for every data type and word order of the shipped maps, at the
sample timestamps the gateway published.
"""

from __future__ import annotations

import math
from pathlib import Path

import orjson

from contract.config import GatewayConfig
from contract.influx import MEASUREMENT_BUILDING, MEASUREMENT_HOUSEHOLD, MEASUREMENT_STATION
from contract.payload import Quality, parse_telemetry
from heatwatch.devstack import Influxd, Mosquitto, SimThread
from tests.conftest import (
    Processes,
    Subscriber,
    influx_query,
    rows,
    wait_for,
    write_collector_config,
)


def _same(a: object, b: object) -> bool:
    if isinstance(a, float) and isinstance(b, (int, float)) and not isinstance(b, bool):
        return math.isclose(a, float(b), rel_tol=1e-9, abs_tol=1e-9)
    return a == b


def test_values_arrive_in_influxdb_as_served(
    tmp_path: Path, mosquitto: Mosquitto, influxd: Influxd, influx_db: str,
    station_config: GatewayConfig, simulator: SimThread, procs: Processes,
) -> None:
    simulator.call(simulator.sim.pause)
    served = simulator.call(simulator.sim.served, "st001")
    assert isinstance(served, dict)

    ccfg = write_collector_config(tmp_path / "collector", mqtt_port=mosquitto.port,
                                  influx_url=influxd.url, database=influx_db)
    procs.start("collector", "collector", str(ccfg))
    wait_for(lambda: '"subscribed"' in procs.log("collector"), 20, "collector subscription")
    observer = Subscriber(mosquitto.port, "heatwatch/v1/station/+/telemetry")
    gw_path = Path(station_config.outbox.path).parent / "st001.yaml"
    procs.start("gateway", "gateway", str(gw_path))

    # every poll group (fast, status, slow) published at least twice
    def groups_seen() -> bool:
        msgs = [parse_telemetry(p) for _, p in observer.messages]
        points = {r.point for m in msgs for r in m.values}
        return len(msgs) >= 6 and "room_temp" in points and "makeup_total" in points

    wait_for(groups_seen, 30, "telemetry of every poll group")
    procs.procs["gateway"].terminate()
    procs.procs["gateway"].wait(10)
    observer.close()
    messages = [parse_telemetry(p) for _, p in observer.messages]

    expected_lines = {(m.ts, r.building, r.household) for m in messages for r in m.values}

    def stored() -> dict[tuple[str, str | None, str | None, int], dict[str, object]]:
        out = {}
        for meas in (MEASUREMENT_STATION, MEASUREMENT_BUILDING, MEASUREMENT_HOUSEHOLD):
            for row in rows(influx_query(influxd, influx_db, f'SELECT * FROM "{meas}" GROUP BY *')):
                out[(row["station"], row.get("building"), row.get("household"), row["time"])] = row
        return out

    db = wait_for(lambda: (s := stored()) and len(s) >= len(expected_lines) and s, 30,
                  "every line in InfluxDB")
    assert len(db) == len(expected_lines)  # nothing missing, nothing extra

    checked: set[tuple[str, str | None, str | None]] = set()
    for m in messages:
        assert m.station == "st001" and not m.backfill
        for r in m.values:
            assert r.quality is Quality.GOOD, r
            row = db[("st001", r.building, r.household, m.ts)]  # the sample time, to the ms
            want = served[(r.point, r.building, r.household)]
            assert _same(r.value, want), (r.point, r.value, want)
            assert _same(row[r.point], want), (r.point, row[r.point], want)
            checked.add((r.point, r.building, r.household))
    every_point = {p.key for d in station_config.resolved for p in d.points}
    assert checked == every_point
    types = {(p.type, p.word_order) for d in station_config.resolved for p in d.points}
    assert len(types) >= 12  # the maps really mix types and word orders


def test_gateway_status_is_retained_with_a_last_will(
    tmp_path: Path, mosquitto: Mosquitto, station_config: GatewayConfig,
    simulator: SimThread, procs: Processes,
) -> None:
    gw_path = Path(station_config.outbox.path).parent / "st001.yaml"
    gw = procs.start("gateway", "gateway", str(gw_path))
    obs = Subscriber(mosquitto.port, "heatwatch/v1/#")
    wait_for(lambda: any(t.endswith("/station/st001/status") for t, _ in obs.messages), 20, "station status")
    gw.kill()  # no clean disconnect: the broker publishes the will after the keepalive runs out
    wait_for(lambda: any(t == "heatwatch/v1/gateway/gw-st001/status"
                         and orjson.loads(p)["state"] == "offline" for t, p in obs.messages),
             30, "the offline will")
    obs.close()
    late = Subscriber(mosquitto.port, "heatwatch/v1/gateway/+/status")  # retained for newcomers
    wait_for(lambda: late.messages, 10, "retained gateway status")
    assert orjson.loads(late.messages[-1][1])["state"] == "offline"
    late.close()
