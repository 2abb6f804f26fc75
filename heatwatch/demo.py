"""``heatwatch demo``: the whole pipeline on simulated stations, on loopback, with a winter night.

Starts mosquitto and influxd with their data under DIR, the simulator playing
``deploy/scenarios/demo.yaml``, one gateway per station, the collector, the alerter (one member
on SQLite, judging with ``deploy/alerter/rules-demo.yaml``: the real thresholds, short holds) and
the API as child processes. Before any of them starts it loads the demo's asset register
(``deploy/assets/demo-households.csv``) into the alert store and issues a dispatcher and an
engineer token. Remote control works out of the box: a key pair made once under DIR/keys
signs the API's commands (DIR/api.yaml, the shipped API config with a ``control:`` block) and
the gateways verify them (DIR/gateway/*.yaml, the shipped configs with a ``control:`` block and
the ports moved; their maps under DIR/maps where the scenario's ``map_overrides`` change them).
It prints ready-to-paste commands (and writes them as ``DIR/env`` for ``source``), runs the
scenario's steps (a gateway losing power, coming back, the engineer opening the cold building's
valve through the API and following it until the alert resolves), prints each alert as it fires,
and stops everything on Ctrl-C, SIGTERM, or SIGHUP (the terminal closed), or after
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
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import httpx
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from contract.commands import Ticket
from contract.config import load_api_config, load_gateway_config, read_yaml
from contract.errors import ConfigError
from contract.points import check_name
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
EXAMPLE_TOKEN = "disp-li"  # the printed `token add` example's name (-2, -3 … once it has a token)
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


def gateway_configs(stations: int, offset: int, folder: Path, *, public_key: Path | None = None,
                    maps: dict[Path, Path] | None = None) -> list[Path]:
    """The shipped gateway configs, or copies under ``folder`` with every Modbus port moved by
    ``offset`` (the simulator and the gateways both read these, so they agree).

    ``public_key``: the copies take remote commands verified against it (a ``control:`` block,
    its ledger beside the outbox); ``maps``: a shipped map (resolved path) → the copy to use."""
    shipped = sorted((DEPLOY / "gateway").glob("st*.yaml"))
    if not 1 <= stations <= len(shipped):
        raise DemoError(f"--stations must be 1-{len(shipped)} (deploy/gateway has {len(shipped)} "
                        "station configs)")
    shipped = shipped[:stations]
    if offset == 0 and public_key is None and not maps:
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
            if isinstance(dev.get("map"), str) and maps and Path(dev["map"]) in maps:
                dev["map"] = str(maps[Path(dev["map"])])
        changes = [f"every Modbus port moved by {offset:+d}"] if offset else []
        if public_key is not None:
            outbox = str((data.get("outbox") or {}).get("path") or "")
            ledger = (outbox.removesuffix(".outbox.sqlite") + ".commands.sqlite"
                      if outbox.endswith(".outbox.sqlite") else
                      f"${{HEATWATCH_STATE_DIR:-/var/lib/heatwatch}}/gw-{data['station']}.commands.sqlite")
            data["control"] = {"public_keys": [str(public_key.resolve())], "ledger": ledger}
            changes.append(f"remote commands signed by the demo's key ({public_key.name})")
        if maps:
            changes.append("the demo's maps (" + ", ".join(sorted(shown(m) for m in maps.values())) + ")")
        dst = folder / src.name
        dst.write_text(f"# written by heatwatch demo from {src}: {'; '.join(changes)}\n"
                       + yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")
        out.append(dst)
    return out


# -- remote control: the demo's key pair, API config and map ------------------------------------
KEY_NAME = "control-room"


def demo_keys(folder: Path) -> tuple[Path, Path]:
    """The demo's command-signing key pair under ``folder`` (``heatwatch keys generate`` does the
    same for a site), made once and kept: the private key mode 0600 in a 0700 folder."""
    from contract.commands import generate_keypair, load_private_key

    key, pub = folder / f"{KEY_NAME}.key", folder / f"{KEY_NAME}.pub"
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)
    if key.exists():
        try:
            private = load_private_key(key.read_bytes(), str(key))
        except (OSError, ValueError) as exc:
            raise DemoError(f"{key}: {exc}; move it away and the demo makes a new pair") from None
        key.chmod(0o600)
        if not pub.exists():  # derived again from the private key: the pair always matches
            from cryptography.hazmat.primitives import serialization

            pub.write_bytes(private.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
        return key, pub
    private_pem, public_pem = generate_keypair()
    fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # never readable by others
    with os.fdopen(fd, "wb") as f:
        f.write(private_pem)
    pub.write_bytes(public_pem)
    return key, pub


def api_config(folder: Path, signing_key: Path) -> Path:
    """deploy/api/api.yaml with a ``control:`` block: the demo's signing key and its broker."""
    data = yaml.safe_load(API_CONFIG.read_text(encoding="utf-8"))
    if isinstance(data.get("report"), str) and not Path(data["report"]).is_absolute():
        data["report"] = str((API_CONFIG.parent / data["report"]).resolve())
    data["control"] = {"signing_key": str(signing_key.resolve()),
                       "mqtt": {"host": "127.0.0.1", "port": "${HEATWATCH_MQTT_PORT:-11883}"}}
    dst = folder / "api.yaml"
    dst.write_text(f"# written by heatwatch demo from {API_CONFIG}: remote control with the demo's key\n"
                   + yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return dst


def demo_maps(folder: Path, overrides: dict[str, dict[str, Any]]) -> dict[Path, Path]:
    """Copies of the shipped maps with the scenario's ``map_overrides`` (shipped map → copy) for
    the writable points they name; a map without any of those points is used as shipped."""
    out = {}
    for src in sorted((DEPLOY / "maps").glob("*.yaml")):
        data = yaml.safe_load(src.read_text(encoding="utf-8"))
        hit = False
        for pt in data.get("points") or []:
            o = overrides.get(pt.get("point"))
            if o is None or not isinstance(pt.get("write"), dict):
                continue
            hit = True
            if "group" in o:
                pt["group"] = o["group"]
            pt["write"] = {**pt["write"], **o.get("write", {})}
        if not hit:
            continue
        folder.mkdir(parents=True, exist_ok=True)
        said = "; ".join(f"{p} {json.dumps(o)}" for p, o in overrides.items())
        dst = folder / src.name
        dst.write_text(f"# written by heatwatch demo from {src}, with the demo's map_overrides from "
                       f"{shown(SCENARIO)} ({said}): never for a site\n"
                       + yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")
        out[src.resolve()] = dst.resolve()
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


class OpenValve(_Step):
    """Remote control, as the engineer through the API: once ``alert`` fires for the building
    (``at`` is the earliest), open its entrance valve to ``to`` % in the steps its gateway
    announces (``max_step`` from the present opening, ``min_interval_s`` apart), each command
    confirmed by the gateway's read-back before the next; then follow the rooms until the alert
    resolves."""
    do: Literal["open_valve"]
    station: Ident
    building: Ident
    device: Ident = "plc"
    to: float = Field(gt=0, le=100)
    alert: Literal["building_low", "room_low"] = "building_low"
    ticket: Ticket = "T-1001"  # the hotline ticket of the caller from the cold building


# A new kind of step is a model here, added to Step, and a function in ACTIONS that does it
# against the running stack: it returns the line the terminal shows, or, for a step that takes
# a while (open_valve), a generator the demo's loop advances every turn (so alerts keep
# printing), yielding None while it waits and a line (or lines) when something happened.
Step = Annotated[StopGateway | StartGateway | OpenValve, Field(discriminator="do")]
AnyStep = StopGateway | StartGateway | OpenValve


class WriteBounds(BaseModel):
    """The demo's own bounds for a writable point (the rest stay the map's)."""
    model_config = ConfigDict(extra="forbid")
    min: float | None = None
    max: float | None = None
    max_step: float | None = Field(default=None, gt=0)
    min_interval_s: float | None = Field(default=None, ge=0, le=7 * 86400)


class PointOverride(BaseModel):
    """What the demo's copy of the maps changes for every point of one (writable) name."""
    model_config = ConfigDict(extra="forbid")
    group: Ident | None = None  # another poll group of the gateway configs (fast: every 5 s)
    write: WriteBounds | None = None


class _Steps(BaseModel):
    model_config = ConfigDict(extra="ignore")  # speed and events are the simulator's
    description: str = ""
    steps: list[Step] = Field(default_factory=list)
    map_overrides: dict[str, PointOverride] = Field(default_factory=dict)

    @field_validator("map_overrides")
    @classmethod
    def _writable(cls, v: dict[str, PointOverride]) -> dict[str, PointOverride]:
        for name in v:
            d = check_name(name)
            if d is None or not d.writable:
                raise ValueError(f"{name}: not a canonical writable point (a setpoint)")
        return v


def describe(path: Path) -> str:
    """The scenario's own sentence about what it plays."""
    return str(read_yaml(path).get("description") or "")


def _load(path: Path) -> _Steps:
    data = read_yaml(path)
    try:
        return _Steps.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors(include_url=False):
            # the union puts the step's kind into the path (steps.2.start_gateway.at): drop it
            loc = [p for i, p in enumerate(err["loc"]) if not (i and isinstance(err["loc"][i - 1], int))
                   or p not in ACTIONS]
            msg = "unknown key (typo?)" if err["type"] == "extra_forbidden" else err["msg"]
            problems.append(f"{'.'.join(map(str, loc))}: {msg.removeprefix('Value error, ')}")
        raise ConfigError(str(path), problems) from None


def load_steps(path: Path) -> list[AnyStep]:
    return sorted(_load(path).steps, key=lambda s: s.at)


def map_overrides(path: Path) -> dict[str, dict[str, Any]]:
    """The scenario's ``map_overrides``: point → what the demo's copy of its map changes."""
    return {p: o.model_dump(exclude_none=True) for p, o in _load(path).map_overrides.items()}


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
    log_from: dict[str, int] = field(default_factory=dict)  # child → its log's size when spawned
    services: dict[str, Mosquitto | Influxd] = field(default_factory=dict)
    stopped: set[str] = field(default_factory=set)  # by a step, on purpose
    t0_wall: float = 0.0  # wall time the demo started (the times it prints count from here)
    started_wall: float = 0.0  # wall time the gateways started (a reading since is this run's)

    def spawn(self, name: str, *args: str) -> None:
        log = open(self.root / "logs" / f"{name}.log", "ab")  # noqa: SIM115 (lives as long as the child)
        self.log_from[name] = log.tell()  # the logs grow across runs: this run's lines start here
        # its own session: Ctrl-C and a closed terminal reach the demo only, which stops the
        # children in order (gateways before the broker, the broker before the collector and alerter)
        self.procs[name] = subprocess.Popen([sys.executable, "-m", "heatwatch", *args], env=self.env,
                                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.stopped.discard(name)
        self.save()

    def logged(self, name: str, needle: bytes) -> bool:
        """The child's log has said ``needle`` since it was spawned (not in an earlier run's lines:
        a readiness wait that matched the last run's "subscribed" started the gateways before the
        collector, and before the simulator listened, on every restart)."""
        with open(self.root / "logs" / f"{name}.log", "rb") as f:
            f.seek(self.log_from.get(name, 0))
            return needle in f.read()

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


# -- remote control, as the engineer -----------------------------------------------------------
def curl(api: str, path: str, body: dict[str, Any] | None = None, var: str = "ENGINEER_TOKEN") -> str:
    """The one-line curl of an API call with the token in ``$var``, to paste (``by_hand_text``);
    a POST's body is the bytes the demo itself sends (``_body``, ``_Engineer.post``)."""
    line = f'curl -sS{" -X POST" if body is not None else ""} {shlex.quote(api + path)} {_auth(var)}'
    if body is not None:
        line += " -H 'Content-Type: application/json' -d " + shlex.quote(_body(body).decode())
    return line


def _body(body: dict[str, Any]) -> bytes:
    return json.dumps(body, ensure_ascii=False).encode()


def _num(v: float) -> float | int:
    """70.0 → 70: the JSON a person would type."""
    return int(v) if float(v).is_integer() else v


class _Engineer:
    """The demo's engineer on the API: short calls; None when an answer is not there (yet)."""

    def __init__(self, api: str, token: str) -> None:
        self.api = api
        self.http = httpx.Client(base_url=api, headers={"Authorization": f"Bearer {token}"}, timeout=10)

    def get(self, path: str, **params: Any) -> Any:
        try:
            r = self.http.get(path, params=params)
        except httpx.HTTPError:
            return None
        return r.json() if r.status_code == 200 else None

    def post(self, path: str, body: dict[str, Any]) -> httpx.Response | str:
        try:
            return self.http.post(path, content=_body(body), headers={"Content-Type": "application/json"})
        except httpx.HTTPError as exc:
            return f"{type(exc).__name__}: {exc}"

    def close(self) -> None:
        self.http.close()


T = TypeVar("T")
Story = Generator[str | None, None, None]  # a step that takes a while: None (waiting) or a line


def _wait(seconds_: float) -> Generator[None, None, None]:
    due = time.monotonic() + seconds_
    while time.monotonic() < due:
        yield None


def _until(check: Callable[[], T | None], every: float = 1.0) -> Generator[None, None, T]:
    """Yield (wait) until ``check()`` gives something other than None, asking every ``every``
    seconds; return that."""
    while True:
        got = check()
        if got is not None:
            return got
        yield from _wait(every)


def _influx_last(influx_url: str, q: str) -> list[dict[str, Any]]:
    try:
        r = httpx.get(f"{influx_url}/query", params={"db": "heatwatch", "q": q, "epoch": "ms"}, timeout=5)
        series: list[dict[str, Any]] = r.json()["results"][0].get("series") or []
    except (httpx.HTTPError, KeyError, ValueError, IndexError):
        return []
    return series


def _latest(influx_url: str, station: str, building: str, point: str, since_ms: int) -> float | None:
    """A building point's latest reading since ``since_ms``, None when there is none yet."""
    from contract.influx import MEASUREMENT_BUILDING

    series = _influx_last(influx_url, f'SELECT last("{point}") FROM "{MEASUREMENT_BUILDING}" WHERE '
                                      f"\"station\" = '{station}' AND \"building\" = '{building}' "
                                      f"AND time >= {since_ms}ms")
    v = series[0]["values"][0][1] if series else None
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _rooms(influx_url: str, station: str, building: str) -> dict[str, float]:
    """The building's rooms now (each household sensor's latest reading of the last 3 minutes)."""
    from contract.influx import MEASUREMENT_HOUSEHOLD

    series = _influx_last(influx_url, f'SELECT last("room_temp") FROM "{MEASUREMENT_HOUSEHOLD}" WHERE '
                                      f"\"station\" = '{station}' AND \"building\" = '{building}' "
                                      'AND time > now() - 3m GROUP BY "household"')
    return {s["tags"]["household"]: float(s["values"][0][1]) for s in series
            if isinstance(s["values"][0][1], (int, float))}


FINAL = {"confirmed", "mismatch", "rejected", "failed", "expired", "unknown"}
WARM_C = 18.0  # GB/T 33833-2017 §5.1


def _open_valve(stack: Stack, step: OpenValve) -> Story:
    from contract.config import WriteSpec

    where, point = f"{step.station}/{step.building}", "building_valve_setpoint"
    api = f"http://127.0.0.1:{stack.ports.api}"
    eng = _Engineer(api, stack.tokens["ENGINEER_TOKEN"])
    influx = f"http://127.0.0.1:{stack.ports.influx}"
    fresh_ms = int(stack.started_wall * 1000)  # a reading from this run, not the last one's

    def since(wall_ms: float) -> float:
        return wall_ms / 1000 - stack.t0_wall

    def present() -> float | None:
        # from InfluxDB, where the API measures a command's step from too (/v1/stations/{st}/
        # buildings answers last_seen 0 for every building: InfluxQL's last(*) has no one time)
        return _latest(influx, step.station, step.building, point, fresh_ms)

    def writable() -> dict[str, Any] | None:
        page = eng.get(f"/v1/commands/writable/{step.station}")
        return next((w for w in (page or {}).get("data", []) if (w["device"], w["point"], w["building"])
                     == (step.device, point, step.building)), None)

    def firing() -> dict[str, Any] | None:
        page = eng.get("/v1/alerts", state="firing", rule=step.alert, station=step.station,
                       building=step.building, limit=1)
        return next(iter((page or {}).get("data", [])), None)

    try:
        alert = yield from _until(firing)
        wp: dict[str, Any] = yield from _until(writable)
        cur: float = yield from _until(present)
        site = check_name(point).write  # type: ignore[union-attr]
        site_step, site_interval = (site[2] if site else None), WriteSpec().min_interval_s
        max_step, interval = wp.get("max_step"), float(wp.get("min_interval_s") or 0)
        page = eng.get(f"/v1/stations/{step.station}/buildings")
        address = next((b.get("address") for b in (page or {}).get("data", [])
                        if b["building"] == step.building), None)
        fired = ("firing since the last run" if (alert.get("fired_at") or 0) / 1000 < stack.t0_wall
                 else f"fired at {since(alert['fired_at']):.0f} s")
        yield (f"alert {alert['id']} ({step.alert} at {where}, {fired}): the engineer opens the "
               f"building's entrance valve {cur:g} → {step.to:g} % through the API, "
               + (f"{max_step:g} % a command" if max_step else "in one command")
               + f", {interval:g} s apart: the bounds its gateway announces (this demo's map; a site's: "
               + (f"{site_step:g} %, " if site_step else "") + f"{site_interval:g} s)")
        sent: list[str] = []
        confirmed_at = None
        while cur < step.to - 1e-9:
            value = min(step.to, cur + max_step) if max_step else step.to
            body = {"station": step.station, "device": step.device, "point": point,
                    "building": step.building, "value": _num(value),
                    "reason": f"{address or where}: rooms below {WARM_C:g} °C (alert {alert['id']})",
                    "ticket": step.ticket}
            # a record of what was sent, not a command to paste: pasted later, it would turn the
            # valve back to this step (the lines to paste are by_hand_text's, another building's)
            yield (f"command {len(sent) + 1}: valve {cur:g} → {value:g} %\n"
                   f"  sent: POST /v1/commands {_body(body).decode()}")
            r = eng.post("/v1/commands", body)
            if isinstance(r, str) or r.status_code != 201:
                said = r if isinstance(r, str) else f"{r.status_code} {r.json().get('detail')}"
                yield f"the API refused command {len(sent) + 1} ({said}): the demo stops opening the valve"
                return
            cmd_id = r.json()["id"]
            sent.append(cmd_id)

            def answered(cmd_id: str = cmd_id) -> dict[str, Any] | None:
                c: dict[str, Any] | None = eng.get(f"/v1/commands/{cmd_id}")
                return c if c and c["state"] in FINAL else None

            cmd: dict[str, Any] = yield from _until(answered, every=0.2)
            res = cmd.get("result") or {}
            took_ms = (res.get("at") or cmd["created_at"]) - cmd["created_at"]
            if cmd["state"] != "confirmed":
                yield (f"command {cmd_id[:8]} {cmd['state']}: {res.get('reason') or ''} "
                       f"{res.get('detail') or ''}".rstrip() + "; the demo stops opening the valve")
                return
            cur = float(res["read_back"])
            confirmed_at = time.time()
            yield (f"command {cmd_id[:8]} confirmed: the gateway wrote {value:g} % and read back {cur:g} %, "
                   f"{took_ms:.0f} ms after the API took the command")
            if cur < step.to - 1e-9:  # the next one once its interval is over and the API sees it
                # (the API measures the step from the latest reading, the interval from sent_at)
                yield from _wait((cmd.get("sent_at") or cmd["created_at"]) / 1000 + interval + 1.0
                                 - time.time())

                def seen(cur: float = cur) -> bool | None:
                    p = present()
                    return True if p is not None and abs(p - cur) < 0.05 else None

                yield from _until(seen, every=0.5)
        yield by_hand_text(api, step, sent[-1] if sent else None, stack.root)
        rooms = yield from _until(lambda: _rooms(influx, step.station, step.building) or None)
        yield (f"{where}'s rooms: " + " ".join(f"{v:.1f}" for _, v in sorted(rooms.items())) + " °C; they "
               f"warm up over the next minutes (this demo's rooms follow a valve within minutes, "
               f"rooms_settle in {shown(SCENARIO)}; a real building's take hours)")
        last_print = valve_at = time.monotonic()
        while True:
            rooms = _rooms(influx, step.station, step.building)
            if rooms and min(rooms.values()) >= WARM_C:
                yield (f"every room of {where} is above {WARM_C:g} °C again ("
                       + " ".join(f"{v:.1f}" for _, v in sorted(rooms.items())) + " °C); the alert "
                       "resolves once they stay above 18.5 °C for the rules' hold")
                break
            if rooms and time.monotonic() - last_print >= 60:
                last_print = time.monotonic()
                yield (f"{where}'s rooms: " + " ".join(f"{v:.1f}" for _, v in sorted(rooms.items()))
                       + f" °C, {time.monotonic() - valve_at:.0f} s after the valve reached {cur:g} %")
            yield from _wait(5)

        def resolved() -> dict[str, Any] | None:
            a: dict[str, Any] | None = eng.get(f"/v1/alerts/{alert['id']}")
            return a if a and a["state"] == "resolved" else None

        done: dict[str, Any] = yield from _until(resolved, every=2.0)
        yield (f"{where} is warm again: alert {alert['id']} resolved. From the demo's start: "
               + (f"the alert {since(alert['fired_at']):.0f} s, " if "fired at" in fired else "")
               + (f"the valve at {cur:g} % confirmed {confirmed_at - stack.t0_wall:.0f} s, "
                  if confirmed_at else "")
               + f"resolved {since(done['resolved_at'] or time.time() * 1000):.0f} s")
    finally:
        eng.close()


def by_hand_text(api: str, step: OpenValve, last: str | None, root: Path = Path(".demo")) -> str:
    """How to send a command by hand, and to follow one: pasteable as printed (the engineer's
    token in $ENGINEER_TOKEN: `source .demo/env`). The example opens another building's valve
    a step (b01: its own rate limit, nothing to do with the story's b03)."""
    other = "b01" if step.building != "b01" else "b02"
    body = {"station": step.station, "device": step.device, "point": "building_valve_setpoint",
            "building": other, "value": 70, "reason": "trying remote control", "ticket": "T-1002"}
    lines = [f"Send one by hand, as the engineer (`source {shown(root / 'env')}` sets "
             f"$ENGINEER_TOKEN): {step.station}/{other}'s valve to 70 %; the answer's \"state\" goes "
             "requested → sent, and GET shows confirmed once the gateway has read it back:",
             f"    {curl(api, '/v1/commands', body)}"]
    if last is not None:
        lines += ["  # a command's lifecycle (the demo's last; yours: the \"id\" in the answer above)",
                  f"    {curl(api, f'/v1/commands/{last}')}"]
    lines += ["  # every command of the building, newest first",
              f"    {curl(api, f'/v1/commands?station={step.station}&building={step.building}')}", ""]
    return "\n".join(lines)


ACTIONS: dict[str, Callable[[Stack, Any], str | Story]] = {
    "stop_gateway": _stop_gateway, "start_gateway": _start_gateway, "open_valve": _open_valve,
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


def second_command(root: Path) -> str:
    """A demo beside the one under ``root``: its own folder (DIR/demo.pid, its data, its store)
    and every port moved."""
    return f"{heatwatch_command()} demo --dir {shown(root.with_name(root.name + '-b'))} --port-offset 100"


def stop_command(root: Path) -> str:
    default = (Path.cwd() / ".demo").resolve()
    where = "" if root.resolve() == default else f" --dir {shown(root)}"
    return f"{heatwatch_command()} demo --stop{where}"


def _auth(var: str = "TOKEN") -> str:
    return f'-H "Authorization: Bearer ${var}"'


def ready_text(ports: Ports, root: Path, tokens: dict[str, str], took: float, *,
               example: str = EXAMPLE_TOKEN) -> str:
    api = f"http://127.0.0.1:{ports.api}"
    hw = heatwatch_command()
    influx_q = ("SELECT last(secondary_supply_temp), last(outdoor_temp), last(makeup_flow) FROM station "
                "WHERE time > now() - 1m GROUP BY station")
    lines = [
        f"ready {took:.0f} s after start: data is arriving and the API answers. In another terminal,",
        f"from {Path.cwd()} (or `source {shown(root / 'env')}` there: it sets all of the below):",
        "",
        "  # your API credentials for this demo: a dispatcher, and an engineer (silences, resolve, valves)",
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
        f"    HEATWATCH_STATE_DIR={shown(root / 'state')} {hw} token add {shown(API_CONFIG)} {example} "
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


def _prepare_store(url: str) -> tuple[dict[str, str], str]:
    """Migrate the store, load the demo's households, issue the demo's tokens (fresh each run:
    the previous run's are revoked); and the name the printed `token add` example uses (a name
    holds one live token, and the store is kept between runs: one no token has yet)."""
    from alerting.assets import ImportProblems, decode, parse
    from alerting.registry import SiteRegistry

    registry = SiteRegistry(url)
    try:
        registry.migrate()
        now = int(time.time() * 1000)
        try:
            assets = parse(decode(ASSETS.read_bytes()))
        except ImportProblems as exc:
            raise DemoError(f"{ASSETS}: {exc}") from None
        registry.import_assets(assets, actor=ACTOR, now=now)
        tokens = {}
        for var, (name, role) in TOKENS.items():
            registry.revoke_tokens(name=name, actor=ACTOR, now=now)
            tokens[var] = registry.add_token(name=name, role=role, actor=ACTOR, now=now)
        live = {r.name for r in registry.list_tokens() if r.revoked_at is None}
        example = next(n for n in (EXAMPLE_TOKEN, *(f"{EXAMPLE_TOKEN}-{i}" for i in range(2, 10_000)))
                       if n not in live)
        return tokens, example
    finally:
        registry.close()


def modbus_ports(configs: list[Path]) -> list[int]:
    """The loopback ports the simulator serves these gateway configs' devices on."""
    return sorted({d.port for c in configs for d in load_gateway_config(c).resolved
                   if d.host is not None})


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
    steps: list[AnyStep]
    store_url: str
    api_config: Path
    tokens: dict[str, str] = field(default_factory=dict)
    example_token: str = EXAMPLE_TOKEN  # the name the printed `token add` uses


def _plan(stations: int, folder: str, port_offset: int | None) -> Plan:
    root = Path(folder).resolve()
    root.mkdir(parents=True, exist_ok=True)
    pidfile = root / "demo.pid"
    info = _read_pidfile(pidfile)
    if info is not None:
        demo, kids = _live(info)
        if demo:
            raise DemoError(f"a demo is already running under {shown(root)} (pid {info['pid']}): stop it "
                            f"with Ctrl-C in its terminal or `{stop_command(root)}`; a second demo beside "
                            f"it needs its own folder and ports: `{second_command(root)}`")
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
        load_scenario(SCENARIO)  # the simulator's part, checked before anything starts
        # remote control works out of the box: the demo's own key pair signs the API's commands
        # and the demo's gateway configs verify them (their maps with the scenario's map_overrides)
        key, pub = demo_keys(root / "keys")
        configs = gateway_configs(stations, ports.offset, root / "gateway", public_key=pub,
                                  maps=demo_maps(root / "maps", map_overrides(SCENARIO)))
        api = api_config(root, key)
        busy = _busy_ports(ports, configs)
        if busy:
            raise DemoError(busy)
        by_station = {load_gateway_config(c).station: c for c in configs}
        # steps for stations this run leaves out (--stations 2) are not played
        steps = [s for s in load_steps(SCENARIO) if s.station in by_station]
        return Plan(root, ports, env, by_station, steps, load_api_config(api).store, api)


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
                self.firing[a["id"]] = f"{a['rule']} at {_place(a)}"
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


def _say(took: float, text: str) -> None:
    """A line of the story, stamped with the seconds since the demo started (its first line)."""
    first, _, rest = text.partition("\n")
    print(f"[{took:5.0f} s] {first}" + (f"\n{rest}" if rest else ""))


def _run(stations: int, folder: str, seconds_: float | None, port_offset: int | None) -> int:
    t0, t0_wall = time.monotonic(), time.time()
    with contextlib.suppress(AttributeError, ValueError):
        sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    plan = _plan(stations, folder, port_offset)
    root, ports = plan.root, plan.ports
    (root / "logs").mkdir(parents=True, exist_ok=True)
    (root / "state").mkdir(parents=True, exist_ok=True)
    with _environ(plan.env):
        plan.tokens, plan.example_token = _prepare_store(plan.store_url)
    env_file = root / "env"
    env_file.write_text(env_text(ports, root, plan.tokens))
    env_file.chmod(0o600)  # it holds the tokens

    stack = Stack(root, plan.env, root / "demo.pid", ports=ports, tokens=plan.tokens,
                  gateway_args={st: str(c) for st, c in plan.configs.items()}, t0_wall=t0_wall)
    if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:  # `nohup make demo` keeps running
        signal.signal(signal.SIGHUP, _hang_up)
    from alerting.store import Store

    store: Store | None = None
    running: list[tuple[AnyStep, Story]] = []  # steps that take a while
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
        stack.spawn("api", "api", str(plan.api_config))
        # the stations' state carries over to the next run, as the .demo folder's data does: a
        # restart dropped the rooms the valve story had warmed back to cold (2.8 K in 6 s)
        stack.spawn("simulator", "simulate", "--scenario", str(SCENARIO), "--state",
                    str(root / "state" / "simulator.json"), *stack.gateway_args.values())
        deadline = time.monotonic() + 60
        for name, needle, what in (("collector", b'"subscribed"', "subscribe"),
                                   ("alerter", b'"member registered"', "register")):  # JSON log lines
            while not stack.logged(name, needle):  # this run's lines only
                if time.monotonic() > deadline or stack.exited():
                    raise DemoError(f"the {name} did not {what}; see {shown(root / 'logs' / f'{name}.log')}")
                time.sleep(0.1)
        # and the simulated devices listening: a gateway whose every device refuses its first
        # poll publishes its station "offline", a station_offline pending (and in the API's
        # station list) until the simulator is up
        waiting = modbus_ports(list(plan.configs.values()))
        while waiting:
            waiting = [p for p in waiting if not port_open(p)]
            if waiting and (time.monotonic() > deadline or stack.exited()):
                raise DemoError(f"the simulator does not listen on port {waiting[0]}; see "
                                f"{shown(root / 'logs' / 'simulator.log')}")
            time.sleep(0.1)
        for st, c in stack.gateway_args.items():
            stack.spawn(f"gateway-{st}", "gateway", c)
        started, stack.started_wall = time.monotonic(), time.time()
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
                did = ACTIONS[step.do](stack, step)
                if isinstance(did, str):
                    _say(now - t0, did)
                else:
                    running.append((step, did))
            if now >= next_poll:
                next_poll = now + 1.0
                if not ready:
                    data, api = _influx_count(influx_url) > base, _api_ready(api_url)
                    if data and api:
                        ready = True
                        print("\n" + ready_text(ports, root, plan.tokens, now - t0,
                                                        example=plan.example_token) + "\n")
                    elif now - started > READY_WITHIN_S:
                        raise DemoError(
                            f"not ready {READY_WITHIN_S} s after the gateways started: "
                            + ("the API does not answer /ready; see " + shown(root / "logs" / "api.log")
                               if data else "no data reached InfluxDB; see the logs in "
                               + shown(root / "logs")))
                if ready:
                    for text in watch.poll(now - t0):
                        print(text)
            for step, story in list(running):
                try:
                    said = next(story)
                except StopIteration:
                    running.remove((step, story))
                    continue
                except (httpx.HTTPError, KeyError, TypeError, ValueError) as exc:
                    # a step that cannot go on is told, not the end of the demo
                    running.remove((step, story))
                    _say(time.monotonic() - t0, f"step {step.do} stopped: {type(exc).__name__}: {exc}")
                    continue
                if said:
                    _say(time.monotonic() - t0, said)
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
        for _, story in running:
            story.close()
        if store is not None:
            store.close()
        stack.stop_all()
