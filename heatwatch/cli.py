"""``heatwatch``: one command, a subcommand per process.

    heatwatch gateway CONFIG [CONFIG...] | gateway plan CONFIG
    heatwatch collector CONFIG
    heatwatch alerter CONFIG
    heatwatch api CONFIG
    heatwatch token add|revoke|list API_CONFIG [NAME] [--role dispatcher|engineer|admin]
    heatwatch keys generate --out DIR [--name NAME]
    heatwatch simulate CONFIG... [--speed X] [--scenario FILE] [--serial-peer GATEWAY_TTY=SIM_TTY]
    heatwatch demo [--stations N] [--dir DIR] [--seconds S] [--port-offset N] | demo --stop [--dir DIR]
    heatwatch check-config FILE...
    heatwatch site init|issue-gateway|issue|broker|revoke|list SITE_DIR ...
    heatwatch influx setup|backfill CONFIG ...
    heatwatch backup|restore COLLECTOR_CONFIG DIR
    heatwatch report --period 2026-11 --out report.pdf [--config API_CONFIG]   (.pdf, .xlsx or .json)
    heatwatch dashboards push [--url URL] [--token-file FILE] [--datasource-url URL]

Settings are built here, in main(), and passed down; nothing reads config at import time.
Nothing heavy is imported at import time either: each subcommand imports its modules (and the
config models, logging, asyncio) when it runs, so `--version` and `--help` start in a fraction of
the time (measured: 0.39 s of imports before, with contract.config's models 0.22 s of it).
``--help`` shows ``HELP``, written for the person at the terminal, not this docstring.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import os
import re
import shlex
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any

from contract.errors import CannotOpen, ConfigError, Conflict
from contract.topics import IDENT_PATTERN


def _run(main: Coroutine[Any, Any, None]) -> None:
    """asyncio.run for a long-running process: SIGINT and SIGTERM cancel the main task, which
    unwinds through every stage's finally (sockets, the outbox) and ends in KeyboardInterrupt
    (exit 130). Another signal 2 s or more into the stop ends the process at once (what was not
    yet published stays in the outbox; the broker redelivers what was not acknowledged); one
    sooner is the same stop arriving twice (Ctrl-C reaches a whole process group, and a
    supervisor may send its own SIGTERM right after) and is ignored.

    Left to Python, SIGTERM raised KeyboardInterrupt wherever the loop happened to be; a task it
    landed in kept it as its exception ("Task exception was never retrieved" at exit), and so did
    a second Ctrl-C while a stop was under way.
    """
    import asyncio

    stopping = False
    since = 0.0

    async def supervised() -> None:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None

        def stop(name: str) -> None:
            nonlocal stopping, since
            if not stopping:
                stopping, since = True, loop.time()
                task.cancel()
            elif loop.time() - since >= 2.0:
                print(f"heatwatch: {name} again while stopping: stopped at once", file=sys.stderr)
                os._exit(130)

        previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        for s in previous:
            loop.add_signal_handler(s, stop, s.name)
        try:
            await main
        finally:
            for s, handler in previous.items():
                loop.remove_signal_handler(s)
                # once a stop is under way, the rest of the teardown (the interpreter's own, logging
                # included) keeps the same rule: a repeat within 2 s is the same stop, later ends it
                # at once; never a KeyboardInterrupt raised inside logging.shutdown (seen: a
                # supervisor's SIGTERM 50 ms after Ctrl-C printed a traceback)
                signal.signal(s, _late_signal if stopping else handler)

    def _late_signal(signum: int, _frame: object) -> None:
        if time.monotonic() - since >= 2.0:  # loop.time() is time.monotonic()
            os._exit(130)

    try:
        asyncio.run(supervised())
    except asyncio.CancelledError:
        if not stopping:
            raise
    if stopping:
        raise KeyboardInterrupt


def _gateway(args: argparse.Namespace) -> int:
    import asyncio

    from contract.config import load_gateway_config
    from gateway.app import Gateway
    from gateway.plan import plan_requests

    words = list(args.target)
    if words and words[0] == "plan":
        if len(words) != 2:
            print("usage: heatwatch gateway plan CONFIG", file=sys.stderr)
            return 2
        cfg = load_gateway_config(words[1])
        for dev in cfg.resolved:
            optimal = 0
            print(f"{dev.name} ({dev.where} id {dev.device_id}, max "
                  f"{dev.max_registers_per_request} words/request)")
            for group in cfg.poll_groups:
                reqs = plan_requests(dev, group)
                optimal += len(reqs)
                for r in reqs:
                    print(f"  {group:<8} {r}")
        return 0
    if not words:
        print("usage: heatwatch gateway CONFIG [CONFIG...]", file=sys.stderr)
        return 2
    # several configs: one process polls several stations (a control-room concentrator reaching
    # the stations' PLCs over the company network), each with its own MQTT session and outbox
    cfgs = [load_gateway_config(w) for w in words]
    for what in ("gateway", "outbox.path"):
        seen: dict[str, str] = {}
        for w, c in zip(words, cfgs, strict=True):
            key = c.gateway if what == "gateway" else c.outbox.path
            if key in seen:
                raise ConfigError(w, [f"{what}: {key} is also the {what} of {seen[key]}; "
                                      "each station needs its own"])
            seen[key] = w
    # one /metrics per process, whatever the number of stations: the configs that set it agree
    endpoints = {(c.metrics.host, c.metrics.port): w for w, c in zip(words, cfgs, strict=True)
                 if c.metrics is not None}
    if len(endpoints) > 1:
        (h1, p1), w1 = next(iter(endpoints.items()))
        w2 = list(endpoints.values())[1]
        raise ConfigError(w2, [f"metrics: one endpoint per process, and {w1} names {h1}:{p1}; give every "
                               "config of this process the same metrics: (or leave it out)"])

    async def run() -> None:  # pymodbus clients need the running loop at construction
        gateways = []
        for w, c in zip(words, cfgs, strict=True):
            try:
                gateways.append(Gateway(c))
            except CannotOpen as exc:
                exc.config = w
                raise
        if endpoints:
            from gateway.metrics import serve

            (host, port), w = next(iter(endpoints.items()))
            try:
                serve(gateways, host, port)
            except OSError as exc:
                err = CannotOpen("metrics endpoint", f"{host}:{port}", (exc.strerror or str(exc)).lower(),
                                 "metrics.port")
                err.config = w
                raise err from None
        async with asyncio.TaskGroup() as tg:
            for gw in gateways:
                tg.create_task(gw.run())

    _run(run())
    return 0


def _collector(args: argparse.Namespace) -> int:
    from collector.app import Collector
    from contract.config import load_collector_config

    cfg = load_collector_config(args.config)

    async def run() -> None:
        await Collector(cfg).run()

    _run(run())
    return 0


def _alerter(args: argparse.Namespace) -> int:
    from alerter.app import Alerter
    from contract.config import load_alerter_config

    cfg = load_alerter_config(args.config)

    async def run() -> None:
        await Alerter(cfg).run()

    _run(run())
    return 0


def _api(args: argparse.Namespace) -> int:
    import uvicorn
    from uvicorn.config import STARTUP_FAILURE
    from uvicorn.supervisors import Multiprocess

    from alerting.database import Database
    from api.app import API_CONFIG_ENV, create_app
    from api.limits import MAX_HEAD_BYTES
    from api.metrics import MULTIPROC_ENV, serve_workers
    from contract.config import load_api_config

    cfg = load_api_config(args.config)
    # the store opens here first: a wrong path is one line (CannotOpen), not a traceback per worker
    Database(cfg.store).open().close()
    # a request head over MAX_HEAD_BYTES is refused (431) before the app sees it (api/limits.py)
    http, h11_max = "api.limits:HeadLimitedProtocol", MAX_HEAD_BYTES
    if cfg.workers == 1:
        os.environ.pop(MULTIPROC_ENV, None)  # this process serves its own metrics (api/metrics.py)
        server = uvicorn.Server(uvicorn.Config(
            create_app(cfg), host=cfg.listen.host, port=cfg.listen.port, log_level="warning",
            http=http, h11_max_incomplete_event_size=h11_max))
        with contextlib.suppress(KeyboardInterrupt):  # a stop signal: uvicorn has shut down cleanly
            server.run()
        if not server.started:
            print(f"heatwatch api: did not start on {cfg.listen.host}:{cfg.listen.port} "
                  "(the reason is logged above)", file=sys.stderr)
            return 1
        return 0
    # several processes: each worker imports the app factory and reads the same file
    os.environ[API_CONFIG_ENV] = str(Path(args.config).resolve())
    config = uvicorn.Config("api.app:app_from_env", factory=True, workers=cfg.workers,
                            host=cfg.listen.host, port=cfg.listen.port, log_level="warning", http=http,
                            h11_max_incomplete_event_size=h11_max)
    # uvicorn.run with workers returns normally when a worker fails to start; its supervisor
    # knows, so run that directly and look at how the workers ended
    supervisor = Multiprocess(config, sockets=[config.bind_socket()])
    metrics_dir: str | None = None
    metrics_server: Any = None
    if cfg.metrics is not None:
        # each worker counts into files here; this process serves the sum (api/metrics.py)
        metrics_dir = os.environ[MULTIPROC_ENV] = tempfile.mkdtemp(prefix="heatwatch-api-metrics-")
        try:
            metrics_server = serve_workers(metrics_dir, cfg.metrics.host, cfg.metrics.port)
        except OSError as exc:
            shutil.rmtree(metrics_dir, ignore_errors=True)
            raise CannotOpen("metrics endpoint", f"{cfg.metrics.host}:{cfg.metrics.port}",
                             (exc.strerror or str(exc)).lower(), "metrics.port") from None
    try:
        with contextlib.suppress(KeyboardInterrupt):
            supervisor.run()
    finally:
        if metrics_server is not None:
            metrics_server.shutdown()
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)
    if any(p.process.exitcode == STARTUP_FAILURE for p in supervisor.processes):
        print(f"heatwatch api: a worker failed to start on {cfg.listen.host}:{cfg.listen.port} "
              "(the reason is logged above)", file=sys.stderr)
        return 1
    return 0


def _token_name(value: str) -> str:
    """A token's name: the API's rule (contract.topics.Ident), so whatever is created here can be
    revoked through DELETE /v1/tokens/{name} too."""
    if not re.fullmatch(IDENT_PATTERN, value):
        raise argparse.ArgumentTypeError(
            f"{value!r}: 1 to 64 letters, digits, '_', '.' or '-', starting with a letter or digit "
            "(e.g. disp-li); no spaces")
    return value


def _token(args: argparse.Namespace) -> int:
    import datetime as dt
    import time

    from alerting.registry import SiteRegistry
    from contract.config import load_api_config

    cfg = load_api_config(args.config)
    registry = SiteRegistry(cfg.store).open()
    now = int(time.time() * 1000)
    rc = 0
    try:
        if args.action == "add":
            try:
                token = registry.add_token(name=args.name, role=args.role,
                                           actor=f"cli:{getpass.getuser()}", now=now)
            except Conflict as exc:
                cfg_arg, name_arg = shlex.quote(args.config), shlex.quote(args.name)
                print(f"heatwatch token add: {exc}: `heatwatch token list {cfg_arg}` lists the "
                      f"tokens, `heatwatch token revoke {cfg_arg} {name_arg}` ends it (then add "
                      "again), or choose another name", file=sys.stderr)
                return 1
            print(token)  # shown once; only its hash is stored
            print(f"token for {args.name} ({args.role}); keep it secret, it is not stored", file=sys.stderr)
        elif args.action == "revoke":
            # any stored name, also one an older version let in with spaces: this is the way to end it
            n = registry.revoke_tokens(name=args.name, actor=f"cli:{getpass.getuser()}", now=now)
            if n:
                print(f"revoked {n} token(s) of {args.name}", file=sys.stderr)
            else:
                print(f"no live token named {args.name!r} (see: heatwatch token list {args.config})",
                      file=sys.stderr)
                rc = 1
        else:
            def when(ms: int | None) -> str:
                return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M UTC") \
                    if ms is not None else ""

            print(f"{'name':<24} {'role':<10} {'created':<20} {'by':<20} revoked")
            for r in registry.list_tokens():
                print(f"{r.name:<24} {r.role:<10} {when(r.created_at):<20} {r.created_by:<20} "
                      f"{when(r.revoked_at)}".rstrip())
    finally:
        registry.close()
    return rc


def _keys(args: argparse.Namespace) -> int:
    """A new command-signing key pair: the private key for the API (mode 0600, never
    overwritten), the public key for every gateway's control.public_keys."""
    from contract.commands import generate_keypair, key_id, load_public_key

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    private, public = generate_keypair()
    key_path, pub_path = out / f"{args.name}.key", out / f"{args.name}.pub"
    for p in (key_path, pub_path):
        if p.exists():
            print(f"{p} exists: not overwritten (move it away first)", file=sys.stderr)
            return 1
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # never readable by others
    with os.fdopen(fd, "wb") as f:
        f.write(private)
    pub_path.write_bytes(public)
    kid = key_id(load_public_key(public, str(pub_path)))
    print(f"private key {key_path} (mode 0600): the API's control.signing_key; keep it on the API host only")
    print(f"public key  {pub_path}: list it in every gateway's control.public_keys")
    print(f"key id      {kid}")
    return 0


