"""Helpers for the collector's issue #16 tests: a test gateway that publishes telemetry and keeps
the receipts it gets, the collector as a process with its /metrics, its RSS from /proc."""

from __future__ import annotations

import threading
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

import httpx
import orjson
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from contract.receipt import RECEIPT_FILTER, parse_receipt
from heatwatch.devstack import Influxd, free_port
from tests.conftest import Processes, influx_query, rows, wait_for, write_collector_config

TELEMETRY = "heatwatch/v1/station/{}/telemetry"
BOOT = "aaaaaaaa"


def canonical(seq: int) -> list[dict[str, Any]]:
    """A station's canonical readings for message ``seq`` (flow and heat totals, a temperature,
    a pump), values a function of ``seq``."""
    return [{"point": "primary_flow_total", "value": 1000.0 + seq, "unit": "m³"},
            {"point": "primary_heat_total", "value": 50.0 + seq / 10, "unit": "GJ"},
            {"point": "secondary_supply_temp", "value": 50.0 + seq % 7, "unit": "°C"},
            {"point": "circ_pump_running", "value": seq % 2 == 0, "unit": ""}]


def telemetry(station: str, seq: Any, *, boot: str = BOOT, ts: int | None = None,
              values: list[dict[str, Any]] | None = None, gateway: str | None = None,
              **extra: Any) -> bytes:
    """A telemetry payload; ``ts`` defaults to a time that is a function of (station, seq), so a
    re-sent message lands on the same timestamp."""
    if ts is None:
        ts = BASE_TS + (seq if isinstance(seq, int) and 0 <= seq < 10**9 else 0) * 1000
    msg = {"schema": 1, "station": station, "gateway": gateway or f"gw-{station}", "boot": boot,
           "seq": seq, "ts": ts, "values": canonical(seq if isinstance(seq, int) else 0)
           if values is None else values, **extra}
    return orjson.dumps(msg)


BASE_TS = (int(time.time()) - 3600) * 1000  # an hour ago: every test's samples are in the past


class TestGateway:
    """Publishes at QoS 1 (MQTT 5) and keeps every receipt that arrives for its stations."""

    __test__ = False  # not a pytest class

    def __init__(self, port: int, name: str = "") -> None:
        # station, gateway, boot, ranges
        self.receipts: list[tuple[str, str, str, list[tuple[int, int]]]] = []
        self.bad_receipts: list[bytes] = []
        self.lock = threading.Lock()
        subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5,
                                  client_id=name or f"tgw-{uuid.uuid4().hex[:8]}")
        self.client.on_connect = lambda c, *_: c.subscribe(RECEIPT_FILTER, qos=1)
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.on_message = self._message
        self.client.max_inflight_messages_set(1000)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert subscribed.wait(10), "test gateway: no SUBACK"

    def _message(self, _c: Any, _u: Any, m: mqtt.MQTTMessage) -> None:
        try:
            r = parse_receipt(bytes(m.payload))
        except Exception:  # a malformed receipt: kept, and the test fails on it
            self.bad_receipts.append(bytes(m.payload))
            return
        assert m.topic == f"heatwatch/v1/station/{r.station}/receipt"
        with self.lock:
            self.receipts.append((r.station, r.gateway, r.boot, list(r.seqs)))

    def publish(self, messages: list[tuple[str, bytes]], timeout: float = 60) -> None:
        """Publish and wait for every PUBACK."""
        infos = [self.client.publish(t, p, qos=1) for t, p in messages]
        for i in infos:
            i.wait_for_publish(timeout)

    def receipted(self) -> dict[tuple[str, str, str], set[int]]:
        """(station, gateway, boot) → every seq receipted."""
        out: dict[tuple[str, str, str], set[int]] = defaultdict(set)
        with self.lock:
            for station, gateway, boot, ranges in self.receipts:
                for first, last in ranges:
                    out[(station, gateway, boot)].update(range(first, last + 1))
        return dict(out)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def metrics(port: int) -> dict[str, float]:
    """The collector's /metrics as {name{labels}: value}."""
    out: dict[str, float] = {}
    for line in httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def metric(port: int, name: str) -> float:
    return metrics(port).get(name, 0.0)


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


class CollectorProc:
    """One collector process on a real broker and InfluxDB, with its metrics port."""

    def __init__(self, procs: Processes, folder: Path, *, mqtt_port: int, db: Influxd, database: str,
                 name: str = "collector", **extra: Any) -> None:
        self.procs, self.name, self.db, self.database = procs, name, db, database
        self.metrics_port = free_port()
        stats = {"interval_s": 1, "metrics_port": self.metrics_port, **extra.pop("stats", {})}
        self.config = write_collector_config(folder / name, mqtt_port=mqtt_port, influx_url=db.url,
                                             database=database, client_id=f"test-{name}", stats=stats,
                                             **extra)
        self.start()

    def start(self) -> None:
        log = self.procs.folder / f"{self.name}.log"
        before = log.read_text(errors="replace").count('"subscribed"') if log.exists() else 0
        self.procs.start(self.name, "collector", str(self.config))
        wait_for(lambda: self.procs.log(self.name).count('"subscribed"') > before, 30,
                 f"{self.name} subscribed")

    @property
    def pid(self) -> int:
        return self.procs.procs[self.name].pid

    def alive(self) -> bool:
        return self.procs.procs[self.name].poll() is None

    def metric(self, name: str) -> float:
        return metric(self.metrics_port, name)

    def metrics(self) -> dict[str, float]:
        return metrics(self.metrics_port)

    def rejected(self) -> dict[str, float]:
        """Messages rejected, by reason."""
        p = 'heatwatch_collector_rejected_total{reason="'
        return {k[len(p):-2]: v for k, v in self.metrics().items() if k.startswith(p)}

    def count(self, q: str) -> int:
        got = rows(influx_query(self.db, self.database, q))
        return int(got[0]["count"]) if got else 0
