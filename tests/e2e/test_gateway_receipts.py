"""The gateway's outbox under receipts (issue #16), end to end: simulator (real Modbus TCP) →
gateway process → real mosquitto → a test client acting as the collector, whose receipts
(contract/receipt.py) go back over the same broker, published on arrival or by hand.

The broker's PUBACK is not durability: a telemetry row stays in the outbox until a receipt names
its (boot, seq); what stays unreceipted past ``outbox.receipt_timeout_s`` while later rows are
receipted is sent again; a receipt that cannot be one deletes nothing; a gateway killed with -9
keeps its rows across the restart; without receipts the outbox is bounded as before."""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from contract.config import GatewayConfig, load_gateway_config
from contract.receipt import Receipt, receipt_topic
from gateway.publisher import MARK_EVERY_S
from heatwatch.devstack import Mosquitto, SimThread, free_port
from tests.conftest import Processes, Subscriber, publish, wait_for, write_gateway_config
from tests.integration.test_metrics import scrape, value

TIMEOUT_S = 4.0  # the gateways' receipt timeout here (300 s as shipped)
ST = {"station": "st001"}


@dataclass
class Rig:
    mosquitto: Mosquitto
    procs: Processes
    path: Path
    cfg: GatewayConfig
    metrics_port: int

    def start(self) -> None:
        self.procs.start("gateway", "gateway", str(self.path))
        self.procs.wait_log("gateway", "metrics endpoint")

    def outbox(self) -> list[tuple[str, int]]:
        """(boot, seq) of the telemetry rows in the outbox, as the gateway left them on disk."""
        db = sqlite3.connect(f"file:{self.cfg.outbox.path}?mode=ro", uri=True)
        try:
            return [(str(b), int(s)) for b, s in
                    db.execute("SELECT boot, seq FROM queue WHERE boot IS NOT NULL ORDER BY id")]
        finally:
            db.close()

    def metric(self, name: str, **labels: str) -> float:
        return value(scrape(self.metrics_port), f"heatwatch_gateway_{name}", **ST, **labels) or 0.0


@contextlib.contextmanager
def _rig(tmp_path: Path, mosquitto: Mosquitto, procs: Processes, **outbox: Any) -> Iterator[Rig]:
    path = write_gateway_config(tmp_path / "gw", "st001", mqtt_port=mosquitto.port, plc_port=free_port(),
                                bus_port=free_port(), fast_s=0.5, slow_s=1.0,
                                outbox={"receipt_timeout_s": TIMEOUT_S, **outbox})
    cfg = yaml.safe_load(path.read_text())
    port = free_port()
    cfg["metrics"] = {"port": port}
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    gw = load_gateway_config(path)
    sim = SimThread([gw])
    try:
        yield Rig(mosquitto, procs, path, gw, port)
    finally:
        sim.stop()


@pytest.fixture
def rig(tmp_path: Path, mosquitto: Mosquitto, procs: Processes) -> Iterator[Rig]:
    with _rig(tmp_path, mosquitto, procs) as r:
        yield r


def _sent(obs: Subscriber) -> list[tuple[str, int]]:
    """(boot, seq) of every telemetry message that reached the observer, in arrival order."""
    out = []
    for t, p in list(obs.messages):
        if t.endswith("/telemetry"):
            m = orjson.loads(p)
            out.append((m["boot"], m["seq"]))
    return out


def _receipt(boot: str, seqs: list[tuple[int, int]], **over: str) -> tuple[str, bytes]:
    fields = {"station": "st001", "gateway": "gw-st001", **over}
    return receipt_topic("st001"), Receipt(boot=boot, seqs=seqs, **fields).encode()


def test_rows_stay_after_their_puback_until_a_receipt_names_them(rig: Rig) -> None:
    col = Subscriber(rig.mosquitto.port, "heatwatch/v1/station/+/telemetry", persistent=True)
    rig.start()
    wait_for(lambda: len(_sent(col)) >= 12 and rig.metric("acked_total") >= 12, 30, "12 acknowledged")
    boot = _sent(col)[0][0]
    # acknowledged by the broker and delivered, and still on disk: a PUBACK deletes nothing
    assert set(_sent(col)) <= set(rig.outbox())
    assert rig.metric("outbox_unreceipted") >= 12
    publish(rig.mosquitto.port, [_receipt(boot, [(0, 4)])])  # as the collector would, by hand
    wait_for(lambda: rig.metric("receipted_total") == 5, 10, "the receipt taken")
    left = {s for b, s in rig.outbox() if b == boot}
    assert not left & {0, 1, 2, 3, 4}
    assert set(range(5, 12)) <= left  # exactly what it named went
    # a collector that receipts nothing newer (away, or working through a backlog) is sent no
    # copies: past the timeout the gateway says so, once, and keeps the rows
    wait_for(lambda: "no receipt from the collector" in rig.procs.log("gateway"), TIMEOUT_S + 15,
             "the gateway noticing the silence")
    assert rig.metric("resent_total") == 0
    assert set(range(5, 12)) <= {s for b, s in rig.outbox() if b == boot}
    col.close()


