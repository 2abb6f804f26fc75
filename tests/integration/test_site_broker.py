"""A site's broker as `heatwatch site` generates it, on real mosquitto with paho clients.

Every client connects through ``messaging.security.apply_security`` with the ``mqtt:`` section
`heatwatch site` wrote for its identity (password read from its file, TLS files beside it), so
these tests also prove the config path a deployed gateway takes.

The collector's receive stage builds its own paho client and calls ``apply_security`` too: the
last test runs a collector process as the site's ``heatwatch-collector`` identity, under TLS,
with a gateway identity publishing to it.
"""

from __future__ import annotations

import getpass
import os
import signal
import ssl
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as mqtt
import pytest
import yaml
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from alerting.commands import CommandStore
from alerting.database import Database
from alerting.rows import CommandDetail
from contract.commands import CommandResult
from contract.config import MqttSettings
from contract.errors import NotFound
from heatwatch.devstack import Influxd, _Service, find_binary, free_port
from heatwatch.site import SiteDir
from messaging.security import apply_security
from tests.conftest import (
    Processes,
    heatwatch,
    influx_query,
    wait_for,
    write_alerter_config,
    write_collector_config,
    write_gateway_config,
)

R = "heatwatch/v1"


class SiteBroker(_Service):
    """mosquitto running the generated mosquitto.conf as is (plus who to run as: the tests run
    as root, and mosquitto would drop to a user that cannot read the throwaway folder)."""

    name = "mosquitto"

    def __init__(self, site: Path, port: int) -> None:
        super().__init__(site / "run", port)
        self.binary = find_binary("mosquitto", "mosquitto")
        self.conf = self.folder / "mosquitto.conf"
        self.conf.write_text((site / "broker" / "mosquitto.conf").read_text()
                             + f"\nuser {getpass.getuser()}\n")

    def _cmd(self) -> list[str]:
        return [self.binary, "-c", str(self.conf)]

    def reload(self) -> None:
        assert self.proc is not None
        mark = self.log_path.read_text(errors="replace").count("Reloading config")
        self.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: self.log_path.read_text(errors="replace").count("Reloading config") > mark, 10,
                 "mosquitto reloading its config")


class Site:
    def __init__(self, root: Path, port: int, gateways: dict[str, Path]) -> None:
        self.root, self.port, self.gateways = root, port, gateways

    def settings(self, name: str, **change: Any) -> MqttSettings:
        """The mqtt: section `heatwatch site` wrote for ``name``, loaded the way a config is."""
        folder = self.root / "identities" / name
        data = yaml.safe_load((folder / "mqtt.yaml").read_text())["mqtt"]
        data.update(change)
        return MqttSettings.model_validate(data, context={"base": str(folder)})


@pytest.fixture
def site(tmp_path: Path) -> Iterator[tuple[Site, SiteBroker]]:
    port = free_port()
    root = tmp_path / "site"
    heatwatch("site", "init", str(root), "--broker-name", "localhost", "--broker-ip", "127.0.0.1",
              "--listen", "127.0.0.1", "--port", str(port), "--conf-dir", str(root / "broker"),
              "--data-dir", str(tmp_path / "mqtt-data"))
    (tmp_path / "mqtt-data").mkdir()
    gateways = {s: write_gateway_config(tmp_path / "gw", s, mqtt_port=port, plc_port=free_port(),
                                        bus_port=free_port()) for s in ("st001", "st002")}
    heatwatch("site", "issue-gateway", str(root), *map(str, gateways.values()))
    broker = SiteBroker(root, port)
    broker.start()
    yield Site(root, port, gateways), broker
    broker.stop()


