"""InfluxDB's data lifecycle and users, set up by heatwatch itself (idempotent).

    setup()     database; raw retention (default RP, ``raw_days``); rollup_5m and rollup_1h
                retention policies; the rollups' continuous queries (contract.influx.rollup_cqs:
                one for the 5-minute rollup, two for the hourly one — every point's aggregates and
                the plausible room means, in the rule file's range); users with their grants; a
                backfill of the rollups over the raw data already there when a CQ is new
    backfill()  recompute the rollups of a span by hand (what the CQs compute for new buckets)

Run by ``heatwatch influx setup`` (as an InfluxDB admin where authentication is on) and, when the
config asks (``influx.lifecycle.setup_at_start``), by the collector at start (without the
backfill: that one is for the operator to start, it can keep InfluxDB busy for hours).

Continuous queries only ever run on buckets that close while InfluxDB runs: data written before
a CQ existed, or arriving after its ``RESAMPLE FOR`` window (a gateway's outbox emptying after a
day offline), is rolled up only by a backfill — which runs the CQ's own SELECT with a time range.
Setup backfills the whole raw history when it creates (or replaces) a CQ; ``heatwatch influx
backfill --hours N`` covers a late span.

Credentials travel as HTTP Basic auth, not as ``u=``/``p=`` in the URL, where InfluxDB's HTTP
log would record them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx
import structlog

from contract.alerts import AlertRules, load_rules
from contract.config import InfluxSettings, LifecycleSettings
from contract.errors import DatabaseUnavailable, HeatwatchError
from contract.influx import (
    DEFAULT_PLAUSIBLE,
    ROLLUP_1H,
    ROLLUP_5M,
    ROLLUP_MEASUREMENTS,
    ROLLUPS,
    Rollup,
    backfill_select,
    rollup_cqs,
    rollup_selects,
    rooms_cq_range,
)

log = structlog.get_logger("heatwatch.collector.lifecycle")

Privilege = Literal["READ", "WRITE", "ALL"]
# backfill in chunks: one SELECT INTO holds its whole result in memory before writing it
_CHUNK_S = {ROLLUP_5M.name: 86_400, ROLLUP_1H.name: 7 * 86_400}


class SetupError(HeatwatchError):
    """InfluxDB refused a setup statement (not an admin, a bad name): not retried."""


@dataclass
class User:
    name: str
    password: str
    privilege: Privilege


@dataclass
class SetupReport:
    created: list[str] = field(default_factory=list)  # what this run created or changed
    backfilled: dict[str, int] = field(default_factory=dict)  # rollup → points written


def _q(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _lit(s: str) -> str:
    return "'" + s.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _hours(days: float) -> str:
    return f"{round(days * 24)}h"


def _same_duration(influx: str, days: float) -> bool:
    """InfluxDB shows durations as "2160h0m0s"."""
    return influx.split("h")[0] == str(round(days * 24)) and influx.endswith("h0m0s")


class InfluxAdmin:
    """InfluxQL statements over HTTP as one user (the config's own, or an admin)."""

    def __init__(self, settings: InfluxSettings, username: str | None = None, password: str | None = None,
                 *, http: httpx.AsyncClient | None = None, timeout_s: float = 600) -> None:
        self.s = settings
        self.base = settings.url.rstrip("/")
        if username is None and settings.username:
            username = settings.username
            password = settings.password.get_secret_value() if settings.password else ""
        self.auth = httpx.BasicAuth(username, password or "") if username else None
        # a backfill statement over a day of 5,000 stations takes a while: a long read timeout
        self.http = http or httpx.AsyncClient(timeout=httpx.Timeout(timeout_s, connect=10))

    async def query(self, q: str, *, db: str | None = None, anonymous: bool = False) -> list[dict[str, Any]]:
        """The series of one statement; SetupError when InfluxDB refuses it."""
        data = {"q": q, "epoch": "ms"}
        if db:
            data["db"] = db
        try:
            if anonymous or self.auth is None:
                r = await self.http.post(f"{self.base}/query", data=data)
            else:
                r = await self.http.post(f"{self.base}/query", data=data, auth=self.auth)
        except httpx.HTTPError as exc:
            raise DatabaseUnavailable(f"InfluxDB at {self.s.url}: {type(exc).__name__}: {exc}") from None
        if r.status_code >= 500:
            raise DatabaseUnavailable(f"InfluxDB answered {r.status_code}: {r.text[:200]}")
        try:
            body = r.json()
        except ValueError:
            raise SetupError(f"InfluxDB answered {r.status_code}: {r.text[:200]}") from None
        if "error" in body:
            raise SetupError(f"{q.split(' WITH PASSWORD')[0][:120]}: {body['error']}")
        res = (body.get("results") or [{}])[0]
        if "error" in res:
            raise SetupError(f"{q.split(' WITH PASSWORD')[0][:120]}: {res['error']}")
        series: list[dict[str, Any]] = res.get("series", [])
        return series

    async def close(self) -> None:
        await self.http.aclose()


def _rows(series: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [dict(zip(s["columns"], v, strict=True)) | {"_series": s.get("name")}
            for s in series for v in s.get("values") or []]


async def ensure_admin(admin: InfluxAdmin, name: str, password: str) -> bool:
    """Create the first admin user of an InfluxDB that has authentication on and no user yet
    (the one statement InfluxDB takes without credentials then). True if it was created."""
    try:
        await admin.query("SHOW USERS")
        return False
    except SetupError as exc:
        if "create admin user first" not in str(exc):
            raise
    await admin.query(f"CREATE USER {_q(name)} WITH PASSWORD {_lit(password)} WITH ALL PRIVILEGES",
                      anonymous=True)
    log.info("InfluxDB admin user created", user=name)
    return True


async def ensure_users(admin: InfluxAdmin, database: str, users: list[User]) -> list[str]:
    existing = {r["user"] for r in _rows(await admin.query("SHOW USERS"))}
    done = []
    for u in users:
        if u.name in existing:
            await admin.query(f"SET PASSWORD FOR {_q(u.name)} = {_lit(u.password)}")
        else:
            await admin.query(f"CREATE USER {_q(u.name)} WITH PASSWORD {_lit(u.password)}")
            done.append(f"user {u.name}")
        # exactly the one grant: a user that once had ALL keeps no more than it should now
        await admin.query(f"REVOKE ALL PRIVILEGES ON {_q(database)} FROM {_q(u.name)}")
        await admin.query(f"GRANT {u.privilege} ON {_q(database)} TO {_q(u.name)}")
    return done


async def ensure_retention(admin: InfluxAdmin, database: str, raw_rp: str,
                           lc: LifecycleSettings) -> list[str]:
    rps = {r["name"]: r for r in _rows(await admin.query(f"SHOW RETENTION POLICIES ON {_q(database)}"))}
    wanted = [(raw_rp, lc.raw_days, True, None),
              (ROLLUP_5M.rp, lc.rollup_5m_days, False, ROLLUP_5M.shard_weeks),
              (ROLLUP_1H.rp, lc.rollup_1h_days, False, ROLLUP_1H.shard_weeks)]
    done = []
    for name, days, default, weeks in wanted:
        have = rps.get(name)
        shard = f" SHARD DURATION {weeks}w" if weeks else ""
        if have is None:
            await admin.query(f"CREATE RETENTION POLICY {_q(name)} ON {_q(database)} DURATION {_hours(days)} "
                              f"REPLICATION 1{shard}{' DEFAULT' if default else ''}")
            done.append(f"retention policy {name} {_hours(days)}")
            continue
        if not _same_duration(have["duration"], days) or (default and not have["default"]):
            # shorter: InfluxDB drops the shards past it at its next retention check (30 min)
            await admin.query(f"ALTER RETENTION POLICY {_q(name)} ON {_q(database)} DURATION {_hours(days)}"
                              f"{' DEFAULT' if default else ''}")
            done.append(f"retention policy {name} {have['duration']} -> {_hours(days)}")
        if weeks and not _same_duration(str(have.get("shardGroupDuration", "")), weeks * 7):
            # applies to the shard groups created from now on; the existing ones stay as they are
            await admin.query(f"ALTER RETENTION POLICY {_q(name)} ON {_q(database)}{shard}")
            done.append(f"retention policy {name} shard duration {have.get('shardGroupDuration')} "
                        f"-> {weeks}w")
    return done


async def _cq_names(admin: InfluxAdmin, database: str) -> set[str]:
    rows = _rows(await admin.query("SHOW CONTINUOUS QUERIES"))
    return {r["name"] for r in rows if r["_series"] == database}


async def ensure_cqs(admin: InfluxAdmin, database: str, raw_rp: str,
                     plausible: tuple[float, float] = DEFAULT_PLAUSIBLE) -> list[Rollup]:
    """The rollups' continuous queries; returns the rollups whose CQs were created now. A rollup's
    CQs are replaced together when any of them is not current (another config, version or
    plausible range), so its rows agree from the backfill on."""
    have = await _cq_names(admin, database)
    new = []
    for r in ROLLUPS:
        cqs = rollup_cqs(database, raw_rp, r, plausible)
        if all(name in have for name, _ in cqs):
            continue
        for old in sorted(have):
            if old.startswith(f"heatwatch_rollup_{r.name}_"):  # left by another config or version
                await admin.query(f"DROP CONTINUOUS QUERY {_q(old)} ON {_q(database)}")
        for _, create in cqs:
            await admin.query(create)
        new.append(r)
    return new


async def live_plausible(admin: InfluxAdmin, database: str) -> tuple[float, float] | None:
    """The plausible room range the 1-hour rollup's rooms CQ uses now (from its name), if any."""
    for name in sorted(await _cq_names(admin, database)):
        got = rooms_cq_range(name)
        if got is not None and got[0] == ROLLUP_1H.name:
            return got[1]
    return None


async def earliest_ms(admin: InfluxAdmin, database: str, raw_rp: str) -> int | None:
    first: list[int] = []
    for m in ROLLUP_MEASUREMENTS:
        rows = _rows(await admin.query(f"SELECT * FROM {_q(database)}.{_q(raw_rp)}.{_q(m)} "
                                       "ORDER BY time ASC LIMIT 1", db=database))
        first += [int(r["time"]) for r in rows]
    return min(first) if first else None


async def backfill(admin: InfluxAdmin, database: str, raw_rp: str, start_ms: int, end_ms: int,
                   rollups: tuple[Rollup, ...] = ROLLUPS,
                   plausible: tuple[float, float] | None = None) -> dict[str, int]:
    """Recompute the rollups of ``[start, end)`` (widened to whole buckets): points written each.

    ``plausible``: the room range of the 1-hour rollup's rooms CQ; None: the one the live CQ
    names (the default range when there is none yet). Safe to repeat: a rollup row is keyed by
    its bucket's time and the series' tags, so running it again overwrites the same rows with the
    same (or, with late data, corrected) values."""
    if plausible is None:
        plausible = await live_plausible(admin, database) or DEFAULT_PLAUSIBLE
    out: dict[str, int] = {}
    for r in rollups:
        b = r.bucket_s * 1000
        t, stop = start_ms // b * b, -(-end_ms // b) * b
        written = 0
        bodies = rollup_selects(database, raw_rp, r, plausible)
        while t < stop:
            nxt = min(stop, t + _CHUNK_S[r.name] * 1000)
            for body in bodies:
                rows = _rows(await admin.query(backfill_select(body, t, nxt), db=database))
                written += sum(int(x.get("written") or 0) for x in rows)
            t = nxt
        out[r.name] = written
        log.info("rollup backfilled", rollup=r.name, start_ms=start_ms, end_ms=end_ms, points=written)
    return out


def plausible_of(rules: str | None) -> tuple[float, float]:
    """The room sensors' plausible range (``sensor.plausible_min``…``plausible_max``) of a rule
    file, for the 1-hour rollup's plausible room means; the rules' defaults without one. The rule
    file is the alerter's: the collector's and ``heatwatch influx setup``'s ``rules:`` names it."""
    r = load_rules(rules) if rules else AlertRules()
    return r.sensor.plausible_min, r.sensor.plausible_max


def raw_rp(settings: InfluxSettings) -> str:
    return settings.retention_policy or "autogen"


async def setup(settings: InfluxSettings, *, admin: tuple[str, str] | None = None,
                users: list[User] | None = None, now_ms: int | None = None,
                backfill_new: bool = True, plausible: tuple[float, float] = DEFAULT_PLAUSIBLE) -> SetupReport:
    """Everything the lifecycle and the users need, created or adjusted; safe to run again.
    ``plausible``: the rule file's room sensor range (sensor.plausible_min, plausible_max) for the
    1-hour rollup's plausible room means."""
    lc = settings.lifecycle or LifecycleSettings()
    db, rp = settings.database, raw_rp(settings)
    conn = InfluxAdmin(settings, *(admin or (None, None)))
    report = SetupReport()
    try:
        if admin is not None and await ensure_admin(conn, *admin):
            report.created.append(f"admin user {admin[0]}")
        await conn.query(f"CREATE DATABASE {_q(db)}")
        report.created += await ensure_retention(conn, db, rp, lc)
        new = await ensure_cqs(conn, db, rp, plausible)
        report.created += [f"continuous query {r.rp}" for r in new]
        if users:
            report.created += await ensure_users(conn, db, users)
        if new and backfill_new:
            first = await earliest_ms(conn, db, rp)
            if first is not None:
                now = now_ms if now_ms is not None else int(time.time() * 1000)
                report.backfilled = await backfill(conn, db, rp, first, now, tuple(new), plausible)
    finally:
        await conn.close()
    return report


async def setup_at_start(settings: InfluxSettings,
                         plausible: tuple[float, float] = DEFAULT_PLAUSIBLE) -> None:
    """The collector's start: set up with its own credentials; never stops ingest over it."""
    if settings.lifecycle is None or not settings.lifecycle.setup_at_start:
        return
    try:
        # no backfill here: over a large raw history it keeps InfluxDB busy for hours (150 days of
        # one station: 161 s) while ingest needs it; `heatwatch influx setup` does it, by hand
        report = await setup(settings, backfill_new=False, plausible=plausible)
    except SetupError as exc:
        log.error("InfluxDB retention and rollups not set up: run `heatwatch influx setup` as an InfluxDB "
                  "admin (docs/operations.md); ingest goes on", error=str(exc))
        return
    except DatabaseUnavailable as exc:
        log.warning("InfluxDB retention and rollups not checked (InfluxDB away); ingest goes on",
                    error=str(exc))
        return
    except Exception:  # a fault here must not take ingest down with it
        log.exception("InfluxDB lifecycle setup failed; ingest goes on")
        return
    if report.created:
        log.info("InfluxDB lifecycle set up", created=report.created)
    if any(c.startswith("continuous query") for c in report.created):
        log.warning("rollups start from now: roll up the raw data already stored with `heatwatch influx "
                    "backfill CONFIG --since …` (or run `heatwatch influx setup`, which does)")