def test_a_lost_message_is_sent_again_after_the_timeout(rig: Rig) -> None:
    col = Subscriber(rig.mosquitto.port, "heatwatch/v1/station/+/telemetry", persistent=True, receipts=True)
    arrivals: list[float] = []  # of seq 3 (the first boot's: the only one here)

    def lose_seq_3_once(boot: str, seq: int) -> bool:  # its first copy never reaches the store
        if seq != 3:
            return False
        arrivals.append(time.monotonic())
        return len(arrivals) == 1

    col.withhold = lose_seq_3_once
    rig.start()
    wait_for(lambda: arrivals, 30, "seq 3")
    boot = _sent(col)[0][0]
    # every other row receipted and gone; seq 3 waits, then goes again, and its receipt clears it
    wait_for(lambda: len(arrivals) >= 2, TIMEOUT_S + 20, "seq 3 sent again")
    # not before its timeout (hand-over times are kept to the second)
    assert arrivals[1] - arrivals[0] >= TIMEOUT_S - MARK_EVERY_S - 0.5
    wait_for(lambda: (boot, 3) not in rig.outbox(), 10, "the second copy receipted")
    twice = {k for k, n in Counter(_sent(col)).items() if n > 1}
    assert twice == {(boot, 3)}, twice  # nothing receipted was sent again
    assert rig.metric("resent_total") == 1
    # the outbox in steady state: only what is on its way (a poll or two), nothing old
    wait_for(lambda: len(rig.outbox()) <= 8, 10, "a short outbox")
    col.close()


def test_receipts_for_another_boot_station_or_gateway_delete_nothing(rig: Rig) -> None:
    col = Subscriber(rig.mosquitto.port, "heatwatch/v1/station/+/telemetry", persistent=True)
    rig.start()
    wait_for(lambda: len(_sent(col)) >= 8, 30, "eight messages")
    boot = _sent(col)[0][0]
    before = set(rig.outbox())
    everything = [(0, 10**6)]
    publish(rig.mosquitto.port, [
        _receipt("0badc0de0badc0de", everything),  # another boot: names no row of this outbox
        _receipt(boot, [(0, 10**12)]),  # seqs this boot has not sent yet: a broken collector
        _receipt(boot, everything, station="st002"),  # on this station's topic, for another
        _receipt(boot, everything, gateway="gw-st002"),
        (receipt_topic("st001"), b'{"schema":1,"station":"st001","seqs":"all"}'),
        (receipt_topic("st002"), _receipt(boot, everything)[1]),  # another station's topic: not read
    ])
    wait_for(lambda: rig.metric("receipts_total") >= 5, 10, "five receipts taken")
    assert before <= set(rig.outbox())  # nothing deleted
    assert rig.metric("receipted_total") == 0
    for reason in ("ahead", "wrong_station", "wrong_gateway", "bad_payload"):
        assert rig.metric("receipts_refused_total", reason=reason) == 1, reason
    log = rig.procs.log("gateway")
    assert log.count("receipt refused") == 4  # once per reason
    # the gateway goes on: a good receipt still works
    publish(rig.mosquitto.port, [_receipt(boot, [(0, 1)])])
    wait_for(lambda: rig.metric("receipted_total") == 2, 10, "a good receipt")
    col.close()


def test_a_killed_gateway_keeps_its_unreceipted_rows_and_sends_them_again(rig: Rig) -> None:
    col = Subscriber(rig.mosquitto.port, "heatwatch/v1/station/+/telemetry", persistent=True)
    rig.start()
    wait_for(lambda: len(_sent(col)) >= 10, 30, "ten messages")
    rig.procs.procs["gateway"].kill()  # SIGKILL: no goodbye, nothing flushed
    rig.procs.procs["gateway"].wait(10)
    boot1 = _sent(col)[0][0]
    kept = {s for b, s in rig.outbox() if b == boot1}
    delivered = {s for b, s in _sent(col) if b == boot1}
    assert delivered <= kept  # acknowledged and delivered, and all still on disk
    n_before = len(_sent(col))
    rig.start()  # a new boot; the old boot's rows go again, oldest first, as they were
    wait_for(lambda: {s for b, s in _sent(col)[n_before:] if b == boot1} == kept, 30,
             "every row of the old boot sent again")
    boot2 = wait_for(lambda: next((b for b, _ in _sent(col)[n_before:] if b != boot1), None), 10,
                     "the new boot's first message")
    # the collector receipts the old boot's rows under their own boot
    publish(rig.mosquitto.port, [_receipt(boot1, [(min(kept), max(kept))])])
    wait_for(lambda: not any(b == boot1 for b, _ in rig.outbox()), 10, "the old boot's rows receipted")
    assert any(b == boot2 for b, _ in rig.outbox())  # the new boot's stay: nobody receipted them
    col.close()


