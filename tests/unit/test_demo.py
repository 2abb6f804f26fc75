"""heatwatch demo's parts that need no running stack: ports, moved configs, steps, what it
prints, and ``--stop`` ending only what the demo started."""

from __future__ import annotations

import json
import shlex
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from alerting.store import Store
from contract.alerts import Transition, alert_key
from contract.commands import Command, key_id, load_private_key, load_public_key, sign, verify
from contract.config import load_api_config, load_gateway_config
from contract.errors import ConfigError
from heatwatch.demo import (
    OFFSET_ENV,
    SCENARIO,
    AlertWatch,
    DemoError,
    OpenValve,
    Ports,
    StartGateway,
    StopGateway,
    api_config,
    by_hand_text,
    curl,
    demo_keys,
    demo_maps,
    describe,
    first_alert_text,
    gateway_configs,
    load_steps,
    map_overrides,
    plan_ports,
    port_busy,
    ready_text,
    stop_demo,
)
from heatwatch.devstack import DEPLOY, REPO, free_port
from simulator.scenario import load_scenario, rooms_settle


def test_ports_are_the_defaults_moved_together_or_one_by_one() -> None:
    assert plan_ports({}, None) == Ports(mqtt=11883, influx=18086, api=8000, metrics=9108,
                                         alerter_metrics=9109, offset=0)
    assert plan_ports({OFFSET_ENV: "100"}, None) == Ports(11983, 18186, 8100, 9208, 9209, 100)
    assert plan_ports({OFFSET_ENV: "100"}, 7).offset == 7  # the flag wins over the variable
    moved = plan_ports({"HEATWATCH_API_PORT": "9999"}, 5)
    assert (moved.api, moved.mqtt) == (9999, 11888)


@pytest.mark.parametrize(("environ", "offset", "says"), [
    ({OFFSET_ENV: "abc"}, None, "HEATWATCH_DEMO_PORT_OFFSET is 'abc', not a whole number"),
    ({"HEATWATCH_MQTT_PORT": "70000"}, None, "HEATWATCH_MQTT_PORT is 70000, outside 1-65535"),
    ({"HEATWATCH_API_PORT": "http"}, None, "HEATWATCH_API_PORT is 'http', not a port number"),
    ({}, 50000, "the influx port (18086 moved by +50000) is 68086, outside 1-65535"),
])
def test_a_bad_port_setting_is_named(environ: dict[str, str], offset: int | None, says: str) -> None:
    with pytest.raises(DemoError) as exc:
        plan_ports(environ, offset)
    assert str(exc.value) == says


def test_port_busy_sees_a_listener_and_a_free_port() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        assert port_busy(s.getsockname()[1])
    assert not port_busy(free_port())


def test_moved_gateway_configs_move_every_modbus_port_and_nothing_else(tmp_path: Path) -> None:
    shipped = sorted((DEPLOY / "gateway").glob("st*.yaml"))
    assert gateway_configs(3, 0, tmp_path) == shipped  # no offset: the shipped files as they are
    moved = gateway_configs(3, 1000, tmp_path)
    assert [p.name for p in moved] == [p.name for p in shipped]
    for a, b in zip(shipped, moved, strict=True):
        ca, cb = load_gateway_config(a), load_gateway_config(b)
        assert cb.station == ca.station and len(cb.resolved) == len(ca.resolved)
        for da, db in zip(ca.resolved, cb.resolved, strict=True):
            assert db.port == (da.port or 0) + 1000
            assert [p.key for p in db.points] == [p.key for p in da.points]
    with pytest.raises(DemoError, match="--stations must be 1-3"):
        gateway_configs(4, 0, tmp_path)


def test_the_demo_scenario_plays_three_faults_and_the_valve_that_fixes_the_cold_building() -> None:
    speed, events = load_scenario(SCENARIO)
    assert speed == 1  # the gateways stamp wall time: see the file's comment
    assert {(st, e.kind) for st, e in events} == {("st001", "cold_building"), ("st002", "leak")}
    cold = next(e for _, e in events if e.kind == "cold_building")
    assert cold.start < 0 and cold.building == "b03"  # cold since before the start
    steps = load_steps(SCENARIO)
    assert [(type(s), s.station, s.at) for s in steps] == [
        (OpenValve, "st001", 0.0), (StopGateway, "st003", 60.0), (StartGateway, "st003", 1200.0)]
    valve = steps[0]
    assert isinstance(valve, OpenValve)
    assert (valve.building, valve.to, valve.alert, valve.device) == ("b03", 100, "building_low", "plc")
    assert isinstance(steps[1], StopGateway) and steps[1].how == "power_cut"
    # the demo's shortcuts for the story: rooms in minutes, a valve every 15 s, read every 5 s
    assert rooms_settle(SCENARIO) == 120
    assert map_overrides(SCENARIO) == {"building_valve_setpoint": {"group": "fast",
                                                                   "write": {"min_interval_s": 15}}}


