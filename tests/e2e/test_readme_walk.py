"""The README's path, walked for real: `heatwatch demo` → its printed commands → the README's
own commands → the cold building fixed by remote control → a closed terminal, on ports no other
test or demo uses.

The demo runs as a newcomer runs it (a child process, its stdout read line by line). Every
command it prints is run as printed (bash, from the repo root), and so is every line of the
README's walk block (from a folder laid out like a clone: `.venv`, `deploy`, `.demo`); their
answers must be what a dispatcher and an engineer need: the household found by its address, an
alert firing, the acknowledgement accepted, a new token that works, a valve command confirmed.
The demo's own story must end with the cold building's alert resolved, its valve opened by
confirmed commands that are the ones it printed as sent.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from heatwatch.demo import SERVICE_PORTS, gateway_configs, port_busy
from heatwatch.devstack import DEPLOY, REPO
from tests.conftest import wait_for

pytestmark = pytest.mark.slow
MODBUS_DEFAULTS = (15011, 15012, 15021, 15022, 15031, 15032)


def free_offset() -> int:
    """A port offset that puts every demo port on a free port below the ephemeral range
    (32768+), where free_port() of other tests never lands."""
    rnd = random.Random()
    for _ in range(200):
        offset = rnd.randrange(2000, 32767 - max(MODBUS_DEFAULTS))
        ports = [d + offset for _, d in SERVICE_PORTS.values()] + [p + offset for p in MODBUS_DEFAULTS]
        if not any(port_busy(p) for p in ports):
            return offset
    raise AssertionError("no free port offset found")


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEATWATCH_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


@dataclass
class Demo:
    """`heatwatch demo` in a child process; its stdout collected line by line."""

    folder: Path
    offset: int
    proc: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)

    @classmethod
    def start(cls, folder: Path, offset: int, cwd: Path = REPO, args: tuple[str, ...] = ()) -> Demo:
        proc = subprocess.Popen(
            [sys.executable, "-m", "heatwatch", "demo", "--dir", str(folder), "--port-offset", str(offset),
             *args],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=cwd, env=_env())
        demo = cls(folder, offset, proc)
        threading.Thread(target=demo._read, daemon=True).start()
        return demo

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    def wait_line(self, pattern: str, timeout: float) -> str:
        def found() -> str | None:
            if self.proc.poll() is not None and not any(re.search(pattern, x) for x in self.lines):
                raise AssertionError(f"the demo exited ({self.proc.returncode}):\n{self.text}")
            return next((x for x in self.lines if re.search(pattern, x)), None)

        try:
            line: str = wait_for(found, timeout, pattern)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n--- demo output:\n{self.text}") from None
        return line

    def commands(self) -> list[str]:
        """What it printed for pasting: the lines indented by four spaces."""
        return [x[4:] for x in self.lines if x.startswith("    ") and x[4:5] not in ("", " ")]

    def pids(self) -> dict[str, int]:
        info = json.loads((self.folder / "demo.pid").read_text())
        return {n: int(c["pid"]) for n, c in info["children"].items()}

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        _stop(self.folder)  # whatever it left behind: a failed test must leave no servers running


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[Demo]:
    d = Demo.start(tmp_path / "demo", free_offset())
    yield d
    d.stop()


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _listening(sessions: set[int]) -> set[int]:
    """TCP ports listened on by any process in these sessions (each demo child leads its own)."""
    out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout
    ports = set()
    for line in out.splitlines():
        for pid in map(int, re.findall(r"pid=(\d+)", line)):
            try:
                sid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[3])
            except (OSError, IndexError, ValueError):
                continue
            if sid in sessions:
                ports.add(int(line.split()[3].rsplit(":", 1)[1]))
    return ports


def _bash(cmd: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, cwd=cwd, timeout=timeout,
                          env=_env())


def _json(r: subprocess.CompletedProcess[str]) -> Any:
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def _api(api: int, token: str, path: str) -> Any:
    r = httpx.get(f"http://127.0.0.1:{api}{path}", headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def _confirmed(api: int, token: str, cmd_id: str) -> dict[str, Any]:
    """Wait for a command's final state; it must be confirmed."""
    def answered() -> dict[str, Any] | None:
        c: dict[str, Any] = _api(api, token, f"/v1/commands/{cmd_id}")
        return c if c["state"] not in ("requested", "sent") else None

    final: dict[str, Any] = wait_for(answered, 30, f"command {cmd_id} answered")
    assert final["state"] == "confirmed", final
    return final