class Client:
    """An MQTT 5 paho client that records what the broker said: CONNACK, SUBACK and PUBACK reason
    codes, and every message delivered."""

    def __init__(self, site: Site, settings: MqttSettings | None, *, tls_context: ssl.SSLContext | None = None
                 ) -> None:
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"t-{uuid.uuid4().hex[:8]}",
                             protocol=mqtt.MQTTv5)
        if settings is not None:
            apply_security(self.c, settings)
        if tls_context is not None:
            self.c.tls_set_context(tls_context)
        self.connack: ReasonCode | None = None
        self.closed = threading.Event()
        self.suback: dict[int, list[ReasonCode]] = {}
        self.puback: dict[int, ReasonCode] = {}
        self.messages: list[tuple[str, bytes]] = []
        self.c.on_connect = self._on_connect
        self.c.on_disconnect = lambda *_: self.closed.set()
        self.c.on_connect_fail = lambda *_: self.closed.set()
        self.c.on_subscribe = lambda _c, _u, mid, codes, _p: self.suback.__setitem__(mid, list(codes))
        self.c.on_publish = lambda _c, _u, mid, code, _p: self.puback.__setitem__(mid, code)
        self.c.on_message = lambda _c, _u, m: self.messages.append((m.topic, bytes(m.payload)))
        self.error: Exception | None = None
        try:
            self.c.connect("localhost", site.port, keepalive=10)
        except (OSError, ssl.SSLError) as exc:  # a TLS handshake the broker refused
            self.error = exc
            self.closed.set()
            return
        self.c.loop_start()
        wait_for(lambda: self.connack is not None or self.closed.is_set(), 10, "CONNACK or close")

    def _on_connect(self, _c: Any, _u: Any, _f: Any, code: ReasonCode, _p: Properties | None) -> None:
        self.connack = code

    @property
    def connected(self) -> bool:
        return self.connack is not None and not self.connack.is_failure and not self.closed.is_set()

    def subscribe(self, topic: str) -> list[ReasonCode]:
        _, mid = self.c.subscribe(topic, qos=1)
        return list(wait_for(lambda: self.suback.get(mid), 10, f"SUBACK for {topic}"))

    def publish(self, topic: str, payload: bytes = b"{}") -> ReasonCode:
        info = self.c.publish(topic, payload, qos=1)
        return wait_for(lambda: self.puback.get(info.mid), 10, f"PUBACK for {topic}")  # type: ignore[no-any-return]

    def got(self, topic: str) -> bool:
        return any(t == topic for t, _ in self.messages)

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def test_plaintext_and_strangers_are_refused(site: tuple[Site, SiteBroker], tmp_path: Path) -> None:
    s, _ = site
    good = Client(s, s.settings("gw-st001"))
    assert good.connected, good.connack  # the control: the identity as issued gets in
    good.close()
    plain = Client(s, None)  # plaintext to the only listener there is
    assert not plain.connected and plain.closed.wait(10)
    plain_pw = Client(s, s.settings("gw-st001", tls=None))  # right password, but in clear text
    assert not plain_pw.connected
    no_cert = Client(s, s.settings("gw-st001", tls={"ca_file": "ca.crt"}))  # TLS without a client cert
    assert not no_cert.connected and no_cert.closed.wait(10)
    wrong_pw = s.settings("gw-st001", password_file=None, password="not-the-password")
    bad = Client(s, wrong_pw)
    assert not bad.connected and bad.connack is not None and bad.connack.is_failure
    anonymous = Client(s, s.settings("gw-st001", username=None, password_file=None))
    assert not anonymous.connected
    # a client certificate from another CA: a second site's gateway
    other = tmp_path / "other-site"
    SiteDir(other).init(SiteDir(s.root).load().broker)
    foreign = s.settings("gw-st001", tls={"ca_file": str(s.root / "identities/gw-st001/ca.crt"),
                                          "cert_file": str(other / "identities/heatwatch-api/client.crt"),
                                          "key_file": str(other / "identities/heatwatch-api/client.key")})
    assert not Client(s, foreign).connected
    # and the broker must prove itself too: a client trusting only the other site's CA refuses it
    fake_trust = s.settings("gw-st001", tls={"ca_file": str(other / "ca/ca.crt"),
                                             "cert_file": str(s.root / "identities/gw-st001/client.crt"),
                                             "key_file": str(s.root / "identities/gw-st001/client.key")})
    stranger = Client(s, fake_trust)
    assert isinstance(stranger.error, ssl.SSLCertVerificationError), stranger.error


