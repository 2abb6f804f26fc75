"""Ingest stage receipt: a durable batch → its gateways' receipts, QoS 1 (issue #16).

Takes a ``Batch`` from the acknowledge stage once its write is durable (InfluxDB answered 2xx or
refused the lines for good, or the spool's fsync returned) — the moment its PUBACKs go out — and
publishes ``contract.receipt`` receipts on ``heatwatch/v1/station/{station}/receipt``: one per
(station, gateway boot) per batch (split past ``MAX_RANGES`` ranges), listing exactly the seqs of
that batch's telemetry messages. The broker's PUBACK is not durability (mosquitto killed with -9
loses what it acknowledged since its last autosave); the receipt is, so a gateway keeps a row in
its outbox until one covers it.

What ``Batch.receipts`` holds (the batch stage fills it): every telemetry message stored, whole
or without refused readings (``Trimmed``), and every one rejected for a reason that can never
change (``Rejected.receipt``: re-sending it would be rejected again, forever). Never a message
that was lost or is not yet durable (it is in no durable batch), one from a station outside the
inventory (the station may be added) or of a schema version this collector does not read (it may
be upgraded). A message stamped ahead of our clock is stored re-stamped, and receipted.

Each collector receipts what it stored: members of a shared subscription receipt their own shares.
Bounded: paho holds at most ``MAX_OUTSTANDING`` (``collector/receive.py``) receipts not yet
acknowledged by the broker; past that a receipt is dropped and counted (``receipts_dropped``): its
gateway re-sends those messages after its timeout, and they are stored (same timestamps:
overwritten) and receipted again.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

import structlog
from paho.mqtt.enums import MQTTErrorCode

from collector.metrics import Stats
from collector.receive import MAX_OUTSTANDING
from collector.stages import Batch
from contract.receipt import receipt_topic, receipts

log = structlog.get_logger("heatwatch.collector")

Publish = Callable[[str, bytes], MQTTErrorCode]


@lru_cache(maxsize=65_536)
def _topic(station: str) -> str:
    return receipt_topic(station)


class Receipts:
    def __init__(self, publish: Publish, stats: Stats) -> None:
        self.publish, self.stats = publish, stats
        self._dropping = False

    def __call__(self, b: Batch) -> None:
        """Publish the receipts of a durable batch."""
        st = self.stats
        for (station, gateway, boot), seqs in b.receipts.items():
            topic = _topic(station)
            for r in receipts(station, gateway, boot, seqs):
                rc = self.publish(topic, r.encode())
                if rc == MQTTErrorCode.MQTT_ERR_QUEUE_SIZE:
                    st.receipts_dropped += 1
                    if not self._dropping:
                        log.warning("receipts not acknowledged by the broker pile up; dropping new ones "
                                    "(their gateways re-send those messages)", outstanding=MAX_OUTSTANDING)
                        self._dropping = True
                    continue
                if self._dropping:
                    log.info("receipts flow again", dropped=st.receipts_dropped)
                    self._dropping = False
                st.receipts += 1
                st.receipted += sum([last - first + 1 for first, last in r.seqs])
