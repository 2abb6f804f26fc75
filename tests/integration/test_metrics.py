"""The Prometheus endpoints of the gateway and the API, read as Prometheus reads them.

Gateway: a station with a healthy PLC that refuses one block (a wrong map: Modbus exception 2),
a device nobody answers for (offline), and a broker that goes away (the outbox grows and ages).
API: two uvicorn workers, one endpoint served by the supervisor that sums both workers' counts.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from alerting.registry import SiteRegistry
from contract.config import load_gateway_config
from heatwatch.devstack import REPO, Mosquitto, SimThread, free_port, port_open
from tests.conftest import Processes, Subscriber, wait_for, write_gateway_config

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(port: int) -> Samples:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    out: Samples = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float | None:
    """The sum of the series of ``name`` whose labels include ``labels`` (None: no such series)."""
    want = set(labels.items())
    hits = [v for (n, ls), v in samples.items() if n == name and want <= ls]
    return sum(hits) if hits else None


@pytest.fixture
def station(tmp_path: Path, mosquitto: Mosquitto) -> Iterator[tuple[Path, SimThread, int]]:
    """A gateway config with metrics on, the simulator serving its PLC and meter, and nobody
    serving its room concentrator's port."""
    path = write_gateway_config(tmp_path / "gw", "st001", mqtt_port=mosquitto.port, plc_port=free_port(),
                                bus_port=free_port(), fast_s=0.2, slow_s=0.4)
    sim = SimThread([load_gateway_config(path)])
    cfg = yaml.safe_load(path.read_text())
    metrics_port = free_port()
    cfg["metrics"] = {"port": metrics_port}
    cfg["devices"][2]["port"] = free_port()  # the rooms: no one there
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    # a wrong map for one block of the PLC: its first point's register answers "illegal address"
    plc = load_gateway_config(path).resolved[0]
    first = plc.points[0]
    sim.call(sim.sim.refuse, "st001", "plc", first.table, first.wire_address(plc.addressing))
    yield path, sim, metrics_port
    sim.stop()


def test_gateway_metrics(station: tuple[Path, SimThread, int], mosquitto: Mosquitto,
                         procs: Processes) -> None:
    path, _sim, port = station
    # the collector's part: receipts after its durable write (here: on arrival)
    col = Subscriber(mosquitto.port, "heatwatch/v1/station/+/telemetry", persistent=True, receipts=True)
    procs.start("gateway", "gateway", str(path))
    procs.wait_log("gateway", "metrics endpoint")
    st = {"station": "st001"}

    def healthy() -> Samples | None:
        s = scrape(port)
        ok = (value(s, "heatwatch_gateway_mqtt_connected", **st) == 1
              and (value(s, "heatwatch_gateway_acked_total", **st) or 0) >= 5
              and (value(s, "heatwatch_gateway_poll_cycles_total", group="fast", **st) or 0) >= 3
              and (value(s, "heatwatch_gateway_modbus_rtt_seconds_count", device="makeup_meter") or 0) >= 3
              and value(s, "heatwatch_gateway_device_state", device="rooms", state="offline") == 1
              and value(s, "heatwatch_gateway_device_state", device="plc", state="degraded") == 1
              and (value(s, "heatwatch_gateway_receipted_total", **st) or 0) >= 5)
        return s if ok else None

    s = wait_for(healthy, 30, "the gateway publishing, the PLC degraded and the rooms offline")
    assert value(s, "heatwatch_gateway_device_state", device="makeup_meter", state="online") == 1
    assert value(s, "heatwatch_gateway_device_state", device="makeup_meter", state="offline") == 0
    assert (value(s, "heatwatch_gateway_modbus_exceptions_total", device="plc", code="2") or 0) >= 1
    assert value(s, "heatwatch_gateway_modbus_exceptions_total", device="makeup_meter") is None
    assert (value(s, "heatwatch_gateway_modbus_no_answer_total", device="rooms") or 0) >= 1
    assert value(s, "heatwatch_gateway_modbus_no_answer_total", device="plc") == 0
    # round trips: loopback TCP answers well under 50 ms
    n = value(s, "heatwatch_gateway_modbus_rtt_seconds_count", device="makeup_meter") or 0
    assert n >= 3
    fast = value(s, "heatwatch_gateway_modbus_rtt_seconds_bucket", device="makeup_meter", le="0.05") or 0
    assert fast >= n * 0.9
    assert value(s, "heatwatch_gateway_modbus_rtt_seconds_count", device="rooms") == 0  # never answered
    acked = value(s, "heatwatch_gateway_publish_seconds_count", **st) or 0
    assert acked >= 5 and value(s, "heatwatch_gateway_publish_seconds_bucket", le="+Inf", **st) == acked
    assert (value(s, "heatwatch_gateway_poll_cycles_total", group="fast", **st) or 0) >= 3
    assert value(s, "heatwatch_gateway_outbox_max_age_seconds", **st) == 72 * 3600
    assert value(s, "heatwatch_gateway_outbox_dropped_total", **st) == 0
    assert (value(s, "heatwatch_gateway_receipts_total", **st) or 0) >= 5
    assert value(s, "heatwatch_gateway_receipts_refused_total", **st) is None
    assert value(s, "heatwatch_gateway_outbox_unreceipted", **st) is not None

    mosquitto.stop()  # the broker goes away: the outbox grows and ages

    def backlog() -> Samples | None:
        s = scrape(port)
        ok = (value(s, "heatwatch_gateway_mqtt_connected", **st) == 0
              and (value(s, "heatwatch_gateway_outbox_messages", **st) or 0) >= 20
              and (value(s, "heatwatch_gateway_outbox_oldest_age_seconds", **st) or 0) >= 1.0)
        return s if ok else None

    s = wait_for(backlog, 30, "the outbox to grow and age with the broker away")
    assert (value(s, "heatwatch_gateway_outbox_bytes", **st) or 0) > 0
    mosquitto.start()
    wait_for(lambda: (value(scrape(port), "heatwatch_gateway_outbox_oldest_age_seconds", **st) or 0) < 1.0,
             40, "the backlog sent and receipted after the broker is back")
    col.close()


