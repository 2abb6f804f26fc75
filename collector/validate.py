"""Ingest stage decode/validate: one delivery's topic and bytes → what it is, or why not.

Takes (topic, payload, now) and returns a ``Validated``: a telemetry ``Frame``, a
``StationStatus``, a ``GatewaySeen``, a ``CommandResult`` (only with ``results`` on: the
collector with the alert store, which subscribes to them) or a ``Rejected`` with its reason.
Never raises on input.
Besides its answer it keeps only its own counters (``Stats``: received, accepted, values,
rejected by reason, per station messages, sequence gaps and restarts) and the last sequence number
per station that the gap count needs; it calls nothing else (the rule engine and other taps are
fed by the wiring, with what this returns).
"""

from __future__ import annotations

import structlog

from collector.metrics import Stats
from collector.stages import GatewaySeen, Rejected, Validated
from contract import topics
from contract.commands import parse_command_result
from contract.config import IngestSettings
from contract.errors import InvalidInput, PayloadError
from contract.payload import Frame, decode_telemetry, parse_gateway_status, parse_station_status

log = structlog.get_logger("heatwatch.collector")

_TELEMETRY, _STATION_STATUS, _GATEWAY_STATUS, _COMMAND_RESULT = (
    topics.TopicKind.TELEMETRY, topics.TopicKind.STATION_STATUS, topics.TopicKind.GATEWAY_STATUS,
    topics.TopicKind.COMMAND_RESULT)
# topics that parsed, by their text: a station's topic comes back every few seconds, and parsing
# builds and checks a Topic each time (~1 % of the collector's CPU). Bounded like the decoder's
# caches: cleared when full (a flood of made-up station names costs a re-parse, not memory).
_TOPICS_MAX = 100_000


class Validate:
    def __init__(self, cfg: IngestSettings, stats: Stats, *, results: bool = False) -> None:
        self.cfg, self.stats = cfg, stats
        self.results = results  # command results are taken (the collector with the alert store)
        self._known = set(cfg.known_stations) if cfg.known_stations is not None else None
        self._max_future_ms = cfg.max_future_s * 1000
        self._max_past_ms = cfg.max_past_days * 86400_000
        self._last_seq: dict[str, tuple[str, int]] = {}
        self._logged: set[tuple[str, str]] = set()
        self._last_reject_ms = 0
        self._topics: dict[str, topics.Topic] = {}

    def __call__(self, topic: str, payload: bytes, now_ms: int) -> Validated:
        self.stats.received += 1
        station: str | None = None
        try:
            t = self._topics.get(topic) or self._topic(topic)
            kind = t.kind
            station = t.subject if kind is not _GATEWAY_STATUS else None
            if kind is _TELEMETRY:
                return self._telemetry(t.subject, payload, now_ms)
            if kind is _STATION_STATUS:
                st = parse_station_status(payload)
                if st.station != t.subject:
                    raise PayloadError(f"payload station {st.station!r} ≠ topic {t.subject!r}",
                                       "station_mismatch")
                return st
            if kind is _GATEWAY_STATUS:
                return GatewaySeen(parse_gateway_status(payload), now_ms)
            if kind is _COMMAND_RESULT and self.results:
                r = parse_command_result(payload)
                if (r.station, r.id) != (t.subject, t.item):
                    raise PayloadError(f"result {r.station}/{r.id} on the topic of {t.subject}/{t.item}",
                                       "topic_mismatch")
                return r
            raise PayloadError(f"the collector does not take {kind} messages", "unexpected_topic")
        except InvalidInput as exc:
            return self._reject(exc.reason, station, topic, str(exc), now_ms)

    def _topic(self, topic: str) -> topics.Topic:
        t = topics.parse_topic(topic)
        if len(self._topics) >= _TOPICS_MAX:
            self._topics.clear()
        self._topics[topic] = t
        return t

    def _telemetry(self, station: str, payload: bytes, now_ms: int) -> Frame:
        if self._known is not None and station not in self._known:
            raise PayloadError(f"station {station!r} is not in ingest.known_stations", "unknown_station")
        msg = decode_telemetry(payload)
        if msg.station != station:
            raise PayloadError(f"payload station {msg.station!r} ≠ topic station {station!r}",
                               "station_mismatch")
        if msg.ts > now_ms + self._max_future_ms:
            raise PayloadError(f"ts {msg.ts} is {(msg.ts - now_ms) / 1000:.0f} s in the future "
                               "(gateway clock?)", "ts_future")
        if msg.ts < now_ms - self._max_past_ms:
            raise PayloadError(f"ts {msg.ts} is older than {self.cfg.max_past_days} days", "ts_too_old")
        st = self.stats
        last = self._last_seq.get(station)
        if last is not None:
            if last[0] != msg.boot:
                st.restarts[station] += 1
            elif msg.seq > last[1] + 1:
                st.seq_gaps[station] += msg.seq - last[1] - 1
        if last is None or last[0] != msg.boot or msg.seq > last[1]:
            self._last_seq[station] = (msg.boot, msg.seq)
        st.accepted += 1
        st.messages[station] += 1
        st.values += len(msg.samples)
        return msg

    def _reject(self, reason: str, station: str | None, topic: str, detail: str, now_ms: int) -> Rejected:
        self.stats.rejected[reason] += 1
        key = (reason, station or "")
        if key not in self._logged:  # once per reason and source; the counters keep the rest
            self._logged.add(key)
            log.warning("message rejected", reason=reason, station=station, topic=topic[:200],
                        detail=detail[:300])
        # rejects share a series per (reason, station): keep their timestamps distinct
        ts = max(now_ms, self._last_reject_ms + 1)
        self._last_reject_ms = ts
        return Rejected(reason, station, topic, detail, ts)