@pytest.mark.timeout(660)  # the whole story: the building resolves ~6 min after start (README)
def test_the_demo_its_printed_commands_and_the_readme_walk(demo: Demo, tmp_path: Path) -> None:
    t0 = time.monotonic()
    demo.wait_line(r"^ready \d+ s after start", 90)
    first = demo.wait_line(r"^first alert \d+ s after start", 240)
    took = time.monotonic() - t0
    print(f"first alert {took:.0f} s after the demo started ({first})")
    mqtt, influx, api, metrics, alerter_metrics = (d + demo.offset for _, d in SERVICE_PORTS.values())
    # the engineer opens the cold building's valve, command by command: then the by-hand lines
    demo.wait_line(r"\] Send one by hand, as the engineer", 300 - took)
    print(f"valve opened {time.monotonic() - t0:.0f} s after the demo started")

    # every port is where the offset put it: nothing of the demo listens anywhere else
    pids = demo.pids()
    rpc = int(re.search(r'bind-address = "127\.0\.0\.1:(\d+)"',
                        (demo.folder / "influxdb" / "influxdb.conf").read_text()).group(1))  # type: ignore[union-attr]
    expected = {mqtt, influx, rpc, api, metrics, alerter_metrics} | {p + demo.offset for p in MODBUS_DEFAULTS}
    assert _listening(set(pids.values())) == expected

    # what the demo sent is what it printed, and each one was confirmed by the gateway
    engineer = re.search(r"export ENGINEER_TOKEN=(\S+)", demo.text).group(1)  # type: ignore[union-attr]
    sent = "  sent: POST /v1/commands "  # a record, not a line to paste (it would move the valve again)
    printed = [json.loads(x.removeprefix(sent)) for x in demo.lines if x.startswith(sent)]
    stored = _api(api, engineer, "/v1/commands?station=st001&building=b03")["data"][::-1]  # oldest first
    assert [c["value"] for c in printed] == [70, 80, 90, 100]
    assert [(c["value"], c["reason"], c["ticket"], c["state"]) for c in stored] == [
        (p["value"], p["reason"], p["ticket"], "confirmed") for p in printed]
    assert all(c["result"]["read_back"] == c["value"] and c["issuer"] == "demo-engineer" for c in stored)

    # the printed commands, as printed, from the repo root (exports carry over, as in a shell)
    cmds = demo.commands()
    exports = "\n".join(c for c in cmds if c.startswith("export "))
    assert exports.count("export ") == 2 and "TOKEN=hw_" in exports
    answers: dict[str, subprocess.CompletedProcess[str]] = {}
    for c in cmds:
        if c.startswith("export "):
            continue
        if c.startswith("mosquitto_sub "):  # it streams until stopped: its first line is enough
            p = subprocess.Popen(["bash", "-c", f"{exports}\nexec {c}"], stdout=subprocess.PIPE, text=True,
                                 cwd=REPO, env=_env(), start_new_session=True)
            try:
                assert p.stdout is not None
                line = p.stdout.readline()
            finally:
                os.killpg(p.pid, signal.SIGTERM)
                p.wait(10)
            assert line.startswith("heatwatch/v1/"), line
            continue
        r = _bash(f"set -e\n{exports}\n{c}", REPO)
        assert r.returncode == 0, f"{c}\n{r.stdout}\n{r.stderr}"
        answers[c] = r

    def answer(part: str) -> subprocess.CompletedProcess[str]:
        return next(r for c, r in answers.items() if part in c)

    found = _json(answer("/v1/lookup"))
    assert found["household"]["code"] == "XFL-3-301" and found["household"]["address"] == "幸福里小区3号楼"
    assert found["room"]["now"] < 18  # the cold building's flat, by its own sensor
    firing = _json(answer("/v1/alerts -H"))
    assert firing["count"] >= 1 and all(a["state"] == "firing" for a in firing["data"])
    assert {s["station"] for s in _json(answer("/v1/stations"))["data"]} == {"st001", "st002", "st003"}
    assert "station=st001" in answer("influx ").stdout
    acked = _json(answer("/ack"))
    assert acked["ack_by"] == "demo-dispatcher" and acked["ack_ticket"] == "T-1001"
    token = answer("token add").stdout.strip()
    assert token.startswith("hw_")
    r = httpx.get(f"http://127.0.0.1:{api}/v1/alerts", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200  # the new credential works
    by_hand = _json(answer("/v1/commands -H"))  # the POST: another building's valve to 70 %
    assert (by_hand["building"], by_hand["value"], by_hand["issuer"]) == ("b01", 70, "demo-engineer")
    assert _confirmed(api, engineer, by_hand["id"])["result"]["read_back"] == 70
    last = _json(answer(f"/v1/commands/{stored[-1]['id']}"))
    assert (last["state"], last["value"], last["events"][0]["kind"]) == ("confirmed", 100, "requested")
    assert _json(answer("/v1/commands?station=st001&building=b03"))["count"] == 4

    # the README's walk block, line by line in one shell, from a folder laid out like a clone
    clone = tmp_path / "clone"
    clone.mkdir()
    for name in (".venv", "deploy"):
        (clone / name).symlink_to(REPO / name)
    (clone / ".demo").symlink_to(demo.folder)
    lines = readme_block("the README walk")
    assert lines[0].startswith("make demo")  # the fixture is that terminal
    script = ["set -euo pipefail"]
    for i, line in enumerate(lines[1:]):
        script += [f"echo '@@{i}'", line, "echo"]
    r = _bash("\n".join(script), clone, timeout=120)
    assert r.returncode == 0, f"{r.stdout}\n{r.stderr}"
    outs = {lines[1 + int(m.group(1))]: m.group(2).strip()
            for m in re.finditer(r"@@(\d+)\n(.*?)(?=@@\d+\n|\Z)", r.stdout, re.S)}

    def out(start: str) -> str:
        return next(o for c, o in outs.items() if c.startswith(start))

    assert json.loads(out('curl -sS -G "$HEATWATCH_API/v1/lookup"'))["household"]["code"] == "XFL-3-301"
    assert json.loads(out('curl -sS -G "$HEATWATCH_API/v1/alerts"'))["count"] >= 1
    ack = json.loads(out('curl -sS -X POST "$HEATWATCH_API/v1/alerts/$ID/ack"'))
    assert ack["ack_by"] == "demo-dispatcher" and ack["ack_note"] == "caller told: known fault"
    assert out(".venv/bin/heatwatch token add").startswith("hw_")
    cmd = json.loads(out('curl -sS "$HEATWATCH_API/v1/commands/$CMD"'))  # the README's valve command
    assert (cmd["building"], cmd["value"], cmd["ticket"]) == ("b02", 70, "T-1002")
    assert cmd["issuer"] == "demo-engineer"
    assert cmd["state"] in ("requested", "sent", "confirmed"), cmd  # a paste later it is confirmed:
    assert _confirmed(api, engineer, cmd["id"])["result"]["read_back"] == 70
    for line in readme_block("without .demo/env"):  # the same, with nothing sourced
        r = _bash(line, clone)
        assert r.returncode == 0 and r.stdout.startswith("hw_"), f"{line}\n{r.stdout}\n{r.stderr}"

    # the story's end: the rooms warm past 18 °C and the cold building's alert resolves
    warm = demo.wait_line(r"\] st001/b03 is warm again: alert \d+ resolved", 600 - (time.monotonic() - t0))
    print(f"{warm} (the test saw it {time.monotonic() - t0:.0f} s after the demo started)")
    assert re.search(r"every room of st001/b03 is above 18 °C again", demo.text)
    alert_id = int(re.search(r"alert (\d+) resolved", warm).group(1))  # type: ignore[union-attr]
    assert _api(api, token, f"/v1/alerts/{alert_id}")["rule"] == "building_low"

    # closing the terminal: the demo stops everything and frees every port
    demo.proc.send_signal(signal.SIGHUP)
    assert demo.proc.wait(90) == 0
    assert not (demo.folder / "demo.pid").exists()
    assert [n for n, p in pids.items() if _alive(p)] == []
    assert [p for p in expected if port_busy(p)] == []


def _stop(folder: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "heatwatch", "demo", "--stop", "--dir", str(folder)],
                          capture_output=True, text=True, timeout=90, cwd=REPO, env=_env())


