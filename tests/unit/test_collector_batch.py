"""The batch stage: stats lines (the control path) ride in batches without posing as messages; a
full output queue makes it stop taking from the inbox, so the inbox fills up to its bound and
nothing is dropped; a command result and an alert transition are stored as lines like any message
(the alerter records them; the collector only stores what is on the bus)."""

from __future__ import annotations

import asyncio
import time

from collector.batch import Batcher
from collector.lines import lines
from collector.stages import Batch, Delivery, Inbox, Rejected, StatsLines, Validated
from contract.alerts import Transition
from contract.commands import CommandResult
from contract.config import BatchSettings


def _batcher(inbox: Inbox, out: asyncio.Queue[Batch], max_lines: int = 1000, max_delay_s: float = 0.05,
             per_message: int = 1) -> tuple[Batcher, list[str]]:
    seen: list[str] = []

    def validate(topic: str, payload: bytes, now_ms: int, size: int = -1) -> Validated:
        seen.append(topic)
        return Rejected("bad_json", None, topic, "x", now_ms)

    b = Batcher(BatchSettings(max_lines=max_lines, max_delay_s=max_delay_s), inbox, out, validate=validate,
                lines=lambda item: [f"line {item.topic}"] * per_message if isinstance(item, Rejected) else [],
                clock=time.time)
    return b, seen


def test_stats_lines_ride_in_batches_and_are_not_messages() -> None:
    async def main() -> tuple[Batch, list[str]]:
        inbox, out = Inbox(10), asyncio.Queue[Batch]()
        b, seen = _batcher(inbox, out)
        task = asyncio.create_task(b.run())
        inbox.send(StatsLines(["collector received=0i 1"]))
        first = await asyncio.wait_for(out.get(), 5)
        task.cancel()
        return first, seen

    first, seen = asyncio.run(main())
    assert first.lines == ["collector received=0i 1"] and first.mids == []
    assert seen == []  # no fake message went through validation


def test_a_full_output_stops_the_stage_and_the_inbox_holds_the_rest() -> None:
    async def main() -> tuple[int, list[int], list[Batch]]:
        inbox, out = Inbox(5), asyncio.Queue[Batch](maxsize=1)
        b, _seen = _batcher(inbox, out, max_lines=2)  # two messages a batch
        task = asyncio.create_task(b.run())
        sent = 0
        for _ in range(40):  # the receive stage: put while there is room, as it does
            while not inbox.full:
                sent += 1
                inbox.put(Delivery(sent, f"t/{sent}", b"", 0))
            await asyncio.sleep(0.01)
        assert inbox.full and len(inbox.deliveries) == 5  # stalled at the bound
        held = [d.mid for d in inbox.deliveries]
        batches: list[Batch] = []
        while sum(len(b.mids) for b in batches) < sent:  # the writes catch up: everything comes out
            batches.append(await asyncio.wait_for(out.get(), 5))
        task.cancel()
        return sent, held, batches

    sent, held, batches = asyncio.run(main())
    # stalled with one batch queued, one waiting to be queued, a message in hand and a full inbox
    assert sent == 2 + 2 + 1 + 5 and held == [6, 7, 8, 9, 10]
    assert [m for b in batches for m in b.mids] == list(range(1, sent + 1))  # all, in order


def test_a_command_result_and_an_alert_transition_are_stored_as_lines_in_arrival_order() -> None:
    result = CommandResult.model_validate({
        "id": "c1", "station": "st001", "gateway": "gw-st001", "state": "confirmed", "device": "plc",
        "point": "building_valve_setpoint", "value": 70.0, "read_back": 70.0, "ts": 1_763_700_000_000})
    tr = Transition(key="building_low:st001/b01", rule="building_low", state="firing", severity="major",
                    station="st001", building="b01", ts=1_763_700_000_000, since=1_763_696_400_000, page=True)

    async def main() -> Batch:
        inbox, out = Inbox(100), asyncio.Queue[Batch]()
        items: dict[str, Validated] = {"result": result, "alert": tr}

        def validate(topic: str, payload: bytes, now_ms: int, size: int = -1) -> Validated:
            return items.get(topic) or Rejected("bad_json", None, topic, "x", now_ms)

        b = Batcher(BatchSettings(max_lines=1000, max_delay_s=0.05), inbox, out, validate=validate,
                    lines=lines, clock=time.time)
        task = asyncio.create_task(b.run())
        for i, topic in enumerate(["a", "result", "alert"], 1):
            inbox.put(Delivery(i, topic, b"", 0))
        first = await asyncio.wait_for(out.get(), 5)
        task.cancel()
        return first

    first = asyncio.run(main())
    assert first.mids == [1, 2, 3]
    assert first.lines[1].startswith("commands,station=st001,state=confirmed")
    assert first.lines[2].startswith("alerts,rule=building_low,state=firing,station=st001,building=b01 ")
