"""The receive stage on real mosquitto: while the inbox is full it stops reading, so at most
``receive_maximum`` messages wait in memory whatever the backlog; every message arrives once, in
order; acknowledged messages are not delivered again to the next session, unacknowledged ones are."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson

from collector.receive import MqttReceive
from collector.stages import Delivery, Inbox
from contract.config import CollectorConfig
from heatwatch.devstack import Mosquitto
from tests.conftest import publish


def _cfg(tmp_path: Path, port: int, receive_maximum: int) -> CollectorConfig:
    return CollectorConfig.model_validate({
        "kind": "collector", "client_id": "rx-test", "mqtt": {"port": port, "keepalive_s": 5},
        "receive_maximum": receive_maximum, "spool": {"path": str(tmp_path / "spool.sqlite")}})


async def _session(cfg: CollectorConfig, port: int, *, publish_first: int, take: int,
                   ack: int) -> tuple[list[Delivery], int]:
    """Connect, publish ``publish_first`` messages, take ``take`` of them slowly (acknowledging
    the first ``ack``), and report what came and the most that ever waited in the inbox."""
    inbox = Inbox(cfg.receive_maximum)
    r = MqttReceive(cfg, inbox, asyncio.Event())
    task = asyncio.create_task(r.run())
    if publish_first:  # (a resumed session's redelivered messages may fill the inbox before the SUBACK)
        await asyncio.wait_for(r.subscribed.wait(), 10)
        msgs = [(f"heatwatch/v1/station/st{i:03d}/telemetry", orjson.dumps({"i": i}))
                for i in range(publish_first)]
        await asyncio.to_thread(publish, port, msgs)
    got: list[Delivery] = []
    most = 0
    while len(got) < take:
        await asyncio.wait_for(inbox.wait(None), 10)
        most = max(most, len(inbox.deliveries))
        await asyncio.sleep(0.002)  # a slow consumer: the backlog waits at the broker
        most = max(most, len(inbox.deliveries))
        d = inbox.take(1)[0]
        got.append(d)
        if len(got) <= ack:
            r.ack([d.mid])
    await asyncio.sleep(0.3)  # the PUBACKs leave before the disconnect
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    return got, most


def test_a_full_inbox_stops_reading_and_nothing_is_lost_or_repeated(
        tmp_path: Path, mosquitto: Mosquitto) -> None:
    cfg = _cfg(tmp_path, mosquitto.port, receive_maximum=3)
    got, most = asyncio.run(_session(cfg, mosquitto.port, publish_first=200, take=200, ack=197))
    assert most <= 3
    assert [orjson.loads(d.payload)["i"] for d in got] == list(range(200))
    assert all(d.mid for d in got)
    # the same session again: the 3 unacknowledged messages, and only they, come back
    again, _ = asyncio.run(_session(cfg, mosquitto.port, publish_first=0, take=3, ack=3))
    assert [orjson.loads(d.payload)["i"] for d in again] == [197, 198, 199]
