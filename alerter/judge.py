"""The alerter's judging: one rule engine per owned partition; the rest kept in standby.

Stage: receive → **validate → route → judge (owned) or keep (standby)** → commit → acknowledge.
``receive(topic, payload, now)`` takes one delivery, checks it (the collector's ``ingest`` limits;
a message stamped more than ``max_future_s`` ahead of its receipt is judged on its receipt time
and marked ``skew_ms``, as ``alerting/rule_clock.py`` expects), finds its partitions (a
station's topic names the station; a gateway's status names its stations) and, for each owned
one, hands it to that partition's engine; transitions, command results and the identities of
the messages judged wait in ``pending`` for the next commit (``take``). Nothing here does I/O:
the caller reads and writes the store (``alerter/app.py``).

One engine per partition (``alerting/engine.py`` unchanged): its snapshot is the partition's
state, its lives the partition's alerts. A station's partition is its gateway's when the rule
file's inventory names the gateway (``part_of``): a gateway and its stations are judged together,
so an outage is one page with its stations under it and a gateway is seen when any of its
stations reports, exactly as one engine judges them. A station the inventory does not list goes by
its own id; its gateway (learned from its messages) may then be judged in several partitions: each
judges the gateway's own alerts (offline, clock skew) from the same messages, and the store keeps
one open row per key and records a change once (``Store.apply_in``): the first partition to commit
a change pages it, the others' copies change nothing. Every member must read the same inventory
(the same rule file) to route alike. A partition's rules are the rule file's with the inventory
cut to its gateways.

Takeover (``gain``): a fresh engine, the partition's snapshot restored, then the standby
replayed in arrival order: messages judged before the snapshot (its ``recent`` identities) are
skipped, those judged and committed since by the previous owner (``after``) are judged again
quietly (their transitions are in the store already), then the store's open alerts are adopted
(the truth), and the rest is judged as new. Give-up (``drop``): the partition's engine and
pending work go (its messages arrive in standby from then on).
"""

from __future__ import annotations

import dataclasses
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import structlog

from alerter.latest import LatestValues
from alerter.standby import Held, Standby, message_id
from alerting.engine import Engine
from alerting.partitions import PartState, partition_of
from contract import topics
from contract.alerts import AlertRules, Silence, Transition
from contract.commands import CommandResult, parse_command_result
from contract.config import IngestSettings
from contract.errors import InvalidInput, PayloadError
from contract.payload import (
    Frame,
    GatewayStatus,
    StationStatus,
    decode_telemetry,
    parse_gateway_status,
    parse_station_status,
)

log = structlog.get_logger("heatwatch.alerter")

_TELEMETRY, _STATION_STATUS, _GATEWAY_STATUS, _COMMAND_RESULT = (
    topics.TopicKind.TELEMETRY, topics.TopicKind.STATION_STATUS, topics.TopicKind.GATEWAY_STATUS,
    topics.TopicKind.COMMAND_RESULT)
_TOPICS_MAX = 100_000  # stations in per-station maps (cleared when full, as topics.TopicCache)
# a message received this much before a snapshot was written may still be missing from it (the
# members' clocks and deliveries differ by a few ms; generous)
REPLAY_MARGIN_MS = 5_000

Item = Frame | StationStatus | GatewayStatus | CommandResult


@dataclass
class Stats:
    received: int = 0
    rejected: dict[str, int] = field(default_factory=dict)  # by reason
    judged: int = 0  # messages judged by an owned partition's engine
    values: int = 0  # readings in judged telemetry
    standby: int = 0  # messages kept for partitions judged elsewhere
    replayed: int = 0  # standby messages judged at a takeover (new to the store)
    caught_up: int = 0  # standby messages judged again quietly (the previous owner committed them)
    skipped: int = 0  # standby messages the taken snapshot had judged already
    rules_cpu_ns: int = 0  # CPU of this thread inside the engines (observe, status, tick, snapshot)
    rule_errors: int = 0
    takeovers: int = 0  # partitions taken over
    handovers: int = 0  # partitions given up (released or lost)
    restamped: int = 0  # telemetry stamped ahead of its receipt by more than max_future_s
    replay_incomplete: int = 0  # takeovers whose standby did not reach back to the snapshot
    retired_samples: int = 0  # readings judged by the engines of partitions since given up


