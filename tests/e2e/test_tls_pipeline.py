"""The pipeline under TLS and the site's ACL, end to end, on real mosquitto running the broker
config `heatwatch site` generates (TLS only, client certificates, passwords, the ACL).

- A burst through the shared MQTT client (messaging/client.py) is read to its last message even
  when many MQTT packets share one TLS record. paho's ``loop_read`` reads a bounded number of
  packets (one, for a client with nothing in flight); the rest of a record stays decrypted
  inside the SSL object, where epoll cannot see it, until the next bytes arrive on the socket.
  mosquitto 2.0.11 writes each packet as a record of its own, so against it directly the trap
  never shows (measured: after 5,003 reads of a 5,000-message burst, ``pending()`` was never
  above 0); a TLS terminator that re-encrypts (a load balancer in front of the broker) packs
  many packets per record, and so may another broker. The test puts such a relay between the
  broker and the subscriber.
- The gateway process (its outbox backlog and live telemetry) → the broker → the collector's
  identity; the API → a signed command → the gateway → the Modbus write and read-back → the
  result at the collector's identity; each process with its own identity from `heatwatch site`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import yaml

from alerting.registry import SiteRegistry
from contract.config import MqttSettings, load_gateway_config
from durable.queue import DiskQueue
from heatwatch.devstack import SimThread, free_port, port_open
from messaging.client import Message, MqttClient
from tests.conftest import Processes, heatwatch, wait_for
from tests.control_helpers import DEVICE, GATEWAY, STATION, result_topic, write_control_gateway, write_keys
from tests.integration.test_site_broker import SiteBroker

R = "heatwatch/v1"
COLLECTOR, API = "heatwatch-collector", "heatwatch-api"


class SiteFolder:
    """A site made by `heatwatch site` for one control gateway, and its running broker."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.port = free_port()
        self.root = tmp / "site"
        heatwatch("site", "init", str(self.root), "--broker-name", "localhost", "--listen", "127.0.0.1",
                  "--port", str(self.port), "--conf-dir", str(self.root / "broker"),
                  "--data-dir", str(tmp / "mqtt-data"))
        (tmp / "mqtt-data").mkdir()
        _, self.private_key, public = write_keys(tmp / "keys")
        self.plc_port = free_port()
        plain = write_control_gateway(tmp / "gw", mqtt_port=self.port, plc_port=self.plc_port,
                                      public_key=public)
        heatwatch("site", "issue-gateway", str(self.root), str(plain))
        # the gateway's config gets the mqtt: section `heatwatch site` wrote for it
        cfg = yaml.safe_load(plain.read_text())
        cfg["mqtt"] = {**self.mqtt(GATEWAY), "keepalive_s": 30}
        self.gateway_config = plain
        plain.write_text(yaml.safe_dump(cfg, sort_keys=False))
        self.broker = SiteBroker(self.root, self.port)

    def mqtt(self, name: str) -> dict[str, Any]:
        """The identity's mqtt: section with absolute paths (the config lives elsewhere)."""
        folder = self.root / "identities" / name
        m: dict[str, Any] = yaml.safe_load((folder / "mqtt.yaml").read_text())["mqtt"]
        m["password_file"] = str(folder / m["password_file"])
        m["tls"] = {k: str(folder / v) for k, v in m["tls"].items()}
        return m

    def settings(self, name: str, **change: Any) -> MqttSettings:
        return MqttSettings.model_validate({**self.mqtt(name), **change})


@pytest.fixture
def site(tmp_path: Path) -> Iterator[SiteFolder]:
    s = SiteFolder(tmp_path)
    s.broker.start()
    yield s
    s.broker.stop()


# ---------------------------------------------------------------------------------------------
# many MQTT packets in one TLS record

