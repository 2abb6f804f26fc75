"""The site's database (SQLite WAL embedded, or PostgreSQL), shared by the alert store
(``alerting.store``), the site registry (``alerting.registry``), the command store
(``alerting.commands``) and the ``latest`` table (``alerting.latest``): one engine, one Alembic
chain (``alerting/migrations``), one mapping of database errors into the contract's tree.

Every read and write of those modules goes through ``connected()``, which is where SQLAlchemy's
exceptions stop (STYLE.md example 8):

    OperationalError, InterfaceError, pool TimeoutError   →  DatabaseUnavailable (transient: 503)
    IntegrityError: a unique key taken                    →  Conflict (409)
    IntegrityError: a reference to nothing                →  UnknownReference (422)
    IntegrityError (other), DataError                     →  InvalidInput (422)

Anything else (a ProgrammingError: our SQL is wrong) stays what it is: a defect, a 500.

URLs: ``sqlite:////var/lib/heatwatch/alerts.sqlite`` or
``postgresql+psycopg://user:pass@host/heatwatch``. Calls are synchronous; async callers wrap
them in one ``asyncio.to_thread``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import fields
from pathlib import Path
from typing import Any, Self

import orjson
import sqlalchemy as sa
from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.util import exc as alembic_exc
from sqlalchemy.engine import Connection, Engine

from contract.errors import CannotOpen, Conflict, DatabaseUnavailable, InvalidInput, UnknownReference
from durable.queue import why_unopenable

_MIGRATIONS = Path(__file__).parent / "migrations"
# the driver's word for "the server is not there or the connection is gone": retry, don't blame
# the request
_UNAVAILABLE = (sa.exc.OperationalError, sa.exc.InterfaceError, sa.exc.TimeoutError,
                sa.exc.DisconnectionError)



def columns(table: sa.Table, row_type: type) -> list[sa.Column[Any]]:
    """The columns of ``table`` named by ``row_type``'s fields, in their order: a select of these
    builds the row positionally (``row_type(*row)``; alerting/rows.py)."""
    return [table.c[f.name] for f in fields(row_type)]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def _integrity(what: str, exc: sa.exc.IntegrityError) -> InvalidInput:
    """Which constraint refused the row: SQLite names it in ``sqlite_errorname`` (Python 3.11+),
    psycopg in the SQLSTATE."""
    orig = exc.orig
    code = getattr(orig, "sqlstate", None) or getattr(orig, "sqlite_errorname", None) or ""
    why = _first_line(orig if orig is not None else exc)
    if code in ("23505", "SQLITE_CONSTRAINT_UNIQUE", "SQLITE_CONSTRAINT_PRIMARYKEY"):
        return Conflict(f"{what}: already stored ({why})", "duplicate")
    if code in ("23503", "SQLITE_CONSTRAINT_FOREIGNKEY"):
        return UnknownReference(f"{what}: refers to something not stored ({why})", "unknown_reference")
    return InvalidInput(f"{what} refused the values ({why})", "refused_by_store")


@contextmanager
def translated(what: str, engine: Engine) -> Iterator[None]:
    """Map SQLAlchemy's exceptions raised inside into the contract's tree. ``what`` names the
    part ("alert store"); an outage's message ends with the database's URL, password hidden."""
    try:
        yield
    except _UNAVAILABLE as exc:
        orig = getattr(exc, "orig", None) or exc
        raise DatabaseUnavailable(f"{_first_line(orig)} ({shown(engine)})", store=what) from exc
    except sa.exc.DBAPIError as exc:
        orig = exc.orig if exc.orig is not None else exc
        if exc.connection_invalidated:  # whatever the driver called it: the connection is gone
            raise DatabaseUnavailable(f"{_first_line(orig)} ({shown(engine)})", store=what) from exc
        if isinstance(exc, sa.exc.IntegrityError):
            raise _integrity(what, exc) from exc
        if isinstance(exc, sa.exc.DataError):  # a value the column cannot hold (PostgreSQL: a NUL)
            raise InvalidInput(f"{what} cannot store a value: {_first_line(orig)}", "bad_value") from exc
        raise


MIGRATE_LOCK = 0x68656174  # "heat": the advisory lock schema changes take on PostgreSQL


def serialise(conn: Connection) -> None:
    """Inside a transaction: wait for any other process changing the schema (PostgreSQL; SQLite
    serialises writers anyway). Released at the transaction's end."""
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": MIGRATE_LOCK})


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=FULL")  # a PUBACK follows the commit: it must be on disk
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.close()


