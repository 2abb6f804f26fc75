"""Receipts: the collector's word that a gateway's messages are stored for good (issue #16).

The broker's PUBACK is not durability: mosquitto killed with SIGKILL loses every message it
acknowledged since its last autosave (311 messages in one run, already gone from the gateways'
outboxes). So a gateway keeps an outbox row after the PUBACK until the collector, after its own
durable write (InfluxDB answered 2xx, or the spool's fsync), receipts it on

    heatwatch/v1/station/{station}/receipt      collector → that station's gateway, QoS 1

and re-sends a row that stays unreceipted past its timeout. A receipt lists exactly the sequence
numbers stored, as inclusive ranges, for one gateway boot: a message lost between gateway and
collector is never receipted, so it is re-sent (a watermark "stored through N" would cover it).
Redelivery is harmless: the same timestamps overwrite the same points in InfluxDB.

Sequence numbers are the gateway's per-boot counter (``Telemetry.seq``, ``Frame.seq``); a
gateway with several stations sees its seqs spread over their receipt topics. Ranges are merged
and sorted by :func:`ranges`; a receipt holds at most ``MAX_RANGES`` of them (a longer list is
split into several receipts), so one receipt stays well under any broker's message size limit.
"""

from __future__ import annotations

from collections.abc import Iterable

from pydantic import BaseModel, ConfigDict, Field, model_validator

from contract.payload import SEQ_MAX as SEQ_MAX  # the wire's bound (InfluxDB integers are int64)
from contract.payload import parse
from contract.topics import ROOT, Ident, check_ident

SCHEMA = 1
MAX_RANGES = 512
RECEIPT_FILTER = f"{ROOT}/station/+/receipt"


def receipt_topic(station: str) -> str:
    return f"{ROOT}/station/{check_ident(station, 'station')}/receipt"


class Receipt(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_: int = Field(SCHEMA, alias="schema")
    station: Ident
    gateway: Ident
    boot: Ident
    seqs: list[tuple[int, int]] = Field(min_length=1, max_length=MAX_RANGES,
                                       description="stored seqs: inclusive ranges, sorted, disjoint")

    @model_validator(mode="after")
    def _ranges(self) -> Receipt:
        if self.schema_ != SCHEMA:
            raise ValueError(f"schema {self.schema_} is not {SCHEMA}")
        last = -2
        for first, end in self.seqs:
            if not 0 <= first <= end <= SEQ_MAX:
                raise ValueError(f"range [{first}, {end}] is not 0 <= first <= last <= {SEQ_MAX}")
            if first <= last + 1:
                raise ValueError(f"range [{first}, {end}] is not after and apart from the one before")
            last = end
        return self

    def covers(self, seq: int) -> bool:
        return any(first <= seq <= end for first, end in self.seqs)

    def encode(self) -> bytes:
        return self.model_dump_json(by_alias=True).encode()


def parse_receipt(raw: bytes) -> Receipt:
    """Raise contract.errors.PayloadError naming what is wrong."""
    return parse(Receipt, raw)


def ranges(seqs: Iterable[int]) -> list[tuple[int, int]]:
    """Sorted, merged inclusive ranges of the given sequence numbers (duplicates allowed)."""
    out: list[tuple[int, int]] = []
    for s in sorted(set(seqs)):
        if out and s == out[-1][1] + 1:
            out[-1] = (out[-1][0], s)
        else:
            out.append((s, s))
    return out


def receipts(station: str, gateway: str, boot: str, seqs: Iterable[int]) -> list[Receipt]:
    """The receipts that cover ``seqs``: one per ``MAX_RANGES`` ranges."""
    rs = ranges(seqs)
    return [Receipt(station=station, gateway=gateway, boot=boot, seqs=rs[i:i + MAX_RANGES])
            for i in range(0, len(rs), MAX_RANGES)]