def _simulate(args: argparse.Namespace) -> int:
    from contract.config import load_gateway_config
    from simulator.scenario import RelativeEvent, load_scenario, rooms_settle
    from simulator.server import PortInUse, Simulator

    configs = [load_gateway_config(c) for c in args.configs]
    speed: float = 1.0
    events: list[tuple[str, RelativeEvent]] = []
    settle: float | None = None
    if args.scenario:
        speed, events = load_scenario(args.scenario)
        settle = rooms_settle(args.scenario)
    if args.speed is not None:
        speed = args.speed
    served = {c.station for c in configs}
    unknown = sorted({st for st, _ in events} - served)
    if unknown:  # a scenario for several stations, played on fewer of them
        print(f"{args.scenario}: events of {', '.join(unknown)} skipped (not in the configs given)",
              file=sys.stderr)
        events = [(st, ev) for st, ev in events if st in served]

    async def run() -> None:
        peers = dict(p.split("=", 1) for p in args.serial_peer)
        sim = Simulator(configs, speed=speed, seed=args.seed, serial_peers=peers, scenario=events,
                        room_settle_s=settle, state_path=Path(args.state) if args.state else None)
        await sim.run()

    try:
        _run(run())
    except PortInUse as exc:
        print(f"heatwatch simulate: {exc}", file=sys.stderr)
        return 1
    return 0