@pytest.mark.slow
def test_without_receipts_the_outbox_keeps_to_its_byte_bound(tmp_path: Path, mosquitto: Mosquitto,
                                                           procs: Processes) -> None:
    """Receipts on, a collector that never sends one: every message is PUBACKed and kept, and the
    outbox's byte bound drops the oldest, counted, while the gateway polls and publishes on."""
    path = write_gateway_config(tmp_path / "gw", "st001", mqtt_port=mosquitto.port, plc_port=free_port(),
                                bus_port=free_port(), fast_s=0.05, slow_s=0.05,
                                outbox={"max_bytes": 1024 * 1024})
    cfg = yaml.safe_load(path.read_text())
    port = free_port()
    cfg["metrics"] = {"port": port}
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    sim = SimThread([load_gateway_config(path)])
    obs = Subscriber(mosquitto.port, "heatwatch/v1/station/+/telemetry")
    try:
        procs.start("gateway", "gateway", str(path))
        procs.wait_log("gateway", "metrics endpoint")

        def dropped() -> float:
            return value(scrape(port), "heatwatch_gateway_outbox_dropped_total", **ST) or 0.0

        wait_for(lambda: dropped() > 0, 300, "the byte bound reached")  # ~10 s on an idle machine
        s = scrape(port)
        assert (value(s, "heatwatch_gateway_outbox_bytes", **ST) or 0) <= 1024 * 1024
        acked = value(s, "heatwatch_gateway_acked_total", **ST) or 0
        rows = value(s, "heatwatch_gateway_outbox_messages", **ST) or 0
        assert acked > rows + dropped() * 0.5  # PUBACKed, kept until the bound dropped the oldest
        n = len(obs.messages)
        wait_for(lambda: len(obs.messages) > n + 20, 60, "publishing on")
        assert procs.procs["gateway"].poll() is None
        # said once, with what to do: a site without a receipting collector turns receipts off
        assert procs.log("gateway").count("no receipt from the collector") == 1
        assert (value(scrape(port), "heatwatch_gateway_resent_total", **ST) or 0) == 0  # no copies
    finally:
        obs.close()
        sim.stop()


@pytest.mark.slow
@pytest.mark.parametrize("receipts", [True, False], ids=["receipts", "puback_only"])
def test_a_broker_killed_with_a_backlog_loses_nothing_with_receipts(
        tmp_path: Path, mosquitto: Mosquitto, procs: Processes, receipts: bool) -> None:
    """The issue's hole: the collector away, the broker holding the backlog for it, mosquitto
    killed with -9 loses what it acknowledged since its last autosave. With receipts every seq
    still reaches the collector (sent again after the timeout); with PUBACK alone some never do."""
    db = mosquitto.folder / "data" / "mosquitto.db"
    away = Subscriber(mosquitto.port, "heatwatch/v1/station/+/telemetry", persistent=True,
                      client_id="t-collector")
    away.close()  # the collector goes away; its session stays, and the broker queues for it
    with _rig(tmp_path, mosquitto, procs, receipts=receipts) as rig:
        rig.start()
        wait_for(lambda: rig.metric("acked_total") >= 20, 30, "a backlog at the broker")
        saved = db.stat().st_mtime_ns if db.exists() else 0
        wait_for(lambda: db.exists() and db.stat().st_mtime_ns > saved, 15, "an autosave")
        after = rig.metric("acked_total") + 10
        wait_for(lambda: rig.metric("acked_total") >= after, 15, "10 more acknowledged since it")
        mosquitto.kill()  # SIGKILL: what came since the autosave is gone from the broker
        top = wait_for(lambda: max((s for _, s in rig.outbox()), default=None) if receipts else
                       rig.metric("telemetry_messages_total") - 1, 5, "the top seq at the kill")
        mosquitto.start()
        col = Subscriber(mosquitto.port, "heatwatch/v1/station/+/telemetry", persistent=True,
                         receipts=True, client_id="t-collector")  # the collector back, receipting
        boot = wait_for(lambda: next((b for b, _ in _sent(col)), None), 30, "the backlog")

        def seqs() -> set[int]:
            return {s for b, s in _sent(col) if b == boot}

        # live data flows after the backlog (in order): by then all the broker kept has arrived
        wait_for(lambda: max(seqs()) > top + 10, 60, "live data after the backlog")
        if receipts:
            wait_for(lambda: set(range(int(top) + 1)) <= seqs(), TIMEOUT_S + 60, "every seq up to the kill")
            assert rig.metric("resent_total") > 0  # the broker did lose some: sent again
            wait_for(lambda: not any(s <= top for b, s in rig.outbox() if b == boot), 20,
                     "the outbox clear of them")
        else:
            lost = set(range(int(top) + 1)) - seqs()
            assert lost, "the broker lost nothing: the kill came right after an autosave"
        col.close()