class Database:
    """The engine of one site database, its migrations and its error mapping."""

    def __init__(self, url: str, *, setting: str = "store") -> None:
        """``setting``: where the URL is set in the process's config file, for CannotOpen."""
        self.url, self.setting = url, setting
        try:
            # a pre-ping finds PostgreSQL connections a restart or a firewall dropped; a SQLite file
            # has no such thing and the ping would cost a round through the pool on every checkout
            self.engine: Engine = sa.create_engine(
                url, future=True, pool_pre_ping=not url.startswith("sqlite"),
                json_serializer=lambda v: orjson.dumps(v).decode(), json_deserializer=orjson.loads)
        except (sa.exc.ArgumentError, sa.exc.NoSuchModuleError, ImportError) as exc:
            raise CannotOpen("alert store", self._shown(), f"not a store URL heatwatch can use ({exc})",
                             setting) from None
        if self.engine.dialect.name == "sqlite":
            sa.event.listen(self.engine, "connect", _sqlite_pragmas)
        self.shown = self._shown()

    def _shown(self) -> str:
        try:
            return sa.engine.make_url(self.url).render_as_string(hide_password=True)
        except sa.exc.ArgumentError:
            return self.url.partition("://")[0] + "://…"

    @property
    def sqlite(self) -> bool:
        return self.engine.dialect.name == "sqlite"

    def open(self) -> Database:
        """Connect and bring the schema up to date, at a process's start. Whatever stops that
        raises CannotOpen: one line naming the URL, the cause and the setting, not a traceback."""
        try:
            self.migrate()
        except (sa.exc.SQLAlchemyError, OSError, alembic_exc.CommandError) as exc:
            self.engine.dispose()
            orig = getattr(exc, "orig", None) or exc
            if self.sqlite and self.engine.url.database:
                reason = why_unopenable(Path(self.engine.url.database), orig)
            elif isinstance(exc, alembic_exc.CommandError):
                reason = f"its schema is from another heatwatch version ({exc})"
            else:
                reason = f"unable to open ({_first_line(orig)})"
            raise CannotOpen("alert store", self.shown, reason, self.setting) from None
        return self

    def migrate(self) -> None:
        """Bring the schema to the newest migration (idempotent). Processes starting together on
        one PostgreSQL store (alerter members, API workers) take turns: the first migrates, the
        others find it done (without the lock two CREATE TABLEs raced: a unique violation)."""
        cfg = AlembicConfig()
        cfg.set_main_option("script_location", str(_MIGRATIONS))
        with self.engine.begin() as conn:
            serialise(conn)
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")

    def ping(self) -> None:
        """DatabaseUnavailable unless the database answers a query."""
        with connected(self.engine, "alert store") as conn:
            conn.execute(sa.text("SELECT 1"))

    def close(self) -> None:
        self.engine.dispose()


def shown(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=True)


@contextmanager
def connected(engine: Engine, what: str, *, write: bool = False) -> Iterator[Connection]:
    """A connection (``write``: in a transaction committed at the end), with the database's
    errors mapped (``translated``)."""
    with translated(what, engine), (engine.begin() if write else engine.connect()) as conn:
        yield conn


class OnDatabase:
    """A part of the site's data on a ``Database``: its own (from a URL) or one shared with the
    other parts of the same process (the API opens one and hands it to each)."""

    WHAT = "site database"  # how errors and 503 answers name this part

    def __init__(self, db: str | Database, *, setting: str = "store") -> None:
        self.db = Database(db, setting=setting) if isinstance(db, str) else db
        self.engine = self.db.engine

    def open(self) -> Self:
        """Migrate at a process's start (CannotOpen when that fails); returns itself."""
        self.db.open()
        return self

    def migrate(self) -> None:
        self.db.migrate()

    def close(self) -> None:
        self.db.close()

    def _read(self) -> AbstractContextManager[Connection]:
        return connected(self.engine, self.WHAT)

    def _write(self) -> AbstractContextManager[Connection]:
        return connected(self.engine, self.WHAT, write=True)
