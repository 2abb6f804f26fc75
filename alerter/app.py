"""The alerter, wired in one place: MQTT → judge (owned partitions) → commit → acknowledge.

    stage        module                 takes                            emits
    receive      messaging/client.py    MQTT PUBLISHes (own session)     batches of Messages
    judge        alerter/judge.py       topic, payload, receive time     transitions, results,
                                                                         identities by partition;
                                                                         the rest into standby
    commit       alerter/record.py      what judging left pending        the store (one fenced
                                                                         transaction), outbox rows
    acknowledge  here                   the batch, once committed        PUBACKs, in arrival order
    send         alerter/pages.py       the outbox of owned partitions   alert topic, webhooks
    (latest)     alerter/latest.py      frames and statuses judged       the `latest` table

Beside them: the lease rounds (every ``partitions.renew_s``: this member's row and leases renewed,
the partitions shared out among the members alive, ``alerting/partitions.py``), the store
readers (silences, open alerts' last seen, re-notification) and the garbage-collector keeper.

One process runs one member; every member subscribes to everything with its own persistent
session (client id = ``member``) and acknowledges every message after the commit of its batch,
judged or kept in standby. The rounds hand the consume loop three kinds of work, done between
batches, so a partition never changes hands in the middle of one: partitions lost (another member
holds them now: dropped), to hand over (the member they belong to is alive: committed, a last
snapshot, released), and acquired (restored, replayed, adopted). With SQLite there is one member,
which takes every partition at start.

Stopping (SIGTERM): what is judged is committed, each partition's snapshot written and its lease
released, the member row removed: the others take over at their next round, with no replay gap.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog

from alerter import metrics
from alerter.judge import Judge, Pending
from alerter.latest import LatestValues
from alerter.pages import Senders, wants
from alerter.record import Recorder, Snapshot
from alerter.standby import Standby
from alerting.outbox import Outbox
from alerting.partitions import Leases, PartitionCountMismatch, PartState, owner_name, plan
from alerting.store import Store
from contract import topics
from contract.alerts import AlertRules, load_rules
from contract.config import AlerterConfig
from contract.errors import CannotOpen, DatabaseUnavailable, InvalidInput
from messaging.client import Message, MqttClient

log = structlog.get_logger("heatwatch.alerter")
RETRY_MAX_S = 30.0
# the consume loop looks for ownership work (from the lease rounds) at least this often when idle
IDLE_S = 0.25
SNAPSHOTS_PER_ROUND = 4  # partition snapshots written between two batches at most
OWNERSHIP_RETRY_S = 1.0  # the first pause before moving partitions again after the store was away


@dataclass
class AlerterStats:
    batches: int = 0
    acked: int = 0
    transitions: int = 0  # recorded (changed an alert row)
    pages: int = 0
    results: int = 0  # command results recorded
    store_retries: int = 0
    snapshots: int = 0
    renotified: int = 0
    rounds: int = 0
    round_errors: int = 0
    lost: int = 0  # partitions found taken by another member
    commit_ns: int = 0  # wall time in commits (a worker thread)
    takeover_ms: int = 0  # the last takeover: from the lease to judging (restore, replay, adopt)


class Alerter:
    def __init__(self, cfg: AlerterConfig, *, clock: Callable[[], float] = time.time) -> None:
        self.cfg, self.clock = cfg, clock
        a, parts = cfg.alerts, cfg.partitions
        self.rules: AlertRules = load_rules(a.rules) if a.rules else AlertRules()
        self.store = Store(a.store, setting="alerts.store")
        self.sqlite = self.store.engine.dialect.name == "sqlite"
        self.count = parts.count
        self.leases = Leases(self.store.engine, parts.count, int(parts.lease_s * 1000))
        self.member, self.instance = cfg.member, secrets.token_hex(4)
        self.owner = owner_name(self.member, self.instance)
        self.standby = Standby(int(parts.standby_s * 1000), parts.standby_max_bytes)
        self.latest = (LatestValues(self.store.latest, interval_s=a.latest_s, clock=clock)
                       if a.latest_s else None)
        self.judge = Judge(self.rules, parts.count, cfg.ingest, self.standby, latest=self.latest)
        self.outbox = Outbox(self.store.engine)
        self.recorder = Recorder(self.store, self.leases, self.owner, publish=a.publish,
                                 wants_page=wants(a.webhooks))
        self.stats = AlerterStats()
        self.metrics_port: int | None = None
        self.client: MqttClient | None = None
        self.senders: Senders | None = None
        self.registered = asyncio.Event()  # this member's row is in the store: it may own partitions
        # work the lease rounds leave for the consume loop (done between batches)
        self._gained: dict[int, int] = {}  # acquired: partition → epoch
        self._taking: dict[int, int] = {}  # being taken over (restored, replayed) now
        self._handover: set[int] = set()  # to give up (their member is alive)
        self._lost: set[int] = set()  # taken by another member already
        self._inflight: Pending | None = None  # taken from the judge, not yet known committed
        # ownership work that met the store away: not before this (monotonic), then a longer pause
        self._ownership_retry_at = 0.0
        self._ownership_delay = OWNERSHIP_RETRY_S / 2
        # partition → its newest judged row committed (by us, or found at the takeover)
        self._upto: dict[int, int] = {}
        # snapshots taken between commits, written by their own task (an fsync per write: on a
        # busy machine 0.1-0.3 s each, which in the consume loop cut its throughput to a tenth)
        self._snapshots_out: asyncio.Queue[Snapshot] = asyncio.Queue()

    # -- start ------------------------------------------------------------------------------------
    def start(self) -> None:
        """Blocking: migrate the store, make the partitions. A store that cannot be opened, or was
        made with another partition count, raises CannotOpen (one line at start-up)."""
        self.store.open()
        try:
            self.leases.ensure()
        except PartitionCountMismatch as exc:
            raise CannotOpen("alert store", self.store.db.shown, str(exc), "partitions.count") from None
        if self.sqlite:
            others = self.leases.others_alive(self.member)
            if others:
                raise CannotOpen("alert store", self.store.db.shown,
                                 f"alerter member {others[0]} runs on it already: a SQLite store takes "
                                 "one member (several share a PostgreSQL store)", "alerts.store")
        self.judge.set_silences(self.store.active_silences(int(self.clock() * 1000)))
        log.info("alerter ready", member=self.member, partitions=self.count, rules=self.cfg.alerts.rules
                 or "defaults", store=self.store.engine.url.render_as_string(hide_password=True))

    def owned(self) -> list[int]:
        return list(self.judge.parts)

    async def run(self) -> None:
        try:
            await asyncio.to_thread(self.start)
        except BaseException:
            self.store.close()
            raise
        cfg = self.cfg
        subs = [(topics.TELEMETRY_FILTER, 1), *((f, 1) for f in topics.STATUS_FILTERS),
                (topics.COMMAND_RESULT_FILTER, 1)]
        self.client = MqttClient(cfg.mqtt, client_id=cfg.member, persistent=True,
                                 session_expiry_s=cfg.session_expiry_s, receive_maximum=cfg.receive_maximum,
                                 max_inflight=500, subscriptions=subs)
        self.senders = Senders(self.outbox, self.owned, client=self.client, webhooks=cfg.alerts.webhooks,
                               clock=self.clock)
        if cfg.metrics is not None:
            self.metrics_port = metrics.serve(self, cfg.metrics.host, cfg.metrics.port)
            log.info("metrics", url=f"http://{cfg.metrics.host}:{self.metrics_port}/metrics")
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self.client.run())
                tg.create_task(self._consume())
                tg.create_task(self._rounds())
                tg.create_task(self._readers())
                tg.create_task(self._snapshot_writer())
                if cfg.alerts.publish:
                    tg.create_task(self.senders.alert_topic())
                tg.create_task(self.senders.webhook_pages())
                if self.latest is not None:
                    tg.create_task(self.latest.flusher())
                tg.create_task(_gc_keeper())
        finally:
            await self._stop()

    # -- the consume loop -------------------------------------------------------------------------
    async def _consume(self) -> None:
        client = self.client
        assert client is not None
        await self.registered.wait()
        judge = self.judge
        tick_s = self.cfg.alerts.tick_s
        next_tick = time.monotonic() + tick_s
        while True:
            msgs: list[Message] = []
            try:
                async with asyncio.timeout(min(IDLE_S, max(0.0, next_tick - time.monotonic()))):
                    msgs = await client.receive(self.cfg.batch_max)
            except TimeoutError:
                pass
            if msgs and len(msgs) < self.cfg.batch_max and self.cfg.batch_delay_s:
                # a batch, not a commit and a wake-up per message: what came meanwhile joins it
                await asyncio.sleep(self.cfg.batch_delay_s)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0):  # only what is waiting already
                        msgs += await client.receive(self.cfg.batch_max - len(msgs))
            now = int(self.clock() * 1000)
            for m in msgs:
                judge.receive(m.topic, m.payload, now)
            if time.monotonic() >= next_tick:
                judge.tick(now)
                next_tick = time.monotonic() + tick_s
            await self._commit()
            client.ack_many(msgs)  # committed (or nothing to commit): in arrival order, one write
            self.stats.acked += len(msgs)
            self.stats.batches += 1
            if self._lost or self._handover or self._gained:
                await self._ownership()
            await self._snapshots()

    async def _commit(self) -> None:
        """What judging left pending into the store (retried while the store is away: the batch
        is not acknowledged meanwhile)."""
        pending = self._inflight or self.judge.take()
        if not pending:
            return
        self._inflight = pending
        epochs = self.judge.epochs()
        delay = 0.5
        while True:
            t0 = time.perf_counter_ns()
            try:
                out = await asyncio.to_thread(self.recorder.commit, pending, epochs, int(self.clock() * 1000))
                break
            except DatabaseUnavailable as exc:  # locked, disk, server gone: keep trying
                self.stats.store_retries += 1
                if self.stats.store_retries == 1 or delay >= RETRY_MAX_S:
                    log.warning("alert store unavailable; holding the batch", error=str(exc)[:300])
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)
            finally:
                self.stats.commit_ns += time.perf_counter_ns() - t0
        self._inflight = None
        self.stats.transitions += out.recorded
        self.stats.pages += len(out.pages)
        self.stats.results += out.results
        for t in out.pages:
            log.info("alert", key=t.key, state=t.state, severity=t.severity, value=t.value)
        for p, row in out.judged.items():
            self._upto[p] = max(self._upto.get(p, 0), row)
        if out.lost:
            self._lose(out.lost)
        if out.recorded and self.senders is not None:
            self.senders.wake()

    def _lose(self, parts: set[int]) -> None:
        for p in parts:
            if self.judge.drop(p) is not None:
                self.stats.lost += 1
                log.warning("partition lost: another member holds it now", partition=p)

    async def _ownership(self) -> None:
        """Between batches: drop what is lost, hand over what belongs to another member, take over
        what was acquired."""
        lost, self._lost = self._lost, set()
        self._lose(lost)
        if time.monotonic() < self._ownership_retry_at:
            return  # the store was away at the last try
        handover, self._handover = self._handover, set()
        gained: dict[int, int] = {}
        try:
            for p in sorted(handover):
                await self._give_up(p)
                handover.discard(p)
            # taken from _gained only now, with no await before _taking holds them: the lease
            # rounds renew _gained | _taking, and a handover waiting on a slow store must not let
            # the new partitions' leases expire (re-acquired at the next epoch, the first takeover
            # would empty their standby and be refused: what arrived since the snapshot unjudged)
            gained, self._gained = self._gained, {}
            if gained:
                self._taking = gained
                try:
                    await self._take_over(gained)
                finally:
                    self._taking = {}
                gained = {}
        except DatabaseUnavailable as exc:
            # The store away between a lease round and this (a PostgreSQL restart while partitions
            # move): the alerter exited here, taking every partition's judging down with it. What
            # was not done is tried again after a pause; the leases stay renewed by the rounds
            # (or, expired meanwhile, are found lost there), and the partitions' messages wait in
            # standby for the takeover.
            self._handover |= handover
            self._gained = {**gained, **self._gained}
            # never longer than a lease round: the standby keeps standby_s of messages, and a
            # takeover replays from a snapshot up to a round old
            self._ownership_delay = min(self._ownership_delay * 2, self.cfg.partitions.renew_s)
            self._ownership_retry_at = time.monotonic() + self._ownership_delay
            log.warning("alert store unavailable while partitions move; retrying",
                        retry_s=self._ownership_delay, taking=sorted(self._gained),
                        handing_over=sorted(self._handover), error=str(exc)[:200])
            return
        self._ownership_delay = OWNERSHIP_RETRY_S / 2

    def _take_snapshot(self, p: int) -> Snapshot | None:
        """Between commits: everything the snapshot reflects is in the store already."""
        part = self.judge.parts.get(p)
        if part is None:
            return None
        now = int(self.clock() * 1000)
        blob, recent = self.judge.snapshot(p, now)
        return Snapshot(p, part.epoch, blob, recent, now, self._upto.get(p, 0))

    async def _give_up(self, p: int) -> None:
        snap = self._take_snapshot(p)
        if snap is None:
            return
        if self.latest is not None:
            await self.latest.flush()
        await self._snapshots_out.join()  # the older ones first
        ok = await asyncio.to_thread(self.recorder.save_snapshot, snap)
        self.judge.drop(p)
        if ok:  # free for its member at once (its next round takes it)
            with contextlib.suppress(DatabaseUnavailable):  # else its lease expires: taken then
                await asyncio.to_thread(self.leases.release, self.owner, p, snap.epoch)
            self.stats.snapshots += 1
            log.info("partition handed over", partition=p)

    async def _take_over(self, gained: dict[int, int]) -> None:
        t0 = time.monotonic()
        parts = sorted(gained)
        part_of = self.judge.part_of

        def load() -> tuple[dict[int, PartState], list[dict[str, Any]], list[Any]]:
            states = self.leases.load_states(parts)
            open_alerts = self.store.query(open_only=True, limit=10_000_000).rows
            places = []
            want = set(parts)
            if self.latest is not None:
                places = self.store.latest.load(lambda st: part_of(st) in want)
            else:  # nobody keeps these stations' rows now: their rooms' 24 h is not to be trusted
                self.store.latest.not_kept(lambda st: part_of(st) in want)
            return states, open_alerts, places

        states, open_alerts, places = await asyncio.to_thread(load)
        if self.latest is not None:
            self.latest.adopt(places)
        now = int(self.clock() * 1000)
        for p in parts:
            self._upto[p] = states[p].upto
            self.judge.gain(p, gained[p], states[p], open_alerts, now)
        await self._commit()
        # a snapshot at once: the next taker then needs only what comes after it
        for p in parts:
            await self._snapshot(p)
        self.stats.takeover_ms = int((time.monotonic() - t0) * 1000)
        log.info("partitions taken over", partitions=parts, ms=self.stats.takeover_ms,
                 replayed=self.judge.stats.replayed, caught_up=self.judge.stats.caught_up)

    async def _snapshot(self, p: int) -> None:
        snap = self._take_snapshot(p)
        if snap is not None:
            self._snapshots_out.put_nowait(snap)

    async def _snapshot_writer(self) -> None:
        """Write the snapshots taken, in order; a partition lost meanwhile writes nothing."""
        while True:
            snap = await self._snapshots_out.get()
            try:
                ok = await asyncio.to_thread(self.recorder.save_snapshot, snap)
            except DatabaseUnavailable as exc:  # the next one (snapshot_s later) carries it
                log.warning("could not write a partition snapshot; retrying later", partition=snap.part,
                            error=str(exc)[:200])
                ok = True
            finally:
                self._snapshots_out.task_done()
            if ok:
                self.stats.snapshots += 1
            else:
                self._lost.add(snap.part)

    async def _snapshots(self) -> None:
        for p in self.judge.snapshots_due(self.cfg.alerts.snapshot_s, SNAPSHOTS_PER_ROUND):
            await self._snapshot(p)

    # -- lease rounds -----------------------------------------------------------------------------
    async def _rounds(self) -> None:
        """Every ``renew_s``: this member's row and leases renewed; partitions taken or handed over
        so that each member alive holds its share (``assign``)."""
        client = self.client
        assert client is not None
        parts = self.cfg.partitions
        await client.up.wait()  # subscribed from now on: the standby fills before any partition moves
        started = int(self.clock() * 1000)
        waited = 0.0
        while True:
            other = await asyncio.to_thread(self.leases.heartbeat, self.member, self.instance, started)
            if other is None:
                break
            if waited == 0:
                log.warning("another run of this member still holds its row; waiting for it to expire",
                            member=self.member, instance=other, lease_s=parts.lease_s)
            if waited > 2 * parts.lease_s:
                raise CannotOpen("alerter member", self.member, "another alerter runs with this member name "
                                 f"(instance {other})", "member")
            await asyncio.sleep(parts.renew_s)
            waited += parts.renew_s
        if self.sqlite:  # one member: every partition at once, no wait for a previous run's leases
            self._gained.update(await asyncio.to_thread(self.leases.take_all, self.owner))
        self.registered.set()
        log.info("member registered", member=self.member, instance=self.instance)
        free_rounds: dict[int, int] = {}
        while True:
            try:
                await self._round(started, free_rounds)
                self.stats.rounds += 1
            except (DatabaseUnavailable, InvalidInput) as exc:  # the store away (or a race refused a row):
                # the next round tries again
                self.stats.round_errors += 1
                if self.stats.round_errors == 1 or self.stats.round_errors % 20 == 0:
                    log.warning("lease round failed; retrying", error=str(exc)[:200])
            await asyncio.sleep(parts.renew_s)

    async def _round(self, started: int, free_rounds: dict[int, int]) -> None:
        await asyncio.to_thread(self.leases.heartbeat, self.member, self.instance, started)
        held = self.judge.epochs() | self._taking | self._gained
        lost = await asyncio.to_thread(self.leases.renew, self.owner, held)
        if lost:
            self._lost |= lost
            for p in lost:
                self._gained.pop(p, None)
        view = await asyncio.to_thread(self.leases.view)
        mine = set(self.judge.parts) | set(self._gained) | set(self._taking)
        moves = plan(view, self.member, mine, self.count, free_rounds, settled=self.stats.rounds > 0)
        self._handover.update(moves.handover)
        for p in moves.acquire:
            epoch = await asyncio.to_thread(self.leases.acquire, self.owner, p)
            if epoch is not None:
                self._gained[p] = epoch

    # -- store readers ------------------------------------------------------------------------------
    async def _readers(self) -> None:
        """Silences re-read, open alerts' last seen written, critical alerts re-notified."""
        a = self.cfg.alerts
        last_sil = last_seen = time.monotonic()
        while True:
            await asyncio.sleep(min(a.silences_s, a.seen_s, 1.0))
            mono = time.monotonic()
            now = int(self.clock() * 1000)
            try:
                if mono - last_sil >= a.silences_s:
                    last_sil = mono
                    self.judge.set_silences(await asyncio.to_thread(self.store.active_silences, now))
                if mono - last_seen >= a.seen_s:
                    last_seen = mono
                    seen = self.judge.seen()
                    if seen:
                        await asyncio.to_thread(self.store.touch, seen)
                    await self._renotify(now)
            except DatabaseUnavailable as exc:  # the next round carries them
                log.warning("could not read or write the alert store; retrying later", error=str(exc)[:200])

    async def _renotify(self, now: int) -> None:
        every = self.cfg.alerts.renotify_critical_h
        if every is None or not self.cfg.alerts.webhooks:
            return
        def part_of(r: dict[str, Any]) -> int:
            return self.judge.part_of(r["station"] or r["gateway"] or "")

        due = await asyncio.to_thread(self.recorder.renotify, self.judge.epochs(), part_of, now,
                                      every * 3_600_000)
        for t in due:
            log.info("alert re-notified", key=t.key, severity=t.severity)
        if due:
            self.stats.renotified += len(due)
            assert self.senders is not None
            self.senders.wake()

    # -- stop -------------------------------------------------------------------------------------
    async def _stop(self) -> None:
        """Hand every partition over: commit what is judged, write each snapshot, release the leases,
        remove the member row. Best effort: whatever fails here, the leases expire anyway."""
        try:
            if self.registered.is_set():
                if self._inflight is not None or self.judge.pending:
                    await self._commit_once()
                if self.latest is not None:  # before the leases go: a taker loads whole rows
                    await self.latest.close()
                for p in sorted(self.judge.parts):  # written here, after any still queued: these are newer
                    snap = self._take_snapshot(p)
                    if snap is not None and await asyncio.to_thread(self.recorder.save_snapshot, snap):
                        await asyncio.to_thread(self.leases.release, self.owner, p, snap.epoch)
                await asyncio.to_thread(self.leases.leave, self.member, self.instance)
                log.info("member left; partitions released", member=self.member)
        except Exception as exc:  # the leases expire on their own
            log.warning("could not hand the partitions over cleanly; they move when their leases expire",
                        error=str(exc)[:300])
        finally:
            self.store.close()

    async def _commit_once(self) -> None:
        pending = self._inflight or self.judge.take()
        epochs = self.judge.epochs()
        out = await asyncio.to_thread(self.recorder.commit, pending, epochs, int(self.clock() * 1000))
        for p, row in out.judged.items():
            self._upto[p] = max(self._upto.get(p, 0), row)
        self._inflight = None


async def _gc_keeper(first_s: float = 5.0, every_s: float = 300.0, full_every_s: float = 3600.0) -> None:
    """Keep the rule engines' long-lived state out of the garbage collector's full collections.

    The engines hold ~100,000 sensor objects for 5,000 stations (370,000 tracked objects; one full
    collection of them takes ~240 ms here); messages in flight for a second or two get promoted to
    the oldest generation, so full collections keep coming and each walked the whole state (7 a
    minute, 10 % of the CPU, measured in the collector that ran the rules). So whatever has lived
    this long is frozen (``gc.freeze``), first a few seconds after start and then at growing
    intervals up to ``every_s``; once every ``full_every_s`` everything is unfrozen and collected,
    so cyclic garbage among frozen objects is still found, an hour late at most."""
    wait, since_full = first_s, 0.0
    while True:
        await asyncio.sleep(wait)
        since_full += wait
        if since_full >= full_every_s:
            gc.unfreeze()
            since_full = 0.0
        gc.collect()
        gc.freeze()
        wait = min(wait * 2, every_s)

