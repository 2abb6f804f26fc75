"""The gateway's publisher in-process against a real mosquitto: what it remembers per message
stays bounded, with receipts and without (a gateway runs for months)."""

from __future__ import annotations

import asyncio
from functools import partial
from pathlib import Path

import pytest

from contract.config import GatewayConfig, OutboxSettings
from durable.queue import DiskQueue
from gateway.app import blocking
from gateway.publisher import MARK_EVERY_S, Publisher
from heatwatch.devstack import Mosquitto


@pytest.mark.parametrize("receipts", [False, True])
def test_the_publishers_memory_of_hand_overs_is_bounded(tmp_path: Path, mosquitto: Mosquitto,
                                                        receipts: bool) -> None:
    timeout = 1.0
    cfg = GatewayConfig.model_validate({
        "kind": "gateway", "gateway": "gw-st001", "station": "st001",
        "mqtt": {"port": mosquitto.port, "keepalive_s": 5},
        "outbox": OutboxSettings(path=str(tmp_path / "o.sqlite"), receipts=receipts,
                                 receipt_timeout_s=timeout),
        "devices": [{"name": "d", "host": "127.0.0.1", "addressing": "zero_based", "points": [
            {"point": "outdoor_temp", "table": "holding_register", "address": 0, "type": "int16"}]}]})
    outbox = DiskQueue(cfg.outbox.path, max_bytes=10**8, max_age_s=3600)

    async def main() -> tuple[int, int]:
        pub = Publisher(cfg, outbox, blocking=blocking, birth=b"{}", will=b"{}",
                        will_topic="heatwatch/v1/gateway/gw-st001/status", boot="0badc0de")
        task = asyncio.create_task(pub.run())
        await asyncio.wait_for(pub.client.up.wait(), 10)
        most = 0
        for seq in range(40):  # 4 s of messages, ten a second: four timeouts' worth
            await blocking(partial(outbox.append, boot="0badc0de", seq=seq),
                           "heatwatch/v1/station/st001/telemetry", b"{}")
            pub.notify()
            await asyncio.sleep(0.1)
            most = max(most, len(pub._marks))
        task.cancel()
        return most, pub.acked

    most, acked = asyncio.run(main())
    outbox.close()
    assert acked >= 30
    if receipts:  # about a timeout's worth of marks, whatever the run's length
        assert 1 <= most <= timeout / MARK_EVERY_S + 2
    else:  # nothing to remember: the PUBACK deletes
        assert most == 0