def _check(args: argparse.Namespace) -> int:
    from contract.config import ApiConfig, GatewayConfig, load_config

    bad = 0
    for f in args.files:
        try:
            cfg = load_config(f)
        except ConfigError as exc:
            print(exc, file=sys.stderr)
            bad += 1
            continue
        extra = ""
        try:  # the key files a control: block names must be readable keys of the right kind
            if isinstance(cfg, GatewayConfig) and cfg.control is not None:
                from gateway.commands import load_keys

                load_keys(cfg.control.public_keys, f)
            elif isinstance(cfg, ApiConfig) and cfg.control is not None:
                from api.control import load_signing_key

                load_signing_key(cfg.control, f)
        except ConfigError as exc:
            print(exc, file=sys.stderr)
            bad += 1
            continue
        if isinstance(cfg, GatewayConfig):
            n = sum(len(d.points) for d in cfg.resolved)
            extra = f": station {cfg.station}, {len(cfg.resolved)} devices, {n} points"
            if cfg.control is not None:
                extra += f", {sum(1 for d in cfg.resolved for p in d.points if p.write)} writable"
        print(f"{f}: ok ({cfg.kind}{extra})")
    return 1 if bad else 0


def _report(args: argparse.Namespace) -> int:
    """The takeover report (issue #17) for a period, written as PDF, spreadsheet or JSON by the
    suffix of --out; the API config says where InfluxDB, the alert store and the report's
    settings are."""
    import asyncio
    import time

    import orjson

    from alerting.store import Store
    from api.influx import STORE as InfluxStore
    from api.influx import InfluxReader
    from contract.config import load_api_config
    from contract.errors import DatabaseUnavailable
    from report import compute, source
    from report.model import Report

    out = Path(args.out)
    if out.suffix.lower() not in (".pdf", ".xlsx", ".json"):
        print(f"--out {args.out}: the suffix must be .pdf, .xlsx or .json", file=sys.stderr)
        return 2
    cfg = load_api_config(args.config)
    ctx = source.load_context(cfg.report)
    if cfg.control is not None:
        ctx.unknown_grace_s = cfg.control.unknown_grace_s
    try:
        compute.parse_period(args.period, ctx.rules)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    store = Store(cfg.store).open()  # CannotOpen: one line naming the URL and the setting
    # a season of a large company without rollups takes InfluxDB minutes (bench/report_bench.py)
    reader = InfluxReader(cfg.influx.model_copy(update={"timeout_s": max(cfg.influx.timeout_s, 900.0)}))

    async def make() -> Report:
        try:
            return await source.report(reader.query_many, store, ctx, args.period, int(time.time() * 1000),
                                       database=reader.db)
        finally:
            await reader.close()

    try:
        rep = asyncio.run(make())
    except DatabaseUnavailable as exc:  # the site database's message names its URL already
        where = f" ({cfg.influx.url}, database {cfg.influx.database})" if exc.store == InfluxStore else ""
        print(f"{exc.store} unavailable: {exc}{where}", file=sys.stderr)
        return 1
    finally:
        store.close()
    if out.suffix.lower() == ".pdf":
        from report.pdf import document

        out.write_bytes(document(rep))
    elif out.suffix.lower() == ".xlsx":
        from report.xlsx import workbook

        out.write_bytes(workbook(rep))
    else:
        out.write_bytes(orjson.dumps(rep.model_dump(), option=orjson.OPT_INDENT_2))
    print(f"{out}: {rep.company}, {rep.period.title}, {len(rep.stations)} stations", file=sys.stderr)
    return 0


