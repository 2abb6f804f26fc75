"""Fixtures on real parts: mosquitto and influxd processes on free loopback ports with
throwaway folders, the simulator serving real Modbus TCP, and heatwatch processes.

A missing mosquitto or influxd fails the fixture with the command that installs it; nothing
is skipped.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import paho.mqtt.client as mqtt
import pytest
import sqlalchemy as sa
import yaml
from paho.mqtt.enums import CallbackAPIVersion

from alerting.database import Database
from contract.config import GatewayConfig, load_gateway_config
from contract.receipt import Receipt, receipt_topic
from heatwatch.devstack import DEPLOY, REPO, Influxd, Mosquitto, Postgres, SimThread, free_port


@pytest.fixture(autouse=True, scope="session")
def _no_logging_setup_in_the_test_process() -> Iterator[None]:
    """heatwatch's ``main()`` sets up logging for its process (``heatwatch.logs.setup``): in the
    test process it would hand structlog a new processor list, and every logger already used keeps
    the old one, so a later ``capture_logs`` sees nothing from it (two unit tests failed that way
    in the full suite only, after a site test had run ``main(["site", ...])`` twice). Tests run
    heatwatch commands as processes (``heatwatch()`` below, ``Processes``)."""
    import heatwatch.logs

    real = heatwatch.logs.setup

    def refuse(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("heatwatch.logs.setup in the test process: run the command with "
                             "tests.conftest.heatwatch() or Processes instead")

    heatwatch.logs.setup = refuse
    yield
    heatwatch.logs.setup = real


def heatwatch(*args: str) -> str:
    """Run a heatwatch command as its own process, as an operator does; its output, or a failure
    with it when it exits non-zero."""
    r = subprocess.run([sys.executable, "-m", "heatwatch", *args], capture_output=True, text=True,
                       cwd=REPO, timeout=120)
    assert r.returncode == 0, f"heatwatch {' '.join(args)} exited {r.returncode}:\n{r.stderr[-3000:]}"
    return r.stdout


@pytest.fixture(scope="session")
def influxd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Influxd]:
    db = Influxd(tmp_path_factory.mktemp("influxd"), free_port())
    db.start()
    yield db
    db.stop()


@pytest.fixture
def influx_db(influxd: Influxd) -> str:
    """A fresh database name for one test (the collector creates it)."""
    return f"t_{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="module")
def postgres() -> Iterator[Postgres]:
    """A PostgreSQL cluster for one test module (tests take a clean schema: ``site_db``)."""
    pg = Postgres(free_port())
    pg.start()
    yield pg
    pg.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def site_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """An empty, migrated site database: a SQLite file, or a clean schema on the module's
    PostgreSQL. The alert store, site registry and command store of a test share it."""
    if request.param == "sqlite":
        db = Database(f"sqlite:///{tmp_path / 'site.sqlite'}")
    else:
        db = Database(request.getfixturevalue("postgres").url)
        with db.engine.begin() as conn:
            conn.execute(sa.text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
    db.migrate()
    yield db
    db.close()


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    broker = Mosquitto(tmp_path / "mosquitto", free_port())
    broker.start()
    yield broker
    broker.stop()


def influx_query(db: Influxd, database: str, q: str) -> list[dict[str, Any]]:
    r = httpx.get(f"{db.url}/query", params={"db": database, "q": q, "epoch": "ms"}, timeout=10)
    r.raise_for_status()
    res = r.json()["results"][0]
    assert "error" not in res, res
    series: list[dict[str, Any]] = res.get("series", [])
    return series


def rows(series: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for s in series:
        for v in s["values"]:
            out.append({**s.get("tags", {}), **dict(zip(s["columns"], v, strict=True))})
    return out


def wait_for(pred: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = pred()
        if last:
            return last
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last: {last!r})")


def write_gateway_config(folder: Path, station: str, *, mqtt_port: int, plc_port: int,
                         bus_port: int, fast_s: float = 1.0, slow_s: float = 2.0,
                         outbox: dict[str, Any] | None = None) -> Path:
    """A gateway config for one simulated station, using the shipped register maps. ``outbox``:
    keys added to its outbox block (``receipts``, ``receipt_timeout_s``, ``max_bytes``); the
    receipt timeout is 5 s here (300 as shipped), so a test waits seconds for a re-send."""
    maps = DEPLOY / "maps"
    cfg = {
        "kind": "gateway", "gateway": f"gw-{station}", "station": station,
        "mqtt": {"host": "127.0.0.1", "port": mqtt_port, "keepalive_s": 5},
        "outbox": {"path": str(folder / f"gw-{station}.outbox.sqlite"), "receipt_timeout_s": 5,
                   **(outbox or {})},
        "poll_groups": {"fast": {"interval_s": fast_s}, "status": {"interval_s": fast_s},
                        "slow": {"interval_s": slow_s}},
        "devices": [
            {"name": "plc", "host": "127.0.0.1", "port": plc_port, "device_id": 1,
             "timeout_s": 0.5, "map": str(maps / "plc-s7-200smart-hx.yaml")},
            {"name": "makeup_meter", "host": "127.0.0.1", "port": bus_port, "device_id": 2,
             "timeout_s": 0.5, "map": str(maps / "tuf2000m-makeup.yaml")},
            {"name": "rooms", "host": "127.0.0.1", "port": bus_port, "device_id": 3,
             "timeout_s": 0.5, "map": str(maps / "room-concentrator.yaml")},
        ],
    }
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{station}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


@pytest.fixture
def station_config(tmp_path: Path, mosquitto: Mosquitto) -> GatewayConfig:
    path = write_gateway_config(tmp_path / "gw", "st001", mqtt_port=mosquitto.port,
                                plc_port=free_port(), bus_port=free_port())
    return load_gateway_config(path)


@pytest.fixture
def simulator(station_config: GatewayConfig) -> Iterator[SimThread]:
    sim = SimThread([station_config])
    yield sim
    sim.stop()


def write_collector_config(folder: Path, *, mqtt_port: int, influx_url: str, database: str,
                           client_id: str = "test-collector", **extra: Any) -> Path:
    cfg = {"kind": "collector", "client_id": client_id,
           "mqtt": {"host": "127.0.0.1", "port": mqtt_port, "keepalive_s": 5},
           "influx": {"url": influx_url, "database": database},
           "batch": {"max_lines": 5000, "max_delay_s": 0.2},
           "spool": {"path": str(folder / "spool.sqlite"), "after_s": 2}, **extra}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "collector.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def write_alerter_config(folder: Path, *, mqtt_port: int, store: str, member: str = "test-alerter",
                         name: str = "alerter.yaml", **extra: Any) -> Path:
    """An alerter member's config; ``extra`` top-level keys, or ``alerts`` keys under ``alerts``."""
    alerts = {"store": store, "tick_s": 0.5, **extra.pop("alerts", {})}
    cfg = {"kind": "alerter", "member": member,
           "mqtt": {"host": "127.0.0.1", "port": mqtt_port, "keepalive_s": 5}, "alerts": alerts, **extra}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