def test_two_gateway_configs_naming_different_endpoints_are_refused(tmp_path: Path) -> None:
    paths = []
    for st, port in (("st001", 9901), ("st002", 9902)):
        p = write_gateway_config(tmp_path, st, mqtt_port=1, plc_port=2, bus_port=3)
        cfg = yaml.safe_load(p.read_text())
        cfg["metrics"] = {"port": port}
        p.write_text(yaml.safe_dump(cfg))
        paths.append(str(p))
    r = subprocess.run([sys.executable, "-m", "heatwatch", "gateway", *paths], capture_output=True, text=True,
                       cwd=REPO, timeout=60)
    assert r.returncode == 2, r.stderr
    assert "st002.yaml" in r.stderr and "metrics: one endpoint per process" in r.stderr
    assert "127.0.0.1:9901" in r.stderr


def test_api_metrics_with_two_workers_count_every_request_by_route(tmp_path: Path, procs: Processes) -> None:
    store_url = f"sqlite:///{tmp_path / 'alerts.sqlite'}"
    registry = SiteRegistry(store_url).open()
    token = registry.add_token(name="disp", role="dispatcher", actor="test", now=0)
    registry.close()
    api_port, metrics_port = free_port(), free_port()
    cfg = tmp_path / "api.yaml"
    cfg.write_text(yaml.safe_dump({
        "kind": "api", "workers": 2, "listen": {"port": api_port}, "store": store_url,
        "influx": {"url": f"http://127.0.0.1:{free_port()}", "timeout_s": 1},
        "metrics": {"port": metrics_port}}))
    procs.start("api", "api", str(cfg))
    wait_for(lambda: port_open(api_port) and port_open(metrics_port), 60, "the API and its metrics")
    calls = {("/health", "200"): 0, ("/v1/alerts/{alert_id}", "404"): 0, ("<unmatched>", "404"): 0}
    for i in range(30):
        # a new connection each time: the kernel spreads them over both workers' accept queues
        with httpx.Client(base_url=f"http://127.0.0.1:{api_port}", timeout=10,
                          headers={"Authorization": f"Bearer {token}"}) as http:
            for path, key in (("/health", ("/health", "200")),
                              (f"/v1/alerts/{i + 1}", ("/v1/alerts/{alert_id}", "404")),
                              (f"/no/such/{i}", ("<unmatched>", "404"))):
                assert http.get(path).status_code == int(key[1]), path
                calls[key] += 1
    s = scrape(metrics_port)
    for (route, status), n in calls.items():
        assert value(s, "heatwatch_api_requests_total", route=route, status=status, method="GET") == n, route
    assert value(s, "heatwatch_api_request_seconds_count", route="/health") == 30
    # no raw path became a series of its own
    assert not [ls for (name, ls) in s if name == "heatwatch_api_requests_total"
                and any(v.startswith("/no/") or v == "/v1/alerts/3" for _, v in ls)]
    # both workers answered some: each counts into files of its own in the supervisor's folder
    sup = procs.procs["api"].pid
    children = Path(f"/proc/{sup}/task/{sup}/children").read_text().split()
    env = dict(kv.split(b"=", 1) for c in children
               for kv in Path(f"/proc/{c}/environ").read_bytes().split(b"\0") if b"=" in kv)
    folder = Path(env[b"PROMETHEUS_MULTIPROC_DIR"].decode())
    assert len({f.stem.split("_")[-1] for f in folder.glob("counter_*.db")}) == 2
