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
import asyncio
import datetime as dt
import os
import sys
import time
from pathlib import Path

from contract.config import InfluxSettings, load_api_config, load_collector_config, load_config
from contract.errors import ConfigError

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
    from collector.lifecycle import User, setup

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
    report = asyncio.run(setup(settings, admin=admin, users=users))
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