def test_stop_ends_a_running_demo_and_one_left_behind(demo: Demo) -> None:
    demo.wait_line(r"^ready \d+ s after start", 90)
    pids = demo.pids()
    stop = _stop(demo.folder)  # from another terminal, while it runs: it stops itself, in order
    assert stop.returncode == 0, stop.stderr
    assert demo.proc.wait(10) == 0
    demo.wait_line("^stopping …$", 10)
    assert [n for n, p in pids.items() if _alive(p)] == []

    second = Demo.start(demo.folder, demo.offset)  # the same folder and ports again
    try:
        second.wait_line(r"^ready \d+ s after start", 90)
        pids = second.pids()
        second.proc.kill()  # the demo dies without stopping anything: its children stay
        second.proc.wait(10)
        assert all(_alive(p) for p in pids.values())
        again = subprocess.run([sys.executable, "-m", "heatwatch", "demo", "--dir", str(demo.folder),
                                "--port-offset", str(demo.offset)], capture_output=True, text=True,
                               timeout=60, cwd=REPO, env=_env())
        assert again.returncode == 1 and again.stderr.count("\n") == 1, again.stderr
        assert "left processes behind" in again.stderr and "demo --stop --dir" in again.stderr
        stop = _stop(demo.folder)
        assert stop.returncode == 0, stop.stderr
        assert [n for n, p in pids.items() if _alive(p)] == []
        ports = [d + demo.offset for _, d in SERVICE_PORTS.values()] + [p + demo.offset
                                                                         for p in MODBUS_DEFAULTS]
        assert [p for p in ports if port_busy(p)] == []
    finally:
        second.stop()


