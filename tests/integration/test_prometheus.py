"""A real Prometheus (Debian's package) scrapes the gateway, the collector, the alerter and the
API, and the rules of deploy/prometheus/heatwatch-rules.yml fire when their condition is made for
real: InfluxDB stopped → the collector spools → HeatwatchSpoolInUse; the broker stopped → the
gateway's outbox grows → HeatwatchOutboxGrowing and HeatwatchGatewayBrokerUnreachable; the API
stopped → HeatwatchTargetDown; the alert store locked by another writer → the alerter holds its
batch and retries → HeatwatchAlertStoreRetries. The rules run as shipped except ``for:``,
shortened to 1 s in the test's copy; every wait is on Prometheus's own answer, never a fixed sleep.

promtool checks the shipped rules and the example config.
"""

from __future__ import annotations

import datetime as dt
import re
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from contract.commands import CommandResult
from contract.config import load_gateway_config
from heatwatch.devstack import DEPLOY, REPO, Influxd, Mosquitto, SimThread, _Service, find_binary, free_port
from tests.conftest import (
    Processes,
    publish,
    wait_for,
    write_alerter_config,
    write_collector_config,
    write_gateway_config,
)

RULES = DEPLOY / "prometheus" / "heatwatch-rules.yml"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([find_binary("promtool", "prometheus"), *args], capture_output=True, text=True,
                          cwd=REPO, timeout=60)


