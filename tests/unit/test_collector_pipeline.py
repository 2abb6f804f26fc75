"""The collector's write pipeline: writes overlap, acknowledgements keep arrival order; and its
garbage-collector keeper.

MQTT requires PUBACKs in the order the PUBLISHes came; with ``batch.concurrency`` writes in
flight a later batch can be durable first. The InfluxDB writes here are replaced by timed
waits so the finishing order is forced (the wire itself is covered by the integration tests)."""

from __future__ import annotations

import asyncio
import gc
import weakref
from pathlib import Path

import pytest

from collector.acknowledge import Acknowledge
from collector.app import Collector
from collector.metrics import LATENCY_BUCKETS_S, Histogram
from collector.stages import Batch
from collector.store import Written
from contract.config import CollectorConfig


class _Acks:
    def __init__(self, expect: int) -> None:
        self.mids: list[int] = []
        self.all = asyncio.Event()
        self.expect = expect

    def ack(self, mids: list[int]) -> None:
        self.mids.extend(mids)
        if len(self.mids) == self.expect:
            self.all.set()


@pytest.mark.parametrize("concurrency", [1, 2, 3])
def test_acknowledgements_keep_arrival_order_when_writes_finish_out_of_order(
        tmp_path: Path, concurrency: int) -> None:
    c = Collector(CollectorConfig.model_validate({
        "kind": "collector", "spool": {"path": str(tmp_path / "spool.sqlite")},
        "batch": {"concurrency": concurrency}}))
    # batch i takes 0.2 s for even i, 0.01 s for odd i: every odd batch is durable before the one before it
    running, peak = 0, 0

    async def store(lines: list[str]) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.2 if int(lines[0]) % 2 == 0 else 0.01)
        running -= 1

    c.store.store = store  # type: ignore[method-assign]
    acks = _Acks(16)
    acknowledge = Acknowledge(acks.ack, c.stats, c.latency, c.clock)

    async def main() -> None:
        batches: asyncio.Queue[Batch] = asyncio.Queue()
        for i in range(8):
            batches.put_nowait(Batch(lines=[str(i)], mids=[10 * i + 1, 10 * i + 2]))
        written: asyncio.Queue[Written] = asyncio.Queue()
        slots = asyncio.Semaphore(concurrency)
        async with asyncio.TaskGroup() as tg:
            tg.create_task(c.store.run(batches, written, slots, tg))
            tg.create_task(acknowledge.run(written, slots))
            await acks.all.wait()
            raise asyncio.CancelledError  # ends the group (writer and acker run forever)

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(asyncio.wait_for(main(), 10))
    assert acks.mids == [10 * i + k for i in range(8) for k in (1, 2)]
    assert peak == concurrency
    assert c.stats.acked == 16
    c.spool.close()


def test_latency_histogram_buckets() -> None:
    h = Histogram(LATENCY_BUCKETS_S)
    now = 1_763_700_000.0
    h.observe_since([int(now * 1000) - d for d in (50, 300, 300, 1500, 7000)], now)
    h.observe_since([int(now * 1000) + 2000], now)  # a gateway clock ahead of ours counts as 0 s
    got = dict(h.buckets())
    assert got["0.1"] == 2 and got["0.5"] == 4 and got["2.0"] == 5 and got["10.0"] == 6
    assert got["+Inf"] == 6
    assert h.sum == pytest.approx(0.05 + 0.3 + 0.3 + 1.5 + 7.0)
    assert Histogram(LATENCY_BUCKETS_S).buckets()[-1] == ("+Inf", 0)


class _Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the garbage collector can free it


def test_gc_keeper_freezes_what_lived_and_still_finds_cyclic_garbage_at_the_full_collection(
        tmp_path: Path) -> None:
    c = Collector(CollectorConfig.model_validate({
        "kind": "collector", "spool": {"path": str(tmp_path / "spool.sqlite")}}))
    freed_while_frozen: list[bool] = []
    freed_after_full: list[bool] = []
    gc.unfreeze()

    async def main() -> None:
        keeper = asyncio.create_task(c._gc_keeper(first_s=0.05, every_s=0.1, full_every_s=0.6))
        node = _Node()
        ref = weakref.ref(node)
        await asyncio.sleep(0.2)  # frozen by now (first freeze at 0.05 s, next at 0.15 s)
        assert gc.get_freeze_count() > 0
        del node
        gc.collect()  # a frozen cycle is out of the collector's reach …
        freed_while_frozen.append(ref() is None)
        await asyncio.sleep(0.8)  # … until the keeper's periodic unfreeze + full collection
        freed_after_full.append(ref() is None)
        keeper.cancel()

    try:
        asyncio.run(main())
    finally:
        gc.unfreeze()
        c.spool.close()
    assert freed_while_frozen == [False]
    assert freed_after_full == [True]
