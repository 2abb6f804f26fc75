"""Issue #16's proof, end to end on real parts: the simulator (real Modbus TCP) → two gateway
processes with their outboxes → mosquitto → the collector process (ingest: the rules are the
alerter's, which this proof does not need) → InfluxDB, and the collector's receipts back to the
gateways. mosquitto is killed with SIGKILL, once while it holds a backlog for a stopped collector
and once under live traffic; every sample the gateways produced is in InfluxDB exactly once.

What the gateways produced is recorded beside them, not through the broker: a trigger in each
gateway's outbox file copies every telemetry row as it is inserted (the gateway deletes rows once
receipted). The check compares, per series and field, the samples of every produced message up to
a cut-off time with what InfluxDB holds up to it: lost = produced − stored, duplicated = stored −
produced, both must be 0 (a sample re-sent after the kill lands on its own timestamp and
overwrites itself)."""

from __future__ import annotations

import os
import sqlite3
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from contract.config import GatewayConfig, load_gateway_config
from contract.payload import Telemetry, parse_telemetry
from durable.queue import DiskQueue
from heatwatch.devstack import Influxd, Mosquitto, SimThread, free_port
from tests.collector_helpers import CollectorProc
from tests.conftest import Processes, influx_query, wait_for, write_gateway_config

pytestmark = pytest.mark.slow
STATIONS = ("st001", "st002")


class Gateways:
    """Two simulated stations, a gateway process each, a production record in each outbox."""

    def __init__(self, folder: Path, procs: Processes, mqtt_port: int, **sim: Any) -> None:
        """``sim``: the simulator's keyword arguments (``scenario``, ``room_settle_s``)."""
        self.procs = procs
        self.paths: dict[str, Path] = {}
        self.metrics: dict[str, int] = {}
        configs: list[GatewayConfig] = []
        for st in STATIONS:
            path = write_gateway_config(folder, st, mqtt_port=mqtt_port, plc_port=free_port(),
                                        bus_port=free_port(), fast_s=0.5, slow_s=1.0)
            cfg: dict[str, Any] = yaml.safe_load(path.read_text())
            self.metrics[st] = free_port()
            cfg["metrics"] = {"host": "127.0.0.1", "port": self.metrics[st]}
            path.write_text(yaml.safe_dump(cfg, sort_keys=False))
            configs.append(load_gateway_config(path))
            self.paths[st] = path
            self._record(configs[-1].outbox.path)
        self.configs = configs
        self.sim = SimThread(list(configs), **sim)

    @staticmethod
    def _record(outbox: str) -> None:
        DiskQueue(outbox, max_bytes=1 << 30, max_age_s=86400).close()  # its schema, as the gateway makes it
        db = sqlite3.connect(outbox)
        db.executescript("""
            CREATE TABLE produced (payload BLOB NOT NULL);
            CREATE TRIGGER produced_copy AFTER INSERT ON queue WHEN NEW.key LIKE '%/telemetry'
            BEGIN INSERT INTO produced (payload) VALUES (NEW.payload); END;""")
        db.close()

    def start(self) -> None:
        for st in STATIONS:
            self.procs.start(f"gw-{st}", "gateway", str(self.paths[st]))

    def produced(self) -> list[Telemetry]:
        out = []
        for cfg in self.configs:
            db = sqlite3.connect(cfg.outbox.path)
            try:
                out += [parse_telemetry(bytes(r[0])) for r in db.execute("SELECT payload FROM produced")]
            finally:
                db.close()
        return out

    def metric(self, station: str, name: str) -> float:
        total = 0.0
        text = httpx.get(f"http://127.0.0.1:{self.metrics[station]}/metrics", timeout=5).text
        for line in text.splitlines():
            if line.startswith(f"heatwatch_gateway_{name}") and not line.startswith("#"):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def close(self) -> None:
        for st in STATIONS:
            p = self.procs.procs.get(f"gw-{st}")
            if p is not None and p.poll() is None:
                p.terminate()
                p.wait(15)
        self.sim.stop()


@pytest.fixture
def gateways(tmp_path: Path, procs: Processes, mosquitto: Mosquitto) -> Iterator[Gateways]:
    g = Gateways(tmp_path / "gw", procs, mosquitto.port)
    yield g
    g.close()


def _series_key(tags: dict[str, Any], measurement: str) -> tuple[str, ...]:
    return (measurement, *(f"{k}={v}" for k, v in sorted(tags.items()) if v))


def expected_samples(messages: list[Telemetry], cut_ms: int) -> Counter[tuple[tuple[str, ...], str]]:
    """(series, field) → samples the messages up to ``cut_ms`` carry, one per distinct time."""
    seen: set[tuple[tuple[str, ...], str, int]] = set()
    for m in messages:
        if m.ts > cut_ms:
            continue
        for r in m.values:
            tags = {"station": m.station, "building": r.building, "household": r.household}
            measurement = "household" if r.household else "building" if r.building else "station"
            key = _series_key(tags, measurement)
            if r.value is not None:
                seen.add((key, r.point, m.ts))
            if r.quality.value != "good":
                seen.add((key, f"{r.point}_quality", m.ts))
    return Counter((k, f) for k, f, _ts in seen)


