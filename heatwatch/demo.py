"""``heatwatch demo``: the whole pipeline on simulated stations, on loopback, with a winter night.

Starts mosquitto and influxd with their data under DIR, the simulator playing
``deploy/scenarios/demo.yaml``, one gateway per station, the collector, the alerter (one member
on SQLite, judging with ``deploy/alerter/rules-demo.yaml``: the real thresholds, short holds) and
the API as child processes. Before any of them starts it loads the demo's asset register
(``deploy/assets/demo-households.csv``) into the alert store and issues a dispatcher and an
engineer token. It prints ready-to-paste commands (and writes them as ``DIR/env`` for
``source``), runs the scenario's steps (a gateway losing power, coming back), prints each alert
as it fires, and stops everything on Ctrl-C, SIGTERM, or SIGHUP (the terminal closed), or after
``--seconds``. ``heatwatch demo --stop`` stops a demo left behind (DIR/demo.pid lists its
processes). Safe to re-run: data persists under DIR, nothing else is touched.

Ports: the defaults (MQTT 11883, InfluxDB 18086, API 8000, collector metrics 9108, alerter
metrics 9109, Modbus 15011-15032 as deploy/gateway/st00*.yaml say) all move together by
``--port-offset N`` (``HEATWATCH_DEMO_PORT_OFFSET``); HEATWATCH_MQTT_PORT, HEATWATCH_INFLUX_PORT,
HEATWATCH_API_PORT, HEATWATCH_METRICS_PORT and HEATWATCH_ALERTER_METRICS_PORT move one each. A
busy port is one line naming it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import httpx
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from contract.config import load_api_config, load_gateway_config, read_yaml
from contract.errors import ConfigError
from contract.topics import Ident
from heatwatch.devstack import DEPLOY, Influxd, MissingBinary, Mosquitto, free_port, port_open
from simulator.scenario import load_scenario, seconds

SCENARIO = DEPLOY / "scenarios" / "demo.yaml"
RULES = DEPLOY / "alerter" / "rules-demo.yaml"
ASSETS = DEPLOY / "assets" / "demo-households.csv"
API_CONFIG = DEPLOY / "api" / "api.yaml"
COLLECTOR_CONFIG = DEPLOY / "collector" / "collector.yaml"
ALERTER_CONFIG = DEPLOY / "alerter" / "alerter.yaml"
OFFSET_ENV = "HEATWATCH_DEMO_PORT_OFFSET"
# service → (the variable the configs read, its default); Modbus ports come from the gateway configs
SERVICE_PORTS = {"mqtt": ("HEATWATCH_MQTT_PORT", 11883), "influx": ("HEATWATCH_INFLUX_PORT", 18086),
                 "api": ("HEATWATCH_API_PORT", 8000), "metrics": ("HEATWATCH_METRICS_PORT", 9108),
                 "alerter_metrics": ("HEATWATCH_ALERTER_METRICS_PORT", 9109)}
# what the demo issues for itself: shell variable → (token name, role)
TOKENS = {"TOKEN": ("demo-dispatcher", "dispatcher"), "ENGINEER_TOKEN": ("demo-engineer", "engineer")}
ACTOR = "heatwatch demo"
# the README's example: one household of the cold building (幸福里小区3号楼 is st001/b03)
LOOKUP_EXAMPLE = "幸福里 3号楼 301"


class DemoError(Exception):
    """Why the demo cannot start: one line, said to the user as is."""


# -- ports --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Ports:
    mqtt: int
    influx: int
    api: int
    metrics: int
    alerter_metrics: int
    offset: int


def _port(value: str, what: str) -> int:
    try:
        port = int(value)
    except ValueError:
        raise DemoError(f"{what} is {value!r}, not a port number") from None
    if not 1 <= port <= 65535:
        raise DemoError(f"{what} is {port}, outside 1-65535")
    return port


def plan_ports(environ: dict[str, str], offset: int | None) -> Ports:
    """The five service ports: each variable when set, else its default moved by the offset."""
    if offset is None:
        raw = environ.get(OFFSET_ENV, "0")
        try:
            offset = int(raw)
        except ValueError:
            raise DemoError(f"{OFFSET_ENV} is {raw!r}, not a whole number") from None
    got = {}
    for name, (var, default) in SERVICE_PORTS.items():
        got[name] = _port(environ[var], var) if environ.get(var) else _port(
            str(default + offset), f"the {name} port ({default} moved by {offset:+d})")
    return Ports(offset=offset, **got)


def port_busy(port: int) -> bool:
    """Something listens on 127.0.0.1:port, or holds it so a server could not bind it."""
    if port_open(port):
        return True
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers bind
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def gateway_configs(stations: int, offset: int, folder: Path) -> list[Path]:
    """The shipped gateway configs, or, with a port offset, copies with every Modbus port moved
    (the simulator and the gateways both read these, so they agree)."""
    shipped = sorted((DEPLOY / "gateway").glob("st*.yaml"))
    if not 1 <= stations <= len(shipped):
        raise DemoError(f"--stations must be 1-{len(shipped)} (deploy/gateway has {len(shipped)} "
                        "station configs)")
    shipped = shipped[:stations]
    if offset == 0:
        return shipped
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for src in shipped:
        data = yaml.safe_load(src.read_text(encoding="utf-8"))
        for i, dev in enumerate(data.get("devices") or []):
            if "port" in dev:
                if not isinstance(dev["port"], int):
                    raise DemoError(f"{src}: devices.{i}.port is {dev['port']!r}: the demo moves only "
                                    "numeric ports")
                dev["port"] += offset
            if isinstance(dev.get("map"), str) and not Path(dev["map"]).is_absolute():
                dev["map"] = str((src.parent / dev["map"]).resolve())
        dst = folder / src.name
        dst.write_text(f"# written by heatwatch demo from {src}: every Modbus port moved by {offset:+d}\n"
                       + yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")
        out.append(dst)
    return out


# -- the scenario's steps ---------------------------------------------------------------------
class _Step(BaseModel):
    model_config = ConfigDict(extra="forbid")
    at: float = Field(description="wall time after the gateways start")

    @field_validator("at", mode="before")
    @classmethod
    def _dur(cls, v: object) -> float:
        return seconds(v)


class StopGateway(_Step):
    """A station's gateway goes away: ``power_cut`` kills it (the broker sends its last will),
    ``shutdown`` stops it cleanly (only the silence tells)."""
    do: Literal["stop_gateway"]
    station: Ident
    how: Literal["power_cut", "shutdown"] = "power_cut"


class StartGateway(_Step):
    do: Literal["start_gateway"]
    station: Ident


# A new kind of step is a model here, added to Step, and a function in ACTIONS that does it
# against the running stack and returns the line the terminal shows. E.g. remote control:
#   class Command(_Step): do: Literal["command"]; station; building; point; value
#   def _command(stack, step): POST http://127.0.0.1:{stack.ports.api}/v1/... with
#       stack.tokens["ENGINEER_TOKEN"]; return "st001/b03: valve 60 % → 100 % (confirmed)"
Step = Annotated[StopGateway | StartGateway, Field(discriminator="do")]


class _Steps(BaseModel):
    model_config = ConfigDict(extra="ignore")  # speed and events are the simulator's
    description: str = ""
    steps: list[Step] = Field(default_factory=list)


def describe(path: Path) -> str:
    """The scenario's own sentence about what it plays."""
    return str(read_yaml(path).get("description") or "")


