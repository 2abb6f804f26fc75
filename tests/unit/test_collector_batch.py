"""The batch stage: control items (stats lines, alert ticks) ride in batches without posing as
messages; a full output queue makes it stop taking from the inbox, so the inbox fills up to its
bound and nothing is dropped; alert transitions ride in the batch of the message that caused them;
a command result sends its batch at once."""

from __future__ import annotations

import asyncio
import time

from collector.batch import Batcher
from collector.lines import lines
from collector.stages import AlertsDue, Batch, Delivery, Inbox, Rejected, StatsLines, Validated
from contract.alerts import Transition
from contract.commands import CommandResult
from contract.config import BatchSettings


class _Alerts:
    def __init__(self) -> None:
        self.pending: list[Transition] = []

    def take(self) -> tuple[list[Transition], list[str]]:
        trs, self.pending = self.pending, []
        return trs, [f"alerts key={t.key!r}" for t in trs]


def _tr(key: str) -> Transition:
    return Transition(key=key, rule="room_low", state="firing", severity="warning", station="st001",
                      ts=1, since=1, summary="", page=False)


def _batcher(inbox: Inbox, out: asyncio.Queue[Batch], alerts: _Alerts | None = None,
             max_lines: int = 1000, max_delay_s: float = 0.05,
             per_message: int = 1) -> tuple[Batcher, list[str]]:
    seen: list[str] = []

    def validate(topic: str, payload: bytes, now_ms: int, size: int = -1) -> Validated:
        seen.append(topic)
        return Rejected("bad_json", None, topic, "x", now_ms)

    def tap(item: Validated, now_ms: int) -> None:
        if alerts is not None and isinstance(item, Rejected) and item.topic.endswith("/cause"):
            alerts.pending.append(_tr(item.topic))

    b = Batcher(BatchSettings(max_lines=max_lines, max_delay_s=max_delay_s), inbox, out, validate=validate,
                taps=[tap], lines=lambda item: [f"line {item.topic}"] * per_message
                if isinstance(item, Rejected) else [],
                alerts=alerts, clock=time.time)
    return b, seen


def test_control_items_ride_in_batches_and_are_not_messages() -> None:
    async def main() -> tuple[list[Batch], list[str]]:
        inbox, out = Inbox(10), asyncio.Queue[Batch]()
        alerts = _Alerts()
        b, seen = _batcher(inbox, out, alerts)
        task = asyncio.create_task(b.run())
        inbox.send(StatsLines(["collector received=0i 1"]))
        first = await asyncio.wait_for(out.get(), 5)
        alerts.pending.append(_tr("tick"))  # the ticker found a transition
        inbox.send(AlertsDue())
        second = await asyncio.wait_for(out.get(), 5)
        task.cancel()
        return [first, second], seen

    (first, second), seen = asyncio.run(main())
    assert first.lines == ["collector received=0i 1"] and first.mids == [] and not first.transitions
    assert second.lines == ["alerts key='tick'"] and [t.key for t in second.transitions] == ["tick"]
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


def test_transitions_ride_with_the_batch_of_the_message_that_caused_them() -> None:
    async def main() -> list[Batch]:
        inbox, out = Inbox(100), asyncio.Queue[Batch]()
        b, _seen = _batcher(inbox, out, _Alerts(), max_lines=4, per_message=2)  # two messages a batch
        task = asyncio.create_task(b.run())
        for i, topic in enumerate(["a", "b", "c/cause", "d", "e", "f"], 1):
            inbox.put(Delivery(i, topic, b"", 0))
        got = [await asyncio.wait_for(out.get(), 5) for _ in range(3)]
        task.cancel()
        return got

    batches = asyncio.run(main())
    assert [b.mids for b in batches] == [[1, 2], [3, 4], [5, 6]]
    assert [t.key for t in batches[1].transitions] == ["c/cause"] and not batches[0].transitions
    assert "alerts key='c/cause'" in batches[1].lines


def test_a_command_result_sends_its_batch_at_once() -> None:
    result = CommandResult.model_validate({
        "id": "c1", "station": "st001", "gateway": "gw-st001", "state": "confirmed", "device": "plc",
        "point": "building_valve_setpoint", "value": 70.0, "read_back": 70.0, "ts": 1_763_700_000_000})

    async def main() -> tuple[Batch, int]:
        inbox, out = Inbox(100), asyncio.Queue[Batch]()

        def validate(topic: str, payload: bytes, now_ms: int, size: int = -1) -> Validated:
            return result if topic == "result" else Rejected("bad_json", None, topic, "x", now_ms)

        # a minute before a batch would be due by age, and far from full
        b = Batcher(BatchSettings(max_lines=1000, max_delay_s=60), inbox, out, validate=validate, taps=[],
                    lines=lines, alerts=None, clock=time.time)
        task = asyncio.create_task(b.run())
        for i, topic in enumerate(["a", "result", "c"], 1):
            inbox.put(Delivery(i, topic, b"", 0))
        first = await asyncio.wait_for(out.get(), 5)
        await asyncio.sleep(0.05)
        left = out.qsize()
        task.cancel()
        return first, left

    first, left = asyncio.run(main())
    assert first.mids == [1, 2] and first.results == [result]  # the result and what came before it
    assert first.lines[1].startswith("commands,station=st001,state=confirmed")
    assert left == 0  # the message after it waits for its own batch
