"""A process that cannot start says why in one line and exits non-zero: an alert store, outbox
or spool that cannot be opened names its path and the setting that moves it (never a
SQLAlchemy traceback), for the API (one worker and several), the alerter, the collector,
`heatwatch token` and the gateway."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from heatwatch.devstack import DEPLOY, REPO, free_port


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "heatwatch", *args], capture_output=True, text=True,
                          cwd=REPO, env={**os.environ, **(env or {})}, timeout=60, check=False)


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err and "sqlalchemy" not in err.lower(), err
    return lines[0]


@pytest.mark.parametrize("workers", [1, 2])
def test_api_with_a_store_it_cannot_open_exits_1_with_one_line(tmp_path: Path, workers: int) -> None:
    cfg = tmp_path / "api.yaml"
    store = tmp_path / "missing" / "alerts.sqlite"
    cfg.write_text(yaml.safe_dump({"kind": "api", "workers": workers, "store": f"sqlite:///{store}",
                                   "listen": {"port": free_port()}}))
    out = _run("api", str(cfg))
    assert out.returncode == 1
    assert _one_line(out.stderr) == (f"alert store sqlite:///{store}: unable to open (directory "
                                     f"{store.parent} missing); set `store:` in {cfg}")


def test_the_shipped_api_config_names_the_variable_that_moves_its_store(tmp_path: Path) -> None:
    state = tmp_path / "no-such-dir"
    cfg = str(DEPLOY / "api" / "api.yaml")
    want = (f"alert store sqlite:///{state}/alerts.sqlite: unable to open (directory {state} missing); "
            f"set `store:` in {cfg} or HEATWATCH_STATE_DIR")
    for args in (("api", cfg), ("token", "add", cfg, "li-ming"), ("token", "revoke", cfg, "li-ming")):
        out = _run(*args, env={"HEATWATCH_STATE_DIR": str(state)})
        assert out.returncode == 1, args
        assert _one_line(out.stderr) == want, args


def test_alerter_collector_and_gateway_name_their_stores(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    acfg = yaml.safe_load((DEPLOY / "alerter" / "alerter.yaml").read_text())
    acfg["alerts"]["rules"] = str(DEPLOY / "alerter" / "rules.yaml")
    acfg["alerts"]["store"] = f"sqlite:///{tmp_path / 'gone' / 'alerts.sqlite'}"
    acfg["metrics"]["port"] = free_port()
    apath = tmp_path / "alerter.yaml"
    apath.write_text(yaml.safe_dump(acfg))
    out = _run("alerter", str(apath))
    assert out.returncode == 1
    assert _one_line(out.stderr) == (f"alert store sqlite:///{tmp_path}/gone/alerts.sqlite: unable to open "
                                     f"(directory {tmp_path}/gone missing); set `alerts.store:` in {apath}")
    # a store made with 64 partitions, a config asking for 32: the count is fixed for a store
    acfg["alerts"]["store"] = f"sqlite:///{state / 'alerts.sqlite'}"
    apath.write_text(yaml.safe_dump(acfg))
    from alerting.partitions import Leases
    from alerting.store import Store

    store = Store(acfg["alerts"]["store"]).open()
    Leases(store.engine, 64, 10_000).ensure()
    store.close()
    acfg["partitions"]["count"] = 32
    apath.write_text(yaml.safe_dump(acfg))
    out = _run("alerter", str(apath))
    assert out.returncode == 1
    assert _one_line(out.stderr).startswith(f"alert store sqlite:///{state}/alerts.sqlite: the alert store "
                                            "has 64 partitions, the config asks for 32")
    assert f"set `partitions.count:` in {apath}" in out.stderr
    cfg = yaml.safe_load((DEPLOY / "collector" / "collector.yaml").read_text())
    cfg["stats"]["metrics_port"] = free_port()
    path = tmp_path / "collector.yaml"
    path.write_text(yaml.safe_dump(cfg))
    # the spool under a path that cannot be a directory
    out = _run("collector", str(path), env={"HEATWATCH_STATE_DIR": str(blocker)})
    assert out.returncode == 1
    assert _one_line(out.stderr) == (f"collector spool {blocker}/collector-spool.sqlite: cannot create "
                                     f"directory {blocker} (file exists); set `spool.path:` in {path} "
                                     "or HEATWATCH_STATE_DIR")
    gw = str(DEPLOY / "gateway" / "st001.yaml")
    out = _run("gateway", gw, env={"HEATWATCH_STATE_DIR": str(blocker)})
    assert out.returncode == 1
    assert _one_line(out.stderr) == (f"gateway outbox {blocker}/gw-st001.outbox.sqlite: cannot create "
                                     f"directory {blocker} (file exists); set `outbox.path:` in {gw} "
                                     "or HEATWATCH_STATE_DIR")