def load_steps(path: Path) -> list[StopGateway | StartGateway]:
    data = read_yaml(path)
    try:
        steps = _Steps.model_validate(data).steps
    except ValidationError as exc:
        problems = []
        for err in exc.errors(include_url=False):
            # the union puts the step's kind into the path (steps.2.start_gateway.at): drop it
            loc = [p for i, p in enumerate(err["loc"]) if not (i and isinstance(err["loc"][i - 1], int))
                   or p not in ACTIONS]
            msg = "unknown key (typo?)" if err["type"] == "extra_forbidden" else err["msg"]
            problems.append(f"{'.'.join(map(str, loc))}: {msg.removeprefix('Value error, ')}")
        raise ConfigError(str(path), problems) from None
    return sorted(steps, key=lambda s: s.at)


# -- the processes ------------------------------------------------------------------------------
def _cmdline(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return [a.decode(errors="replace") for a in raw.split(b"\0")[:-1]] or None


def _ours(pid: int, cmdline: list[str]) -> bool:
    """Alive and still the process we started (a pid is reused once it has exited)."""
    return _cmdline(pid) == cmdline


@dataclass
class Stack:
    """The demo's child processes, listed in DIR/demo.pid so ``--stop`` finds them."""

    root: Path
    env: dict[str, str]
    pidfile: Path
    ports: Ports
    tokens: dict[str, str]  # shell variable → token (ENGINEER_TOKEN may send commands)
    gateway_args: dict[str, str]  # station → its gateway config
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    services: dict[str, Mosquitto | Influxd] = field(default_factory=dict)
    stopped: set[str] = field(default_factory=set)  # by a step, on purpose

    def spawn(self, name: str, *args: str) -> None:
        log = open(self.root / "logs" / f"{name}.log", "ab")  # noqa: SIM115 (lives as long as the child)
        # its own session: Ctrl-C and a closed terminal reach the demo only, which stops the
        # children in order (gateways before the broker, the broker before the collector and alerter)
        self.procs[name] = subprocess.Popen([sys.executable, "-m", "heatwatch", *args], env=self.env,
                                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.stopped.discard(name)
        self.save()

    def start_service(self, name: str, svc: Mosquitto | Influxd) -> None:
        self.services[name] = svc
        try:
            svc.start()
        finally:
            self.save()

    def save(self) -> None:
        children = {}
        for name, svc in self.services.items():
            if svc.proc is not None:
                children[name] = {"pid": svc.proc.pid, "cmdline": [str(a) for a in svc.proc.args]}  # type: ignore[union-attr]
        for name, p in self.procs.items():
            if p.poll() is None:
                children[name] = {"pid": p.pid, "cmdline": [str(a) for a in p.args]}  # type: ignore[union-attr]
        info = {"pid": os.getpid(), "cmdline": _cmdline(os.getpid()), "started": time.time(),
                "children": children}
        tmp = self.pidfile.with_suffix(".tmp")
        tmp.write_text(json.dumps(info, indent=1))
        tmp.replace(self.pidfile)

    def stop(self, name: str, *, kill: bool = False) -> None:
        p = self.procs.get(name)
        if p is None:
            return
        self.stopped.add(name)
        if p.poll() is None:
            p.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        self.save()

    def exited(self) -> tuple[str, int] | None:
        """A child that died by itself (not stopped by a step)."""
        for name, svc in self.services.items():
            if svc.proc is not None and svc.proc.poll() is not None:
                return name, svc.proc.returncode
        for name, p in self.procs.items():
            if name not in self.stopped and p.poll() is not None:
                return name, p.returncode
        return None

    def stop_all(self) -> None:
        # gateways first (their outboxes close), then the simulator, API, collector and alerter, then
        # the broker and the database
        for name in sorted(self.procs, key=lambda n: (not n.startswith("gateway-"), n != "simulator")):
            p = self.procs[name]
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs.values():
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        for name in ("influxd", "mosquitto"):
            svc = self.services.get(name)
            if svc is not None:
                svc.stop()
        self.pidfile.unlink(missing_ok=True)


def _stop_gateway(stack: Stack, step: StopGateway) -> str:
    stack.stop(f"gateway-{step.station}", kill=step.how == "power_cut")
    if step.how == "power_cut":
        return (f"{step.station}'s gateway loses power (killed): its last will marks it offline; "
                "gateway_offline and station_offline fire after a minute of silence")
    return f"{step.station}'s gateway shut down: station_offline fires after a minute of silence"


def _start_gateway(stack: Stack, step: StartGateway) -> str:
    stack.spawn(f"gateway-{step.station}", "gateway", stack.gateway_args[step.station])
    return f"{step.station}'s gateway is back: its offline alerts resolve with its first data"


ACTIONS: dict[str, Callable[[Stack, Any], str]] = {
    "stop_gateway": _stop_gateway, "start_gateway": _start_gateway,
}


# -- what the demo prints -----------------------------------------------------------------------
def shown(path: Path) -> str:
    """A path as typed from the current folder (the repo root under `make demo`)."""
    try:
        text = str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        text = str(path.resolve())
    return shlex.quote(text)


def heatwatch_command() -> str:
    exe = Path(sys.executable).parent / "heatwatch"
    return shown(exe) if exe.exists() else f"{shown(Path(sys.executable))} -m heatwatch"


def stop_command(root: Path) -> str:
    default = (Path.cwd() / ".demo").resolve()
    where = "" if root.resolve() == default else f" --dir {shown(root)}"
    return f"{heatwatch_command()} demo --stop{where}"


def _auth(var: str = "TOKEN") -> str:
    return f'-H "Authorization: Bearer ${var}"'


def ready_text(ports: Ports, root: Path, tokens: dict[str, str], took: float) -> str:
    api = f"http://127.0.0.1:{ports.api}"
    hw = heatwatch_command()
    influx_q = ("SELECT last(secondary_supply_temp), last(outdoor_temp), last(makeup_flow) FROM station "
                "WHERE time > now() - 1m GROUP BY station")
    lines = [
        f"ready {took:.0f} s after start: data is arriving and the API answers. In another terminal,",
        f"from {Path.cwd()} (or `source {shown(root / 'env')}` there: it sets all of the below):",
        "",
        "  # your API credentials for this demo: a dispatcher, and an engineer (silences, resolve)",
        *(f"    export {var}={tok}" for var, tok in tokens.items()),
        "  # the hotline: a household by address words (any order; curl URL-encodes them)",
        f"    curl -sS -G {api}/v1/lookup {_auth()} --data-urlencode {shlex.quote('q=' + LOOKUP_EXAMPLE)}",
        "  # the alerts firing now, newest first (they appear below as they fire)",
        f"    curl -sS -G {api}/v1/alerts {_auth()} -d state=firing",
        "  # every station's latest values",
        f"    curl -sS {api}/v1/stations {_auth()}",
        "  # InfluxDB: the last minute, per station",
        f"    influx -port {ports.influx} -database heatwatch -execute {shlex.quote(influx_q)}",
        "  # MQTT: every message as it passes (Ctrl-C ends it)",
        f"    mosquitto_sub -h 127.0.0.1 -p {ports.mqtt} -t 'heatwatch/v1/#' -v",
        "  # one more credential, in this demo's store (the API docs: " + api + "/docs)",
        f"    HEATWATCH_STATE_DIR={shown(root / 'state')} {hw} token add {shown(API_CONFIG)} disp-li "
        "--role dispatcher",
        "",
        f"Playing {shown(SCENARIO)}: {describe(SCENARIO)} Alerts appear here as they fire. Stop with "
        f"Ctrl-C (or `{stop_command(root)}` from elsewhere).",
    ]
    return "\n".join(lines)


def first_alert_text(ports: Ports, alert: dict[str, Any], took: float, *, old: bool = False) -> str:
    """``old``: the alert was firing before this run began (the store under DIR keeps alerts)."""
    api = f"http://127.0.0.1:{ports.api}"
    body = json.dumps({"note": "caller told: known fault, crew on the way", "ticket": "T-1001"},
                      ensure_ascii=False)
    head = (f"alert {alert['id']} is still firing from the last run" if old
            else f"first alert {took:.0f} s after start")
    return "\n".join([
        f"{head}. Acknowledge it as the dispatcher:",
        f"    curl -sS -X POST {api}/v1/alerts/{alert['id']}/ack {_auth()} "
        f"-H 'Content-Type: application/json' -d {shlex.quote(body)}",
    ])


def env_text(ports: Ports, root: Path, tokens: dict[str, str]) -> str:
    values = {"HEATWATCH_STATE_DIR": str((root / "state").resolve()),
              **{SERVICE_PORTS[n][0]: str(getattr(ports, n)) for n in SERVICE_PORTS},
              "HEATWATCH_INFLUX_URL": f"http://127.0.0.1:{ports.influx}",
              "HEATWATCH_API": f"http://127.0.0.1:{ports.api}", **tokens}
    return (f"# the running demo under {root.resolve()} (heatwatch demo, "
            f"{dt.datetime.now().isoformat(timespec='seconds')}): source it in another terminal\n"
            + "".join(f"export {k}={shlex.quote(v)}\n" for k, v in values.items()))


def _place(a: dict[str, Any]) -> str:
    if a.get("gateway") and not a.get("station"):
        return str(a["gateway"])
    parts = [a.get("station"), a.get("building"), a.get("household")]
    where = "/".join(p for p in parts if p)
    return f"{where} ({a['subject']})" if a.get("subject") else where


def alert_line(a: dict[str, Any], took: float) -> str:
    value = f", value {a['value']:g}" if isinstance(a.get("value"), (int, float)) else ""
    quiet = f", not paged: {a['quiet']}" if a.get("quiet") else ""
    return (f"[{took:5.0f} s] alert {a['id']} firing: {a['rule']} at {_place(a)} "
            f"({a['severity']}{value}{quiet})")


# -- stopping what was left behind -------------------------------------------------------------
def _read_pidfile(path: Path) -> dict[str, Any] | None:
    try:
        info: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return info


def _live(info: dict[str, Any]) -> tuple[bool, dict[str, int]]:
    """(the demo process itself is alive, its live children by name)."""
    demo = bool(info.get("cmdline")) and _ours(int(info["pid"]), info["cmdline"])
    kids = {n: int(c["pid"]) for n, c in (info.get("children") or {}).items()
            if _ours(int(c["pid"]), c["cmdline"])}
    return demo, kids


def _wait_gone(pids: list[int], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    left = pids
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = [p for p in left if Path(f"/proc/{p}").exists() and not _zombie(p)]
    return left


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def stop_demo(folder: str) -> int:
    """``heatwatch demo --stop``: stop the demo under ``folder`` and whatever it left behind."""
    root = Path(folder).resolve()
    pidfile = root / "demo.pid"
    info = _read_pidfile(pidfile)
    if info is None:
        print(f"no demo is running under {root} (no {pidfile.name})")
        return 0
    demo, kids = _live(info)
    if demo:
        print(f"stopping the demo (pid {info['pid']}) …", flush=True)
        os.kill(int(info["pid"]), signal.SIGTERM)  # it stops its children in order
        if _wait_gone([int(info["pid"])], 60):
            print(f"the demo (pid {info['pid']}) did not stop in 60 s", file=sys.stderr)
            return 1
        demo, kids = _live(info)
    if kids:
        print(f"stopping what a demo left behind: {', '.join(f'{n} (pid {p})' for n, p in kids.items())}",
              flush=True)
        for pid in kids.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGTERM)  # its session: the API's workers go with it
        for pid in _wait_gone(list(kids.values()), 15):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        _wait_gone(list(kids.values()), 5)
    pidfile.unlink(missing_ok=True)
    print("stopped")
    return 0


# -- the demo -----------------------------------------------------------------------------------
@contextlib.contextmanager
def _environ(values: dict[str, str]) -> Iterator[None]:
    """The children's environment for this process's own config loading too."""
    saved = dict(os.environ)
    os.environ.update(values)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _hang_up(_sig: int, _frame: object) -> None:
    # the terminal is gone: printing to it would fail midway through stopping the children
    sys.stdout = sys.stderr = open(os.devnull, "w")  # noqa: SIM115
    raise KeyboardInterrupt


def _influx_count(url: str) -> int:
    try:
        r = httpx.get(f"{url}/query", params={"db": "heatwatch", "epoch": "ms",
                                              "q": "SELECT count(secondary_supply_temp) FROM station"},
                      timeout=2)
        series = r.json()["results"][0].get("series") or []
        return int(series[0]["values"][0][1]) if series else 0
    except (httpx.HTTPError, KeyError, ValueError, IndexError):
        return 0


def _api_ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/ready", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _prepare_store(url: str) -> dict[str, str]:
    """Migrate the store, load the demo's households, issue the demo's tokens (fresh each run:
    the previous run's are revoked)."""
    from alerting.assets import ImportProblems, decode, parse
    from alerting.store import Store

    store = Store(url)
    try:
        store.migrate()
        now = int(time.time() * 1000)
        try:
            assets = parse(decode(ASSETS.read_bytes()))
        except ImportProblems as exc:
            raise DemoError(f"{ASSETS}: {exc}") from None
        store.import_assets(assets, actor=ACTOR, now=now)
        tokens = {}
        for var, (name, role) in TOKENS.items():
            store.revoke_tokens(name=name, actor=ACTOR, now=now)
            tokens[var] = store.add_token(name=name, role=role, actor=ACTOR, now=now)
        return tokens
    finally:
        store.close()


def _busy_ports(ports: Ports, configs: list[Path]) -> str | None:
    wanted = [(ports.mqtt, "MQTT (mosquitto)", "HEATWATCH_MQTT_PORT"),
              (ports.influx, "InfluxDB", "HEATWATCH_INFLUX_PORT"),
              (ports.api, "the API", "HEATWATCH_API_PORT"),
              (ports.metrics, "the collector's metrics", "HEATWATCH_METRICS_PORT"),
              (ports.alerter_metrics, "the alerter's metrics", "HEATWATCH_ALERTER_METRICS_PORT")]
    for c in configs:
        cfg = load_gateway_config(c)
        seen = set()
        for d in cfg.resolved:
            if d.host is not None and d.port not in seen:
                seen.add(d.port)
                wanted.append((d.port, f"the simulated {cfg.station} {d.name} (Modbus, {c.name})", ""))
    for port, what, var in wanted:
        if port_busy(port):
            move = f"{var} moves it alone, " if var else ""
            return (f"port {port} for {what} is in use: another demo? `{heatwatch_command()} demo --stop "
                    f"[--dir DIR]` stops one left behind; or {move}{OFFSET_ENV}=100 (or --port-offset 100) "
                    "moves every demo port")
    return None


def run_demo(stations: int, folder: str, seconds: float | None, port_offset: int | None = None) -> int:
    try:
        return _run(stations, folder, seconds, port_offset)
    except DemoError as exc:
        print(f"heatwatch demo: {exc}", file=sys.stderr)
        return 1
    except MissingBinary as exc:
        print(f"heatwatch demo: {exc}", file=sys.stderr)
        return 1


@dataclass
class Plan:
    """What a demo run will use, all checked before anything starts."""

    root: Path
    ports: Ports
    env: dict[str, str]
    configs: dict[str, Path]  # station → its gateway config
    steps: list[StopGateway | StartGateway]
    store_url: str
    tokens: dict[str, str] = field(default_factory=dict)


def _plan(stations: int, folder: str, port_offset: int | None) -> Plan:
    root = Path(folder).resolve()
    root.mkdir(parents=True, exist_ok=True)
    pidfile = root / "demo.pid"
    info = _read_pidfile(pidfile)
    if info is not None:
        demo, kids = _live(info)
        if demo:
            raise DemoError(f"a demo is already running under {shown(root)} (pid {info['pid']}): stop it "
                            f"with Ctrl-C in its terminal or `{stop_command(root)}`")
        if kids:
            raise DemoError(f"a demo left processes behind under {shown(root)} ({', '.join(kids)}): "
                            f"`{stop_command(root)}` stops them")
        pidfile.unlink()
    ports = plan_ports(dict(os.environ), port_offset)
    env = {**os.environ, "HEATWATCH_STATE_DIR": str(root / "state"),
           "HEATWATCH_MQTT_PORT": str(ports.mqtt), "HEATWATCH_INFLUX_URL": f"http://127.0.0.1:{ports.influx}",
           "HEATWATCH_API_PORT": str(ports.api), "HEATWATCH_METRICS_PORT": str(ports.metrics),
           "HEATWATCH_ALERTER_METRICS_PORT": str(ports.alerter_metrics),
           "HEATWATCH_RULES_FILE": str(RULES), "PYTHONUNBUFFERED": "1"}
    with _environ(env):
        configs = gateway_configs(stations, ports.offset, root / "gateway")
        load_scenario(SCENARIO)  # the simulator's part, checked before anything starts
        busy = _busy_ports(ports, configs)
        if busy:
            raise DemoError(busy)
        by_station = {load_gateway_config(c).station: c for c in configs}
        # steps for stations this run leaves out (--stations 2) are not played
        steps = [s for s in load_steps(SCENARIO) if s.station in by_station]
        return Plan(root, ports, env, by_station, steps, load_api_config(API_CONFIG).store)


class AlertWatch:
    """Firing alerts from the store, as lines for the terminal: each one once as it fires,
    once when it resolves, and the commands to acknowledge the first."""

    def __init__(self, store: Any, ports: Ports) -> None:
        self.store, self.ports = store, ports
        self.before = {a["id"] for a in store.query(state=["firing"], limit=500).rows}  # a re-run's
        self.firing: dict[int, str] = {}
        self.first = False

    def poll(self, took: float) -> list[str]:
        rows = self.store.query(state=["firing"], limit=500).rows
        out = []
        for a in sorted(rows, key=lambda r: int(r["id"])):
            if a["id"] not in self.firing:
                self.firing[a["id"]] = a["rule"]
                out.append(alert_line(a, took) + (" (firing since the last run)" if a["id"] in self.before
                                                  else ""))
        for aid in sorted(set(self.firing) - {a["id"] for a in rows}):
            out.append(f"[{took:5.0f} s] alert {aid} resolved: {self.firing.pop(aid)}")
        if not self.first and rows:
            self.first = True
            earliest = min(rows, key=lambda r: (r["fired_at"] or 0, int(r["id"])))
            out.append(first_alert_text(self.ports, earliest, took, old=earliest["id"] in self.before)
                       + "\n")
        return out


READY_WITHIN_S = 120  # the gateways' first data reaches InfluxDB in 2-5 s here


def _run(stations: int, folder: str, seconds_: float | None, port_offset: int | None) -> int:
    t0 = time.monotonic()
    with contextlib.suppress(AttributeError, ValueError):
        sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    plan = _plan(stations, folder, port_offset)
    root, ports = plan.root, plan.ports
    (root / "logs").mkdir(parents=True, exist_ok=True)
    (root / "state").mkdir(parents=True, exist_ok=True)
    with _environ(plan.env):
        plan.tokens = _prepare_store(plan.store_url)
    env_file = root / "env"
    env_file.write_text(env_text(ports, root, plan.tokens))
    env_file.chmod(0o600)  # it holds the tokens

    stack = Stack(root, plan.env, root / "demo.pid", ports=ports, tokens=plan.tokens,
                  gateway_args={st: str(c) for st, c in plan.configs.items()})
    if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:  # `nohup make demo` keeps running
        signal.signal(signal.SIGHUP, _hang_up)
    from alerting.store import Store

    store: Store | None = None
    influx_url, api_url = f"http://127.0.0.1:{ports.influx}", f"http://127.0.0.1:{ports.api}"
    try:
        print(f"starting mosquitto on 127.0.0.1:{ports.mqtt} and influxd on {influx_url} (data in "
              f"{shown(root)})")
        stack.start_service("mosquitto", Mosquitto(root / "mosquitto", ports.mqtt))
        stack.start_service("influxd", Influxd(root / "influxdb", ports.influx, free_port()))
        # The collector and the alerter first: the broker queues messages only for subscriptions
        # that exist, so their persistent sessions must be there before the gateways publish.
        stack.spawn("collector", "collector", str(COLLECTOR_CONFIG))
        stack.spawn("alerter", "alerter", str(ALERTER_CONFIG))
        stack.spawn("api", "api", str(API_CONFIG))
        stack.spawn("simulator", "simulate", "--scenario", str(SCENARIO), *stack.gateway_args.values())
        deadline = time.monotonic() + 60
        for name, needle, what in (("collector", b'"subscribed"', "subscribe"),
                                   ("alerter", b'"member registered"', "register")):  # JSON log lines
            log_file = root / "logs" / f"{name}.log"
            while needle not in log_file.read_bytes():
                if time.monotonic() > deadline or stack.exited():
                    raise DemoError(f"the {name} did not {what}; see {shown(log_file)}")
                time.sleep(0.1)
        for st, c in stack.gateway_args.items():
            stack.spawn(f"gateway-{st}", "gateway", c)
        started = time.monotonic()
        print(f"{len(plan.configs)} simulated stations, their gateways, the collector, the alerter and the "
              f"API are starting; logs in {shown(root / 'logs')}")
        store = Store(plan.store_url)
        watch = AlertWatch(store, ports)
        base = _influx_count(influx_url)
        ready = False
        steps = list(plan.steps)
        next_poll = 0.0
        while seconds_ is None or time.monotonic() - t0 < seconds_:
            gone = stack.exited()
            if gone:
                name, code = gone
                raise DemoError(f"{name} exited with code {code}; see {shown(root / 'logs' / f'{name}.log')}")
            now = time.monotonic()
            while steps and now - started >= steps[0].at:
                step = steps.pop(0)
                print(f"[{now - t0:5.0f} s] {ACTIONS[step.do](stack, step)}")
            if now >= next_poll:
                next_poll = now + 1.0
                if not ready:
                    data, api = _influx_count(influx_url) > base, _api_ready(api_url)
                    if data and api:
                        ready = True
                        print("\n" + ready_text(ports, root, plan.tokens, now - t0) + "\n")
                    elif now - started > READY_WITHIN_S:
                        raise DemoError(
                            f"not ready {READY_WITHIN_S} s after the gateways started: "
                            + ("the API does not answer /ready; see " + shown(root / "logs" / "api.log")
                               if data else "no data reached InfluxDB; see the logs in "
                               + shown(root / "logs")))
                if ready:
                    for line in watch.poll(now - t0):
                        print(line)
            time.sleep(0.2)
        return 0 if ready else 1
    except KeyboardInterrupt:
        return 0
    finally:
        # a second Ctrl-C (or the hang-up that follows a closed window) must not cut the
        # stopping short and leave children behind
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        with contextlib.suppress(OSError, ValueError):
            print("stopping …", flush=True)
        if store is not None:
            store.close()
        stack.stop_all()