def test_each_identity_gets_its_part_and_no_more(site: tuple[Site, SiteBroker]) -> None:
    s, _ = site
    collector = Client(s, s.settings("heatwatch-collector"))
    alerter = Client(s, s.settings("heatwatch-alerter"))
    api = Client(s, s.settings("heatwatch-api"))
    gw_a, gw_b = Client(s, s.settings("gw-st001")), Client(s, s.settings("gw-st002"))
    assert all(c.connected for c in (collector, alerter, api, gw_a, gw_b))
    ok = [rc.value for rc in collector.subscribe(f"{R}/station/+/telemetry")]
    assert ok == [1]
    for f in (f"{R}/station/+/status", f"{R}/gateway/+/status", f"{R}/station/+/command-result/+",
              f"{R}/alert/+"):
        assert not collector.subscribe(f)[0].is_failure, f
    for f in (f"{R}/station/+/telemetry", f"{R}/station/+/status", f"{R}/gateway/+/status",
              f"{R}/station/+/command-result/+"):
        assert not alerter.subscribe(f)[0].is_failure, f
    assert not api.subscribe(f"{R}/gateway/+/status")[0].is_failure

    # gateway A publishes as itself: telemetry, station status, command results, gateway status
    for t in (f"{R}/station/st001/telemetry", f"{R}/station/st001/status",
              f"{R}/station/st001/command-result/c1", f"{R}/gateway/gw-st001/status"):
        assert gw_a.publish(t).is_failure is False, t
    wait_for(lambda: collector.got(f"{R}/station/st001/command-result/c1"), 10, "A's command result")
    wait_for(lambda: alerter.got(f"{R}/station/st001/command-result/c1"), 10, "A's result at the alerter")
    wait_for(lambda: api.got(f"{R}/gateway/gw-st001/status"), 10, "A's gateway status at the API")

    # ...but not as station B, nor as gateway B, nor on a topic outside its part
    for t in (f"{R}/station/st002/telemetry", f"{R}/station/st002/status", f"{R}/gateway/gw-st002/status",
              f"{R}/station/st002/command-result/c2", f"{R}/alert/st002", f"{R}/station/st001/command/c3"):
        assert gw_a.publish(t).getName() == "Not authorized", t
    # messages from one publisher are delivered in order: once this one is in, a forbidden one
    # published before it would be in too
    gw_a.publish(f"{R}/station/st001/telemetry", b"after")
    wait_for(lambda: (f"{R}/station/st001/telemetry", b"after") in collector.messages, 10, "A's marker")
    b_topics = (f"{R}/station/st002/", f"{R}/gateway/gw-st002/")
    assert not any(t.startswith(b_topics) for t, _ in collector.messages)

    # A reads its own commands and receipts, not B's, and no telemetry at all
    assert not gw_a.subscribe(f"{R}/station/st001/command/+")[0].is_failure
    assert not gw_a.subscribe(f"{R}/station/st001/receipt")[0].is_failure
    for f in (f"{R}/station/st002/command/+", f"{R}/station/+/command/+", f"{R}/station/+/telemetry",
              f"{R}/station/st002/telemetry", f"{R}/station/st002/receipt", f"{R}/station/+/receipt", "#"):
        # mosquitto 2.0 grants any filter and then delivers only what the ACL lets this user read
        gw_a.subscribe(f)
    gw_b.publish(f"{R}/station/st002/telemetry", b"b-data")
    wait_for(lambda: collector.got(f"{R}/station/st002/telemetry"), 10, "B's telemetry at the collector")
    # the API commands both stations; A gets only its own
    assert api.publish(f"{R}/station/st002/command/x1").is_failure is False
    assert api.publish(f"{R}/station/st001/command/x2").is_failure is False
    wait_for(lambda: gw_a.got(f"{R}/station/st001/command/x2"), 10, "A's own command")
    assert {t for t, _ in gw_a.messages} == {f"{R}/station/st001/command/x2"}, gw_a.messages

    # the collector publishes receipts, never alerts, telemetry or commands; a gateway reads the
    # receipts of its own stations only (B's first: once A's is in, B's would be in too); the
    # alerter publishes alerts only
    assert collector.publish(f"{R}/alert/st001").getName() == "Not authorized"
    assert collector.publish(f"{R}/station/st002/receipt").is_failure is False
    assert collector.publish(f"{R}/station/st001/receipt").is_failure is False
    wait_for(lambda: gw_a.got(f"{R}/station/st001/receipt"), 10, "A's receipt")
    assert not gw_a.got(f"{R}/station/st002/receipt")
    assert collector.publish(f"{R}/station/st001/telemetry").getName() == "Not authorized"
    assert collector.publish(f"{R}/station/st001/command/c9").getName() == "Not authorized"
    assert alerter.publish(f"{R}/alert/st001").is_failure is False
    wait_for(lambda: collector.got(f"{R}/alert/st001"), 10, "the alerter's alert at the collector")
    for t in (f"{R}/station/st001/telemetry", f"{R}/station/st001/command/c9", f"{R}/station/st001/receipt"):
        assert alerter.publish(t).getName() == "Not authorized", t
    # the API publishes commands only
    assert api.publish(f"{R}/station/st001/telemetry").getName() == "Not authorized"
    assert api.publish(f"{R}/alert/st001").getName() == "Not authorized"
    for c in (collector, alerter, api, gw_a, gw_b):
        c.close()