def test_a_bad_step_names_the_file_and_the_path(tmp_path: Path) -> None:
    f = tmp_path / "s.yaml"
    f.write_text("speed: 1\nsteps:\n  - {at: 1m, do: stop_gateway, station: st003}\n"
                 "  - {at: 2m, do: reboot, station: st003}\n"
                 "  - {at: soon, do: start_gateway, station: st003}\n")
    with pytest.raises(ConfigError) as exc:
        load_steps(f)
    text = str(exc.value)
    assert str(f) in text and "steps.1" in text and "reboot" in text and "steps.2.at" in text


def test_a_bad_valve_step_or_override_names_the_path(tmp_path: Path) -> None:
    f = tmp_path / "s.yaml"
    f.write_text("steps:\n  - {at: 0s, do: open_valve, station: st001, building: b03, to: 150}\n"
                 "map_overrides:\n  building_valve_setpoint: {write: {every: 5}}\n")
    with pytest.raises(ConfigError) as exc:
        load_steps(f)
    text = str(exc.value)
    assert str(f) in text and "steps.0.to: " in text and "less than or equal to 100" in text
    assert "map_overrides.building_valve_setpoint.write.every: unknown key" in text
    f.write_text("map_overrides:\n  secondary_supply_temp: {write: {min_interval_s: 5}}\n")
    with pytest.raises(ConfigError, match="map_overrides: secondary_supply_temp: not a canonical writable"):
        map_overrides(f)  # a measurement, not a setpoint


def test_the_demo_key_pair_is_made_once_private_and_matching(tmp_path: Path) -> None:
    folder = tmp_path / "keys"
    key, pub = demo_keys(folder)
    assert key.stat().st_mode & 0o777 == 0o600 and folder.stat().st_mode & 0o777 == 0o700
    private = load_private_key(key.read_bytes(), str(key))
    public = load_public_key(pub.read_bytes(), str(pub))
    cmd = Command(id="c1", station="st001", device="plc", point="building_valve_setpoint", building="b03",
                  value=70.0, deadline=1_796_000_300_000, issued_at=1_796_000_000_000,
                  issuer="demo-engineer", reason="cold", ticket="T-1001")
    assert verify(sign(cmd, private), {key_id(public): public}) == cmd  # the pair signs and verifies
    before = key.read_bytes(), pub.read_bytes()
    pub.unlink()  # made again from the private key, which is never replaced
    key.chmod(0o644)
    assert demo_keys(folder) == (key, pub)
    assert (key.read_bytes(), pub.read_bytes()) == before
    assert key.stat().st_mode & 0o777 == 0o600
    key.write_text("not a key")
    with pytest.raises(DemoError, match=r"control-room\.key: .*move it away"):
        demo_keys(folder)