class CoalescingRelay:
    """A TLS terminator in front of the broker, as a site may run one (a load balancer that
    re-encrypts): it holds the broker's certificate towards the clients, connects to the broker
    with a client certificate of the site, and forwards what the broker sends in chunks as large
    as it has, so one TLS record towards the client carries many MQTT packets."""

    def __init__(self, site: SiteFolder) -> None:
        self.site = site
        self.server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        broker = site.root / "broker"
        self.server_ctx.load_cert_chain(broker / "server.crt", broker / "server.key")
        ident = site.root / "identities" / COLLECTOR
        self.client_ctx = ssl.create_default_context(cafile=str(ident / "ca.crt"))
        self.client_ctx.load_cert_chain(ident / "client.crt", ident / "client.key")
        self.port = 0
        self.chunks = 0  # writes towards the clients (each one ≤ 16 KiB is one TLS record)
        self.bytes = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._client, "127.0.0.1", 0, ssl=self.server_ctx)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _client(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        br, bw = await asyncio.open_connection("localhost", self.site.port, ssl=self.client_ctx)

        async def pump(r: asyncio.StreamReader, w: asyncio.StreamWriter, towards_client: bool) -> None:
            with contextlib.suppress(ConnectionError, ssl.SSLError):
                while data := await r.read(16384):
                    if towards_client:
                        self.chunks += 1
                        self.bytes += len(data)
                    w.write(data)
                    await w.drain()
            w.close()

        for t in (asyncio.create_task(pump(cr, bw, False)), asyncio.create_task(pump(br, cw, True))):
            self._tasks.add(t)
            t.add_done_callback(self._tasks.discard)


def test_a_burst_is_read_to_its_last_message_when_tls_records_carry_many_packets(site: SiteFolder) -> None:
    n = 3000

    async def run() -> tuple[int, int, float, int]:
        relay = CoalescingRelay(site)
        await relay.start()
        # the collector's identity reads telemetry through the relay; the gateway's publishes
        sub = MqttClient(site.settings(COLLECTOR, port=relay.port), client_id="t-collector",
                         subscriptions=[(f"{R}/station/+/telemetry", 1)], receive_maximum=1000)
        pub = MqttClient(site.settings(GATEWAY), client_id=GATEWAY, persistent=False, max_inflight=500)
        got: list[Message] = []
        subscribed = asyncio.Event()

        async def consume() -> None:
            async for m in sub.messages():
                if m.payload == b"ready":
                    subscribed.set()
                else:
                    got.append(m)
                sub.ack(m)

        tasks = [asyncio.create_task(c) for c in (sub.run(), pub.run(), consume())]
        try:
            await asyncio.wait_for(asyncio.gather(sub.up.wait(), pub.up.wait()), 10)
            topic = f"{R}/station/{STATION}/telemetry"
            while not subscribed.is_set():  # the subscription is in place once a marker arrives
                await pub.publish(topic, b"ready")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(subscribed.wait(), 0.5)
            chunks_before = relay.chunks
            futs = []
            for i in range(n):
                while pub.room <= 0:  # noqa: ASYNC110 - room comes back with PUBACKs
                    await asyncio.sleep(0.001)
                futs.append(pub.publish_nowait(topic, b'{"seq":%d}' % i))
            await asyncio.wait_for(asyncio.gather(*futs), 30)
            acked = time.monotonic()
            # keepalive is 30 s: a packet left inside the SSL object waits for the next PINGRESP
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(10):
                    while len(got) < n:  # noqa: ASYNC110 - the consumer task appends
                        await asyncio.sleep(0.01)
            late = time.monotonic() - acked
            return len(got), relay.chunks - chunks_before, late, len({m.payload for m in got})
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await relay.stop()

    received, chunks, late, distinct = asyncio.run(run())
    # the condition under test is there: far more messages than TLS records reached the client
    assert chunks * 5 < n, f"the relay forwarded {chunks} chunks for {n} messages"
    assert received == n == distinct, f"{received} of {n} received ({late:.1f} s after the last PUBACK)"
    assert late < 5, f"the last message came {late:.1f} s after the last PUBACK"


# ---------------------------------------------------------------------------------------------
# the processes, each with its own identity

def _seq(m: Message) -> int:
    return int(orjson.loads(m.payload)["seq"])


def test_gateway_backlog_telemetry_and_an_api_command_under_tls_and_the_acl(
        site: SiteFolder, tmp_path: Path, procs: Processes) -> None:
    backlog = 2000
    cfg = load_gateway_config(site.gateway_config)
    # a backlog in the gateway's outbox, as after an outage: the gateway sends it in one burst
    old = int(time.time() * 1000) - 3_600_000
    q = DiskQueue(cfg.outbox.path, max_bytes=cfg.outbox.max_bytes, max_age_s=cfg.outbox.max_age_h * 3600)
    topic = f"{R}/station/{STATION}/telemetry"
    for i in range(backlog):
        body = {"schema": 1, "station": STATION, "gateway": GATEWAY, "boot": "b0", "seq": i,
                "ts": old + i, "backfill": False, "values": []}
        q.append(topic, orjson.dumps(body), old + i)
    q.close()

    sim = SimThread([cfg])
    store_url = f"sqlite:///{tmp_path / 'site.sqlite'}"
    registry = SiteRegistry(store_url).open()
    token = registry.add_token(name="eng", role="engineer", actor="test", now=int(time.time() * 1000))
    registry.close()
    api_port = free_port()
    api_cfg = tmp_path / "api.yaml"
    api_cfg.write_text(yaml.safe_dump({
        "kind": "api", "listen": {"port": api_port}, "store": store_url,
        "influx": {"url": f"http://127.0.0.1:{free_port()}", "timeout_s": 1},  # none: no step check
        "control": {"signing_key": str(site.private_key), "mqtt": site.mqtt(API)}}))

    async def run() -> tuple[list[Message], list[Message], dict[str, Any], float]:
        # the collector's identity, a persistent session made before the gateway starts
        col = MqttClient(site.settings(COLLECTOR), client_id="t-collector",
                         subscriptions=[(f"{R}/station/+/telemetry", 1),
                                        (f"{R}/station/+/command-result/+", 1)])
        telemetry: list[Message] = []
        results: list[Message] = []

        async def consume() -> None:
            async for m in col.messages():
                (results if "/command-result/" in m.topic else telemetry).append(m)
                col.ack(m)

        tasks = [asyncio.create_task(col.run()), asyncio.create_task(consume())]
        try:
            # the SUBSCRIBE is handed over at the CONNACK, before `up` is set, and written at once;
            # the gateway process needs over a second to import and connect
            await asyncio.wait_for(col.up.wait(), 10)
            t0 = time.monotonic()
            procs.start("gateway", "gateway", str(site.gateway_config))
            procs.start("api", "api", str(api_cfg))

            def backlog_in() -> bool:
                return sum(1 for m in telemetry if b'"boot":"b0"' in m.payload) >= backlog

            async with asyncio.timeout(60):
                while not backlog_in():  # noqa: ASYNC110 - the consumer task appends
                    await asyncio.sleep(0.05)
            backlog_s = time.monotonic() - t0
            async with asyncio.timeout(30):
                while not port_open(api_port):
                    assert procs.procs["api"].poll() is None, procs.log("api")
                    await asyncio.sleep(0.1)
            http = httpx.AsyncClient(base_url=f"http://127.0.0.1:{api_port}", timeout=10,
                                     headers={"Authorization": f"Bearer {token}"})
            async with http, asyncio.timeout(60):
                # the API holds the gateway's retained status (read under the API's identity)
                while (await http.get(f"/v1/commands/writable/{STATION}")).status_code != 200:  # noqa: ASYNC110
                    await asyncio.sleep(0.1)
                r = await http.post("/v1/commands", json={
                    "station": STATION, "device": DEVICE, "point": "building_valve_setpoint",
                    "building": "b01", "value": 65.0, "reason": "rooms at 16 °C", "ticket": "T-1"})
                assert r.status_code == 201, r.text
                cid = r.json()["id"]
                while not any(m.topic == result_topic(cid) for m in results):  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
                while (c := (await http.get(f"/v1/commands/{cid}")).json())["state"] == "requested":  # noqa: ASYNC110
                    await asyncio.sleep(0.05)  # sent once the API has the PUBACK
            return telemetry, results, c, backlog_s
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    try:
        wait_for(lambda: port_open(site.plc_port), 10, "the simulator")
        telemetry, results, command, backlog_s = asyncio.run(run())
        writes = sim.call(sim.sim.writes, STATION, DEVICE)
    finally:
        sim.stop()
    seqs = sorted(_seq(m) for m in telemetry if b'"boot":"b0"' in m.payload)
    assert set(seqs) == set(range(backlog))  # every message of the burst, duplicates allowed
    assert all(b'"backfill":true' in m.payload for m in telemetry if b'"boot":"b0"' in m.payload)
    live = [m for m in telemetry if b'"boot":"b0"' not in m.payload]
    assert live and all(m.topic == f"{R}/station/{STATION}/telemetry" for m in live)
    result = orjson.loads(next(m for m in results if m.topic.endswith(command["id"])).payload)
    assert result["state"] == "confirmed" and result["read_back"] == pytest.approx(65.0), result
    assert command["state"] == "sent", command  # no collector records results in this test
    assert isinstance(writes, list) and [(fc, w) for fc, _, w in writes] == [(6, [650])]
    assert backlog_s < 30, f"the backlog took {backlog_s:.1f} s"
