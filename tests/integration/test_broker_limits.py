"""The shipped broker settings (deploy/mosquitto/heatwatch.conf) on a real mosquitto: a 10 MB
publish is refused, and so is a payload just past the contract's 1,000,000 bytes, while normal
traffic flows on and the broker's memory stays where it was (issue #16)."""

from __future__ import annotations

import asyncio
import threading
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from contract.config import MqttSettings
from contract.payload import MAX_PAYLOAD_BYTES
from heatwatch.devstack import Mosquitto
from messaging.client import MqttClient, PublishRefused
from tests.conftest import Subscriber, wait_for


def _rss_kb(pid: int) -> int:
    return int(Path(f"/proc/{pid}/status").read_text().split("VmRSS:")[1].split()[0])


def _big_publisher(port: int) -> tuple[mqtt.Client, threading.Event]:
    closed = threading.Event()
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"big-{uuid.uuid4().hex[:8]}",
                    protocol=mqtt.MQTTv5)
    c.on_disconnect = lambda *_: closed.set()
    c.connect("127.0.0.1", port)
    c.loop_start()
    return c, closed


def test_a_10_mb_publish_is_refused_while_normal_traffic_flows(mosquitto: Mosquitto) -> None:
    assert mosquitto.proc is not None
    obs = Subscriber(mosquitto.port, "t/#")
    normal = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="normal", protocol=mqtt.MQTTv5)
    normal.connect("127.0.0.1", mosquitto.port)
    normal.loop_start()
    try:
        rss0 = _rss_kb(mosquitto.proc.pid)
        sent = 0
        for _ in range(5):  # five 10 MB messages, normal ones in between
            big, closed = _big_publisher(mosquitto.port)
            big.publish("t/big", b"x" * 10_000_000, qos=1)
            for _ in range(20):
                normal.publish("t/ok", f"{sent}".encode(), qos=1).wait_for_publish(10)
                sent += 1
            assert closed.wait(10), "the 10 MB sender is disconnected at its packet's header"
            big.loop_stop()
        wait_for(lambda: len(obs.messages) >= sent, 10, "every normal message")
        assert [p for t, p in obs.messages] == [str(i).encode() for i in range(sent)]
        assert not any(t == "t/big" for t, _ in obs.messages)
        # the broker never held the 10 MB: it did not read the packets whole
        assert _rss_kb(mosquitto.proc.pid) - rss0 < 5_000
    finally:
        normal.loop_stop()
        obs.close()


@pytest.mark.parametrize("size", [MAX_PAYLOAD_BYTES, 1024 * 1024])
def test_the_shared_client_refuses_a_packet_the_broker_would_not_take_and_stays_connected(
        mosquitto: Mosquitto, size: int) -> None:
    """What a gateway's publish would meet: the contract's largest payload goes through; a packet
    past the broker's Maximum Packet Size is refused by the client itself (a PublishRefused the
    gateway keeps the row for), not sent to get the connection dropped, and sent again by paho
    after every reconnect."""
    obs = Subscriber(mosquitto.port, "t/#")

    async def main() -> tuple[BaseException | None, int | None, int]:
        c = MqttClient(MqttSettings(port=mosquitto.port, keepalive_s=5), client_id="t-limit",
                       persistent=False)
        task = asyncio.create_task(c.run())
        await asyncio.wait_for(c.up.wait(), 10)
        refused: BaseException | None = None
        try:
            await asyncio.wait_for(c.publish("t/edge", b"y" * size), 10)
        except PublishRefused as exc:
            refused = exc
        await asyncio.wait_for(c.publish("t/after", b"ok"), 10)  # the connection goes on
        task.cancel()
        return refused, c.max_packet, c.generation

    refused, max_packet, connects = asyncio.run(main())
    wait_for(lambda: any(t == "t/after" for t, _ in obs.messages), 10, "the message after")
    assert max_packet == 1024 * 1024 and connects == 1  # the shipped max_packet_size, never dropped
    if size <= MAX_PAYLOAD_BYTES:
        assert refused is None and any(t == "t/edge" for t, _ in obs.messages)
    else:
        assert isinstance(refused, PublishRefused) and "maximum packet size" in str(refused)
        assert not any(t == "t/edge" for t, _ in obs.messages)
    obs.close()
