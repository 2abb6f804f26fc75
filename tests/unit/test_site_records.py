"""`heatwatch site`'s records: the ACL follows the gateway configs, a station has one publisher,
and the password hashes are mosquitto 2.0's (tests/integration/test_site_broker.py runs them on
mosquitto itself)."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import pytest
import yaml

from contract.errors import ConfigError
from heatwatch.devstack import DEPLOY
from heatwatch.site import BrokerSite, SiteDir, mosquitto_hash


def _gateway(tmp_path: Path, gateway: str, station: str) -> Path:
    cfg = yaml.safe_load((DEPLOY / "gateway" / "st001.yaml").read_text())
    for d in cfg["devices"]:
        d["map"] = str((DEPLOY / "gateway" / d["map"]).resolve())
    cfg.update(gateway=gateway, station=station)
    p = tmp_path / f"{gateway}.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def test_mosquitto_hash_format() -> None:
    h = mosquitto_hash("secret", salt=b"0123456789ab")
    _, v, it, salt, dk = h.split("$")
    assert (v, it, base64.b64decode(salt)) == ("7", "101", b"0123456789ab")
    assert base64.b64decode(dk) == hashlib.pbkdf2_hmac("sha512", b"secret", b"0123456789ab", 101)


def test_acl_follows_the_gateway_configs(tmp_path: Path) -> None:
    from contract.config import load_gateway_config

    site = SiteDir(tmp_path / "site")
    site.init(BrokerSite(names=["mqtt.example"]))
    cfg_a = _gateway(tmp_path, "gw-a", "st001")
    site.issue_gateway(cfg_a)
    acl = (tmp_path / "site" / "broker" / "acl").read_text()
    assert "user gw-a\ntopic write heatwatch/v1/station/st001/telemetry" in acl
    # the gateway's config now names another station: regenerating moves its ACL along
    moved = _gateway(tmp_path, "gw-a", "st009")
    site.render(site.update_gateways([load_gateway_config(moved)], [str(moved)]))
    acl = (tmp_path / "site" / "broker" / "acl").read_text()
    assert "station/st009/telemetry" in acl and "station/st001/" not in acl
    # two gateways may not speak for one station
    site.issue_gateway(_gateway(tmp_path, "gw-b", "st002"))
    clash = _gateway(tmp_path, "gw-b", "st009")
    with pytest.raises(ConfigError, match=r"st009 is also published by"):
        site.update_gateways([load_gateway_config(clash)], [str(clash)])
    # a config whose gateway was never issued names the command that fixes it
    stranger = _gateway(tmp_path, "gw-c", "st003")
    with pytest.raises(ConfigError, match=r"gw-c has no credentials: run `heatwatch site issue-gateway"):
        site.update_gateways([load_gateway_config(stranger)], [str(stranger)])


def test_revoked_and_replaced_certificates_stay_in_the_crl(tmp_path: Path) -> None:
    from cryptography import x509

    site = SiteDir(tmp_path / "site")
    site.init(BrokerSite(names=["mqtt.example"]))
    cfg = _gateway(tmp_path, "gw-a", "st001")
    site.issue_gateway(cfg)
    first = site.load().identities["gw-a"].serial
    site.revoke("gw-a")
    site.issue_gateway(cfg)  # back in service with new credentials
    second = site.load().identities["gw-a"].serial
    crl = x509.load_pem_x509_crl((tmp_path / "site" / "broker" / "crl.pem").read_bytes())
    listed = {r.serial_number for r in crl}
    assert first in listed and second not in listed
    passwd = (tmp_path / "site" / "broker" / "passwd").read_text()
    assert passwd.count("gw-a:$7$") == 1
    assert (tmp_path / "site" / "identities" / "gw-a" / "client.key").stat().st_mode & 0o077 == 0
