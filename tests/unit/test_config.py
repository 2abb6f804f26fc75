"""Config loading: every shipped config is valid; broken ones name the file, point and key."""

from __future__ import annotations

import codecs
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hypothesis import assume, given
from hypothesis import strategies as st

from contract.config import decode_text, load_collector_config, load_config, load_gateway_config
from contract.errors import ConfigError
from heatwatch.devstack import DEPLOY, REPO

# scenarios have their own loader; grafana/ holds Grafana provisioning (tests/integration/test_dashboards.py);
# compose/ needs its secrets and site files beside it (tests/integration/test_compose.py)
SHIPPED = sorted(p for p in DEPLOY.rglob("*.yaml")
                 if p.parent.name not in ("scenarios", "grafana") and "compose" not in p.parts)


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


def _shipped(tmp_path: Path, kind: str, **change: object) -> Path:
    """deploy/KIND/KIND.yaml with ``change`` applied (``a__b``: key b under a)."""
    cfg = yaml.safe_load((DEPLOY / kind / f"{kind}.yaml").read_text())
    if kind == "alerter":
        cfg["alerts"]["rules"] = str(DEPLOY / "alerter" / "rules.yaml")
    for key, value in change.items():
        node = cfg
        *parents, last = key.split("__")
        for k in parents:
            node = node[k]
        node[last] = value
    p = tmp_path / f"{kind}.yaml"
    p.write_text(yaml.safe_dump(cfg, allow_unicode=True))
    return p


def _check(*files: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "heatwatch", "check-config", *map(str, files)],
                          capture_output=True, text=True, cwd=REPO, check=False)


@pytest.mark.parametrize(("kind", "change", "message"), [
    ("alerter", {"alerts__rules": "no-such-rules.yaml"},
     r"alerter\.yaml: alerts\.rules: no rule file .*no-such-rules"),
    ("collector", {"influx__url": "http//127.0.0.1:8086"}, r"collector\.yaml: influx\.url: "
                                                           r"'http//127\.0\.0\.1:8086' is not an http\(s\) "
                                                           r"URL of InfluxDB"),
    ("collector", {"influx__url": "127.0.0.1:8086"}, r"influx\.url: .* is not an http\(s\) URL"),
    ("collector", {"influx__url": "http://127.0.0.1:80x6"}, r"influx\.url: .* the port is not a number"),
    ("alerter", {"alerts__store": "mysql://u:secret@db/heatwatch"},
     r"alerts\.store: unsupported store URL 'mysql': use sqlite:///PATH"),
    ("alerter", {"alerts__store": "postgresql://u:secret@db/heatwatch"},
     r"alerts\.store: store URL postgresql://… is not supported: .*postgresql\+psycopg://"),
    ("alerter", {"alerts__store": "sqlite://"}, r"alerts\.store: store URL sqlite://… is not supported"),
    ("collector", {"alerts": {"store": "sqlite:////tmp/a.sqlite"}},
     r"collector\.yaml: alerts: the rules run in the alerter now \(kind: alerter"),
    ("alerter", {"partitions__standby_s": 20},
     r"alerter\.yaml: partitions\.standby_s: keep at least .* = 48 s"),
    ("collector", {"rules": "no-such-rules.yaml"}, r"collector\.yaml: rules: no rule file .*no-such-rules"),
], ids=["missing-rules", "influx-no-colon", "influx-no-scheme", "influx-bad-port", "mysql-store",
        "postgresql-without-driver", "sqlite-in-memory", "collector-with-rules", "standby-too-short",
        "collector-missing-rules"])
def test_configs_that_cannot_start_are_refused_by_check_config(
        tmp_path: Path, kind: str, change: dict[str, object], message: str) -> None:
    p = _shipped(tmp_path, kind, **change)
    with pytest.raises(ConfigError, match=message) as exc:
        load_config(p)
    assert "secret" not in str(exc.value)  # a password in a URL is never echoed
    out = _check(p)
    assert out.returncode == 1 and re.search(message, out.stderr), out.stderr


