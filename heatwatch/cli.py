"""``heatwatch``: one command, a subcommand per process.

    heatwatch gateway CONFIG [CONFIG...] | gateway plan CONFIG
    heatwatch collector CONFIG
    heatwatch api CONFIG
    heatwatch token add|revoke API_CONFIG NAME [--role dispatcher|engineer|admin]
    heatwatch simulate CONFIG... [--speed X] [--scenario FILE] [--serial-peer GATEWAY_TTY=SIM_TTY]
    heatwatch demo [--stations N] [--dir DIR] [--seconds S] [--port-offset N] | demo --stop [--dir DIR]
    heatwatch check-config FILE...
    heatwatch site init|issue-gateway|issue|broker|revoke|list SITE_DIR ...
    heatwatch influx setup|backfill CONFIG ...
    heatwatch backup|restore COLLECTOR_CONFIG DIR
    heatwatch report --period 2026-11 --out report.pdf [--config API_CONFIG]   (.pdf, .xlsx or .json)

Settings are built here, in main(), and passed down; nothing reads config at import time.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from contract.config import (
    GatewayConfig,
    load_api_config,
    load_collector_config,
    load_config,
    load_gateway_config,
)
from contract.errors import ConfigError
from heatwatch import logs


def _gateway(args: argparse.Namespace) -> int:
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

    async def run() -> None:  # pymodbus clients need the running loop at construction
        async with asyncio.TaskGroup() as tg:
            for c in cfgs:
                tg.create_task(Gateway(c).run())

    asyncio.run(run())
    return 0


def _collector(args: argparse.Namespace) -> int:
    from collector.app import Collector

    cfg = load_collector_config(args.config)

    async def run() -> None:
        await Collector(cfg).run()

    asyncio.run(run())
    return 0


def _api(args: argparse.Namespace) -> int:
    import uvicorn

    from api.app import API_CONFIG_ENV, create_app

    cfg = load_api_config(args.config)
    if cfg.workers == 1:
        uvicorn.run(create_app(cfg), host=cfg.listen.host, port=cfg.listen.port, log_level="warning")
        return 0
    # several processes: each worker imports the app factory and reads the same file
    os.environ[API_CONFIG_ENV] = str(Path(args.config).resolve())
    uvicorn.run("api.app:app_from_env", factory=True, workers=cfg.workers, host=cfg.listen.host,
                port=cfg.listen.port, log_level="warning")
    return 0


def _token(args: argparse.Namespace) -> int:
    import time

    from alerting.store import Store

    cfg = load_api_config(args.config)
    store = Store(cfg.store)
    store.migrate()
    now = int(time.time() * 1000)
    if args.action == "add":
        token = store.add_token(name=args.name, role=args.role, actor=f"cli:{getpass.getuser()}", now=now)
        print(token)  # shown once; only its hash is stored
        print(f"token for {args.name} ({args.role}); keep it secret, it is not stored", file=sys.stderr)
    else:
        n = store.revoke_tokens(name=args.name, actor=f"cli:{getpass.getuser()}", now=now)
        print(f"revoked {n} token(s) of {args.name}", file=sys.stderr)
    store.close()
    return 0


def _simulate(args: argparse.Namespace) -> int:
    from simulator.scenario import RelativeEvent, load_scenario
    from simulator.server import PortInUse, Simulator

    configs = [load_gateway_config(c) for c in args.configs]
    speed: float = 1.0
    events: list[tuple[str, RelativeEvent]] = []
    if args.scenario:
        speed, events = load_scenario(args.scenario)
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
        sim = Simulator(configs, speed=speed, seed=args.seed, serial_peers=peers, scenario=events)
        await sim.run()

    try:
        asyncio.run(run())
    except PortInUse as exc:
        print(f"heatwatch simulate: {exc}", file=sys.stderr)
        return 1
    return 0


def _check(args: argparse.Namespace) -> int:
    bad = 0
    for f in args.files:
        try:
            cfg = load_config(f)
        except ConfigError as exc:
            print(exc, file=sys.stderr)
            bad += 1
            continue
        extra = ""
        if isinstance(cfg, GatewayConfig):
            n = sum(len(d.points) for d in cfg.resolved)
            extra = f": station {cfg.station}, {len(cfg.resolved)} devices, {n} points"
        print(f"{f}: ok ({cfg.kind}{extra})")
    return 1 if bad else 0


def _report(args: argparse.Namespace) -> int:
    """The takeover report (issue #17) for a period, written as PDF, spreadsheet or JSON by the
    suffix of --out; the API config says where InfluxDB, the alert store and the report's
    settings are."""
    import time

    import orjson
    import sqlalchemy.exc

    from alerting.store import Store
    from api.influx import InfluxReader
    from contract.errors import DatabaseUnavailable
    from report import compute, source
    from report.model import Report

    out = Path(args.out)
    if out.suffix.lower() not in (".pdf", ".xlsx", ".json"):
        print(f"--out {args.out}: the suffix must be .pdf, .xlsx or .json", file=sys.stderr)
        return 2
    cfg = load_api_config(args.config)
    ctx = source.load_context(cfg.report)
    try:
        compute.parse_period(args.period, ctx.rules)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    store = Store(cfg.store)
    # a season of a large company without rollups takes InfluxDB minutes (bench/report_bench.py)
    reader = InfluxReader(cfg.influx.model_copy(update={"timeout_s": max(cfg.influx.timeout_s, 900.0)}))

    async def make() -> Report:
        try:
            return await source.report(reader.query_many, store, ctx, args.period, int(time.time() * 1000),
                                       database=reader.db)
        finally:
            await reader.close()

    try:
        store.migrate()
        rep = asyncio.run(make())
    except sqlalchemy.exc.OperationalError as exc:
        print(f"alert store {cfg.store}: {exc.orig}", file=sys.stderr)
        return 1
    except DatabaseUnavailable as exc:
        print(f"{exc} ({cfg.influx.url}, database {cfg.influx.database})", file=sys.stderr)
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


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="heatwatch", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--log-level", default="info")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("gateway", help="poll a station and publish (or: gateway plan CONFIG)")
    p.add_argument("target", nargs="+", metavar="[plan] CONFIG")
    p.set_defaults(fn=_gateway)
    p = sub.add_parser("collector", help="MQTT → InfluxDB")
    p.add_argument("config")
    p.set_defaults(fn=_collector)
    p = sub.add_parser("api", help="the HTTP API")
    p.add_argument("config")
    p.set_defaults(fn=_api)
    p = sub.add_parser("token", help="API credentials: token add|revoke API_CONFIG NAME [--role R]")
    p.add_argument("action", choices=["add", "revoke"])
    p.add_argument("config", metavar="API_CONFIG")
    p.add_argument("name", help="who the token is for (the actor in the audit log)")
    p.add_argument("--role", choices=["dispatcher", "engineer", "admin"], default="dispatcher")
    p.set_defaults(fn=_token)
    p = sub.add_parser("simulate", help="serve simulated stations over Modbus (TCP, RTU over TCP, RTU)")
    p.add_argument("--serial-peer", action="append", default=[], metavar="GATEWAY_TTY=SIM_TTY",
                   help="answer a gateway's serial port on the other end of its cable")
    p.add_argument("configs", nargs="+", metavar="GATEWAY_CONFIG")
    p.add_argument("--speed", type=float, default=None, help="sim seconds per real second")
    p.add_argument("--scenario", help="YAML file of timed events")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(fn=_simulate)
    p = sub.add_parser("demo", help="the whole pipeline on simulated stations")
    p.add_argument("--stations", type=int, default=3)
    p.add_argument("--dir", default=".demo")
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
    p = sub.add_parser("check-config", help="validate config files")
    p.add_argument("files", nargs="+")
    p.set_defaults(fn=_check)
    args = ap.parse_args(argv)
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
    except KeyboardInterrupt:
        return 130
