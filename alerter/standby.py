"""The alerter's standby: the recent messages of partitions another member judges.

Every member receives every message. A message for a partition this member does not own is
acknowledged at once and kept here, as received (topic and bytes, not decoded), for
``window_ms`` and at most ``max_bytes``; if this member takes the partition over (its owner died,
or handed it over), it restores the partition's last snapshot and replays from here what came
after it (``alerter/judge.py``). Cost per message: an append and, later, a pop; decoding waits for
a takeover that may never come.

Messages are matched across members by their identity (``message_id``: a hash of topic and
bytes), which is the same at every member: the owner records the identities it judged, the taker
skips or quietly re-judges those.
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass


def message_id(topic: str, payload: bytes) -> int:
    """The identity of one message, the same at every member (unsigned 64 bits)."""
    h = hashlib.blake2b(payload, digest_size=8)
    h.update(topic.encode())
    return int.from_bytes(h.digest(), "little")


@dataclass(slots=True)
class Held:
    """One message kept for the partitions ``parts`` (a gateway's status concerns several)."""

    at: int  # receive time at this member, ms
    topic: str
    payload: bytes
    parts: tuple[int, ...]


class Standby:
    def __init__(self, window_ms: int, max_bytes: int) -> None:
        self.window_ms, self.max_bytes = window_ms, max_bytes
        self.items: deque[Held] = deque()
        self.bytes = 0
        self.kept = 0  # counters: messages kept, dropped for room (before their window was over)
        self.dropped = 0
        # receive time of the newest message dropped for room: a replay from before it is incomplete
        self.overflow_at = 0

    def add(self, held: Held) -> None:
        self.items.append(held)
        self.bytes += len(held.payload)
        self.kept += 1
        if self.bytes > self.max_bytes:
            self.trim(held.at)

    def trim(self, now: int) -> None:
        """Forget what is past the window, and the oldest beyond ``max_bytes``."""
        items, cutoff = self.items, now - self.window_ms
        while items and (items[0].at < cutoff or self.bytes > self.max_bytes):
            h = items.popleft()
            self.bytes -= len(h.payload)
            if h.at >= cutoff:
                self.dropped += 1
                self.overflow_at = max(self.overflow_at, h.at)

    def take(self, parts: Iterable[int]) -> dict[int, list[Held]]:
        """The messages kept for each of ``parts``, oldest first; they stay for other partitions
        only (a gateway status that also concerns a partition still judged elsewhere)."""
        want = set(parts)
        out: dict[int, list[Held]] = {p: [] for p in want}
        if not want or not self.items:
            return out
        keep: deque[Held] = deque()
        for h in self.items:
            hit = [p for p in h.parts if p in want]
            if not hit:
                keep.append(h)
                continue
            for p in hit:
                out[p].append(h)
            rest = tuple(p for p in h.parts if p not in want)
            if rest:
                keep.append(Held(h.at, h.topic, h.payload, rest))
            else:
                self.bytes -= len(h.payload)
        self.items = keep
        return out

    def __len__(self) -> int:
        return len(self.items)
