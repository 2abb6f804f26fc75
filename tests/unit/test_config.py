"""Config loading: every shipped config is valid; broken ones name the file, point and key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from contract.config import load_config, load_gateway_config
from contract.errors import ConfigError
from heatwatch.devstack import DEPLOY, REPO

# scenarios have their own loader; grafana/ holds Grafana provisioning (tests/integration/test_dashboards.py)
SHIPPED = sorted(p for p in DEPLOY.rglob("*.yaml") if p.parent.name not in ("scenarios", "grafana"))


@pytest.mark.parametrize("path", SHIPPED, ids=[str(p.relative_to(DEPLOY)) for p in SHIPPED])
def test_every_shipped_config_is_valid(path: Path) -> None:
    load_config(path)


def _gateway(tmp_path: Path, **change: object) -> Path:
    cfg = yaml.safe_load((DEPLOY / "gateway" / "st001.yaml").read_text())
    for d in cfg["devices"]:
        d["map"] = str((DEPLOY / "gateway" / d["map"]).resolve())
    cfg.update(change)
    p = tmp_path / "gw.yaml"
    p.write_text(yaml.safe_dump(cfg, allow_unicode=True))
    return p


def test_env_expansion_and_missing_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEATWATCH_MQTT_PORT", "2883")
    assert load_gateway_config(_gateway(tmp_path)).mqtt.port == 2883
    p = _gateway(tmp_path, mqtt={"host": "${NO_SUCH_VAR_HW}"})
    with pytest.raises(ConfigError, match=r"gw\.yaml: mqtt\.host: environment variable NO_SUCH_VAR_HW"):
        load_gateway_config(p)


def test_unknown_group_names_device_point_and_key(tmp_path: Path) -> None:
    p = _gateway(tmp_path, poll_groups={"fast": {"interval_s": 5}})
    with pytest.raises(ConfigError) as exc:
        load_gateway_config(p)
    msg = str(exc.value)
    assert msg.startswith(f"{p}: devices.0 (plc).points.")
    assert ".group: no poll group 'slow'" in msg or ".group: no poll group 'status'" in msg


def test_same_point_twice_is_refused(tmp_path: Path) -> None:
    cfg = yaml.safe_load(_gateway(tmp_path).read_text())
    cfg["devices"].append({"name": "plc2", "host": "127.0.0.1", "port": 1, "map": cfg["devices"][0]["map"]})
    p = tmp_path / "dup.yaml"
    p.write_text(yaml.safe_dump(cfg))
    want = r"devices\.3 \(plc2\)\.points\.0 \(secondary_supply_temp\)\.point: .* also mapped on plc"
    with pytest.raises(ConfigError, match=want):
        load_gateway_config(p)


def test_inline_points_and_typos(tmp_path: Path) -> None:
    p = tmp_path / "gw.yaml"
    p.write_text(yaml.safe_dump({
        "kind": "gateway", "gateway": "g", "station": "s", "outbox": {"path": "/tmp/x"},
        "devices": [{"name": "d", "host": "h", "addressing": "zero_based", "points": [
            {"point": "outdoor_temp", "table": "holding_register", "address": 0, "type": "int16",
             "scael": 0.1}]}]}))
    with pytest.raises(ConfigError, match=r"devices\.0 \(d\)\.points\.0 \(outdoor_temp\)\.scael: unknown"):
        load_gateway_config(p)


def test_yaml_syntax_error_gives_line(tmp_path: Path) -> None:
    p = tmp_path / "bad.yaml"
    p.write_text("kind: gateway\ndevices: [\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: line 3, column 1: not valid YAML"):
        load_config(p)


def test_check_config_command(tmp_path: Path) -> None:
    broken = tmp_path / "map.yaml"
    broken.write_text(yaml.safe_dump({"kind": "register_map", "model": "m", "addressing": "zero_based",
                                      "points": [{"point": "outdoor_temp", "table": "holding_register",
                                                  "address": 0, "type": "int16", "word_order": "CDAB"}]}))
    run = [sys.executable, "-m", "heatwatch", "check-config"]
    ok = subprocess.run([*run, str(DEPLOY / "gateway" / "st001.yaml")], capture_output=True, text=True,
                        cwd=REPO, check=False)
    assert ok.returncode == 0, ok.stderr
    assert "ok (gateway: station st001, 3 devices, 62 points)" in ok.stdout
    bad = subprocess.run([*run, str(broken)], capture_output=True, text=True, cwd=REPO, check=False)
    assert bad.returncode == 1
    assert f"{broken}: points.0 (outdoor_temp).word_order: only for 32/64-bit types" in bad.stderr


def _with_plc(tmp_path: Path, **station_rules: object) -> Path:
    cfg = yaml.safe_load(_gateway(tmp_path).read_text())
    cfg["devices"][0].update(station_rules)
    p = tmp_path / "gw-override.yaml"
    p.write_text(yaml.safe_dump(cfg, allow_unicode=True))
    return p


def test_station_overrides_change_only_what_differs(tmp_path: Path) -> None:
    """一站一案: the shared map plus this station's own differences."""
    base = {p.key: p for p in load_gateway_config(_gateway(tmp_path)).resolved[0].points}
    p = _with_plc(tmp_path,
                  overrides=[{"point": "secondary_supply_temp", "range": [30, 90], "scale": 0.01},
                             {"point": "building_valve_position", "building": "b02", "address": 40299}],
                  without=[{"point": "building_valve_position", "building": "b03"}],
                  extra_points=[{"point": "x_sump_pump_running", "table": "coil", "address": 99,
                                 "type": "bool", "group": "status"}])
    got = {p.key: p for p in load_gateway_config(p).resolved[0].points}
    sst = ("secondary_supply_temp", None, None)
    assert got[sst].range == (30, 90) and got[sst].scale == 0.01 and got[sst].address == base[sst].address
    assert got[("building_valve_position", "b02", None)].address == 40299
    assert ("building_valve_position", "b03", None) not in got
    assert ("x_sump_pump_running", None, None) in got
    changed = {k for k in base if k in got and got[k] != base[k]}
    assert changed == {sst, ("building_valve_position", "b02", None)}  # nothing else moved


