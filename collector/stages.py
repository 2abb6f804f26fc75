"""What the collector's ingest stages pass each other, and the queue between receive and batch.

    receive ──Delivery──▶ Inbox ──▶ validate ─Validated─▶ lines ─▶ batch ──Batch──▶
        write or spool ──(Batch, its write)──▶ acknowledge ──PUBACKs──▶ receive
                                                         └─ receipt ──receipts──▶ gateways

The wiring is in ``collector/app.py`` (``Collector.run``); each stage is in its own module.
Stages that run concurrently talk through bounded queues, and a full queue makes the stage before
it wait: the receive stage stops reading the socket (TCP pushes back, the broker keeps the rest),
the batch stage waits for a free slot behind the writes. validate → lines are plain
function calls made by the batch stage for each delivery, in arrival order: nothing runs between
them, so a queue there would cost a hop per message and buy nothing.

Stats lines reach the batch stage through the inbox's control path (``Inbox.control``), never as
fake deliveries.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from dataclasses import dataclass, field
from typing import NamedTuple

from contract.alerts import Transition
from contract.commands import CommandResult
from contract.payload import Frame, GatewayStatus, StationStatus


class Delivery(NamedTuple):
    """One MQTT message as received: ``mid`` 0 for QoS 0 (nothing to acknowledge). ``size`` is the
    payload's size on the wire: a payload over ``contract.payload.MAX_PAYLOAD_BYTES`` cannot be
    valid, so the receive stage keeps only its first bytes (``payload`` shorter than ``size``)."""

    mid: int
    topic: str
    payload: bytes
    size: int


@dataclass(frozen=True, slots=True)
class GatewaySeen:
    """A gateway status and when it was received (a last will carries the time it was registered)."""

    status: GatewayStatus
    received_ms: int


@dataclass(frozen=True, slots=True)
class Rejected:
    """A message that failed validation: stored as a ``rejects`` line, then acknowledged."""

    reason: str
    station: str | None  # its tag in ``rejects``: None for a station outside the inventory
    topic: str
    detail: str
    ts_ms: int  # distinct per (reason, station) series: see validate.Validate
    # (gateway, boot, seq) of a telemetry message rejected for good (it can never become valid):
    # receipted like a stored one, so its gateway stops re-sending it (docs/contract.md)
    receipt: tuple[str, str, int] | None = None
    count: int = 1  # readings refused (a Trimmed message's), else 1 message


@dataclass(frozen=True, slots=True)
class Trimmed:
    """A telemetry message stored without some of its readings, each refused with a reason (a
    custom point of another kind than the one stored: ``kind_conflict``). Receipted: what was
    refused would be refused again."""

    frame: Frame
    refused: Rejected


# what the validate stage makes of one delivery: a gateway's command result and an alerter's
# transition are stored as lines too (commands and alerts measurements)
Validated = Frame | Trimmed | StationStatus | GatewaySeen | CommandResult | Transition | Rejected


@dataclass(frozen=True, slots=True)
class StatsLines:
    """Control: the collector's counters as lines, to go out with the next batch."""

    lines: list[str]


Control = StatsLines


@dataclass
class Batch:
    """Lines for one InfluxDB write, and what to do once they are durable."""

    lines: list[str] = field(default_factory=list)
    mids: list[int] = field(default_factory=list)  # PUBACKs, in arrival order
    started: float = 0.0  # monotonic time of its first content
    sample_ts: list[int] = field(default_factory=list)  # live telemetry's sample times (ms)
    # what to receipt once durable: (station, gateway, boot) → the messages' seqs
    receipts: dict[tuple[str, str, str], list[int]] = field(default_factory=dict)
    bytes: int = 0  # of its lines (characters; bounded by batch.max_bytes)

    @property
    def empty(self) -> bool:
        return not self.lines and not self.mids


class Inbox:
    """Deliveries from the receive stage (at most ``capacity`` waiting, or ``max_bytes`` of payload,
    whichever comes first; one delivery always fits) and control items for the batch stage. Lives
    on the event loop; ``put`` and ``send`` never block (the receive stage checks ``full`` and
    stops reading; control items are a handful at a time)."""

    def __init__(self, capacity: int, max_bytes: int = 2**62) -> None:
        self.capacity, self.max_bytes = capacity, max_bytes
        self.bytes = 0  # payload bytes waiting
        self.deliveries: deque[Delivery] = deque()
        self.control: deque[Control] = deque()
        self._ready = asyncio.Event()
        self._space = asyncio.Event()
        self._space.set()
        self._wake_at = 1  # deliveries waiting that wake the batch stage

    @property
    def full(self) -> bool:
        return len(self.deliveries) >= self.capacity or self.bytes >= self.max_bytes

    def put(self, d: Delivery) -> None:
        self.deliveries.append(d)
        self.bytes += len(d.payload)
        n = len(self.deliveries)
        if n >= self.capacity or self.bytes >= self.max_bytes:
            self._space.clear()
            self._ready.set()  # full: nothing more comes until the batch stage takes some
        elif n >= self._wake_at:
            self._ready.set()

    def send(self, c: Control) -> None:
        self.control.append(c)
        self._ready.set()

    async def wait(self, within_s: float | None, at_least: int = 1) -> None:
        """Wait until ``at_least`` deliveries (or as many as fit) or a control item are waiting,
        or ``within_s`` has passed."""
        want = min(at_least, self.capacity)
        if len(self.deliveries) >= want or self.control or self.full:
            return
        self._wake_at = want
        self._ready.clear()
        try:
            # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancellation that
            # arrives as the wait completes, and the collector would not stop (gateway/publisher.py)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(within_s):
                    await self._ready.wait()
        finally:
            self._wake_at = 1

    def take(self, n: int) -> list[Delivery]:
        """Up to ``n`` deliveries, oldest first."""
        d = self.deliveries
        out = [d.popleft() for _ in range(min(n, len(d)))]
        if out:
            self.bytes -= sum([len(x.payload) for x in out])
            if not self.full:
                self._space.set()
        return out

    async def space(self) -> None:
        await self._space.wait()