def test_the_readme_by_hand_commands(tmp_path: Path) -> None:
    """The "Trying things by hand" block as written; simulate (which serves until stopped) from a
    folder whose gateway configs have their ports moved, so it cannot clash with a demo."""
    clone = tmp_path / "clone"
    (clone / "deploy").mkdir(parents=True)
    (clone / ".venv").symlink_to(REPO / ".venv")
    for item in DEPLOY.iterdir():
        if item.name != "gateway":
            (clone / "deploy" / item.name).symlink_to(item)
    offset = free_offset()
    for p in gateway_configs(3, offset, clone / "deploy" / "gateway"):
        assert p.parent == clone / "deploy" / "gateway"
    for line in readme_block("runs these too"):
        if line.startswith("#"):
            continue
        if " simulate " in line:
            _serves(line, clone, [q + offset for q in MODBUS_DEFAULTS])
            continue
        r = _bash(line, clone, timeout=240)
        assert r.returncode == 0, f"{line}\n{r.stdout}\n{r.stderr}"


def _serves(line: str, cwd: Path, ports: list[int]) -> None:
    p = subprocess.Popen(["bash", "-c", f"exec {line}"], stderr=subprocess.PIPE, text=True, cwd=cwd,
                         env=_env())
    try:
        wait_for(lambda: all(port_busy(q) for q in ports) or p.poll() is not None, 30,
                 "the simulator serving every station")
        assert p.poll() is None, p.stderr.read() if p.stderr else ""
    finally:
        p.terminate()
        p.wait(15)


def readme_block(marker: str) -> list[str]:
    """The command lines of the ```sh block after the README comment containing ``marker``."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    at = text.index(marker)
    block = text[text.index("```sh\n", at) + 6:]
    block = block[:block.index("```")]
    return [x for x in block.splitlines() if x.strip()]