def test_a_store_url_check_holds_for_the_api_too(tmp_path: Path) -> None:
    p = tmp_path / "api.yaml"
    p.write_text("kind: api\nstore: oracle://x\n")
    with pytest.raises(ConfigError, match=r"api\.yaml: store: unsupported store URL 'oracle'"):
        load_config(p)
    p.write_text("kind: api\nstore: postgresql+psycopg://hw@db/heatwatch\ninflux: {url: 'https://tsdb:8086/'}\n")
    load_config(p)


def test_a_bad_rule_file_is_named_when_the_alerter_config_is_checked(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text("kind: rules\nroom:\n  warning_below: hot\n")
    with pytest.raises(ConfigError, match=rf"{rules}: room\.warning_below"):
        load_config(_shipped(tmp_path, "alerter", alerts__rules=str(rules)))


def test_the_collector_reads_the_rooms_plausible_range_from_the_alerters_rule_file(tmp_path: Path) -> None:
    """The 1-hour rollup's plausible room means keep the rule file's range: the collector has no
    rules of its own, so its config names the alerter's file (relative to the config), and a bad
    one is named at start-up."""
    from collector.lifecycle import plausible_of

    (tmp_path / "alerter").mkdir()
    rules = tmp_path / "alerter" / "rules.yaml"
    rules.write_text("kind: rules\nsensor: {plausible_min: 8, plausible_max: 31.5}\n")
    (tmp_path / "collector").mkdir()
    cfg = load_collector_config(_shipped(tmp_path / "collector", "collector", rules="../alerter/rules.yaml"))
    assert cfg.rules is not None and Path(cfg.rules).resolve() == rules.resolve()
    assert plausible_of(cfg.rules) == (8.0, 31.5)
    assert plausible_of(load_collector_config(_shipped(tmp_path, "collector")).rules) == (5.0, 35.0)
    rules.write_text("kind: rules\nsensor: {plausible_min: cold}\n")
    with pytest.raises(ConfigError, match=r"alerter/rules\.yaml: sensor\.plausible_min"):
        load_config(tmp_path / "collector" / "collector.yaml")


DUPLICATES = {
    "gateway": "kind: gateway\ngateway: g\nstation: s\nmqtt:\n  port: 1883\n  host: a\n  port: 1884\n",
    "collector": "kind: collector\nspool: {path: /tmp/x}\nclient_id: a\nclient_id: b\n",
    "api": "kind: api\nstore: sqlite:////tmp/a.sqlite\nlisten:\n  port: 8000\n  port: 8001\n",
    "register_map": "kind: register_map\nmodel: m\naddressing: modicon\nmodel: n\n",
    "rules": "kind: rules\nseason: {start: 11-15, start: 10-15}\n",
}


@pytest.mark.parametrize("kind", sorted(DUPLICATES))
def test_a_key_given_twice_is_refused_with_its_line(tmp_path: Path, kind: str) -> None:
    p = tmp_path / f"{kind}.yaml"
    p.write_text(DUPLICATES[kind])
    key, first, line = {"gateway": ("port", 5, 7), "collector": ("client_id", 3, 4),
                        "api": ("port", 4, 5), "register_map": ("model", 2, 4),
                        "rules": ("start", 2, 2)}[kind]
    want = f"{p}: line {line}: key '{key}' appears twice in one mapping (first on line {first})"
    with pytest.raises(ConfigError) as exc:
        load_config(p)
    assert str(exc.value).startswith(want), str(exc.value)
    out = _check(p)
    assert out.returncode == 1 and want in out.stderr and "Traceback" not in out.stderr


def test_a_register_map_with_a_point_twice_is_refused_on_its_own(tmp_path: Path) -> None:
    raw = yaml.safe_load((DEPLOY / "maps" / "room-concentrator.yaml").read_text())
    dup = dict(raw["points"][0], address=raw["points"][0]["address"] + 1000)
    raw["points"].append(dup)
    p = tmp_path / "map.yaml"
    p.write_text(yaml.safe_dump(raw, allow_unicode=True))
    n = len(raw["points"]) - 1
    want = (rf"{p}: points\.{n} \(room_temp\)\.point: room_temp {dup['building']} {dup['household']} "
            r"is also points\.0")
    with pytest.raises(ConfigError, match=want):
        load_config(p)
    assert _check(p).returncode == 1


def test_a_config_saved_in_gbk_is_named_with_its_line_and_the_fix(tmp_path: Path) -> None:
    """Windows Notepad's "ANSI" on a Chinese system is GBK: refused with the file, the line and
    what to do; a UTF-8 byte-order mark (Notepad's "UTF-8 with BOM") is fine; UTF-16 is named."""
    text = _gateway(tmp_path).read_text(encoding="utf-8")
    text = text.replace("gateway: gw-st001\n", "gateway: gw-st001\n# 幸福里换热站 一次网\n")
    line = text.splitlines().index("# 幸福里换热站 一次网") + 1
    p = tmp_path / "notepad.yaml"
    p.write_bytes(text.encode("gbk"))
    want = (f"{p}: line {line}: not UTF-8 (looks like GBK/GB18030?): save it as UTF-8 "
            f"(e.g. iconv -f GB18030 -t UTF-8 {p} > new.yaml)")
    with pytest.raises(ConfigError) as exc:
        load_config(p)
    assert str(exc.value) == want
    out = _check(p)
    assert out.returncode == 1 and out.stderr.strip() == want and "Traceback" not in out.stderr
    p.write_bytes(codecs.BOM_UTF8 + text.encode("utf-8"))
    assert load_gateway_config(p).station == "st001"
    p.write_bytes(text.encode("utf-16"))
    with pytest.raises(ConfigError, match=r'notepad\.yaml: encoded as UTF-16 \(Notepad\'s "Unicode"\)'):
        load_config(p)
    p.write_bytes(b"kind: api\nstore: sqlite:////tmp/\xff.sqlite\n")  # neither: no guess offered
    with pytest.raises(ConfigError, match=r"notepad\.yaml: line 2: not UTF-8: save it as UTF-8$"):
        load_config(p)


@given(st.text(min_size=1, max_size=200))
def test_config_text_decodes_utf8_with_or_without_bom_and_never_anything_else(text: str) -> None:
    assume(not text.startswith("\ufeff"))  # a BOM is not text
    for raw in (text.encode("utf-8"), codecs.BOM_UTF8 + text.encode("utf-8")):
        assert decode_text(raw, "f.yaml") == text
    try:
        gbk = text.encode("gb18030")
    except UnicodeEncodeError:
        return
    try:
        gbk.decode("utf-8")
    except UnicodeDecodeError:
        with pytest.raises(ConfigError, match=r"^f\.yaml: line \d+: not UTF-8 \(looks like GBK"):
            decode_text(gbk, "f.yaml")


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


@pytest.mark.parametrize(("points", "why"), [
    # 5,001 bits: more values than one message holds
    ([{"point": f"x_b{i}", "table": "coil", "address": i, "type": "bool"} for i in range(5001)],
     "5,001 points make messages of up to"),
    # 1,200 text points of 64 registers: 128 control characters each, 6 bytes apiece escaped
    ([{"point": f"x_label_{i:04d}", "table": "holding_register" if i < 1000 else "input_register",
       "address": 64 * (i % 1000), "type": "string", "length": 64, "unit": ""} for i in range(1200)],
     "1,200 points make messages of up to 1,0"),
])
def test_a_poll_group_whose_message_could_outgrow_the_wire_is_refused(tmp_path: Path, points: list[object],
                                                                     why: str) -> None:
    # the broker (message_size_limit) and the collector refuse a payload over 1 MB: the gateway
    # would be refused every cycle, so the config is, naming the group
    p = tmp_path / "gw.yaml"
    p.write_text(yaml.safe_dump({
        "kind": "gateway", "gateway": "g", "station": "s", "outbox": {"path": "/tmp/x"},
        "poll_groups": {"fast": {"interval_s": 5}},
        "devices": [{"name": "d", "host": "h", "addressing": "zero_based", "points": points}]}))
    with pytest.raises(ConfigError) as exc:
        load_gateway_config(p)
    assert f"{p}: poll_groups.fast: {why}" in str(exc.value)
    assert "spread the points over more poll groups" in str(exc.value)