def test_a_revoked_gateway_is_refused(site: tuple[Site, SiteBroker], tmp_path: Path) -> None:
    s, broker = site
    gw_b = s.settings("gw-st002")
    before = Client(s, gw_b)  # B stays connected through its revocation
    assert before.connected and before.publish(f"{R}/station/st002/telemetry").is_failure is False
    heatwatch("site", "revoke", str(s.root), "gw-st002")
    acl = (s.root / "broker" / "acl").read_text()
    assert "gw-st002" not in acl and "st002" not in acl.replace("+", "")
    assert "gw-st002:" not in (s.root / "broker" / "passwd").read_text()
    broker.reload()  # SIGHUP: passwd, acl and (mosquitto 2.0.11) the CRL
    # the session B already had may publish nothing more (mosquitto checks the ACL per message)
    assert (before.closed.is_set()
            or before.publish(f"{R}/station/st002/telemetry").getName() == "Not authorized")
    before.close()
    refused = Client(s, gw_b)
    assert not refused.connected and refused.connack is None  # its certificate: refused at TLS
    # each of the two refusals on its own: B's login with a good certificate...
    b_login = s.settings("gw-st002", tls={"ca_file": "ca.crt",
                                          "cert_file": str(s.root / "identities/heatwatch-api/client.crt"),
                                          "key_file": str(s.root / "identities/heatwatch-api/client.key")})
    by_password = Client(s, b_login)
    assert by_password.connack is not None and by_password.connack.getName() in (
        "Bad user name or password", "Not authorized"), by_password.connack
    # ...and a good login with B's certificate
    b_cert = s.settings("heatwatch-api", tls={"ca_file": "ca.crt",
                                              "cert_file": str(s.root / "identities/gw-st002/client.crt"),
                                              "key_file": str(s.root / "identities/gw-st002/client.key")})
    assert not Client(s, b_cert).connected
    assert Client(s, s.settings("heatwatch-api")).connected  # the controls: the API's own identity,
    assert Client(s, s.settings("gw-st001")).connected  # and the other gateway still get in
    # a restart reads the same files: still refused
    broker.stop()
    broker.start()
    assert not Client(s, gw_b).connected

    # issued again, B gets in with the new credentials; its old certificate stays refused
    old_cert = (s.root / "identities/gw-st002/client.crt").read_bytes()
    old_key = (s.root / "identities/gw-st002/client.key").read_bytes()
    heatwatch("site", "issue-gateway", str(s.root), str(s.gateways["st002"]))
    broker.reload()
    assert Client(s, s.settings("gw-st002")).connected
    keep = tmp_path / "old"
    keep.mkdir()
    (keep / "c.crt").write_bytes(old_cert)
    (keep / "c.key").write_bytes(old_key)
    os.chmod(keep / "c.key", 0o600)
    stale = s.settings("gw-st002", tls={"ca_file": str(s.root / "broker/ca.crt"),
                                        "cert_file": str(keep / "c.crt"), "key_file": str(keep / "c.key")})
    assert not Client(s, stale).connected


