"""The one MQTT client (messaging/client.py) against a real mosquitto: PUBACK resolution, message
expiry, reconnect after a broker restart with what was published meanwhile, manual
acknowledgement (an unacknowledged message comes again after a reconnect; a late ack from the
old connection is dropped; a batch acknowledged in one write is not delivered again), backpressure
on receipt, and the will after kill -9."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

from contract.config import MqttSettings
from heatwatch.devstack import REPO, Mosquitto
from messaging.client import Message, MqttClient
from tests.conftest import Subscriber, publish, wait_for


def _settings(broker: Mosquitto) -> MqttSettings:
    return MqttSettings(host="127.0.0.1", port=broker.port, keepalive_s=5)


async def _next(it: object, within_s: float = 10) -> Message:
    msg: Message = await asyncio.wait_for(it.__anext__(), within_s)  # type: ignore[attr-defined]
    return msg


async def _connected(c: MqttClient) -> None:
    await asyncio.wait_for(c.up.wait(), 10)


def test_publish_resolves_on_puback_and_carries_expiry(mosquitto: Mosquitto) -> None:
    async def main() -> tuple[int, list[Message]]:
        sub = MqttClient(_settings(mosquitto), client_id="t-sub", subscriptions=[("t/#", 1)])
        pub = MqttClient(_settings(mosquitto), client_id="t-pub", persistent=False)
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(sub.run()), tg.create_task(pub.run())]
            await _connected(sub)
            await asyncio.sleep(0)  # the SUBSCRIBE is written before the publishes below
            await _connected(pub)
            await pub.publish("t/a", b"one", expiry_s=300)
            futs = [pub.publish_nowait("t/b", str(i).encode()) for i in range(20)]
            await asyncio.wait_for(asyncio.gather(*futs), 10)
            it = sub.messages()
            got = [await _next(it) for _ in range(21)]
            for m in got:
                sub.ack(m)
            acked = pub.acked
            for t in tasks:
                t.cancel()
        return acked, got

    acked, got = asyncio.run(main())
    assert acked == 21
    assert [m.payload for m in got] == [b"one", *(str(i).encode() for i in range(20))]
    assert got[0].expiry_s is not None and 290 <= got[0].expiry_s <= 300
    assert got[1].expiry_s is None


def test_messages_published_while_the_broker_is_down_go_out_after_it_returns(
        mosquitto: Mosquitto) -> None:
    obs = Subscriber(mosquitto.port, "q/#", persistent=True)
    try:
        async def main() -> int:
            pub = MqttClient(_settings(mosquitto), client_id="t-pub-restart")
            task = asyncio.create_task(pub.run())
            await _connected(pub)
            await pub.publish("q/before", b"0")
            await asyncio.to_thread(mosquitto.stop)  # a clean stop: persistence written
            while pub.connected:  # noqa: ASYNC110 - the client notices on its socket
                await asyncio.sleep(0.05)
            futs = [pub.publish_nowait("q/during", str(i).encode()) for i in range(10)]
            await asyncio.sleep(0.5)
            assert not any(f.done() for f in futs)  # no PUBACK without a broker
            await asyncio.to_thread(mosquitto.start)
            await asyncio.wait_for(asyncio.gather(*futs), 40)  # reconnect backoff ≤ 30 s
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            return pub.acked

        assert asyncio.run(main()) == 11
        wait_for(lambda: len([t for t, _ in obs.messages if t == "q/during"]) == 10, 20,
                 "the ten messages published while the broker was down")
    finally:
        obs.close()


def test_an_unacknowledged_message_is_delivered_again_and_a_late_ack_is_dropped(
        mosquitto: Mosquitto) -> None:
    cid = f"t-consumer-{uuid.uuid4().hex[:6]}"

    async def consume(expect_first: bytes | None) -> tuple[Message, MqttClient, asyncio.Task[None]]:
        c = MqttClient(_settings(mosquitto), client_id=cid, subscriptions=[("cmd/#", 1)])
        task = asyncio.create_task(c.run())
        await _connected(c)
        m = await _next(c.messages())
        if expect_first is not None:
            assert m.payload == expect_first
        return m, c, task

    async def main() -> None:
        # a first connection makes the session (and its subscription)
        c = MqttClient(_settings(mosquitto), client_id=cid, subscriptions=[("cmd/#", 1)])
        task = asyncio.create_task(c.run())
        await _connected(c)
        await asyncio.sleep(0.2)  # SUBACK
        await asyncio.to_thread(publish, mosquitto.port, [("cmd/1", b"first")])
        first = await _next(c.messages())
        assert first.payload == b"first" and not first.dup
        # not acknowledged; the broker restarts under the consumer
        await asyncio.to_thread(mosquitto.stop)
        await asyncio.to_thread(mosquitto.start)
        it = c.messages()
        again = await _next(it, 40)
        assert again.payload == b"first" and again.dup and again.generation == first.generation + 1
        c.ack(first)  # the old connection's ack: dropped, never sent on this one
        assert c.stale_acks == 1 and c.acks_sent == 0
        c.ack(again)
        assert c.acks_sent == 1
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        # acknowledged: a new connection of the same session gets only what came since
        await asyncio.to_thread(publish, mosquitto.port, [("cmd/2", b"second")])
        m, c2, task2 = await consume(b"second")
        c2.ack(m)
        task2.cancel()
        await asyncio.gather(task2, return_exceptions=True)

    asyncio.run(main())


def test_receipt_stops_at_receive_maximum_until_the_consumer_acknowledges(mosquitto: Mosquitto) -> None:
    async def main() -> tuple[int, int]:
        c = MqttClient(_settings(mosquitto), client_id="t-slow", subscriptions=[("bp/#", 1)],
                       receive_maximum=5)
        task = asyncio.create_task(c.run())
        await _connected(c)
        await asyncio.sleep(0.2)
        await asyncio.to_thread(publish, mosquitto.port, [("bp/x", str(i).encode()) for i in range(50)])
        await asyncio.sleep(1.0)
        held = c.received
        it = c.messages()
        seen = []
        while len(seen) < 50:
            m = await _next(it)
            seen.append(int(m.payload))
            c.ack(m)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        assert seen == list(range(50))
        return held, c.received

    held, total = asyncio.run(main())
    assert 1 <= held <= 5 + 5  # the bound, plus what one socket read may carry
    assert total == 50


def test_a_batch_received_and_acknowledged_at_once_is_not_delivered_again(mosquitto: Mosquitto) -> None:
    """``receive`` gives what is waiting (up to a bound), ``ack_many`` acknowledges it in one write:
    a new connection of the same session gets only the messages left unacknowledged."""
    cid = f"t-batch-{uuid.uuid4().hex[:6]}"

    async def main() -> tuple[list[int], list[int], list[int]]:
        c = MqttClient(_settings(mosquitto), client_id=cid, subscriptions=[("bt/#", 1)])
        task = asyncio.create_task(c.run())
        await _connected(c)
        await asyncio.sleep(0.2)  # SUBACK
        await asyncio.to_thread(publish, mosquitto.port, [("bt/x", str(i).encode()) for i in range(30)])
        got: list[Message] = []
        sizes: list[int] = []
        while len(got) < 30:
            batch = await asyncio.wait_for(c.receive(12), 10)
            sizes.append(len(batch))
            got += batch
        c.ack_many(got[:20])  # the first twenty, in one write; ten left unacknowledged
        acked = c.acks_sent
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        c2 = MqttClient(_settings(mosquitto), client_id=cid, subscriptions=[("bt/#", 1)])
        task2 = asyncio.create_task(c2.run())
        await _connected(c2)
        again: list[Message] = []
        while len(again) < 10:
            again += await asyncio.wait_for(c2.receive(100), 10)
        c2.ack_many(again)
        task2.cancel()
        await asyncio.gather(task2, return_exceptions=True)
        return [int(m.payload) for m in got], [int(m.payload) for m in again], [acked, max(sizes)]

    got, again, (acked, largest) = asyncio.run(main())
    assert got == list(range(30)) and acked == 20 and 1 <= largest <= 12
    assert again == list(range(20, 30))  # only what was not acknowledged


_CHILD = textwrap.dedent("""
    import asyncio, sys
    from contract.config import MqttSettings
    from messaging.client import MqttClient, Will

    async def main():
        c = MqttClient(MqttSettings(port=int(sys.argv[1]), keepalive_s=5), client_id="t-will",
                       will=Will("w/status", b"offline"))
        c.publish_retained("w/status", b"online")
        await c.run()

    asyncio.run(main())
""")


def test_the_will_is_published_when_the_process_is_killed(mosquitto: Mosquitto, tmp_path: Path) -> None:
    obs = Subscriber(mosquitto.port, "w/status")
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(mosquitto.port)], cwd=REPO,
                             stdout=open(tmp_path / "child.log", "wb"), stderr=subprocess.STDOUT)  # noqa: SIM115
    try:
        wait_for(lambda: (("w/status", b"online") in obs.messages), 20, "the birth message")
        child.send_signal(signal.SIGKILL)
        child.wait(10)
        wait_for(lambda: obs.messages[-1] == ("w/status", b"offline"), 20, "the will")
    finally:
        if child.poll() is None:
            child.kill()
        obs.close()

