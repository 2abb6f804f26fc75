"""Operations commands: InfluxDB setup and rollup backfill.

    heatwatch influx setup COLLECTOR_CONFIG [--api-config API_CONFIG]... [--reader NAME=PASSWORD_FILE]...
                           [--admin-user NAME] [--admin-password-file FILE]
    heatwatch influx backfill CONFIG (--hours N | --since ISO_TIME [--until ISO_TIME])

``setup`` is idempotent: the database, raw retention (``influx.lifecycle.raw_days``, default 90
days) as the default retention policy, the 5-minute and 1-hour rollups (retention policies and
continuous queries, backfilled over the raw data already there when a CQ is new), and users:
the collector config's InfluxDB user with WRITE, each API config's with READ, each ``--reader``
(Grafana) with READ. Where InfluxDB has authentication on, it runs as an admin: the password from
``--admin-password-file`` or ``$HEATWATCH_INFLUX_ADMIN_PASSWORD`` (never the command line); on an
InfluxDB without users yet it creates that admin first.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from contract.errors import ConfigError

if TYPE_CHECKING:  # the config models are imported by the commands that run, not by `--help`
    from contract.config import InfluxSettings

ADMIN_PASSWORD_ENV = "HEATWATCH_INFLUX_ADMIN_PASSWORD"


def _secret_file(path: str, what: str) -> str:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(path, [f"{what}: cannot read: {exc.strerror}"]) from None
    secret = text.removesuffix("\n")
    if not secret or "\n" in secret:
        raise ConfigError(path, [f"{what}: must hold the password on one line"])
    return secret


def _influx_of(path: str) -> InfluxSettings:
    from contract.config import InfluxSettings, load_config

    cfg = load_config(path)
    influx = getattr(cfg, "influx", None)
    if not isinstance(influx, InfluxSettings):
        raise ConfigError(path, [f"kind: a collector or api config has influx:, not {cfg.kind}"])
    return influx


def _admin(args: argparse.Namespace) -> tuple[str, str] | None:
    if args.admin_password_file:
        return args.admin_user, _secret_file(args.admin_password_file, "--admin-password-file")
    pw = os.environ.get(ADMIN_PASSWORD_ENV)
    return (args.admin_user, pw) if pw else None


def _setup(args: argparse.Namespace) -> int:
    import asyncio

    from collector.lifecycle import User, plausible_of, setup
    from contract.config import load_api_config, load_collector_config

    cfg = load_collector_config(args.config)
    settings = cfg.influx
    users: list[User] = []

    def user(s: InfluxSettings, where: str, privilege: str) -> None:
        if s.username is None:
            return
        if s.password is None:
            raise ConfigError(where, ["influx.password_file: the user needs a password (password_file or "
                                      "${ENV})"])
        users.append(User(s.username, s.password.get_secret_value(), privilege))  # type: ignore[arg-type]

    user(settings, args.config, "WRITE")
    for a in args.api_config:
        api = load_api_config(a)
        if api.influx.database != settings.database:
            raise ConfigError(a, [f"influx.database: {api.influx.database}, but the collector writes "
                                  f"{settings.database}"])
        user(api.influx, a, "READ")
    for r in args.reader:
        name, sep, file = r.partition("=")
        if not sep or not name or not file:
            raise ConfigError("--reader", [f"{r!r}: give NAME=PASSWORD_FILE"])
        users.append(User(name, _secret_file(file, f"--reader {name}"), "READ"))
    admin = _admin(args)
    if admin is None and users and settings.username:
        print("note: no admin credentials (--admin-password-file or $" + ADMIN_PASSWORD_ENV + "): running as "
              f"{settings.username}, who cannot create users where authentication is on", file=sys.stderr)
    report = asyncio.run(setup(settings, admin=admin, users=users, plausible=plausible_of(cfg.rules)))
    for line in report.created:
        print(f"created: {line}")
    for rollup, n in report.backfilled.items():
        print(f"backfilled: rollup_{rollup}, {n} points")
    if not report.created and not report.backfilled:
        print(f"{settings.url} {settings.database}: already set up")
    return 0


def _when(s: str) -> int:
    t = dt.datetime.fromisoformat(s)
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.UTC)
    return int(t.timestamp() * 1000)


def _backfill(args: argparse.Namespace) -> int:
    import asyncio

    from collector.lifecycle import InfluxAdmin, backfill, raw_rp

    settings = _influx_of(args.config)
    now = int(time.time() * 1000)
    end = _when(args.until) if args.until else now
    start = _when(args.since) if args.since else end - int(args.hours * 3_600_000)
    admin = _admin(args)

    async def run() -> dict[str, int]:
        conn = InfluxAdmin(settings, *(admin or (None, None)))
        try:
            return await backfill(conn, settings.database, raw_rp(settings), start, end)
        finally:
            await conn.close()

    for rollup, n in asyncio.run(run()).items():
        print(f"backfilled: rollup_{rollup}, {n} points")
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("influx", help="InfluxDB: retention, rollups and users (setup), rollup backfill")
    acts = p.add_subparsers(dest="action", required=True)
    a = acts.add_parser("setup", help="database, retention, rollups, users (idempotent)")
    a.add_argument("config", metavar="COLLECTOR_CONFIG")
    a.add_argument("--api-config", action="append", default=[], help="its InfluxDB user gets READ")
    a.add_argument("--reader", action="append", default=[], metavar="NAME=PASSWORD_FILE",
                   help="a read-only user, e.g. Grafana's")
    a.add_argument("--admin-user", default="admin")
    a.add_argument("--admin-password-file", help=f"else ${ADMIN_PASSWORD_ENV}; else the config's own user")
    a.set_defaults(fn=_setup)
    a = acts.add_parser("backfill", help="recompute the rollups of a span (late data, a CQ that missed)")
    a.add_argument("config", metavar="CONFIG")
    span = a.add_mutually_exclusive_group(required=True)
    span.add_argument("--hours", type=float, help="the last N hours")
    span.add_argument("--since", help="ISO time (UTC unless it says otherwise)")
    a.add_argument("--until", help="ISO time; default now")
    a.add_argument("--admin-user", default="admin")
    a.add_argument("--admin-password-file")
    a.set_defaults(fn=_backfill)


# ---------------------------------------------------------------------------------------------
# backup and restore
#
#     heatwatch backup COLLECTOR_CONFIG DIR [--alerter ALERTER_CONFIG] [--influx-rpc HOST:PORT]
#     heatwatch restore COLLECTOR_CONFIG DIR [--alerter ALERTER_CONFIG] [--influx-rpc HOST:PORT] [--force]
#
# DIR gets: the alert store of the alerter config (its alerts, the rule engine's partition
# snapshots, the site register): alerts.sqlite (SQLite's online backup API: a consistent copy
# while the alerter and API write) or alerts.pgdump (pg_dump -Fc); and influx/ (`influxd backup
# -portable` of the collector's database: its retention policies, rollups and raw data).
# Restore puts them back; stop the collector, the alerters and the API first. InfluxDB's backup
# service listens on its RPC bind address (127.0.0.1:8088 by default): it has no authentication,
# keep it on loopback and run these commands on the InfluxDB machine.

def _pg(url: str) -> tuple[str, dict[str, str]]:
    """A SQLAlchemy PostgreSQL URL as a libpq URL without its password, and the environment that
    carries the password (PGPASSWORD: never on the command line, where ps shows it)."""
    from sqlalchemy.engine import make_url

    u = make_url(url)
    env = {**os.environ}
    if u.password:
        env["PGPASSWORD"] = str(u.password)
    plain = u.set(drivername="postgresql", password=None)
    return plain.render_as_string(hide_password=False), env


def _tool(name: str, package: str) -> str:
    import glob
    import shutil

    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
                                                   reverse=True)), None)
    if not found:
        raise ConfigError(name, [f"not installed: apt-get install -y {package}"])
    return found


def _run_tool(cmd: list[str], env: dict[str, str] | None = None) -> None:
    import subprocess

    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        raise RuntimeError(f"{Path(cmd[0]).name} failed ({p.returncode}): {(p.stderr or p.stdout)[-1500:]}")


def _sqlite_path(url: str) -> Path:
    from sqlalchemy.engine import make_url

    db = make_url(url).database
    if not db or db == ":memory:":
        raise ConfigError(url, ["alerts.store: a file-backed SQLite database is needed to back up"])
    return Path(db)


def _sqlite_copy(src: Path, dst: Path) -> None:
    import sqlite3

    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".tmp")
    tmp.unlink(missing_ok=True)
    with sqlite3.connect(f"file:{src}?mode=ro", uri=True) as s, sqlite3.connect(tmp) as d:
        s.backup(d)  # page by page, consistent even while others write (WAL)
    os.replace(tmp, dst)


def _backup(args: argparse.Namespace) -> int:
    import json
    import shutil

    from contract.config import load_alerter_config, load_collector_config

    cfg = load_collector_config(args.config)
    store = load_alerter_config(args.alerter).alerts.store if args.alerter else None
    out = Path(args.dir)
    out.mkdir(parents=True, exist_ok=True)
    done: dict[str, str] = {}
    if store is not None:
        if store.startswith("sqlite"):
            _sqlite_copy(_sqlite_path(store), out / "alerts.sqlite")
            done["alert store"] = "alerts.sqlite"
        else:
            url, env = _pg(store)
            _run_tool([_tool("pg_dump", "postgresql-client"), "--format=custom", "--no-owner",
                       f"--file={out / 'alerts.pgdump'}", url], env)
            done["alert store"] = "alerts.pgdump"
    influx = out / "influx"
    if influx.exists():
        shutil.rmtree(influx)
    _run_tool([_tool("influxd", "influxdb"), "backup", "-portable", "-host", args.influx_rpc,
               "-database", cfg.influx.database, str(influx)])
    done["influxdb"] = f"influx/ ({cfg.influx.database})"
    (out / "manifest.json").write_text(json.dumps({
        "kind": "heatwatch-backup", "taken": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "config": str(Path(args.config).resolve()), "database": cfg.influx.database,
        "alert_store": done.get("alert store"), "parts": done}, indent=2))
    for what, where in done.items():
        print(f"backed up: {what} -> {out / where.split(' ')[0]}")
    return 0


def _restore(args: argparse.Namespace) -> int:
    import asyncio
    import json

    from collector.lifecycle import InfluxAdmin, plausible_of, setup
    from contract.config import load_alerter_config, load_collector_config

    cfg = load_collector_config(args.config)
    alerter = load_alerter_config(args.alerter) if args.alerter else None
    src = Path(args.dir)
    try:
        manifest = json.loads((src / "manifest.json").read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(str(src / "manifest.json"), [f"not a heatwatch backup: {exc}"]) from None
    if manifest.get("kind") != "heatwatch-backup":
        raise ConfigError(str(src / "manifest.json"), ["kind: not a heatwatch backup"])
    db = cfg.influx.database
    admin = _admin(args)

    async def influx_db_exists() -> bool:
        conn = InfluxAdmin(cfg.influx, *(admin or (None, None)))
        try:
            return db in [v[0] for s in await conn.query("SHOW DATABASES") for v in s.get("values") or []]
        finally:
            await conn.close()

    async def drop() -> None:
        conn = InfluxAdmin(cfg.influx, *(admin or (None, None)))
        try:
            await conn.query(f'DROP DATABASE "{db}"')
        finally:
            await conn.close()

    # everything that could refuse is checked before anything is touched
    store = alerter.alerts.store if alerter is not None and manifest.get("alert_store") else None
    sqlite_target = _sqlite_path(store) if store and store.startswith("sqlite") else None
    if sqlite_target is not None:
        if not (src / "alerts.sqlite").exists():
            raise ConfigError(str(src), ["alerts.sqlite: missing (a backup of a PostgreSQL store?)"])
        if sqlite_target.exists() and not args.force:
            raise ConfigError(str(sqlite_target), ["exists: stop the alerter and API, then use --force"])
    if asyncio.run(influx_db_exists()):
        if not args.force:
            raise ConfigError(db, ["InfluxDB database exists: stop the collector, then use --force "
                                   "(it drops the database first)"])
        asyncio.run(drop())

    if store is not None:
        if sqlite_target is not None:
            for suffix in ("-wal", "-shm"):  # the old database's WAL must not be replayed onto this one
                Path(f"{sqlite_target}{suffix}").unlink(missing_ok=True)
            _sqlite_copy(src / "alerts.sqlite", sqlite_target)
        else:
            url, env = _pg(store)
            _run_tool([_tool("pg_restore", "postgresql-client"), "--clean", "--if-exists", "--no-owner",
                       "--single-transaction", f"--dbname={url}", str(src / "alerts.pgdump")], env)
        print(f"restored: alert store -> {store.split('@')[-1]}")
    _run_tool([_tool("influxd", "influxdb"), "restore", "-portable", "-host", args.influx_rpc,
               "-db", manifest.get("database", db), "-newdb", db, str(src / "influx")])
    print(f"restored: influxdb {db}")
    if cfg.influx.lifecycle is not None:
        # a database's portable restore brings its retention policies and data, not its
        # continuous queries (InfluxDB 1.6): set them up again, without re-rolling the history
        asyncio.run(setup(cfg.influx, admin=admin, backfill_new=False, plausible=plausible_of(cfg.rules)))
        print("restored: rollup continuous queries")
    return 0


def register_backup(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    for name, fn, help_ in (("backup", _backup, "InfluxDB and the alert store (rules' state too) into DIR"),
                            ("restore", _restore, "put a `heatwatch backup` DIR back (services stopped)")):
        p = sub.add_parser(name, help=help_)
        p.add_argument("config", metavar="COLLECTOR_CONFIG")
        p.add_argument("dir", metavar="DIR")
        p.add_argument("--alerter", metavar="ALERTER_CONFIG",
                       help="the alert store of this alerter config too (alerts, partition snapshots, "
                            "the site register)")
        p.add_argument("--influx-rpc", default="127.0.0.1:8088",
                       help="influxd's backup/restore service (its bind-address)")
        p.add_argument("--admin-user", default="admin")
        p.add_argument("--admin-password-file", help=f"else ${ADMIN_PASSWORD_ENV}; else the config's user")
        if name == "restore":
            p.add_argument("--force", action="store_true",
                           help="replace an existing alert store file and InfluxDB database")
        p.set_defaults(fn=fn)