@dataclass
class Pending:
    """What waits for the next commit, by partition: transitions and command results, and the
    identities of the messages judged since the last commit that recorded any (they ride with the
    next one; a taker judges them again quietly). A batch that raised nothing commits nothing:
    messages whose judgement changed no alert need not be known to a taker, which judges them
    again from the same state to the same nothing."""

    transitions: dict[int, list[Transition]] = field(default_factory=dict)
    results: dict[int, list[CommandResult]] = field(default_factory=dict)
    judged: dict[int, list[int]] = field(default_factory=dict)  # message identities

    def __bool__(self) -> bool:
        return any(self.transitions.values()) or any(self.results.values())

    def parts(self) -> set[int]:
        return {p for d in (self.transitions, self.results, self.judged) for p, v in d.items() if v}


class Part:
    """One owned partition."""

    __slots__ = ("engine", "epoch", "index", "recent", "snapshot_at")

    def __init__(self, index: int, epoch: int, engine: Engine, now_mono: float) -> None:
        self.index, self.epoch, self.engine = index, epoch, engine
        self.recent: deque[tuple[int, int]] = deque()  # (receive ms, identity) judged lately
        self.snapshot_at = now_mono  # when its snapshot was last written (monotonic s)


def rules_for(rules: AlertRules, part: int, count: int) -> AlertRules:
    """The rule file as one partition judges it: the inventory cut to the partition's gateways
    (each with all its stations: they share the gateway's partition)."""
    if not rules.inventory or count == 1:
        return rules
    inv = {gw: stations for gw, stations in rules.inventory.items() if partition_of(gw, count) == part}
    return rules.model_copy(update={"inventory": inv})


