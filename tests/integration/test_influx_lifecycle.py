"""InfluxDB with authentication, and the data lifecycle heatwatch sets up, on real influxd 1.6.

`heatwatch influx setup` as a site runs it: an admin created on a fresh auth-enabled influxd,
users with their grants from the collector and API configs, raw retention as the default policy,
the 5-minute and 1-hour rollups (retention policies + continuous queries) backfilled over the raw
data already there. The rollups are checked against aggregates computed here from the samples:
mean/min/max/last/count of every point, and the 1-hour rollup's plausible room means.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from contract.config import load_api_config
from contract.influx import ROLLUP_1H, ROLLUP_5M, pick_source, rollup_cqs
from heatwatch.devstack import REPO, Influxd, Mosquitto, free_port
from tests.conftest import wait_for, write_collector_config

DB = "heatwatch"


class AuthInfluxd(Influxd):
    def __init__(self, folder: Path, port: int) -> None:
        super().__init__(folder, port)
        text = self.conf.read_text()
        assert "[http]\n" in text
        self.conf.write_text(text.replace("[http]\n", "[http]\n  auth-enabled = true\n", 1))


@pytest.fixture(scope="module")
def authdb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthInfluxd]:
    db = AuthInfluxd(tmp_path_factory.mktemp("influxd-auth"), free_port())
    db.start()
    yield db
    db.stop()


def q(db: Influxd, statement: str, auth: tuple[str, str] | None, *, database: str = DB) -> dict[str, Any]:
    r = httpx.post(f"{db.url}/query", data={"q": statement, "db": database, "epoch": "ms"}, auth=auth,
                   timeout=30)
    body: dict[str, Any] = r.json()
    return {"status": r.status_code, **body}


def series(db: Influxd, statement: str, auth: tuple[str, str]) -> list[dict[str, Any]]:
    body = q(db, statement, auth)
    assert body["status"] == 200 and "error" not in body["results"][0], body
    out = []
    for s in body["results"][0].get("series", []):
        for v in s["values"]:
            out.append({**s.get("tags", {}), **dict(zip(s["columns"], v, strict=True))})
    return out


def refused(body: dict[str, Any]) -> bool:
    return body["status"] in (401, 403) and "authorized" in body.get("error", "")


def write(db: Influxd, lines: list[str], auth: tuple[str, str] | None, rp: str | None = None) -> int:
    params = {"db": DB, "precision": "ms", **({"rp": rp} if rp else {})}
    return httpx.post(f"{db.url}/write", params=params, content="\n".join(lines).encode(), auth=auth,
                      timeout=60).status_code


def configs(tmp_path: Path, url: str) -> tuple[Path, Path, Path]:
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    for name, pw in (("admin", "admin-pw"), ("collector", "collector-pw"), ("api", "api-pw"),
                     ("grafana", "grafana-pw")):
        (secrets / name).write_text(pw + "\n")
        (secrets / name).chmod(0o600)
    collector = tmp_path / "collector.yaml"
    collector.write_text(yaml.safe_dump({
        "kind": "collector", "influx": {"url": url, "database": DB, "username": "collector",
                                        "password_file": "secrets/collector",
                                        "lifecycle": {"raw_days": 90}},
        "spool": {"path": str(tmp_path / "spool.sqlite")}}))
    api = tmp_path / "api.yaml"
    api.write_text(yaml.safe_dump({
        "kind": "api", "store": f"sqlite:///{tmp_path}/alerts.sqlite",
        "influx": {"url": url, "database": DB, "username": "api", "password_file": "secrets/api",
                   "lifecycle": {"raw_days": 90}}}))
    return collector, api, secrets


def hw(*args: str) -> str:
    """A heatwatch command as an operator runs it; its standard output."""
    p = subprocess.run([sys.executable, "-m", "heatwatch", *args], capture_output=True, text=True, cwd=REPO,
                       timeout=120)
    assert p.returncode == 0, p.stderr
    return p.stdout


def setup(collector: Path, api: Path, secrets: Path) -> str:
    return hw("influx", "setup", str(collector), "--api-config", str(api),
              "--reader", f"grafana={secrets / 'grafana'}",
              "--admin-user", "admin", "--admin-password-file", str(secrets / "admin"))


def test_setup_with_authentication(authdb: AuthInfluxd, tmp_path: Path) -> None:
    collector, api, secrets = configs(tmp_path, authdb.url)
    assert "create admin user first" in q(authdb, "SHOW DATABASES", None)["error"]  # a fresh, empty influxd
    first = setup(collector, api, secrets)
    assert "created: admin user admin" in first and "created: user collector" in first
    admin = ("admin", "admin-pw")
    # again: nothing left to do
    assert "already set up" in setup(collector, api, secrets)

    rps = {r["name"]: r for r in series(authdb, f'SHOW RETENTION POLICIES ON "{DB}"', admin)}
    assert rps["autogen"]["duration"] == "2160h0m0s" and rps["autogen"]["default"]  # 90 days, default
    assert rps["rollup_5m"]["duration"] == f"{2 * 365 * 24}h0m0s"
    assert rps["rollup_1h"]["duration"] == f"{20 * 365 * 24}h0m0s"
    assert rps["rollup_1h"]["shardGroupDuration"] == f"{52 * 7 * 24}h0m0s"  # a season in one or two shards
    cqs = [r for r in series(authdb, "SHOW CONTINUOUS QUERIES", admin) if r["name"].startswith("heatwatch")]
    want = sorted(name for r in (ROLLUP_5M, ROLLUP_1H) for name, _ in rollup_cqs(DB, "autogen", r))
    assert sorted(r["name"] for r in cqs) == want and len(want) == 3  # 5m; 1h and its plausible room means
    # the API's read-only user sees what setup made: the report picks its source by it
    api_auth = ("api", "api-pw")
    assert {r["name"] for r in series(authdb, "SHOW RETENTION POLICIES", api_auth)} >= {"rollup_1h"}
    assert sorted(r["name"] for r in series(authdb, "SHOW CONTINUOUS QUERIES", api_auth)
                  if r["name"].startswith("heatwatch")) == want

    now = int(time.time() * 1000)
    line = [f"station,station=st001 supply_temp=80.5 {now}"]
    assert write(authdb, line, None) == 401  # no credentials, no entry
    assert write(authdb, line, ("collector", "wrong")) == 401
    assert write(authdb, line, ("collector", "collector-pw")) == 204
    assert write(authdb, line, ("api", "api-pw")) == 403  # the API reads only
    assert write(authdb, line, ("grafana", "grafana-pw")) == 403
    for reader in (("api", "api-pw"), ("grafana", "grafana-pw")):
        assert series(authdb, 'SELECT supply_temp FROM station', reader)[0]["supply_temp"] == 80.5
    # the collector writes but does not read, and nobody but the admin drops things
    assert refused(q(authdb, "SELECT * FROM station", ("collector", "collector-pw")))
    for who in (("collector", "collector-pw"), ("api", "api-pw")):
        assert refused(q(authdb, f'DROP DATABASE "{DB}"', who))
        assert refused(q(authdb, 'CREATE USER "x" WITH PASSWORD \'y\' WITH ALL PRIVILEGES', who))
    # the API config loads its password from the file and can read with it
    cfg = load_api_config(api)
    assert cfg.influx.password is not None and cfg.influx.password.get_secret_value() == "api-pw"

    # a changed retention is applied on the next run
    data = yaml.safe_load(collector.read_text())
    data["influx"]["lifecycle"]["raw_days"] = 30
    collector.write_text(yaml.safe_dump(data))
    assert "autogen 2160h0m0s -> 720h" in setup(collector, api, secrets)
    rps = {r["name"]: r for r in series(authdb, f'SHOW RETENTION POLICIES ON "{DB}"', admin)}
    assert rps["autogen"]["duration"] == "720h0m0s"


def test_rollups_hold_the_aggregates_of_the_raw_samples(influxd: Influxd, tmp_path: Path) -> None:
    """Raw samples written before setup (history): setup creates the CQs and backfills them; the
    rollups hold mean/min/max of numbers and last of states, booleans and text, per series."""
    db = f"lc_{int(time.time() * 1000)}"
    hour = 3_600_000
    t0 = (int(time.time() * 1000) // hour - 30) * hour  # 30 hours ago, on an hour boundary
    samples: dict[str, list[tuple[int, float, bool]]] = {"st001": [], "st002": []}
    lines = []
    for k in range(2 * 360):  # two hours of 10-second samples
        ts = t0 + k * 10_000
        for j, st in enumerate(samples):
            temp = 60 + j * 10 + (k % 37) * 0.5 - (k % 11) * 0.25
            running = (k // 50) % 2 == 0
            samples[st].append((ts, temp, running))
            lines.append(f"station,station={st} supply_temp={temp!r},"
                         f'circ_pump_running={str(running).lower()},x_mode="m{k % 3}" {ts}')
        lines.append(f"household,station=st001,building=b01,household=b01-0101 room_temp={18 + k % 5}.0 {ts}")
        if k % 120 == 0:  # a sensor every 20 minutes, two of its six readings implausible (1 and 40 °C)
            lines.append(f"household,station=st001,building=b01,household=b01-0201 "
                         f"room_temp={ODD[k // 120]} {ts}")
    r = httpx.post(f"{influxd.url}/query", params={"q": f'CREATE DATABASE "{db}"'})
    assert r.status_code == 200
    r = httpx.post(f"{influxd.url}/write", params={"db": db, "precision": "ms"}, content="\n".join(lines))
    assert r.status_code == 204, r.text
    cfg = tmp_path / "collector.yaml"
    cfg.write_text(yaml.safe_dump({"kind": "collector",
                                   "influx": {"url": influxd.url, "database": db, "lifecycle": {}},
                                   "spool": {"path": str(tmp_path / "spool.sqlite")}}))
    out = hw("influx", "setup", str(cfg))
    assert "backfilled: rollup_5m" in out and "backfilled: rollup_1h" in out
    assert "retention policy rollup_1h" in out

    def get(statement: str) -> list[dict[str, Any]]:
        r = httpx.get(f"{influxd.url}/query", params={"db": db, "q": statement, "epoch": "ms"})
        res = r.json()["results"][0]
        assert "error" not in res, res
        return [{**s.get("tags", {}), **dict(zip(s["columns"], v, strict=True))}
                for s in res.get("series", []) for v in s["values"]]

    for rollup in (ROLLUP_5M, ROLLUP_1H):
        b = rollup.bucket_s * 1000
        got = {(row["station"], row["time"]): row for row in get(f'SELECT * FROM "{rollup.rp}"."station"')}
        for st, ss in samples.items():
            buckets: dict[int, list[tuple[int, float, bool]]] = {}
            for s in ss:
                buckets.setdefault(s[0] // b * b, []).append(s)
            assert len(buckets) == 7200_000 // b
            for t, rows_ in buckets.items():
                row = got[(st, t)]
                temps = [x[1] for x in rows_]
                assert row["mean_supply_temp"] == pytest.approx(statistics.fmean(temps))
                assert row["min_supply_temp"] == min(temps) and row["max_supply_temp"] == max(temps)
                assert row["last_supply_temp"] == temps[-1]
                assert row["last_circ_pump_running"] is rows_[-1][2]
                assert row["max_circ_pump_running"] is any(x[2] for x in rows_)  # ran at all
                assert row["last_x_mode"] == f"m{(rows_[-1][0] - t0) // 10_000 % 3}"
                assert "mean_circ_pump_running" not in row or row["mean_circ_pump_running"] is None
                assert (row["count_supply_temp"] == row["count_x_mode"] == row["count_circ_pump_running"]
                        == len(temps))
        hh = get(f'SELECT mean_room_temp, max_room_temp FROM "{rollup.rp}"."household" '
                 f"WHERE time = {t0}ms AND household = 'b01-0101' GROUP BY *")
        assert (hh[0]["household"], hh[0]["building"], hh[0]["max_room_temp"]) == ("b01-0101", "b01", 22.0)
        # a bucket without a sample has no row, no count of 0 (a plain SELECT's count gives 0 there):
        # the 20-minute sensor has six 5-minute rows in two hours, not twenty-four
        sparse = get(f'SELECT * FROM "{rollup.rp}"."household" WHERE household = \'b01-0201\'')
        assert [r_["time"] for r_ in sparse] == sorted({t0 + k * 1_200_000 // b * b for k in range(6)})
        assert all(r_["count_room_temp"] == (1 if rollup is ROLLUP_5M else 3) for r_ in sparse)
    # the 1-hour rollup's plausible room means leave the implausible readings out (the report's
    # sensor-hours); the wildcard mean averages them in
    one = 'SELECT * FROM "rollup_1h"."household" WHERE household = \'b01-0201\''
    odd = {r_["time"]: r_ for r_ in get(one)}
    for h, readings in ((t0, ODD[:3]), (t0 + hour, ODD[3:])):
        assert odd[h]["mean_room_temp"] == pytest.approx(statistics.fmean(readings))
        assert odd[h]["plausible_mean_room_temp"] == pytest.approx(
            statistics.fmean(x for x in readings if 5 <= x <= 35))

    # what the API's history reads for the whole day: pick_source's choice, read back
    src = pick_source(t0, t0 + 2 * hour, t0 + 30 * hour, 20, raw_days=90)
    assert src.rollup is ROLLUP_5M and src.bucket_s == 600
    got = get(f"SELECT {src.expr('mean', 'supply_temp')} FROM {src.measurement('station')} "
              f"WHERE station = 'st001' AND time >= {t0}ms AND time < {t0 + 2 * hour}ms "
              f"GROUP BY time({src.bucket_s}s)")
    raw = get(f"SELECT mean(supply_temp) FROM station WHERE station = 'st001' AND time >= {t0}ms "
              f"AND time < {t0 + 2 * hour}ms GROUP BY time({src.bucket_s}s)")
    assert [g["mean"] for g in got] == pytest.approx([r_["mean"] for r_ in raw])  # evenly sampled: equal

    # setup again: the CQs are there, no second backfill; a late sample is rolled up by backfill
    assert "already set up" in hw("influx", "setup", str(cfg))
    late = t0 + 5_000
    httpx.post(f"{influxd.url}/write", params={"db": db, "precision": "ms"},
               content=f"station,station=st001 supply_temp=500.0 {late}")
    hw("influx", "backfill", str(cfg), "--since", time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t0 / 1000)),
       "--until", time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime((t0 + hour) / 1000)))
    row = get(f"SELECT max_supply_temp FROM \"rollup_5m\".\"station\" WHERE station = 'st001' "
              f"AND time = {t0}ms")
    assert row[0]["max_supply_temp"] == 500.0

    # another plausible range in the rule file: the 1-hour rollup's CQs are replaced together and
    # backfilled with it (the 1 °C reading is plausible from 0.5 °C on)
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump({"kind": "rules", "sensor": {"plausible_min": 0.5}}))
    data = yaml.safe_load(cfg.read_text())
    data["rules"] = str(rules)  # the alerter's rule file, named in the collector config
    cfg.write_text(yaml.safe_dump(data))
    out = hw("influx", "setup", str(cfg))
    assert "created: continuous query rollup_1h" in out and "rollup_5m" not in out
    shown = httpx.get(f"{influxd.url}/query", params={"q": "SHOW CONTINUOUS QUERIES"}).json()
    names = [v[0] for s_ in shown["results"][0]["series"] if s_["name"] == db for v in s_["values"]
             if v[0].startswith("heatwatch_rollup_1h_")]
    assert len(names) == 2 and any(n.endswith("_rooms_0.5_35.0") for n in names)
    odd = {r_["time"]: r_ for r_ in get(one)}
    assert odd[t0]["plausible_mean_room_temp"] == pytest.approx(statistics.fmean(ODD[:3]))


ODD = (20.0, 1.0, 21.0, 40.0, 22.0, 19.0)  # b01-0201's readings, one every 20 minutes


def test_the_collector_sets_up_the_lifecycle_at_start(influxd: Influxd, mosquitto: Mosquitto, tmp_path: Path,
                                                     influx_db: str) -> None:
    from tests.integration.test_collector import CollectorThread

    path = write_collector_config(tmp_path, mqtt_port=mosquitto.port, influx_url=influxd.url,
                                  database=influx_db)
    data = yaml.safe_load(path.read_text())
    data["influx"]["lifecycle"] = {"raw_days": 45}
    path.write_text(yaml.safe_dump(data))
    c = CollectorThread(path)
    try:
        def rps() -> dict[str, str]:
            r = httpx.get(f"{influxd.url}/query", params={"q": f'SHOW RETENTION POLICIES ON "{influx_db}"'})
            res = r.json()["results"][0]
            return {v[0]: v[1] for s in res.get("series", []) for v in s["values"]}

        got = wait_for(lambda: len(rps()) == 3 and rps(), 20, "retention policies")
        assert got["autogen"] == "1080h0m0s" and set(got) == {"autogen", "rollup_5m", "rollup_1h"}
    finally:
        c.stop()


@pytest.mark.parametrize(("hours", "points", "expect"), [
    (24, 500, None), (48, 500, "5m"), (24 * 7, 500, "5m"), (24 * 150, 500, "1h"), (24 * 30, 100, "1h"),
])
def test_pick_source_against_real_ranges(hours: int, points: int, expect: str | None) -> None:
    now = 1_800_000_000_000
    src = pick_source(now - hours * 3_600_000, now, now, points, raw_days=90)
    assert (src.rollup.name if src.rollup else None) == expect
    assert hours * 3600 / src.bucket_s <= points  # never more buckets than asked for