@pytest.mark.parametrize(("rules", "message"), [
    ({"overrides": [{"point": "no_such_point", "scale": 2}]},
     r"devices\.0 \(plc\)\.overrides\.0\.point: the map has no point no_such_point"),
    ({"overrides": [{"point": "building_valve_position", "scale": 2}]},
     r"devices\.0 \(plc\)\.overrides\.0\.point: building_valve_position matches 3 points"),
    ({"overrides": [{"point": "secondary_supply_temp"}]},
     r"devices\.0 \(plc\)\.overrides\.0: says which point but not what to change"),
    ({"without": [{"building": "b01"}]}, r"devices\.0 \(plc\)\.without\.0\.point: name the template point"),
    ({"overrides": [{"point": "secondary_supply_temp", "scale": "x"}]},
     r"devices\.0 \(plc\)\.points\.0 \(secondary_supply_temp\)\.scale"),
])
def test_override_errors_name_the_rule(tmp_path: Path, rules: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_gateway_config(_with_plc(tmp_path, **rules))


BUS = {"transport": "rtu", "serial": {"device": "/dev/ttyUSB0"}}


@pytest.mark.parametrize(("meter", "rooms", "message"), [
    ({"transport": "rtu"}, BUS, r"devices\.1 \(makeup_meter\): serial: transport rtu needs serial"),
    ({"serial": {"device": "/dev/ttyUSB0"}, "host": "10.0.0.2"}, BUS,
     r"devices\.1 \(makeup_meter\): serial: only for transport rtu \(this device is tcp\)"),
    ({**BUS, "host": "10.0.0.2"}, BUS, r"devices\.1 \(makeup_meter\): host: a transport rtu device is on a"),
    ({"transport": "rtu_over_tcp"}, BUS, r"devices\.1 \(makeup_meter\): host: transport rtu_over_tcp needs"),
    ({"transport": "rtu", "serial": {"device": "/dev/ttyUSB0", "baudrate": 9601}}, BUS,
     r"devices\.1 \(makeup_meter\)\.serial\.baudrate: Input should be 1200, .* 9600"),
    ({**BUS, "device_id": 3}, {**BUS, "device_id": 3},
     r"devices\.2 \(rooms\)\.device_id: 3 is also devices\.1 \(makeup_meter\) on /dev/ttyUSB0 9600 8N1"),
    (BUS, {"transport": "rtu", "serial": {"device": "/dev/ttyUSB0", "baudrate": 19200}},
     r"devices\.2 \(rooms\)\.serial: /dev/ttyUSB0 is the bus of devices\.1 \(makeup_meter\) with other"),
], ids=["rtu-without-serial", "serial-on-tcp", "rtu-with-host", "rtu-over-tcp-without-host", "odd-baudrate",
        "same-id-on-one-bus", "one-bus-two-speeds"])
def test_transport_errors_name_the_device_and_key(tmp_path: Path, meter: dict[str, object],
                                                  rooms: dict[str, object], message: str) -> None:
    cfg = yaml.safe_load(_gateway(tmp_path).read_text())
    for dev, change in zip(cfg["devices"][1:], (meter, rooms), strict=True):
        dev.pop("host"), dev.pop("port")
        dev.update(change)
    p = tmp_path / "bus.yaml"
    p.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError, match=message):
        load_gateway_config(p)
    cfg["devices"][1].update(BUS, device_id=2)
    cfg["devices"][1].pop("host", None)
    cfg["devices"][2].update(BUS, device_id=3)
    p.write_text(yaml.safe_dump(cfg))
    assert {d.link for d in load_gateway_config(p).resolved[1:]} == {("rtu", "/dev/ttyUSB0")}


def test_check_config_reads_the_control_blocks_key_files(tmp_path: Path) -> None:
    from contract.commands import generate_keypair

    gw = yaml.safe_load((DEPLOY / "gateway" / "st001.yaml").read_text())
    for dev in gw["devices"]:
        dev["map"] = str((DEPLOY / "gateway" / dev["map"]).resolve())
    gw["control"] = {"public_keys": ["keys/control.pub"], "ledger": str(tmp_path / "ledger.sqlite")}
    path = tmp_path / "gw.yaml"
    path.write_text(yaml.safe_dump(gw))

    def check() -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "heatwatch", "check-config", str(path)],
                              capture_output=True, text=True, cwd=REPO, check=False)

    missing = check()
    assert missing.returncode == 1
    assert f"{path}: control.public_keys.0: cannot read {tmp_path}/keys/control.pub" in missing.stderr
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "control.pub").write_bytes(generate_keypair()[0])  # a private key: the wrong kind
    wrong = check()
    assert wrong.returncode == 1 and "control.public_keys.0: " in wrong.stderr
    (tmp_path / "keys" / "control.pub").write_bytes(generate_keypair()[1])
    ok = check()
    assert ok.returncode == 0 and "62 points, 8 writable" in ok.stdout