def _demo(args: argparse.Namespace) -> int:
    from heatwatch.demo import run_demo, stop_demo

    if args.stop:
        return stop_demo(args.dir)
    return run_demo(stations=args.stations, folder=args.dir, seconds=args.seconds,
                    port_offset=args.port_offset)


HELP = """\
Telemetry and alerting for district-heating heat-exchange stations: gateways read the stations'
Modbus devices and publish over MQTT, a collector stores the data in InfluxDB, an alerter judges
them and raises alerts, and an HTTP API serves the dispatch hotline. Each runs as its own command
with its config file (examples under deploy/); `heatwatch demo` runs all of it on simulated
stations.
"""

EPILOG = """\
examples:
  heatwatch demo                                        everything on loopback, simulated stations
  heatwatch check-config deploy/gateway/st001.yaml      validate a config before starting with it
  heatwatch token add deploy/api/api.yaml disp-li       a credential for the API

`heatwatch COMMAND --help` shows a command's options; README.md and docs/ say more.
"""
LOG_LEVELS = ("debug", "info", "warning", "error")


def _version() -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version("heatwatch")
    except importlib.metadata.PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed: pip install -e .)"


class _Version(argparse.Action):
    """--version, looked up only when asked for (importlib.metadata scans the installed
    distributions: 18 ms that every other command would pay)."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS, **kw: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kw)

    def __call__(self, parser: argparse.ArgumentParser, *_: Any) -> None:
        print(f"heatwatch {_version()}")
        parser.exit()


def _dashboards(args: argparse.Namespace) -> int:
    from dashboards import push

    if args.token is not None:  # caught, not rejected by argparse, which would echo it back
        print("heatwatch dashboards push: a token is never taken from the command line (ps and the "
              f"shell history show it): set {push.TOKEN_ENV} or use --token-file", file=sys.stderr)
        return 2
    return push.main(args.url, args.token_file, folder=args.folder, home=not args.no_home,
                     datasource_url=args.datasource_url, database=args.database)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="heatwatch", description=HELP, epilog=EPILOG,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--log-level", default="info", choices=LOG_LEVELS, type=str.lower,
                    help="how much the process logs (default info)")
    ap.add_argument("--version", action=_Version, help="show the version and exit")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("gateway", help="poll a station and publish (or: gateway plan CONFIG)")
    p.add_argument("target", nargs="+", metavar="[plan] CONFIG")
    p.set_defaults(fn=_gateway)
    p = sub.add_parser("collector", help="MQTT → InfluxDB")
    p.add_argument("config")
    p.set_defaults(fn=_collector)
    p = sub.add_parser("alerter", help="MQTT → rules → alert store, pages (one member of several)")
    p.add_argument("config")
    p.set_defaults(fn=_alerter)
    p = sub.add_parser("api", help="the HTTP API")
    p.add_argument("config")
    p.set_defaults(fn=_api)
    p = sub.add_parser("token", help="API credentials: token add|revoke|list API_CONFIG [NAME]",
                       description="API credentials in the alert store of an API config.")
    tsub = p.add_subparsers(dest="action", required=True, metavar="add|revoke|list")
    t = tsub.add_parser("add", help="issue a token (printed once; only its hash is stored)")
    t.add_argument("config", metavar="API_CONFIG")
    t.add_argument("name", type=_token_name, help="who the token is for (the actor in the audit log)")
    t.add_argument("--role", choices=["dispatcher", "engineer", "admin"], default="dispatcher")
    t.set_defaults(fn=_token)
    t = tsub.add_parser("revoke", help="revoke every live token of NAME (exit 1 if it has none)")
    t.add_argument("config", metavar="API_CONFIG")
    t.add_argument("name")
    t.set_defaults(fn=_token)
    t = tsub.add_parser("list", help="every token's name, role, creation and revocation (never the secret)")
    t.add_argument("config", metavar="API_CONFIG")
    t.set_defaults(fn=_token)
    p = sub.add_parser("keys", help="command-signing keys: keys generate --out DIR [--name NAME]")
    p.add_argument("action", choices=["generate"])
    p.add_argument("--out", required=True, help="folder for NAME.key (private, 0600) and NAME.pub")
    p.add_argument("--name", default="control-room")
    p.set_defaults(fn=_keys)
    p = sub.add_parser("simulate", help="serve simulated stations over Modbus (TCP, RTU over TCP, RTU)")
    p.add_argument("--serial-peer", action="append", default=[], metavar="GATEWAY_TTY=SIM_TTY",
                   help="answer a gateway's serial port on the other end of its cable")
    p.add_argument("configs", nargs="+", metavar="GATEWAY_CONFIG")
    p.add_argument("--speed", type=float, default=None, help="sim seconds per real second")
    p.add_argument("--scenario", help="YAML file of timed events")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--state", metavar="FILE",
                   help="save the stations' state (rooms, written setpoints, valves, meters) here and "
                        "carry on from it at the next start")
    p.set_defaults(fn=_simulate)
    p = sub.add_parser("demo", help="the whole pipeline on simulated stations")
    p.add_argument("--stations", type=int, default=3, metavar="N",
                   help="simulate the first N of the stations under deploy/gateway (default: 3, all)")
    p.add_argument("--dir", default=".demo",
                   help="the demo's folder: its data, store, tokens, keys, logs and demo.pid, kept "
                        "between runs (default: .demo); remove it after stopping to start clean; a "
                        "second demo beside a running one needs its own DIR and a --port-offset")
    p.add_argument("--seconds", type=float, default=None, help="stop after this long")
    p.add_argument("--port-offset", type=int, default=None, metavar="N",
                   help="move every demo port by N (default: $HEATWATCH_DEMO_PORT_OFFSET or 0)")
    p.add_argument("--stop", action="store_true", help="stop the demo running (or left behind) under --dir")
    p.set_defaults(fn=_demo)
    from heatwatch import ops, site
    site.register(sub)
    ops.register(sub)
    ops.register_backup(sub)
    p = sub.add_parser("report", help="the takeover report for a period: PDF, spreadsheet or JSON")
    p.add_argument("--period", required=True, help="2026-11, 2026-11-15..2027-03-15 or season:2026")
    p.add_argument("--out", required=True, help="report.pdf, report.xlsx or report.json")
    p.add_argument("--config", default="deploy/api/api.yaml",
                   help="the API config: InfluxDB, the alert store and the report settings it names")
    p.set_defaults(fn=_report)
    p = sub.add_parser("dashboards", help="dashboards push: load the dashboards over Grafana's HTTP API",
                       allow_abbrev=False)
    p.add_argument("action", choices=["push"])
    p.add_argument("--url", help="Grafana's URL, e.g. https://grafana.example:3000 (or GRAFANA_URL)")
    p.add_argument("--token-file", help="a file holding the service-account token; else GRAFANA_TOKEN "
                                        "(never the token itself on the command line)")
    p.add_argument("--token", help=argparse.SUPPRESS)
    p.add_argument("--folder", default="heatwatch", help="the folder's uid and title")
    p.add_argument("--no-home", action="store_true", help="leave the organisation's home dashboard")
    p.add_argument("--datasource-url", help="also create/update the InfluxDB data source, at this URL")
    p.add_argument("--database", default="heatwatch", help="its InfluxDB database")
    p.set_defaults(fn=_dashboards)
    p = sub.add_parser("check-config", help="validate config files")
    p.add_argument("files", nargs="+")
    p.set_defaults(fn=_check)
    args = ap.parse_args(argv)
    from heatwatch import logs

    logs.setup(args.log_level)
    # Ctrl-C and SIGTERM both stop cleanly, even when started with SIGINT ignored (a
    # background job): the stages' finally blocks close sockets and the outbox.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        rc: int = args.fn(args)
        return rc
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    except CannotOpen as exc:
        from contract.config import env_names

        config = exc.config or getattr(args, "config", None)
        print(exc.explain(config, env_names(config, exc.setting) if config else []), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
