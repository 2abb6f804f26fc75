"""The services as a site installs them: systemd units that `systemd-analyze verify` accepts
without a word, and a wheel that installs on an edge box without a compiler and runs the gateway."""

from __future__ import annotations

import configparser
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from contract.config import GatewayConfig
from heatwatch.devstack import REPO, SimThread, find_binary
from tests.conftest import Processes, Subscriber, wait_for

UNITS = REPO / "deploy" / "systemd"
INSTALLED = "/opt/heatwatch/venv"  # where docs/operations.md installs heatwatch


def _unit(name: str) -> configparser.ConfigParser:
    cp = configparser.ConfigParser(strict=False, interpolation=None)
    cp.optionxform = str  # type: ignore[assignment,method-assign]
    cp.read(UNITS / name)
    return cp


@pytest.mark.parametrize("unit", ["heatwatch-gateway@st001.service", "heatwatch-collector.service",
                                  "heatwatch-alerter.service", "heatwatch-api.service"])
def test_units_verify_clean(unit: str, tmp_path: Path) -> None:
    """systemd-analyze verify, with ExecStart pointing at this checkout's heatwatch (verify checks
    the binary exists); any message at all — an unknown key is only a warning — fails."""
    analyze = find_binary("systemd-analyze", "systemd")
    source = UNITS / (unit.split("@")[0] + "@.service" if "@" in unit else unit)
    text = source.read_text()
    assert f"ExecStart={INSTALLED}/bin/heatwatch " in text
    (tmp_path / unit).write_text(text.replace(INSTALLED, sys.prefix))
    p = subprocess.run([analyze, "verify", str(tmp_path / unit)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and not p.stdout.strip() and not p.stderr.strip(), p.stdout + p.stderr


def test_units_are_hardened_and_restart() -> None:
    for name in ("heatwatch-gateway@.service", "heatwatch-collector.service", "heatwatch-alerter.service",
                 "heatwatch-api.service"):
        s = dict(_unit(name)["Service"])
        assert s["Restart"] == "always" and s["User"] == "heatwatch", name
        for key, value in (("NoNewPrivileges", "yes"), ("ProtectSystem", "strict"), ("ProtectHome", "yes"),
                           ("StateDirectory", "heatwatch"), ("CapabilityBoundingSet", "")):
            assert s.get(key) == value, (name, key)
    gw = dict(_unit("heatwatch-gateway@.service")["Service"])
    assert gw["Type"] == "notify" and gw["NotifyAccess"] == "main" and int(gw["WatchdogSec"]) >= 60


def test_the_edge_wheel_installs_without_a_compiler_and_runs_the_gateway(
        tmp_path: Path, station_config: GatewayConfig, simulator: SimThread) -> None:
    src = tmp_path / "src"
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True,
                           text=True, check=True).stdout.split()
    for f in files:
        if (REPO / f).is_file():
            (src / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / f, src / f)
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(src)],
                   check=True, capture_output=True, timeout=300)
    (wheel,) = wheels.glob("heatwatch-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "gateway/app.py" in names and "alerting/engine.py" in names
    assert not [n for n in names if n.endswith((".so", ".c"))]  # pure Python: any machine, no compiler

    venv = tmp_path / "edge"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    # no compiler on the box: anything that tried to build C would fail
    env = {**os.environ, "CC": "/bin/false", "CXX": "/bin/false"}
    p = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--only-binary", ":all:",
                        "-c", str(REPO / "requirements.lock"), str(wheel)],
                       capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]

    obs = Subscriber(station_config.mqtt.port, "heatwatch/v1/station/st001/telemetry")
    procs = Processes(tmp_path)
    try:
        log = open(tmp_path / "edge-gw.log", "wb")  # noqa: SIM115
        gw = subprocess.Popen([str(venv / "bin" / "heatwatch"), "gateway",
                               str(tmp_path / "gw" / "st001.yaml")], stdout=log, stderr=subprocess.STDOUT,
                              cwd=tmp_path)
        procs.procs["edge-gw"] = gw
        wait_for(lambda: len(obs.messages) >= 2, 60, "telemetry from the wheel-installed gateway")
    finally:
        procs.stop_all()
        obs.close()
    # and what ran was the wheel's code, not this checkout's
    out = subprocess.run([str(venv / "bin" / "python"), "-c", "import gateway; print(gateway.__file__)"],
                         capture_output=True, text=True, cwd=tmp_path, check=True).stdout
    assert out.startswith(str(venv))
