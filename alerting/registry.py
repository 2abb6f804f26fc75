"""The site registry: who may use the API (tokens), what was done by whom (the audit trail), and
the asset register (stations, buildings, households, heated areas; ``alerting/assets.py`` parses
the company's CSV).

Stage: api → authenticate (``principal``), manage credentials, import assets, search households,
read the audit trail; the command line → ``heatwatch token``; report → ``register``. The alert
store and the command store write their audit entries through ``write_audit`` in their own
transactions (an acknowledgement and its audit entry commit together).

The same database and Alembic chain as the alert store (``alerting.database``); errors leave as
the contract's, naming the site registry.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import secrets
from dataclasses import asdict
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from alerting import address, schema
from alerting.assets import Assets
from alerting.database import OnDatabase, columns
from alerting.rows import (
    ROLES,
    AuditEntry,
    BuildingRow,
    FoundHousehold,
    HouseholdRow,
    ImportCounts,
    Principal,
    Register,
    StationRow,
    TokenRow,
)
from contract.errors import Conflict, InvalidInput

_TOKEN = columns(schema.api_tokens, TokenRow)
_AUDIT = columns(schema.audit, AuditEntry)
_HOUSEHOLD = columns(schema.households, HouseholdRow)


def _sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def write_audit(conn: Connection, now: int, actor: str, action: str, target: str,
                detail: dict[str, Any]) -> None:
    """One entry of the audit trail, in the caller's transaction."""
    conn.execute(schema.audit.insert().values(at=now, actor=actor, action=action, target=target[:300],
                                              detail=detail))


@functools.cache
def _find_stmt(sqlite: bool, n_long: int, n_short: int) -> sa.Select[Any]:
    """Address search with ``n_long`` words of 3+ characters (bound as ``l0``…) and ``n_short``
    shorter ones (``s0``…), each a LIKE pattern."""
    h, b = schema.households, schema.buildings
    longs: list[sa.BindParameter[Any]] = [sa.bindparam(f"l{i}") for i in range(n_long)]
    cond: Any = sa.and_(sa.true(), *[h.c.search.like(sa.bindparam(f"s{i}")) for i in range(n_short)])
    if sqlite and longs:
        # Only words of 3+ characters go to FTS5: SQLite 3.40's trigram LIKE crashed the
        # process (segfault) when a shorter pattern was combined with others. Shorter words
        # filter the few rows the index found.
        fts = sa.table("households_fts", sa.column("rowid"), sa.column("search"))
        sub = sa.select(fts.c.rowid).where(*[fts.c.search.like(p) for p in longs])
        cond = sa.and_(sa.literal_column("households.rowid").in_(sub), cond)
    elif longs:
        # PostgreSQL: the trigram index first, on its own. Given the whole statement, with the
        # anchoring filters beside it, the planner walked every building's households instead
        # (30 ms against 1-2 ms at 100,000 households)
        hits = (sa.select(h.c.code).where(*[h.c.search.like(p) for p in longs])
                .cte("hits").prefix_with("MATERIALIZED"))
        cond = sa.and_(h.c.code.in_(sa.select(hits.c.code)), cond)
    return (sa.select(*_HOUSEHOLD, b.c.address)
            .join(b, sa.and_(b.c.station == h.c.station, b.c.building == h.c.building))
            .where(cond).order_by(h.c.code).limit(sa.bindparam("limit")))


