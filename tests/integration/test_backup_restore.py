"""`heatwatch backup` and `heatwatch restore` end to end on real parts: the alert store (SQLite
through its online backup API, PostgreSQL through pg_dump/pg_restore) with the rule engine's
partition snapshots in it, and InfluxDB (`influxd backup -portable`, 1.6), lost and brought back."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
import yaml

from alerting.partitions import Leases
from alerting.registry import SiteRegistry
from alerting.rows import Principal
from heatwatch.devstack import REPO, Influxd, Postgres, free_port


@pytest.fixture(scope="module")
def influx_rpc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Influxd, int]]:
    rpc = free_port()
    db = Influxd(tmp_path_factory.mktemp("influxd-backup"), free_port(), rpc_port=rpc)
    db.start()
    yield db, rpc
    db.stop()


def hw(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "heatwatch", *args], capture_output=True, text=True,
                          cwd=REPO, timeout=300)


def q(db: Influxd, statement: str, database: str) -> list[list[object]]:
    r = httpx.post(f"{db.url}/query", data={"q": statement, "db": database, "epoch": "ms"}, timeout=30)
    res = r.json()["results"][0]
    assert "error" not in res, res
    return [v for s in res.get("series", []) for v in s.get("values") or []]


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_backup_and_restore_bring_everything_back(kind: str, influx_rpc: tuple[Influxd, int], tmp_path: Path,
                                                  request: pytest.FixtureRequest) -> None:
    influxd, rpc = influx_rpc
    database = f"bk_{kind}"
    if kind == "sqlite":
        url = f"sqlite:///{tmp_path / 'state' / 'alerts.sqlite'}"
        (tmp_path / "state").mkdir()
    else:
        pg: Postgres = request.getfixturevalue("postgres")
        url = pg.url
    cfg = tmp_path / "collector.yaml"
    cfg.write_text(yaml.safe_dump({
        "kind": "collector", "influx": {"url": influxd.url, "database": database, "lifecycle": {}},
        "spool": {"path": str(tmp_path / "spool.sqlite")}}))
    alerter = tmp_path / "alerter.yaml"
    alerter.write_text(yaml.safe_dump({"kind": "alerter", "alerts": {"store": url}}))
    registry = SiteRegistry(url)
    if kind == "postgresql":
        with registry.engine.begin() as conn:
            conn.execute(sa.text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
    registry.migrate()
    now = int(time.time() * 1000)
    token = registry.add_token(name="disp-li", role="dispatcher", actor="test", now=now)
    leases = Leases(registry.engine, 64, 10_000)  # the rule engine's state: a partition's snapshot
    leases.ensure()
    epochs = leases.take_all("a#1")
    with registry.engine.begin() as conn:
        leases.save_state(conn, "a#1", 7, epochs[7], b"engine snapshot \x00\x01", [1, 2], taken_at=now,
                          upto=0)
    registry.close()
    hour = 3_600_000
    t0 = (now // hour - 5) * hour
    lines = "\n".join(f"station,station=st001 supply_temp={60 + k % 7}.5 {t0 + k * 10_000}"
                      for k in range(720))
    assert httpx.post(f"{influxd.url}/query", data={"q": f'CREATE DATABASE "{database}"'}).status_code == 200
    assert httpx.post(f"{influxd.url}/write", params={"db": database, "precision": "ms"},
                      content=lines).status_code == 204
    p = hw("influx", "setup", str(cfg))  # retention, rollups backfilled: they must come back too
    assert p.returncode == 0, p.stderr

    backup = tmp_path / "backup"
    p = hw("backup", str(cfg), str(backup), "--alerter", str(alerter), "--influx-rpc", f"127.0.0.1:{rpc}")
    assert p.returncode == 0, p.stderr
    assert "backed up: influxdb" in p.stdout and "backed up: alert store" in p.stdout

    # the disaster: the store emptied (the engine state with it) and the InfluxDB database gone
    registry = SiteRegistry(url)
    with registry.engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM api_tokens"))
        conn.execute(sa.text("DELETE FROM partition_state"))
    registry.close()
    q(influxd, f'DROP DATABASE "{database}"', database)
    rpc_arg = ("--influx-rpc", f"127.0.0.1:{rpc}")
    refused = hw("restore", str(cfg), str(backup), "--alerter", str(alerter), *rpc_arg)
    if kind == "sqlite":  # the store file is still there: not overwritten without --force
        assert refused.returncode == 2 and "use --force" in refused.stderr
    p = hw("restore", str(cfg), str(backup), "--alerter", str(alerter), "--influx-rpc", f"127.0.0.1:{rpc}",
           "--force")
    assert p.returncode == 0, p.stderr

    registry = SiteRegistry(url)
    try:
        assert registry.principal(token) == Principal("disp-li", "dispatcher")
        state = Leases(registry.engine, 64, 10_000).load_states([7])[7]
        assert state.snapshot == b"engine snapshot \x00\x01" and state.recent == {1, 2}
    finally:
        registry.close()
    assert q(influxd, "SELECT count(supply_temp) FROM station", database)[0][1] == 720
    assert q(influxd, 'SELECT count(mean_supply_temp) FROM "rollup_5m"."station"', database)[0][1] == 24
    r = httpx.post(f"{influxd.url}/query", data={"q": "SHOW CONTINUOUS QUERIES"}).json()
    cqs = [v[0] for s_ in r["results"][0]["series"] if s_["name"] == database for v in s_.get("values") or []]
    # set up again: the 5-minute rollup's CQ, the 1-hour one's and its plausible room means
    assert len(cqs) == 3 and all(c.startswith("heatwatch_rollup_") for c in cqs)
    rps = {v[0]: v[1] for v in q(influxd, f'SHOW RETENTION POLICIES ON "{database}"', database)}
    assert rps["autogen"] == "2160h0m0s" and "rollup_1h" in rps

    # a restore over what exists is refused without --force, before anything is touched
    p = hw("restore", str(cfg), str(backup), "--influx-rpc", f"127.0.0.1:{rpc}")
    assert p.returncode == 2
    assert ("use --force" if kind == "sqlite" else "InfluxDB database exists") in p.stderr, p.stderr
