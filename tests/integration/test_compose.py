"""deploy/compose/compose.yaml cannot run here (no container runtime on the test machines); this
checks what can be: every file it mounts exists, every heatwatch config passes `heatwatch
check-config` as the containers see it, InfluxDB parses its config, and the broker files come from
`heatwatch site` where the compose file expects them."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from heatwatch.devstack import DEPLOY, REPO, find_binary

COMPOSE = DEPLOY / "compose" / "compose.yaml"
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::[-?]([^}]*))?\}")


def _expand(s: str, env: dict[str, str]) -> str:
    return _VAR.sub(lambda m: env.get(m.group(1), m.group(2) or ""), s)


def _mounts(service: dict[str, Any], env: dict[str, str]) -> list[tuple[Path, str]]:
    out = []
    for v in service.get("volumes", []):
        src, target = _expand(v, env).split(":")[:2]
        if src.startswith((".", "/")):  # a bind mount (named volumes have no path)
            out.append(((COMPOSE.parent / src).resolve(), target))
    return out


def test_compose_files_exist_and_configs_load(tmp_path: Path) -> None:
    spec = yaml.safe_load(COMPOSE.read_text())
    services: dict[str, Any] = spec["services"]
    assert set(services) >= {"mosquitto", "influxdb", "postgres", "collector", "alerter", "api", "grafana"}
    # what an operator makes before `up`: the site (heatwatch site) and the secrets
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "heatwatch", "site", "init", str(site),
                    "--broker-name", "mosquitto"], check=True, cwd=REPO, capture_output=True)
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    for name in spec["secrets"]:
        (secrets / name).write_text(f"{name}-password\n")
    env = {"HEATWATCH_SITE": str(site), "HEATWATCH_SECRETS": str(secrets), "HEATWATCH_PG_PASSWORD": "pg"}
    for name, s in spec["secrets"].items():
        assert Path(_expand(s["file"], env)).is_file(), name

    broker_conf = (site / "broker" / "mosquitto.conf").read_text()
    assert "listener 8883" in broker_conf
    for name, service in services.items():
        # every file a service mounts exists (in the repository, or made by `heatwatch site`)
        root = tmp_path / "containers" / name
        for src, target in _mounts(service, env):
            assert src.exists(), f"{name}: {src} (mounted at {target}) does not exist"
            (root / target.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
            (root / target.lstrip("/")).symlink_to(src)
        for secret in service.get("secrets", []):
            (root / "run" / "secrets").mkdir(parents=True, exist_ok=True)
            (root / "run" / "secrets" / secret).symlink_to(secrets / secret)
        cmd = service.get("command", [])
        if name == "mosquitto":
            conf = cmd[-1]
            assert (root / conf.lstrip("/")).is_file()
            for line in broker_conf.splitlines():  # every file it names is in the mounted folder
                key, _, value = line.partition(" ")
                if key in ("password_file", "acl_file", "cafile", "certfile", "keyfile", "crlfile"):
                    assert value.startswith("/etc/mosquitto/heatwatch/")
                    assert (root / value.lstrip("/")).is_file(), line
        if cmd and cmd[0] == "heatwatch":
            # every heatwatch config the command names, checked as the container sees it
            configs = [c for c in cmd if c.startswith("/etc/heatwatch/") and c.endswith(".yaml")]
            assert configs, name
            run_env = {**os.environ, "HEATWATCH_PG_PASSWORD": "pg",
                       "HEATWATCH_SECRETS_DIR": str(root / "run" / "secrets"),
                       "HEATWATCH_MQTT_DIR": str(root / "etc" / "heatwatch" / "mqtt"),
                       "HEATWATCH_STATE_DIR": str(tmp_path / "state")}
            files = [str(root / c.lstrip("/")) for c in configs]
            p = subprocess.run([sys.executable, "-m", "heatwatch", "check-config", *files], env=run_env,
                               capture_output=True, text=True, cwd=REPO)
            assert p.returncode == 0, f"{name}: {p.stderr}"
            for c in cmd:  # password files named on the command line (never passwords)
                path = c.split("=", 1)[-1]
                if path.startswith("/run/secrets/"):
                    assert (root / path.lstrip("/")).is_file(), (name, c)
            # the rule file the alerter's config names, relative to it
            alerter = root / "etc" / "heatwatch" / "alerter.yaml"
            if cmd[1] == "alerter":
                rules = yaml.safe_load(alerter.read_text())["alerts"]["rules"]
                p = subprocess.run([sys.executable, "-m", "heatwatch", "check-config",
                                    str(alerter.parent / rules)], capture_output=True, text=True, cwd=REPO)
                assert p.returncode == 0, p.stderr
    influxd = find_binary("influxd", "influxdb")
    p = subprocess.run([influxd, "config", "-config", str(DEPLOY / "compose" / "influxdb.conf")],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 0 and "auth-enabled = true" in p.stdout, p.stderr
    # Grafana: the provisioned dashboards are the repository's, and the data source is the one they use
    grafana = services["grafana"]
    mounts = {t: s for s, t in _mounts(grafana, env)}
    assert sorted(p.name for p in mounts["/var/lib/heatwatch/dashboards"].glob("*.json"))
    ds = yaml.safe_load(mounts["/etc/grafana/provisioning/datasources/heatwatch.yaml"].read_text())
    assert ds["datasources"][0]["uid"] == "heatwatch-influxdb"
    prov = yaml.safe_load(mounts["/etc/grafana/provisioning/dashboards/heatwatch.yaml"].read_text())
    assert prov["providers"][0]["options"]["path"] == "/var/lib/heatwatch/dashboards"