class Judge:
    def __init__(self, rules: AlertRules, count: int, ingest: IngestSettings, standby: Standby, *,
                 latest: LatestValues | None = None, recent_ms: int | None = None,
                 mono: Callable[[], float] = time.monotonic) -> None:
        self.rules, self.count, self.standby, self.latest = rules, count, standby, latest
        self.ingest = ingest
        self.mono = mono
        self.parts: dict[int, Part] = {}
        self.pending = Pending()
        self.stats = Stats()
        self.silences: list[Silence] = []
        # identities judged are remembered this long (a taker's standby reaches back no further)
        self.recent_ms = recent_ms if recent_ms is not None else standby.window_ms + REPLAY_MARGIN_MS
        self._rules: dict[int, AlertRules] = {}
        # the inventory's stations go with their gateway (see the module's docstring)
        self._home = {s: partition_of(gw, count) for gw, sts in rules.inventory.items() for s in sts}
        self._topics = topics.TopicCache()
        self._restamped: dict[str, int] = {}  # station → its last re-stamped time
        self._known = set(ingest.known_stations) if ingest.known_stations is not None else None
        self._max_future_ms = ingest.max_future_s * 1000
        self._max_past_ms = ingest.max_past_days * 86400_000
        self._logged: set[tuple[str, str]] = set()
        self._failed: set[str] = set()

    def part_of(self, name: str) -> int:
        """The partition of a station, or of a gateway's own alerts (a gateway's name)."""
        p = self._home.get(name)
        return partition_of(name, self.count) if p is None else p

    def owns_station(self, station: str) -> bool:
        return self.part_of(station) in self.parts

    def rules_of(self, part: int) -> AlertRules:
        r = self._rules.get(part)
        if r is None:
            r = self._rules[part] = rules_for(self.rules, part, self.count)
        return r

    # -- one delivery ---------------------------------------------------------------------------
    def receive(self, topic: str, payload: bytes, now: int) -> None:
        """One delivery, received at ``now`` (ms): judged by the owned partitions it concerns,
        kept in standby for the others. Bad input is counted and logged once; never raises."""
        self.stats.received += 1
        try:
            t = self._topics.parse(topic)
            kind = t.kind
            item: Item | None = None
            if kind is _GATEWAY_STATUS:
                item = parse_gateway_status(payload)  # its stations say which partitions it concerns
                parts: tuple[int, ...] = tuple({self.part_of(s) for s in item.stations}
                                               | {self.part_of(item.gateway)})
            elif kind in (_TELEMETRY, _STATION_STATUS, _COMMAND_RESULT):
                parts = (self.part_of(t.subject),)
            else:
                raise PayloadError(f"the alerter does not take {kind} messages", "unexpected_topic")
        except InvalidInput as exc:
            self._reject(exc.reason, None, topic, str(exc))
            return
        owned = [p for p in parts if p in self.parts]
        if len(owned) < len(parts):
            self.standby.add(Held(now, topic, payload, tuple(p for p in parts if p not in self.parts)))
            self.stats.standby += 1
        if owned:
            self._judge(t, topic, payload, now, owned, item, quiet=False)

    def _validate(self, t: topics.Topic, payload: bytes, now: int) -> Item:
        kind = t.kind
        if kind is _TELEMETRY:
            station = t.subject
            if self._known is not None and station not in self._known:
                raise PayloadError(f"station {station!r} is not in ingest.known_stations", "unknown_station")
            msg = decode_telemetry(payload)
            if msg.station != station:
                raise PayloadError(f"payload station {msg.station!r} ≠ topic station {station!r}",
                                   "station_mismatch")
            if msg.ts > now + self._max_future_ms:
                # a gateway clock running ahead: judged at its receipt time and marked, as the
                # collector stores it (collector/validate.py: distinct times per station); the
                # rules judge the mark (clock_skew, alerting/rule_clock.py)
                self.stats.restamped += 1
                ts = max(now, self._restamped.get(station, 0) + 1)
                if len(self._restamped) >= _TOPICS_MAX and station not in self._restamped:
                    self._restamped.clear()
                self._restamped[station] = ts
                return dataclasses.replace(msg, ts=ts, skew_ms=msg.ts - ts)
            if msg.ts < now - self._max_past_ms:
                raise PayloadError(f"ts {msg.ts} is older than {self.ingest.max_past_days} days",
                                   "ts_too_old")
            return msg
        if kind is _STATION_STATUS:
            st = parse_station_status(payload)
            if st.station != t.subject:
                raise PayloadError(f"payload station {st.station!r} ≠ topic {t.subject!r}",
                                   "station_mismatch")
            return st
        if kind is _GATEWAY_STATUS:
            return parse_gateway_status(payload)
        r = parse_command_result(payload)
        if (r.station, r.id) != (t.subject, t.item):
            raise PayloadError(f"result {r.station}/{r.id} on the topic of {t.subject}/{t.item}",
                               "topic_mismatch")
        return r

    def _judge(self, t: topics.Topic, topic: str, payload: bytes, now: int, parts: Iterable[int],
               item: Item | None, *, quiet: bool) -> None:
        """Judge one message in the owned ``parts``; ``quiet``: its transitions are already in the
        store (a takeover re-judging what the previous owner committed), only the state moves."""
        try:
            if item is None or not isinstance(item, GatewayStatus):
                item = self._validate(t, payload, now)
        except InvalidInput as exc:
            self._reject(exc.reason, t.subject if t.kind is not _GATEWAY_STATUS else None, topic, str(exc))
            return
        mid = message_id(topic, payload)
        pend, stats = self.pending, self.stats
        stats.judged += 1
        for p in parts:
            part = self.parts[p]
            if isinstance(item, CommandResult):
                if not quiet:
                    pend.results.setdefault(p, []).append(item)
            else:
                trs = self._engine_call(part.engine, item, now)
                if trs and not quiet:
                    pend.transitions.setdefault(p, []).extend(trs)
            part.recent.append((now, mid))
            if not quiet:
                pend.judged.setdefault(p, []).append(mid)
        if isinstance(item, Frame):
            stats.values += len(item.samples)
        latest = self.latest
        if latest is not None:
            if isinstance(item, Frame):
                latest.observe(item)
            elif isinstance(item, StationStatus):
                latest.station_status(item)
            elif isinstance(item, GatewayStatus):
                mine = [s for s in item.stations if self.owns_station(s)]
                if mine:
                    latest.gateway_status(item.model_copy(update={"stations": mine}))

    def _engine_call(self, engine: Engine, item: Item, now: int) -> list[Transition]:
        c0 = time.thread_time_ns()
        try:
            if isinstance(item, Frame):
                return engine.observe(item, now)
            if isinstance(item, StationStatus):
                return engine.station_status(item, now)
            assert isinstance(item, GatewayStatus)
            return engine.gateway_status(item, now)
        except Exception as exc:  # a fault in the rules must not stop the messages behind it
            self._rule_failed(exc, type(item).__name__)
            return []
        finally:
            self.stats.rules_cpu_ns += time.thread_time_ns() - c0

    def _rule_failed(self, exc: Exception, on: str) -> None:
        self.stats.rule_errors += 1
        where = f"{on}: {type(exc).__name__}"
        if where not in self._failed and len(self._failed) < 100:  # logged once per kind
            self._failed.add(where)
            log.exception("rule engine failed; the rules skipped it", on=on)

    def _reject(self, reason: str, station: str | None, topic: str, detail: str) -> None:
        self.stats.rejected[reason] = self.stats.rejected.get(reason, 0) + 1
        key = (reason, station or "")
        if key not in self._logged and len(self._logged) < 10_000:  # once per reason and source
            self._logged.add(key)
            log.warning("message not judged", reason=reason, station=station, topic=topic[:200],
                        detail=detail[:300])

    # -- time -----------------------------------------------------------------------------------
    def tick(self, now: int) -> None:
        """The time-driven rules of every owned partition; old identities forgotten."""
        for p, part in self.parts.items():
            c0 = time.thread_time_ns()
            try:
                trs = part.engine.tick(now)
            except Exception as exc:
                self._rule_failed(exc, "tick")
                trs = []
            finally:
                self.stats.rules_cpu_ns += time.thread_time_ns() - c0
            if trs:
                self.pending.transitions.setdefault(p, []).extend(trs)
            recent, cutoff = part.recent, now - self.recent_ms
            while recent and recent[0][0] < cutoff:
                recent.popleft()
        self.standby.trim(now)

    def set_silences(self, silences: list[Silence]) -> None:
        self.silences = silences
        for part in self.parts.values():
            part.engine.set_silences(silences)

    def seen(self) -> list[tuple[str, int]]:
        """Every open alert's last seen (a gateway's alert judged in several partitions: the latest)."""
        out: dict[str, int] = {}
        for part in self.parts.values():
            for k, life in part.engine.lives.items():
                if life.seen > out.get(k, 0):
                    out[k] = life.seen
        return list(out.items())

    def samples_judged(self) -> int:
        """Readings judged in season by every engine this member has run (a counter)."""
        return self.stats.retired_samples + sum(p.engine.samples_judged for p in self.parts.values())

    def take(self) -> Pending:
        """What to commit now: nothing while no transition or result waits (the identities
        judged meanwhile stay for the commit that has some)."""
        if not self.pending:
            return Pending()
        out, self.pending = self.pending, Pending()
        return out

    def epochs(self) -> dict[int, int]:
        return {p: part.epoch for p, part in self.parts.items()}

    # -- snapshots ------------------------------------------------------------------------------
    def snapshot(self, p: int, now: int) -> tuple[bytes, list[int]]:
        """The partition's engine snapshot and the identities it judged lately (take it between
        commits: everything it reflects is then in the store)."""
        part = self.parts[p]
        c0 = time.thread_time_ns()
        blob = part.engine.snapshot()
        self.stats.rules_cpu_ns += time.thread_time_ns() - c0
        part.snapshot_at = self.mono()
        self.pending.judged.pop(p, None)  # the snapshot covers them (its recent identities)
        return blob, [i for at, i in part.recent if at >= now - self.recent_ms]

    def snapshots_due(self, every_s: float, most: int) -> list[int]:
        """Up to ``most`` owned partitions whose snapshot is older than ``every_s``, oldest first
        (spread over the commits, so no one round pickles every partition)."""
        due = self.mono() - every_s
        late = sorted((part.snapshot_at, p) for p, part in self.parts.items() if part.snapshot_at <= due)
        return [p for _, p in late[:most]]

    # -- ownership ------------------------------------------------------------------------------
    def gain(self, p: int, epoch: int, state: PartState, open_alerts: list[dict[str, Any]], now: int) -> None:
        """Take partition ``p`` over: restore its snapshot, replay the standby, adopt the store's
        open alerts. The transitions of what is new wait in ``pending``."""
        engine = Engine(self.rules_of(p))
        if state.snapshot is not None:
            c0 = time.thread_time_ns()
            try:
                engine.restore(state.snapshot)
            except Exception as exc:  # another version's snapshot: start fresh, loudly
                log.error("partition snapshot unreadable; starting with empty windows", partition=p,
                          error=str(exc)[:300])
                engine = Engine(self.rules_of(p))
            self.stats.rules_cpu_ns += time.thread_time_ns() - c0
        engine.set_silences(self.silences)
        part = self.parts[p] = Part(p, epoch, engine, self.mono())
        held = self.standby.take([p])[p]
        if state.snapshot is not None:
            cutoff = state.written_at - REPLAY_MARGIN_MS
            held = [h for h in held if h.at >= cutoff]
            if self.standby.overflow_at >= cutoff:
                self.stats.replay_incomplete += 1
                log.error("standby overflowed since the partition's snapshot: what came between is not "
                          "judged (raise partitions.standby_max_bytes)", partition=p)
        ids = [message_id(h.topic, h.payload) for h in held]
        last_after = max((i for i, m in enumerate(ids) if m in state.after), default=-1)
        if last_after < 0:
            self._adopt(p, part, open_alerts)
        for i, (h, mid) in enumerate(zip(held, ids, strict=True)):
            if mid in state.recent:
                self.stats.skipped += 1
                part.recent.append((h.at, mid))
                continue
            quiet = mid in state.after
            t = self._topics.parse(h.topic)
            self._judge(t, h.topic, h.payload, h.at, (p,), None, quiet=quiet)
            if quiet:
                self.stats.caught_up += 1
            else:
                self.stats.replayed += 1
            if i == last_after:
                self._adopt(p, part, open_alerts)
        self.stats.takeovers += 1
        log.debug("partition taken over", partition=p, epoch=epoch, snapshot=state.snapshot is not None,
                 replayed=len(held), open_alerts=len(part.engine.lives))

    def _adopt(self, p: int, part: Part, open_alerts: list[dict[str, Any]]) -> None:
        """The store's open alerts of the partition: its stations', and those of the gateways it
        judges."""
        gateways = set(part.engine.ctx.gateways) | set(self.rules_of(p).inventory)
        rows = [r for r in open_alerts
                if (r["station"] is not None and self.part_of(r["station"]) == p)
                or (r["station"] is None and r["gateway"] is not None
                    and (r["gateway"] in gateways or self.part_of(r["gateway"]) == p))]
        part.engine.adopt(rows)

    def drop(self, p: int) -> Part | None:
        """Give partition ``p`` up: its engine and what it has pending (uncommitted) go."""
        part = self.parts.pop(p, None)
        if part is None:
            return None
        self.pending.transitions.pop(p, None)
        self.pending.results.pop(p, None)
        self.pending.judged.pop(p, None)
        if self.latest is not None:
            self.latest.forget(lambda s: self.part_of(s) == p)
        self.stats.retired_samples += part.engine.samples_judged
        self.stats.handovers += 1
        return part