def test_the_collector_and_the_alerter_work_through_the_sites_tls_broker_as_their_identities(
        site: tuple[Site, SiteBroker], tmp_path: Path, influxd: Influxd, influx_db: str,
        procs: Processes) -> None:
    """The collector and the alerter processes with the ``mqtt:`` sections `heatwatch site` wrote
    for them (TLS, client certificate, password file beside the config): they connect, subscribe to
    what their ACLs give them; the collector stores a burst of telemetry from a gateway identity,
    the alerter records a command result. A receive window of 5 makes the collector's receive
    stage stop and resume reading many times with whole messages already decrypted in the TLS
    layer, where the selector cannot see them (the alerter's shared client: tests/e2e)."""
    s, _ = site
    ident = s.root / "identities" / "heatwatch-collector"
    mqtt_section = yaml.safe_load((ident / "mqtt.yaml").read_text())["mqtt"]  # paths relative to it
    url = f"sqlite:///{tmp_path / 'site.sqlite'}"
    cfg = write_collector_config(ident, mqtt_port=s.port, influx_url=influxd.url, database=influx_db,
                                 client_id="heatwatch-collector", mqtt=mqtt_section, receive_maximum=5)
    a_ident = s.root / "identities" / "heatwatch-alerter"
    a_mqtt = yaml.safe_load((a_ident / "mqtt.yaml").read_text())["mqtt"]
    alerter = write_alerter_config(a_ident, mqtt_port=s.port, store=url, member="heatwatch-alerter",
                                   mqtt=a_mqtt)
    procs.start("collector", "collector", str(cfg))
    procs.start("alerter", "alerter", str(alerter))
    procs.wait_log("collector", '"subscribed"')
    procs.wait_log("alerter", '"partitions taken over"')
    gw = Client(s, s.settings("gw-st001"))
    assert gw.connected, gw.connack
    n, now = 400, int(time.time() * 1000)
    infos = [gw.c.publish(f"{R}/station/st001/telemetry", orjson.dumps({
        "schema": 1, "station": "st001", "gateway": "gw-st001", "boot": "0badc0de", "seq": i + 1,
        "ts": now - (n - i) * 1000, "values": [{"point": "secondary_supply_temp", "value": 50.0 + i / 100,
                                                "unit": "°C", "quality": "good"}]}), qos=1)
             for i in range(n)]
    result = CommandResult.model_validate({
        "id": "c1", "station": "st001", "gateway": "gw-st001", "state": "confirmed", "device": "plc",
        "point": "building_valve_setpoint", "building": "b01", "value": 70.0, "read_back": 70.0, "ts": now})
    infos.append(gw.c.publish(f"{R}/station/st001/command-result/c1", result.to_json(), qos=1))
    wait_for(lambda: all(gw.puback.get(i.mid) is not None for i in infos), 20, "the broker's PUBACKs")
    assert not any(gw.puback[i.mid].is_failure for i in infos)

    def stored() -> int:
        got = influx_query(influxd, influx_db, "SELECT count(secondary_supply_temp) FROM station")
        return int(got[0]["values"][0][1]) if got else 0

    wait_for(lambda: stored() == n, 30, f"{n} messages in InfluxDB")
    db = Database(url)
    commands = CommandStore(db.engine)

    def recorded() -> CommandDetail | None:
        try:
            return commands.get("c1")
        except NotFound:  # the alerter records it, not the collector: it may trail the count
            return None

    try:
        got = wait_for(recorded, 20, "the result in the store")
        assert (got.state, got.origin) == ("confirmed", "broker")
    finally:
        db.close()
    gw.close()
    assert "broker refused" not in procs.log("collector") and "broker refused" not in procs.log("alerter")