def test_the_demo_configs_take_signed_commands_with_the_demo_bounds(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEATWATCH_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("HEATWATCH_MQTT_PORT", "12345")
    key, pub = demo_keys(tmp_path / "keys")
    maps = demo_maps(tmp_path / "maps", map_overrides(SCENARIO))
    assert list(maps) == [(DEPLOY / "maps" / "plc-s7-200smart-hx.yaml").resolve()]  # the only one with valves
    moved = gateway_configs(3, 0, tmp_path / "gateway", public_key=pub, maps=maps)  # no offset: still copies
    assert [p.parent for p in moved] == [tmp_path / "gateway"] * 3
    for shipped, copy in zip(sorted((DEPLOY / "gateway").glob("st*.yaml")), moved, strict=True):
        a, b = load_gateway_config(shipped), load_gateway_config(copy)
        assert a.control is None and b.control is not None
        assert b.control.public_keys == [str(pub.resolve())]
        assert b.control.ledger == str(tmp_path / "state" / f"gw-{b.station}.commands.sqlite")
        for da, db in zip(a.resolved, b.resolved, strict=True):
            assert db.port == da.port
            for pa, pb in zip(da.points, db.points, strict=True):
                if pa.point == "building_valve_setpoint":
                    assert (pb.group, pb.write.min_interval_s) == ("fast", 15)  # type: ignore[union-attr]
                    assert pa.write is not None and pa.write.min_interval_s == 900  # the site's
                    assert pb.write.model_dump(exclude={"min_interval_s"}) == pa.write.model_dump(  # type: ignore[union-attr]
                        exclude={"min_interval_s"})
                else:
                    assert pb == pa  # nothing else changes
    api = load_api_config(api_config(tmp_path, key))
    assert api.control is not None and api.control.signing_key == str(key.resolve())
    assert (api.control.mqtt.host, api.control.mqtt.port) == ("127.0.0.1", 12345)
    assert api.report is not None and Path(api.report).is_file()
    assert api.store == load_api_config(DEPLOY / "api" / "api.yaml").store  # the same store as ever


def _commands(text: str) -> list[str]:
    return [line[4:] for line in text.splitlines() if line.startswith("    ") and line[4] != " "]


def test_printed_commands_are_one_line_each_and_send_no_raw_utf8_in_a_url(tmp_path: Path) -> None:
    ports = Ports(11883, 18086, 8000, 9108, 9109, 0)
    text = (ready_text(ports, tmp_path, {"TOKEN": "hw_a", "ENGINEER_TOKEN": "hw_b"}, 5) + "\n"
            + first_alert_text(ports, {"id": 7}, 64))
    cmds = _commands(text)
    assert len(cmds) == 9
    for c in cmds:
        words = shlex.split(c)  # balanced quotes: one line is one whole command
        assert not c.endswith("\\")
        for w in words:
            if w.startswith("http"):
                assert w.isascii(), w  # the address words go through --data-urlencode
    lookup = next(c for c in cmds if "/v1/lookup" in c)
    assert "--data-urlencode 'q=幸福里 3号楼 301'" in lookup
    assert any(c.startswith("influx ") for c in cmds) and any(c.startswith("mosquitto_sub ") for c in cmds)
    assert any("/v1/alerts/7/ack" in c for c in cmds)
    assert describe(SCENARIO) in text and "幸福里小区3号楼" in describe(SCENARIO)


def _tr(rule: str, state: str, ts: int, **where: str) -> Transition:
    return Transition(key=alert_key(rule, **where), rule=rule, state=state, severity="major", ts=ts,
                      since=1_000, page=state == "firing", **where)


def test_the_alert_watch_prints_each_alert_once_as_it_fires_and_as_it_resolves(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'alerts.sqlite'}")
    store.migrate()
    ports = Ports(11883, 18086, 8000, 9108, 9109, 0)
    try:
        store.apply([_tr("makeup_burst", "firing", 2_000, station="st002")])  # from the last run
        watch = AlertWatch(store, ports)
        first = watch.poll(5)
        assert first[0].startswith("[    5 s] alert 1 firing: makeup_burst at st002 (major")
        assert first[0].endswith("(firing since the last run)")
        assert first[1].startswith("alert 1 is still firing from the last run. Acknowledge it")
        assert "/v1/alerts/1/ack" in first[1]
        assert watch.poll(6) == []  # nothing new: nothing printed
        store.apply([_tr("building_low", "pending", 3_000, station="st001", building="b03")])
        assert watch.poll(7) == []  # pending is not an alert yet
        store.apply([_tr("building_low", "firing", 4_000, station="st001", building="b03"),
                     _tr("makeup_burst", "resolved", 4_000, station="st002")])
        assert watch.poll(64) == ["[   64 s] alert 2 firing: building_low at st001/b03 (major)",
                                  "[   64 s] alert 1 resolved: makeup_burst at st002"]
        fresh = AlertWatch(store, ports)  # the next run: alert 2 is still open
        assert fresh.poll(3)[-1].startswith("alert 2 is still firing")
    finally:
        store.close()


def test_a_first_alert_of_this_run_is_timed(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'alerts.sqlite'}")
    store.migrate()
    try:
        watch = AlertWatch(store, Ports(11883, 18086, 8000, 9108, 9109, 0))
        assert watch.poll(10) == []
        store.apply([_tr("gateway_offline", "firing", 2_000, gateway="gw-st003")])
        lines = watch.poll(140)
        assert lines[0] == "[  140 s] alert 1 firing: gateway_offline at gw-st003 (major)"
        assert lines[1].startswith("first alert 140 s after start. Acknowledge it as the dispatcher:")
    finally:
        store.close()


def _pidfile(folder: Path, children: dict[str, tuple[int, list[str]]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "demo.pid").write_text(json.dumps({
        "pid": 2**22 + 1, "cmdline": ["gone"],  # the demo itself died (kill -9)
        "children": {n: {"pid": pid, "cmdline": cmd} for n, (pid, cmd) in children.items()}}))


def test_stop_ends_what_a_demo_left_behind_and_nothing_else(tmp_path: Path) -> None:
    ours = subprocess.Popen(["sleep", "300"], start_new_session=True)
    # a process that has since got a recorded pid: the same pid, another program
    stranger = subprocess.Popen(["sleep", "301"], start_new_session=True)
    try:
        _pidfile(tmp_path, {"collector": (ours.pid, ["sleep", "300"]),
                            "api": (stranger.pid, [sys.executable, "-m", "heatwatch", "api", "x.yaml"])})
        assert stop_demo(str(tmp_path)) == 0
        assert ours.wait(10) == -signal.SIGTERM
        assert stranger.poll() is None
        assert not (tmp_path / "demo.pid").exists()
    finally:
        for p in (ours, stranger):
            p.kill()
            p.wait()


def test_stop_without_a_demo_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert stop_demo(str(tmp_path)) == 0
    assert "no demo is running" in capsys.readouterr().out


def test_a_new_demo_refuses_while_one_left_behind_runs(tmp_path: Path) -> None:
    left = subprocess.Popen(["sleep", "300"], start_new_session=True)
    try:
        _pidfile(tmp_path / "d", {"mosquitto": (left.pid, ["sleep", "300"])})
        r = subprocess.run([sys.executable, "-m", "heatwatch", "demo", "--dir", str(tmp_path / "d")],
                           capture_output=True, text=True, timeout=60, cwd=REPO)
        assert r.returncode == 1, r.stderr
        assert r.stderr.count("\n") == 1 and "mosquitto" in r.stderr and "demo --stop --dir" in r.stderr
        assert left.poll() is None  # told about, not killed
    finally:
        left.kill()
        left.wait()


def test_a_second_demo_on_a_running_ones_folder_is_told_how_to_run_beside_it(tmp_path: Path) -> None:
    """`HEATWATCH_DEMO_PORT_OFFSET=100 make demo` (the README's old way) uses .demo, the running
    demo's folder: the one line says which command runs a second one, and that command names its
    own folder and moved ports."""
    running = subprocess.Popen(["sleep", "300"], start_new_session=True)
    try:
        folder = tmp_path / "d"
        folder.mkdir()
        (folder / "demo.pid").write_text(json.dumps({"pid": running.pid, "cmdline": ["sleep", "300"],
                                                     "children": {}}))
        r = subprocess.run([sys.executable, "-m", "heatwatch", "demo", "--dir", str(folder),
                            "--port-offset", "100"], capture_output=True, text=True, timeout=60, cwd=REPO)
        assert r.returncode == 1 and r.stderr.count("\n") == 1, r.stderr
        assert "already running" in r.stderr
        second = shlex.split(r.stderr.rsplit("`", 2)[-2])
        assert second[1:2] == ["demo"] and second[second.index("--port-offset") + 1] == "100"
        assert Path(second[second.index("--dir") + 1]).resolve() != folder.resolve()
    finally:
        running.kill()
        running.wait()


def test_demo_help_describes_its_folder_and_stations() -> None:
    r = subprocess.run([sys.executable, "-m", "heatwatch", "demo", "--help"], capture_output=True,
                       text=True, timeout=60, cwd=REPO)
    text = " ".join(r.stdout.split())
    assert "kept between runs" in text and "remove it after stopping to start clean" in text
    assert "needs its own DIR" in text
    assert "simulate the first N of the stations" in text


@pytest.mark.parametrize("which", ["mqtt", "modbus"])
def test_a_busy_port_is_one_line_naming_it(tmp_path: Path, which: str) -> None:
    """A second demo on ports in use: one line naming the port, no traceback, nothing started."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        busy = s.getsockname()[1]
        env = {"HEATWATCH_MQTT_PORT": str(free_port()), "HEATWATCH_INFLUX_PORT": str(free_port()),
               "HEATWATCH_API_PORT": str(free_port()), "HEATWATCH_METRICS_PORT": str(free_port())}
        if which == "mqtt":
            env["HEATWATCH_MQTT_PORT"] = str(busy)
            offset = 0
        else:
            offset = busy - 15011  # st001's PLC, the first Modbus port checked
        r = subprocess.run([sys.executable, "-m", "heatwatch", "demo", "--dir", str(tmp_path / "d"),
                            "--port-offset", str(offset)], capture_output=True, text=True, timeout=60,
                           cwd=REPO, env={**_env(), **env})
    assert r.returncode == 1
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
    assert f"port {busy} " in r.stderr
    assert ("MQTT" if which == "mqtt" else "st001 plc") in r.stderr
    assert not (tmp_path / "d" / "demo.pid").exists() and not (tmp_path / "d" / "logs").exists()


def _env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("HEATWATCH_")}


def test_simulate_on_a_busy_port_is_one_line_naming_it(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        busy = s.getsockname()[1]
        cfg = gateway_configs(1, busy - 15012, tmp_path)[0]  # st001's RS-485 converter
        r = subprocess.run([sys.executable, "-m", "heatwatch", "simulate", str(cfg)], capture_output=True,
                           text=True, timeout=60, cwd=REPO, env=_env())
    assert r.returncode == 1
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
    assert f"127.0.0.1:{busy} " in r.stderr


def test_the_curl_the_demo_prints_to_paste_is_the_call_it_would_make() -> None:
    body = {"station": "st001", "device": "plc", "point": "building_valve_setpoint", "building": "b03",
            "value": 70, "reason": "幸福里小区3号楼: rooms below 18 °C (alert 5)", "ticket": "T-1001"}
    words = shlex.split(curl("http://127.0.0.1:8100", "/v1/commands", body))
    assert words[:4] == ["curl", "-sS", "-X", "POST"]
    assert words[4] == "http://127.0.0.1:8100/v1/commands"
    assert words[5:9] == ["-H", "Authorization: Bearer $ENGINEER_TOKEN",
                          "-H", "Content-Type: application/json"]
    assert words[9] == "-d" and json.loads(words[10]) == body and len(words) == 11
    got = shlex.split(curl("http://127.0.0.1:8100", "/v1/commands?station=st001&building=b03"))
    assert got[2] == "http://127.0.0.1:8100/v1/commands?station=st001&building=b03"  # the & quoted


def test_the_by_hand_commands_are_one_pasteable_line_each() -> None:
    step = OpenValve(at=0, do="open_valve", station="st001", building="b03", to=100)
    text = by_hand_text("http://127.0.0.1:8000", step, "3f8efb31871d499386c83914e6325fa4", REPO / ".demo")
    assert "`source .demo/env` sets $ENGINEER_TOKEN" in text  # from the repo root, as make demo runs
    cmds = _commands(text)
    assert len(cmds) == 3
    post = shlex.split(cmds[0])
    sent = json.loads(post[post.index("-d") + 1])
    assert sent["building"] == "b01" and sent["value"] == 70  # not the story's building
    assert "$ENGINEER_TOKEN" in cmds[0] and "/v1/commands/3f8efb31871d499386c83914e6325fa4" in cmds[1]
    assert all(not c.endswith("\\") for c in cmds)


def test_the_printed_token_example_names_a_name_without_a_live_token(tmp_path: Path) -> None:
    """A name holds one live token and the demo's store is kept between runs: the `token add`
    the demo prints takes a name the store has no live token for, so it works when pasted again
    on the next run."""
    from alerting.registry import SiteRegistry
    from heatwatch.demo import _prepare_store

    url = f"sqlite:///{tmp_path / 'alerts.sqlite'}"
    tokens, example = _prepare_store(url)
    assert set(tokens) == {"TOKEN", "ENGINEER_TOKEN"} and example == "disp-li"
    registry = SiteRegistry(url).open()
    try:
        registry.add_token(name="disp-li", role="dispatcher", actor="t", now=1)  # pasted last run
        assert _prepare_store(url)[1] == "disp-li-2"
        registry.revoke_tokens(name="disp-li", actor="t", now=2)
    finally:
        registry.close()
    assert _prepare_store(url)[1] == "disp-li"
    text = ready_text(Ports(1, 2, 3, 4, 5, 0), tmp_path, tokens, 5, example="disp-li-2")
    assert "token add deploy/api/api.yaml disp-li-2 --role dispatcher" in text
