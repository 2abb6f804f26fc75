"""Ingest stage decode/validate: one delivery's topic and bytes → what it is, or why not.

Takes (topic, payload, now) and returns a ``Validated``: a telemetry ``Frame``, a
``StationStatus``, a ``GatewaySeen``, a gateway's ``CommandResult``, an alerter's ``Transition``
(the alert topic) or a ``Rejected`` with its reason.
Never raises on input.
Besides its answer it keeps only its own counters (``Stats``: received, accepted, values,
rejected by reason, per station messages, sequence gaps, restarts and re-stamped messages) and,
per station, the last sequence number the gap count needs and the last re-stamped time; it calls
nothing else (the rule engine and other taps are fed by the wiring, with what this returns).

A gateway clock running fast (its NTP server gone) stamps its messages ahead of their receipt.
Past ``ingest.max_future_s`` such a message is not refused (the station would look offline while
it reports, and its data would be lost): it is stored at its receipt time, marked with how far
ahead its own stamp was (``Frame.skew_ms``, which the rules turn into a ``clock_skew`` alert for
the gateway, ``alerting/rule_clock.py``), counted per station (``restamped``) and logged once per
station and gateway boot. Re-stamped messages of one station get distinct times (1 ms apart when
they arrive together, as a gateway's backlog does): one time for two messages would merge them
into one InfluxDB point and lose the first one's values.
"""

from __future__ import annotations

import dataclasses

import structlog

from collector.metrics import Stats
from collector.stages import GatewaySeen, Rejected, Validated
from contract import topics
from contract.alerts import parse_transition
from contract.commands import parse_command_result
from contract.config import IngestSettings
from contract.errors import InvalidInput, PayloadError
from contract.payload import Frame, decode_telemetry, parse_gateway_status, parse_station_status

log = structlog.get_logger("heatwatch.collector")

_TELEMETRY, _STATION_STATUS, _GATEWAY_STATUS, _COMMAND_RESULT = (
    topics.TopicKind.TELEMETRY, topics.TopicKind.STATION_STATUS, topics.TopicKind.GATEWAY_STATUS,
    topics.TopicKind.COMMAND_RESULT)
_ALERT = topics.TopicKind.ALERT
# topics that parsed, by their text: a station's topic comes back every few seconds, and parsing
# builds and checks a Topic each time (~1 % of the collector's CPU). Bounded like the decoder's
# caches: cleared when full (a flood of made-up station names costs a re-parse, not memory).
_TOPICS_MAX = 100_000
# stations whose re-stamping is remembered (the last time given, the boot last logged): one entry
# per station with a fast clock; cleared when full like the topics (a flood costs a log line again)
_RESTAMPED_MAX = 100_000


class Validate:
    def __init__(self, cfg: IngestSettings, stats: Stats) -> None:
        self.cfg, self.stats = cfg, stats
        self._known = set(cfg.known_stations) if cfg.known_stations is not None else None
        self._max_future_ms = cfg.max_future_s * 1000
        self._max_past_ms = cfg.max_past_days * 86400_000
        self._last_seq: dict[str, tuple[str, int]] = {}
        self._logged: set[tuple[str, str]] = set()
        self._last_reject_ms = 0
        self._topics: dict[str, topics.Topic] = {}
        self._restamped: dict[str, int] = {}  # station → the last time a message was re-stamped to
        self._restamp_logged: dict[str, str] = {}  # station → the gateway boot last logged

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
            if kind is _COMMAND_RESULT:
                r = parse_command_result(payload)
                if (r.station, r.id) != (t.subject, t.item):
                    raise PayloadError(f"result {r.station}/{r.id} on the topic of {t.subject}/{t.item}",
                                       "topic_mismatch")
                return r
            if kind is _ALERT:
                tr = parse_transition(payload)
                if t.subject not in (tr.station, tr.gateway):
                    raise PayloadError(f"alert {tr.key} on the topic of {t.subject}", "topic_mismatch")
                return tr
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
            msg = self._restamp(msg, now_ms)
        elif msg.ts < now_ms - self._max_past_ms:
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

    def _restamp(self, msg: Frame, now_ms: int) -> Frame:
        """The message at its receipt time (distinct from this station's last re-stamped one),
        marked with how far ahead the gateway's stamp was."""
        station, restamped = msg.station, self._restamped
        ts = max(now_ms, restamped.get(station, 0) + 1)
        if len(restamped) >= _RESTAMPED_MAX and station not in restamped:
            restamped.clear()
        restamped[station] = ts
        self.stats.restamped[station] += 1
        logged = self._restamp_logged
        if logged.get(station) != msg.boot:  # once per station and gateway boot; the counter keeps the rest
            if len(logged) >= _RESTAMPED_MAX:
                logged.clear()
            logged[station] = msg.boot
            log.warning("gateway clock ahead: telemetry stored at its receipt time", station=station,
                        gateway=msg.gateway, boot=msg.boot, ahead_s=round((msg.ts - now_ms) / 1000, 1),
                        max_future_s=self.cfg.max_future_s)
        return dataclasses.replace(msg, ts=ts, skew_ms=msg.ts - ts)

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