class Processes:
    """heatwatch subprocesses of one test, stopped at its end; their output kept for failures."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        log = open(self.folder / f"{name}.log", "ab")  # noqa: SIM115
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        p = subprocess.Popen([sys.executable, "-m", "heatwatch", "--log-level", "debug", *args],
                             stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=env)
        self.procs[name] = p
        return p

    def log(self, name: str) -> str:
        return (self.folder / f"{name}.log").read_text(errors="replace")

    def wait_log(self, name: str, needle: str, timeout: float = 60) -> None:
        """Wait until ``name``'s output holds ``needle`` (a readiness line), failing early with
        the log if the process exits first."""
        p = self.procs[name]

        def seen() -> bool:
            if p.poll() is not None:
                raise AssertionError(f"{name} exited with {p.returncode}:\n{self.log(name)[-3000:]}")
            return needle in self.log(name)

        wait_for(seen, timeout, f"{name} to log {needle!r}")

    def stop_all(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.terminate()
        for p in self.procs.values():
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Processes]:
    ps = Processes(tmp_path)
    yield ps
    ps.stop_all()


class Subscriber:
    """A plain paho client recording what arrives on a topic filter (test observer)."""

    def __init__(self, port: int, topic_filter: str, *, persistent: bool = False,
                 receipts: bool = False, client_id: str | None = None) -> None:
        """``persistent``: a session the broker keeps (and queues for) across reconnects.
        ``receipts``: act as the collector does after its durable write: receipt each telemetry
        message on arrival (contract/receipt.py, published over the broker), except those
        ``withhold(boot, seq)`` holds back (a message "lost" on the way)."""
        self.messages: list[tuple[str, bytes]] = []
        self.withhold: Callable[[str, int], bool] = lambda boot, seq: False
        self.receipts_sent = 0
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2,
                                  client_id=client_id or f"obs-{uuid.uuid4().hex[:8]}",
                                  clean_session=not persistent)
        self.client.reconnect_delay_set(1, 2)
        subscribed: list[bool] = []
        self.client.on_connect = lambda c, *_: c.subscribe(topic_filter, qos=1)
        self.client.on_subscribe = lambda *_: subscribed.append(True)

        def on_message(c: mqtt.Client, _u: object, m: mqtt.MQTTMessage) -> None:
            self.messages.append((m.topic, bytes(m.payload)))
            if receipts and m.topic.endswith("/telemetry"):
                t = orjson.loads(m.payload)
                if not self.withhold(t["boot"], t["seq"]):
                    r = Receipt(station=t["station"], gateway=t["gateway"], boot=t["boot"],
                                seqs=[(t["seq"], t["seq"])])
                    c.publish(receipt_topic(t["station"]), r.encode(), qos=1)
                    self.receipts_sent += 1

        self.client.on_message = on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        wait_for(lambda: subscribed, 10, "observer subscription")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def publish(port: int, messages: list[tuple[str, bytes]]) -> None:
    """Publish at QoS 1 and wait for every PUBACK."""
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"pub-{uuid.uuid4().hex[:8]}")
    c.connect("127.0.0.1", port)
    c.loop_start()
    try:
        infos = [c.publish(t, p, qos=1) for t, p in messages]
        for i in infos:
            i.wait_for_publish(10)
    finally:
        c.disconnect()
        c.loop_stop()