def stored_samples(db: Influxd, database: str, cut_ms: int) -> Counter[tuple[tuple[str, ...], str]]:
    out: Counter[tuple[tuple[str, ...], str]] = Counter()
    for measurement in ("station", "building", "household"):
        for s in influx_query(db, database, f"SELECT count(*) FROM {measurement} WHERE time <= {cut_ms}ms "
                                            "GROUP BY *"):
            key = _series_key(s.get("tags", {}), measurement)
            for col, n in zip(s["columns"], s["values"][0], strict=True):
                if col != "time" and n:
                    out[(key, col.removeprefix("count_"))] += int(n)
    return out


def _check_exact(g: Gateways, col: CollectorProc, *, timeout: float, since: float) -> dict[str, Any]:
    """Wait until InfluxDB holds exactly what the gateways produced up to a cut-off 5 s in the past
    (every poll that started before it has long been put in the outbox); ``since``: when the
    broker came back (monotonic), for the time to catch up."""
    time.sleep(6)
    cut = int(time.time() * 1000) - 5000
    want = expected_samples(g.produced(), cut)

    def same() -> bool:
        return stored_samples(col.db, col.database, cut) == want

    try:
        wait_for(same, timeout, "InfluxDB to hold exactly what the gateways produced")
    except AssertionError:
        got = stored_samples(col.db, col.database, cut)
        lost = want - got
        dup = got - want
        raise AssertionError(f"lost {sum(lost.values())} samples ({list(lost.items())[:5]}), "
                             f"{sum(dup.values())} extra ({list(dup.items())[:5]})") from None
    return {"produced_messages": len({(m.boot, m.seq, m.station) for m in g.produced() if m.ts <= cut}),
            "produced_samples": sum(want.values()), "stored_samples": sum(want.values()), "lost": 0,
            "duplicated": 0, "exact_after_restart_s": round(time.monotonic() - since, 1)}


def _collector(tmp_path: Path, procs: Processes, mosquitto: Mosquitto, influxd: Influxd,
               influx_db: str) -> CollectorProc:
    return CollectorProc(procs, tmp_path, mqtt_port=mosquitto.port, db=influxd, database=influx_db,
                         ingest={"known_stations": list(STATIONS)})


def test_broker_sigkilled_holding_a_backlog_loses_no_sample(
        tmp_path: Path, procs: Processes, mosquitto: Mosquitto, influxd: Influxd, influx_db: str,
        gateways: Gateways) -> None:
    """The collector stopped, mosquitto holds hundreds of messages for its session, acknowledged
    to the gateways; kill -9 loses those since its last autosave. The gateways keep every row
    until the collector receipts it and send again what it never does: nothing lost."""
    col = _collector(tmp_path, procs, mosquitto, influxd, influx_db)  # its session: the broker queues
    gateways.start()
    wait_for(lambda: col.metric("heatwatch_collector_acked_total") >= 20, 30, "the first messages stored")
    procs.procs["collector"].terminate()
    procs.procs["collector"].wait(15)
    backlog_from = len(gateways.produced())
    wait_for(lambda: len(gateways.produced()) - backlog_from >= 200, 60, "a backlog of 200 messages")
    db_file = mosquitto.folder / "data" / "mosquitto.db"
    saved = db_file.stat().st_mtime_ns if db_file.exists() else 0
    wait_for(lambda: db_file.exists() and db_file.stat().st_mtime_ns > saved, 15, "an autosave")
    since = len(gateways.produced())
    wait_for(lambda: len(gateways.produced()) >= since + 20, 15, "20 more messages since it")
    mosquitto.kill()
    backlog = len(gateways.produced()) - backlog_from
    mosquitto.start()
    back = time.monotonic()
    col.start()
    figures = _check_exact(gateways, col, timeout=90, since=back)
    resent = sum(gateways.metric(st, "resent_total") for st in STATIONS)
    print(f"broker SIGKILL with a backlog of {backlog} messages: {figures}, "
          f"re-sent by the gateways {resent:.0f}")
    assert resent > 0  # the broker did lose some: they came back from the gateways' outboxes
    assert col.metric("heatwatch_collector_write_rejected_total") == 0
    assert col.rejected() == {}


def test_broker_sigkilled_under_live_traffic_loses_no_sample(
        tmp_path: Path, procs: Processes, mosquitto: Mosquitto, influxd: Influxd, influx_db: str,
        gateways: Gateways) -> None:
    col = _collector(tmp_path, procs, mosquitto, influxd, influx_db)
    gateways.start()
    wait_for(lambda: col.metric("heatwatch_collector_acked_total") >= 50, 30, "traffic")
    mosquitto.kill()
    time.sleep(3)
    mosquitto.start()
    figures = _check_exact(gateways, col, timeout=60, since=time.monotonic())
    resent = sum(gateways.metric(st, "resent_total") for st in STATIONS)
    print(f"broker SIGKILL without a backlog: {figures}, re-sent by the gateways {resent:.0f}")
    assert col.metric("heatwatch_collector_write_rejected_total") == 0
    assert col.alive() and os.path.exists(gateways.configs[0].outbox.path)
