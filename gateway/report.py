"""Report by exception: which of a cycle's readings a poll group sends.

A reading is sent when its point was never sent, its quality changed, it moved by at least the
point's deadband since the value last *sent* (not last polled, so slow drift cannot creep past
the deadband unreported), or the point has been silent for the group's ``max_silence_s`` (the
heartbeat, which also tells the collector's stale-sensor rule how long a silence is normal).
Without a deadband any change is sent. Text and booleans are sent when they change.
"""

from __future__ import annotations

from collections.abc import Iterable

from contract.config import PointMap
from contract.payload import Reading

Key = tuple[str, str | None, str | None]


class ExceptionFilter:
    def __init__(self, points: Iterable[PointMap], max_silence_s: float) -> None:
        self.deadband: dict[Key, float] = {p.key: p.deadband for p in points if p.deadband}
        self.max_silence_ms = int(max_silence_s * 1000)
        self.sent: dict[Key, tuple[object, str, int]] = {}  # key → (value, quality, ts) last sent
        self.suppressed = 0

    def select(self, readings: list[Reading], ts: int) -> list[Reading]:
        """The readings to send; call ``sent_at`` once they are in the outbox."""
        out: list[Reading] = []
        sent, deadband, silence = self.sent, self.deadband, self.max_silence_ms
        for r in readings:
            key = (r.point, r.building, r.household)
            last = sent.get(key)
            if last is not None and last[1] == r.quality and ts - last[2] < silence:
                v, was = r.value, last[0]
                if v == was:
                    self.suppressed += 1
                    continue
                band = deadband.get(key)
                if (band and isinstance(v, float) and isinstance(was, float)
                        and abs(v - was) < band):
                    self.suppressed += 1
                    continue
            out.append(r)
        return out

    def sent_at(self, readings: list[Reading], ts: int) -> None:
        """These readings are committed to the outbox: they are what the collector will have."""
        sent = self.sent
        for r in readings:
            sent[(r.point, r.building, r.household)] = (r.value, r.quality, ts)
