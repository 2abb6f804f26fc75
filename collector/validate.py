"""Ingest stage decode/validate: one delivery's topic and bytes → what it is, or why not.

Takes (topic, payload, now, size on the wire) and returns a ``Validated``: a telemetry ``Frame``
(or a ``Trimmed`` one: stored without the readings it refuses), a ``StationStatus``, a
``GatewaySeen``, a gateway's ``CommandResult``, an alerter's ``Transition`` (the alert topic) or a
``Rejected`` with its reason. Never raises on input.
Besides its answer it keeps only its own state: counters (``Stats``: received, accepted, values,
rejected by reason, per station messages, sequence gaps, restarts and re-stamped messages), per
station the last sequence number the gap count needs and the last re-stamped time, and the kind
of every point name it has stored (below); it calls nothing else.

Kinds. InfluxDB fixes a field's type at its first write in a shard and refuses a line of any
other type whole. Canonical points have a kind in the vocabulary; a custom ``x_`` point has the
kind its gateway's map declares, and here that is the JSON type of its value (number, true/false,
text). One name, one kind, whichever station sends it: the first kind stored for a name (InfluxDB's
own field types, read at start-up, or the first reading seen since) is that name's kind, and a
reading of another kind is refused (``kind_conflict``) while the rest of its message is stored.
At most ``MAX_CUSTOM_POINTS`` custom names are kept; a reading of a further name is refused
(``too_many_custom_points``): a flood of made-up names costs neither memory nor InfluxDB schema.

A gateway clock running fast (its NTP server gone) stamps its messages ahead of their receipt.
Past ``ingest.max_future_s`` such a message is not refused (the station would look offline while
it reports, and its data would be lost): it is stored at its receipt time, marked with how far
ahead its own stamp was (``Frame.skew_ms``, which the rules turn into a ``clock_skew`` alert for
the gateway, ``alerting/rule_clock.py``), counted per station (``restamped``) and logged once per
station and gateway boot. Re-stamped messages of one station get distinct times (1 ms apart when
they arrive together, as a gateway's backlog does): one time for two messages would merge them
into one InfluxDB point and lose the first one's values. Stored, a re-stamped message is
receipted like any other (re-sent, it would be stored a second time, at a later time).

The inventory (``ingest.known_stations``). When set, a message of any other station — telemetry,
station status, a command result, or a gateway status naming none of the known stations — is
rejected (``unknown_station``) under one ``rejects`` series: the station from the wire is never a
tag value (it is in the detail), so made-up ids cannot grow InfluxDB's series. Each unknown id is
logged once, up to ``MAX_LOGGED`` ids and reasons; the counters keep the rest.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import structlog

from collector.metrics import Stats
from collector.stages import GatewaySeen, Rejected, Trimmed, Validated
from contract import topics
from contract.alerts import parse_transition
from contract.commands import parse_command_result
from contract.config import IngestSettings
from contract.errors import InvalidInput, PayloadError
from contract.payload import (
    MAX_PAYLOAD_BYTES,
    Frame,
    Sample,
    decode_telemetry,
    parse_gateway_status,
    parse_station_status,
    telemetry_envelope,
)
from contract.points import QUALITY_SUFFIX, Kind, lookup

log = structlog.get_logger("heatwatch.collector")

_TELEMETRY, _STATION_STATUS, _GATEWAY_STATUS, _COMMAND_RESULT = (
    topics.TopicKind.TELEMETRY, topics.TopicKind.STATION_STATUS, topics.TopicKind.GATEWAY_STATUS,
    topics.TopicKind.COMMAND_RESULT)
_ALERT = topics.TopicKind.ALERT
# per-station bookkeeping (last reject logged) is bounded like the topic cache (topics.TopicCache):
# cleared when full (a flood of made-up station names costs a re-log, not memory)
_TOPICS_MAX = 100_000
# distinct (reason, source) pairs logged one by one; past this only the counters say more
MAX_LOGGED = 1_000
# custom point names whose kind is kept (a real site has tens)
MAX_CUSTOM_POINTS = 10_000
# stations whose re-stamping is remembered (the last time given, the boot last logged): one entry
# per station with a fast clock; cleared when full like the topics (a flood costs a log line again)
_RESTAMPED_MAX = 100_000
# rejected telemetry that can never become valid, so its gateway may stop re-sending it (not
# schema_version: the collector may be upgraded; not unknown_station: the station may be added to
# the inventory)
RECEIPTED_REJECTS = frozenset({"schema", "ts_too_old"})

_PYTYPE: dict[Kind, type] = {Kind.NUMBER: float, Kind.BOOL: bool, Kind.TEXT: str}
_WORD: dict[type, str] = {float: "number", bool: "true/false", str: "text", int: "integer"}
# InfluxDB's field types (SHOW FIELD KEYS) as the Python type of a reading that fits them; an
# integer field fits no reading (numbers are written as floats)
INFLUX_TYPES: dict[str, type] = {"float": float, "boolean": bool, "string": str, "integer": int}


class Validate:
    def __init__(self, cfg: IngestSettings, stats: Stats) -> None:
        self.cfg, self.stats = cfg, stats
        self._known = frozenset(cfg.known_stations) if cfg.known_stations is not None else None
        self._max_future_ms = cfg.max_future_s * 1000
        self._max_past_ms = cfg.max_past_days * 86400_000
        self._last_seq: dict[str, tuple[str, int]] = {}
        self._logged: set[tuple[str, str]] = set()
        self._last_reject_ms: dict[tuple[str, str | None], int] = {}
        self._topics = topics.TopicCache()
        # point name → the Python type of its value: canonical from the vocabulary, custom first seen
        self._kinds: dict[str, type] = {}
        self._custom = 0
        self._restamped: dict[str, int] = {}  # station → the last time a message was re-stamped to
        self._restamp_logged: dict[str, str] = {}  # station → the gateway boot last logged

    # -- kinds -------------------------------------------------------------------------------------
    def seed_kinds(self, fields: dict[str, str]) -> int:
        """Take InfluxDB's field types (field → ``float``/``boolean``/``string``/``integer``) as the
        kinds of the custom points stored already; return how many were taken."""
        n = 0
        for name, influx_type in fields.items():
            t = INFLUX_TYPES.get(influx_type)
            if (t is not None and name.startswith("x_") and not name.endswith(QUALITY_SUFFIX)
                    and name not in self._kinds and self._custom < MAX_CUSTOM_POINTS):
                self._kinds[name] = t
                self._custom += 1
                n += 1
        return n

    def _learn(self, point: str, t: type) -> type | None:
        """The kind of a point name not seen before: the vocabulary's, or ``t`` for a custom point
        (None when no more custom names are kept)."""
        d = lookup(point)
        if d is not None:
            want = _PYTYPE[d.kind]
        elif self._custom >= MAX_CUSTOM_POINTS:
            return None
        else:
            want, self._custom = t, self._custom + 1
        self._kinds[point] = want
        return want

    def _check_kinds(self, msg: Frame, topic: str, now_ms: int) -> Frame | Trimmed:
        # the common case at ~40 ns a reading: every value of the kind its name has (a null, a
        # name not seen yet or a conflict takes the careful way below)
        get = self._kinds.get
        for r in msg.samples:
            if get(r.point) is not type(r.value):
                break
        else:
            return msg
        keep: list[Sample] = []
        conflicts: list[str] = []
        unkept: list[str] = []
        for r in msg.samples:
            v = r.value
            if v is None:
                keep.append(r)
                continue
            want = get(r.point) or self._learn(r.point, type(v))
            if want is type(v):
                keep.append(r)
            elif want is None:
                unkept.append(r.point)
            else:
                conflicts.append(f"{r.point}: {_WORD[type(v)]}, stored as {_WORD.get(want, want.__name__)}")
        if not conflicts and not unkept:
            return msg
        if conflicts:
            reason = "kind_conflict"
            detail = ("a custom point keeps the kind it was first stored with (docs/contract.md): "
                      + "; ".join(conflicts))
        else:
            reason = "too_many_custom_points"
            detail = f"more than {MAX_CUSTOM_POINTS} custom point names: {', '.join(unkept)}"
        if conflicts and unkept:
            detail += f"; and over {MAX_CUSTOM_POINTS} custom names: {', '.join(unkept)}"
        trimmed = dataclasses.replace(msg, samples=keep)
        refused = self._reject(reason, msg.station, topic, detail, now_ms, count=len(conflicts) + len(unkept),
                               log_key=(conflicts or unkept)[0])
        return Trimmed(trimmed, refused)

    # -- one message -------------------------------------------------------------------------------
    def __call__(self, topic: str, payload: bytes, now_ms: int, size: int = -1) -> Validated:
        self.stats.received += 1
        station: str | None = None
        kind: Any = None
        try:
            t = self._topics.parse(topic)
            kind = t.kind
            # an alert's subject is its station or, for a gateway's own alerts, the gateway: checked
            # against the inventory once parsed
            station = t.subject if kind is not _GATEWAY_STATUS and kind is not _ALERT else None
            if station is not None and self._known is not None and station not in self._known:
                raise PayloadError(f"station {station!r} is not in ingest.known_stations", "unknown_station")
            if size > MAX_PAYLOAD_BYTES:  # the receive stage kept none of it
                raise PayloadError(f"payload of {size} bytes exceeds {MAX_PAYLOAD_BYTES}", "too_large")
            if kind is _TELEMETRY:
                return self._telemetry(t.subject, topic, payload, now_ms)
            if kind is _STATION_STATUS:
                st = parse_station_status(payload)
                if st.station != t.subject:
                    raise PayloadError(f"payload station {st.station!r} ≠ topic {t.subject!r}",
                                       "station_mismatch")
                return st
            if kind is _GATEWAY_STATUS:
                gs = parse_gateway_status(payload)
                if self._known is not None and not self._known.intersection(gs.stations):
                    raise PayloadError(f"gateway {gs.gateway!r} names no station of ingest.known_stations "
                                       f"({', '.join(gs.stations[:5])})", "unknown_station")
                return GatewaySeen(gs, now_ms)
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
                station = tr.station
                if station is not None and self._known is not None and station not in self._known:
                    raise PayloadError(f"station {station!r} is not in ingest.known_stations",
                                       "unknown_station")
                return tr
            raise PayloadError(f"the collector does not take {kind} messages", "unexpected_topic")
        except InvalidInput as exc:
            known = station is None or self._known is None or station in self._known
            receipt = None
            if kind is _TELEMETRY and known and exc.reason in RECEIPTED_REJECTS:
                env = telemetry_envelope(payload)
                if env is not None and env[0] == station:
                    receipt = env[1:]
            # a station outside the inventory is no tag: one series for all of them
            return self._reject(exc.reason, station if known else None, topic, str(exc), now_ms,
                                receipt=receipt, log_key=station or "")

    def _telemetry(self, station: str, topic: str, payload: bytes, now_ms: int) -> Frame | Trimmed:
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
        return self._check_kinds(msg, topic, now_ms)

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

    def _reject(self, reason: str, station: str | None, topic: str, detail: str, now_ms: int, *,
                receipt: tuple[str, str, int] | None = None, count: int = 1,
                log_key: str = "") -> Rejected:
        self.stats.rejected[reason] += count
        key = (reason, log_key)
        if key not in self._logged:  # once per reason and source; the counters keep the rest
            if len(self._logged) < MAX_LOGGED:
                self._logged.add(key)
                log.warning("message rejected", reason=reason, station=station, topic=topic[:200],
                            detail=detail[:300])
            elif len(self._logged) == MAX_LOGGED:
                self._logged.add(("", ""))
                log.warning("more rejects of other reasons or sources: counted, no longer logged one by one",
                            logged=MAX_LOGGED)
        # rejects share a series per (reason, station): keep their timestamps distinct in it
        series = (reason, station)
        ts = max(now_ms, self._last_reject_ms.get(series, 0) + 1)
        if len(self._last_reject_ms) >= _TOPICS_MAX:
            self._last_reject_ms.clear()
        self._last_reject_ms[series] = ts
        return Rejected(reason, station, topic, detail, ts, receipt, count)