class Prometheus(_Service):
    name = "prometheus"

    def __init__(self, folder: Path, port: int, config: dict[str, Any]) -> None:
        super().__init__(folder, port)
        self.binary = find_binary("prometheus", "prometheus")
        self.conf = folder / "prometheus.yml"
        self.conf.write_text(yaml.safe_dump(config, sort_keys=False))
        self.url = f"http://127.0.0.1:{port}"

    def _cmd(self) -> list[str]:
        return [self.binary, f"--config.file={self.conf}", f"--storage.tsdb.path={self.folder / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"]

    def _ready(self) -> bool:
        try:
            return httpx.get(f"{self.url}/-/ready", timeout=0.5).status_code == 200
        except httpx.HTTPError:
            return False

    def api(self, path: str, **params: str) -> Any:
        r = httpx.get(f"{self.url}/api/v1/{path}", params=params, timeout=5)
        r.raise_for_status()
        return r.json()["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.api("query", query=expr)["result"]
        return result

    def targets(self) -> dict[str, str]:
        return {t["labels"]["job"]: t["health"] for t in self.api("targets")["activeTargets"]}

    def alerts(self, state: str = "firing") -> list[dict[str, Any]]:
        return [a for a in self.api("alerts")["alerts"] if a["state"] == state]

    def firing(self, name: str, **labels: str) -> list[dict[str, Any]]:
        return [a for a in self.alerts() if a["labels"]["alertname"] == name
                and labels.items() <= a["labels"].items()]


def test_promtool_passes_the_shipped_rules_and_the_example_config() -> None:
    for args in (("check", "rules", str(RULES)),
                 ("check", "config", str(DEPLOY / "prometheus" / "prometheus.yml"))):
        r = promtool(*args)
        assert r.returncode == 0, f"promtool {' '.join(args)}:\n{r.stdout}\n{r.stderr}"
    assert "20 rules found" in promtool("check", "rules", str(RULES)).stdout


def _epoch(rfc3339: str) -> float:
    """Prometheus's RFC 3339 time (nanoseconds, Z) as seconds since the epoch."""
    whole, _, frac = rfc3339.rstrip("Z").partition(".")
    return dt.datetime.fromisoformat(whole).replace(tzinfo=dt.UTC).timestamp() + float(f"0.{frac or 0}")


def short_for(text: str) -> str:
    """The shipped rules with every ``for:`` at 1 s: the conditions and thresholds as shipped."""
    out, n = re.subn(r"(?m)^(\s+)for: \d+[smh]$", r"\1for: 1s", text)
    assert n >= 10, n
    return out


@pytest.fixture
def own_influxd(tmp_path: Path) -> Iterator[Influxd]:
    """An InfluxDB of this test's own: it is stopped (the session's is shared)."""
    db = Influxd(tmp_path / "influxd", free_port())
    db.start()
    yield db
    db.stop()


def test_prometheus_scrapes_gateway_collector_and_api_and_the_rules_fire(
        tmp_path: Path, mosquitto: Mosquitto, own_influxd: Influxd, procs: Processes) -> None:
    ports = {job: free_port() for job in ("gateway", "collector", "alerter", "api")}
    # receipts on, as shipped: the outbox empties as the collector receipts what it stored
    gw = write_gateway_config(tmp_path / "gw", "st001", mqtt_port=mosquitto.port, plc_port=free_port(),
                              bus_port=free_port(), fast_s=0.2, slow_s=0.4)
    cfg = yaml.safe_load(gw.read_text())
    cfg["metrics"] = {"port": ports["gateway"]}
    gw.write_text(yaml.safe_dump(cfg, sort_keys=False))
    sim = SimThread([load_gateway_config(gw)])
    col = write_collector_config(tmp_path / "col", mqtt_port=mosquitto.port, influx_url=own_influxd.url,
                                 database="heatwatch", stats={"metrics_port": ports["collector"]})
    store = f"sqlite:///{tmp_path / 'alerts.sqlite'}"
    alerter = write_alerter_config(tmp_path / "alerter", mqtt_port=mosquitto.port, store=store,
                                   metrics={"port": ports["alerter"]})
    api_port = free_port()
    api = tmp_path / "api.yaml"
    api.write_text(yaml.safe_dump({"kind": "api", "listen": {"port": api_port}, "store": store,
                                   "influx": {"url": own_influxd.url, "database": "heatwatch"},
                                   "metrics": {"port": ports["api"]}}))
    (tmp_path / "prom").mkdir()
    (tmp_path / "prom" / "rules.yml").write_text(short_for(RULES.read_text()))
    prom = Prometheus(tmp_path / "prom", free_port(), {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": ["rules.yml"],
        "scrape_configs": [
            {"job_name": f"heatwatch-{job}", "static_configs": [{"targets": [f"127.0.0.1:{p}"]}]}
            for job, p in ports.items()]})
    try:
        procs.start("collector", "collector", str(col))
        procs.start("alerter", "alerter", str(alerter))
        procs.wait_log("alerter", '"partitions taken over"')
        procs.start("gateway", "gateway", str(gw))
        procs.start("api", "api", str(api))
        prom.start()
        wait_for(lambda: prom.targets() == {f"heatwatch-{j}": "up" for j in ports}, 60,
                 "Prometheus scraping all four")
        for _ in range(5):
            httpx.get(f"http://127.0.0.1:{api_port}/health", timeout=5)
        # what each process reports, as Prometheus stored it
        wait_for(lambda: prom.query('heatwatch_api_requests_total{route="/health",status="200"} >= 5'), 30,
                 "the API's requests in Prometheus")
        wait_for(lambda: prom.query("heatwatch_collector_written_total > 0"), 30, "the collector writing")
        wait_for(lambda: prom.query('heatwatch_gateway_acked_total{station="st001"} > 10'), 30,
                 "the gateway publishing")
        assert prom.query('heatwatch_gateway_device_state{device="plc",state="online"} == 1')
        wait_for(lambda: prom.query("heatwatch_alerter_judged_total > 10"), 30, "the alerter judging")
        assert prom.query("sum(heatwatch_alerter_partitions_owned) == 64")
        # waited for, not asserted at once: the rate needs two scrapes with polls between, and on a
        # loaded machine (a full suite on CI's 2 cores) the first minute's median can be above it
        rtt = "histogram_quantile(0.5, rate(heatwatch_gateway_modbus_rtt_seconds_bucket[1m])) < 0.05"
        wait_for(lambda: prom.query(rtt), 30, "the gateway's Modbus round trip median under 50 ms")
        # a healthy pipeline: every rule has been evaluated over twenty scrapes, none fires (with
        # three or four, HeatwatchCollectorInboxFull's old "never empty" form fired now and then: a
        # live collector's inbox holds the batch it is cutting at about half of the scrapes)
        wait_for(lambda: prom.query("count_over_time(heatwatch_collector_inbox[10m]) >= 20"), 60,
                 "twenty scrapes of the collector")
        after = prom.api("query", query="time()")["result"][0]

        def evaluated_since() -> bool:
            rules = [r for g in prom.api("rules")["groups"] for r in g["rules"]]
            return all(r["health"] == "ok" and r.get("lastEvaluation", "").startswith("20")
                       and _epoch(r["lastEvaluation"]) > float(after) for r in rules)

        wait_for(evaluated_since, 30, "rules evaluated")
        assert prom.alerts() == [] and prom.alerts("pending") == []

        own_influxd.stop()  # the collector spools
        wait_for(lambda: prom.firing("HeatwatchSpoolInUse", job="heatwatch-collector"), 60,
                 "HeatwatchSpoolInUse firing")
        mosquitto.stop()  # the gateway keeps everything in its outbox
        wait_for(lambda: prom.firing("HeatwatchOutboxGrowing", station="st001"), 60,
                 "HeatwatchOutboxGrowing firing")
        assert prom.firing("HeatwatchGatewayBrokerUnreachable", station="st001")
        procs.procs["api"].terminate()
        wait_for(lambda: prom.firing("HeatwatchTargetDown", job="heatwatch-api"), 60,
                 "HeatwatchTargetDown firing for the API")
        names = {a["labels"]["alertname"] for a in prom.alerts()}
        assert names == {"HeatwatchSpoolInUse", "HeatwatchOutboxGrowing", "HeatwatchGatewayBrokerUnreachable",
                         "HeatwatchTargetDown"}, names

        # the causes removed, the alerts end
        own_influxd.start()
        mosquitto.start()
        t0 = time.monotonic()
        wait_for(lambda: not prom.firing("HeatwatchSpoolInUse") and not prom.firing("HeatwatchOutboxGrowing"),
                 90, "the spool and outbox alerts resolved")
        assert time.monotonic() - t0 < 90

        # the alert store locked by another writer: the alerter holds its batch and retries
        lock = sqlite3.connect(tmp_path / "alerts.sqlite", timeout=5)
        lock.execute("BEGIN EXCLUSIVE")
        try:
            result = CommandResult.model_validate({
                "id": "c1", "station": "st001", "gateway": "gw-st001", "state": "confirmed", "device": "plc",
                "point": "building_valve_setpoint", "value": 70.0, "read_back": 70.0,
                "ts": int(time.time() * 1000)})
            publish(mosquitto.port, [("heatwatch/v1/station/st001/command-result/c1", result.to_json())])
            wait_for(lambda: prom.firing("HeatwatchAlertStoreRetries", job="heatwatch-alerter"), 90,
                     "HeatwatchAlertStoreRetries firing")
        finally:
            lock.rollback()
            lock.close()
    finally:
        prom.stop()
        sim.stop()