class SiteRegistry(OnDatabase):
    """Tokens, audit and assets. ``SiteRegistry(url)`` opens its own database; ``SiteRegistry(db)``
    shares the API's."""

    WHAT = "site registry"

    # -- credentials (the API's) ---------------------------------------------------------------
    def add_token(self, *, name: str, role: str, actor: str, now: int) -> str:
        """Create a credential; returns the token, which is shown once and stored only hashed
        (SHA-256 of 256 random bits: no salt or slow hash needed for a random secret)."""
        if role not in ROLES:
            raise InvalidInput(f"role must be one of {', '.join(ROLES)}, got {role!r}", "bad_role")
        token = "hw_" + secrets.token_urlsafe(32)
        t = schema.api_tokens
        with self._write() as conn:
            # one live token a name: revoking ends every live token of a name, so a second one
            # could be neither told apart nor revoked alone (both went on working unnoticed)
            live = conn.execute(sa.select(t.c.role, t.c.created_at).where(
                t.c.name == name, t.c.revoked_at.is_(None)).limit(1)).first()
            if live is not None:
                since = dt.datetime.fromtimestamp(live.created_at / 1000, dt.UTC).strftime(
                    "%Y-%m-%d %H:%M UTC")
                raise Conflict(f"{name!r} already has a live token ({live.role}, since {since})")
            conn.execute(t.insert().values(
                name=name, role=role, token_sha256=_sha256(token), created_at=now, created_by=actor))
            write_audit(conn, now, actor, "token.add", name, {"role": role})
        return token

    def principal(self, token: str) -> Principal | None:
        """Whose valid token this is, or None (unknown or revoked)."""
        t = schema.api_tokens
        with self._read() as conn:
            row = conn.execute(sa.select(t.c.name, t.c.role).where(
                t.c.token_sha256 == _sha256(token), t.c.revoked_at.is_(None))).first()
        return Principal(row.name, row.role) if row is not None else None

    def list_tokens(self) -> list[TokenRow]:
        """Every credential (never its hash), newest first; revoked ones carry ``revoked_at``."""
        with self._read() as conn:
            return [TokenRow(*r) for r in conn.execute(
                sa.select(*_TOKEN).order_by(schema.api_tokens.c.id.desc()))]

    def revoke_tokens(self, *, name: str, actor: str, now: int) -> int:
        """Revoke every live token of ``name``; how many (0: nothing changed, nothing audited)."""
        t = schema.api_tokens
        with self._write() as conn:
            n = conn.execute(t.update().where(t.c.name == name, t.c.revoked_at.is_(None))
                             .values(revoked_at=now)).rowcount
            if n:
                write_audit(conn, now, actor, "token.revoke", name, {"revoked": n})
        return int(n)

    # -- the audit trail ------------------------------------------------------------------------
    def audit_log(self, limit: int = 100, offset: int = 0, actor: str | None = None) -> list[AuditEntry]:
        """Who did what when, newest first; optionally one actor's entries only."""
        au = schema.audit
        q = sa.select(*_AUDIT).order_by(au.c.id.desc()).limit(limit).offset(offset)
        if actor is not None:
            q = q.where(au.c.actor == actor)
        with self._read() as conn:
            return [AuditEntry(*r) for r in conn.execute(q)]

    # -- assets ---------------------------------------------------------------------------------
    def _upsert(self, conn: Connection, table: sa.Table, rows: list[dict[str, Any]],
                keys: list[str]) -> None:
        if not rows:
            return
        if self.engine.dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as pg_insert
            ins: Any = pg_insert(table)
        else:
            from sqlalchemy.dialects.sqlite import insert as sqlite_insert
            ins = sqlite_insert(table)
        cols = [c for c in rows[0] if c not in keys]
        stmt = ins.on_conflict_do_update(index_elements=keys,
                                         set_={c: getattr(ins.excluded, c) for c in cols})
        for i in range(0, len(rows), 2000):
            conn.execute(stmt, rows[i:i + 2000])

    def import_assets(self, assets: Assets, *, actor: str, now: int) -> ImportCounts:
        """Insert or update every station, building and household in one transaction."""
        h = schema.households
        with self._write() as conn:
            known = {r.code for r in conn.execute(sa.select(h.c.code))}
            self._upsert(conn, schema.stations, list(assets.stations.values()), ["station"])
            self._upsert(conn, schema.buildings, list(assets.buildings.values()), ["station", "building"])
            self._upsert(conn, h, list(assets.households.values()), ["code"])
            if self.db.sqlite:  # the search index follows its content table
                conn.execute(sa.text("INSERT INTO households_fts(households_fts) VALUES ('rebuild')"))
            counts = ImportCounts(stations=len(assets.stations), buildings=len(assets.buildings),
                                  households=len(assets.households),
                                  households_new=sum(1 for c in assets.households if c not in known))
            write_audit(conn, now, actor, "assets.import", "assets", asdict(counts))
        return counts

    def find_households(self, text: str, limit: int = 20) -> list[FoundHousehold]:
        """Households whose address, unit, room or code contain every word of ``text``, both in
        the one normal form of ``alerting.address`` (spaces, full-width characters, 栋/幢/号楼/楼,
        单元, 室/号 and punctuation typed any way): a word with digits or letters at the start of
        one of theirs (``3号楼`` is not ``13号楼``), a Chinese word anywhere.

        Words are matched through a trigram index (FTS5 on SQLite, pg_trgm on PostgreSQL); the
        normal form has no LIKE wildcards, so a word only ever matches itself.
        """
        ws = address.words(text)[:8]
        if not ws:
            return []
        if self.db.sqlite:  # FTS5's trigrams are the text's characters, its spaces too
            long = [p for p in map(address.like_pattern, ws) if len(p) >= 5]  # 3+ between the %
            short = [p for p in map(address.like_pattern, ws) if len(p) < 5]
        else:
            # pg_trgm pads each word with spaces: an anchored " 301" brings in the trigram "  3"
            # that nearly every row has, and the GIN scan walked it (25-35 ms against 1-2 ms at
            # 100,000 households): the index takes the word alone, a filter its anchoring
            long = [f"%{w}%" for w in ws if len(w) >= 3]
            short = [address.like_pattern(w) for w in ws if len(w) < 3 or w[0].isascii()]
        stmt = _find_stmt(self.db.sqlite, len(long), len(short))
        params: dict[str, Any] = {f"l{i}": p for i, p in enumerate(long)}
        params.update({f"s{i}": p for i, p in enumerate(short)})
        with self._read() as conn:
            return [FoundHousehold(*r) for r in conn.execute(stmt, {**params, "limit": limit})]

    def suggest_households(self, text: str, limit: int = 5) -> list[FoundHousehold]:
        """The households closest to an address that ``find_households`` found nothing for (a
        typo in the name, a unit or room the register does not have): the buildings whose
        address comes closest (``alerting.address.closeness``, at least half the typed name or
        the name's best match), then in each their households with the typed room, unit and
        numbers first. At most ``limit``; none when nothing comes close.

        Cost: every building's address once, each distinct name scored once, and the
        households of at most three buildings: 5-7 ms on SQLite, 7-12 ms on PostgreSQL for
        100,000 households in 2,000 buildings (bench/address_search_bench.py, docs/api.md)."""
        t = address.typed(text)
        if not t.text and t.building is None:
            return []
        b, h = schema.buildings, schema.households
        with self._read() as conn:
            scored = sorted((-address.closeness(t, a), st, bl) for st, bl, a in conn.execute(
                sa.select(b.c.station, b.c.building, b.c.address)))
            best = -scored[0][0] if scored else 0.0
            if best < 0.5:
                return []
            top = [(st, bl) for score, st, bl in scored[:3] if -score >= max(0.5, best - 0.5)]
            stmt: Any = (sa.select(*_HOUSEHOLD, b.c.address)
                         .join(b, sa.and_(b.c.station == h.c.station, b.c.building == h.c.building))
                         # one (station, building) pair each: a row-value IN scanned every household
                         .where(sa.or_(*[sa.and_(h.c.station == st, h.c.building == bl) for st, bl in top])))
            rows = [FoundHousehold(*r) for r in conn.execute(stmt)]
        rank = {key: i for i, key in enumerate(top)}

        def order(r: FoundHousehold) -> tuple[int, int, int, str]:
            room = address.normalise(r.room)
            unit = address.normalise(r.unit).removesuffix("单元")
            return (-(room in t.numbers) - (t.unit is not None and unit == t.unit),
                    rank[(r.station, r.building)], -sum(n in room for n in t.numbers), r.code)

        return sorted(rows, key=order)[:limit]

    def building_addresses(self, station: str) -> dict[str, str]:
        b = schema.buildings
        with self._read() as conn:
            return {r.building: r.address for r in conn.execute(
                sa.select(b.c.building, b.c.address).where(b.c.station == station))}

    def register(self) -> Register:
        """The whole asset register (the takeover report's names, addresses, areas and sensors)."""
        with self._read() as conn:
            return Register(
                [StationRow(*r) for r in conn.execute(sa.select(*columns(schema.stations, StationRow)))],
                [BuildingRow(*r) for r in conn.execute(sa.select(*columns(schema.buildings, BuildingRow)))],
                [HouseholdRow(*r) for r in conn.execute(sa.select(*_HOUSEHOLD))])
