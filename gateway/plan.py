"""Request planning: which Modbus reads cover a device's points for one poll group.

Adjacent and nearby registers are read together up to the device's per-request maximum; gaps
up to ``max_gap`` words are read and thrown away, because one request costs far more than a
few extra words (one 125-word read: 0.3 ms on loopback; RTU at 9600 baud: ~25 ms of overhead
per request).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from contract.config import BIT_TABLES, PointMap, ResolvedDevice
from gateway.decode import PointDecoder

MAX_BITS_PER_REQUEST = 2000  # Modbus limit for coils / discrete inputs
DEFAULT_MAX_GAP = 16
DEFAULT_MAX_BIT_GAP = 64


@dataclass
class Request:
    table: str
    address: int  # wire (0-based)
    count: int
    points: list[tuple[PointMap, int]] = field(default_factory=list)  # (point, wire address)
    _decoders: list[tuple[int, int, PointDecoder]] | None = field(default=None, repr=False, compare=False)

    @property
    def decoders(self) -> list[tuple[int, int, PointDecoder]]:
        """(offset in the answer, words, decoder) per point, built on first use."""
        if self._decoders is None:
            self._decoders = [(wire - self.address, p.words, PointDecoder(p)) for p, wire in self.points]
        return self._decoders

    def built(self) -> list[PointDecoder]:
        """The decoders already built (none before the first poll); safe from another thread."""
        return [d for _, _, d in self._decoders or ()]

    def __str__(self) -> str:
        span = f"{self.table}[{self.address}:{self.address + self.count}]"
        if len(self.points) <= 2:  # small enough to say which points: the map line to check
            names = (p.point + (f"@{p.building}" if p.building else "") for p, _ in self.points)
            return f"{span} ({', '.join(names)})"
        return f"{span} ({len(self.points)} points)"


def plan_requests(dev: ResolvedDevice, group: str | None = None, *, max_gap: int = DEFAULT_MAX_GAP,
                  max_bit_gap: int = DEFAULT_MAX_BIT_GAP) -> list[Request]:
    """Coalesce the points of ``group`` (all points if None) into as few requests as fit."""
    by_table: dict[str, list[tuple[int, int, PointMap]]] = {}
    for p in dev.points:
        if group is None or p.group == group:
            wire = p.wire_address(dev.addressing)
            by_table.setdefault(p.table, []).append((wire, wire + p.words, p))
    out: list[Request] = []
    for table in ("coil", "discrete_input", "holding_register", "input_register"):
        spans = sorted(by_table.get(table, []), key=lambda s: (s[0], s[1]))
        bits = table in BIT_TABLES
        limit = MAX_BITS_PER_REQUEST if bits else dev.max_registers_per_request
        gap = max_bit_gap if bits else max_gap
        cur: Request | None = None
        for start, end, p in spans:
            if cur is not None:
                cur_end = cur.address + cur.count
                if start - cur_end <= gap and max(end, cur_end) - cur.address <= limit:
                    cur.count = max(end, cur_end) - cur.address
                    cur.points.append((p, start))
                    continue
                out.append(cur)
            cur = Request(table, start, end - start, [(p, start)])
        if cur is not None:
            out.append(cur)
    return out
