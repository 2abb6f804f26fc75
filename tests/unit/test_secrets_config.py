"""Broker and InfluxDB secrets come from files or the environment, and a broken reference names
the file, the dotted path and the key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from contract.config import load_collector_config, load_gateway_config
from contract.errors import ConfigError
from heatwatch.devstack import DEPLOY


def _gateway(tmp_path: Path, mqtt: dict[str, object]) -> Path:
    cfg = yaml.safe_load((DEPLOY / "gateway" / "st001.yaml").read_text())
    for d in cfg["devices"]:
        d["map"] = str((DEPLOY / "gateway" / d["map"]).resolve())
    cfg["mqtt"] = mqtt
    p = tmp_path / "gw.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def test_password_file_relative_to_the_config(tmp_path: Path) -> None:
    (tmp_path / "secret").write_text("s3cret\n")  # `echo s3cret > secret`: the newline is not part of it
    for name in ("ca.crt", "client.crt", "client.key"):
        (tmp_path / name).write_text("PEM")
    cfg = load_gateway_config(_gateway(tmp_path, {
        "username": "gw-st001", "password_file": "secret",
        "tls": {"ca_file": "ca.crt", "cert_file": "client.crt", "key_file": "client.key"}}))
    assert cfg.mqtt.password is not None and cfg.mqtt.password.get_secret_value() == "s3cret"
    assert cfg.mqtt.password_file == str(tmp_path / "secret")
    assert cfg.mqtt.tls is not None and cfg.mqtt.tls.ca_file == str(tmp_path / "ca.crt")
    assert "s3cret" not in repr(cfg)  # SecretStr: never printed


def test_password_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HW_TEST_MQTT_PASSWORD", "from-env")
    cfg = load_gateway_config(_gateway(tmp_path, {"username": "u", "password": "${HW_TEST_MQTT_PASSWORD}"}))
    assert cfg.mqtt.password is not None and cfg.mqtt.password.get_secret_value() == "from-env"


@pytest.mark.parametrize(("mqtt", "message"), [
    ({"username": "u", "password_file": "missing"}, r"gw\.yaml: mqtt\.password_file: cannot read .*missing: "
                                                    r"No such file"),
    ({"username": "u", "password": "x", "password_file": "pw"}, r"mqtt\.password_file: give password or "
                                                               r"password_file, not both"),
    ({"password": "x"}, r"mqtt\.username: a password needs its username"),
    ({"tls": {"ca_file": "nope.crt"}}, r"mqtt\.tls\.ca_file: .*no such file: .*nope\.crt"),
    ({"tls": {"ca_file": "pw", "cert_file": "pw"}}, r"mqtt\.tls\.key_file: a client certificate needs both"),
    ({"username": "u", "password_file": "empty"},
     r"mqtt\.password_file: .*empty must hold the secret on one line"),
    ({"tls": {"ca_file": "pw", "insecure": "yes please"}}, r"mqtt\.tls\.insecure"),
])
def test_broken_secret_references_name_the_key(tmp_path: Path, mqtt: dict[str, object], message: str) -> None:
    (tmp_path / "pw").write_text("x")
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ConfigError, match=message):
        load_gateway_config(_gateway(tmp_path, mqtt))


def test_influx_credentials_from_files(tmp_path: Path) -> None:
    (tmp_path / "influx-pw").write_text("influx-secret\n")
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({
        "kind": "collector", "influx": {"username": "collector", "password_file": "influx-pw"},
        "spool": {"path": str(tmp_path / "spool")}}))
    cfg = load_collector_config(tmp_path / "c.yaml")
    assert cfg.influx.password is not None and cfg.influx.password.get_secret_value() == "influx-secret"
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({
        "kind": "collector", "influx": {"api": "v2", "org": "o", "token_file": "no-token"},
        "spool": {"path": str(tmp_path / "spool")}}))
    with pytest.raises(ConfigError, match=r"influx\.token_file: cannot read"):
        load_collector_config(tmp_path / "c.yaml")
