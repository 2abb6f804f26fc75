"""``heatwatch site``: a site's broker identities: its CA, certificates, passwords and ACL.

    heatwatch site init SITE --broker-name mqtt.example.net [--broker-ip 10.0.0.5] ...
    heatwatch site issue-gateway SITE GATEWAY_CONFIG...   one gateway's credentials (re-issue: new ones)
    heatwatch site broker SITE [GATEWAY_CONFIG...]        regenerate mosquitto.conf, passwd, acl, crl
    heatwatch site revoke SITE NAME                       refuse an identity from now on
    heatwatch site list SITE

SITE is a folder, the site's own records (keep it on the engineers' machine, backed up, not on the
broker: ``ca/ca.key`` signs every certificate of the site)::

    site.yaml                 the inventory: broker names and ports, every identity, its role,
                              its stations (from the gateway configs), its certificate's serial,
                              its password's hash, whether it is revoked
    ca/ca.key ca.crt          the site CA (EC P-256, 20 years)
    broker/                   what goes to the broker machine (``conf_dir``): mosquitto.conf, the
                              server certificate and key, ca.crt, crl.pem, passwd, acl
    identities/NAME/          what goes to one client: ca.crt, client.crt, client.key, password,
                              and mqtt.yaml, the ``mqtt:`` section for its config

Every client (gateway, collector, API) authenticates twice over TLS: a client certificate
signed by the site CA (``require_certificate``), and a username and password (mosquitto 2.0's
PBKDF2-SHA512 hash, ``$7$``, written here without needing mosquitto_passwd). The username is the
identity the ACL grants topics to. Revoking removes the password and ACL entry and lists the
certificate in the CRL; mosquitto 2.0 re-reads all three on SIGHUP (``systemctl reload``; tested).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import os
import secrets
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

from contract import topics
from contract.errors import ConfigError
from contract.topics import Ident

if TYPE_CHECKING:  # the config models are imported by the commands that run, not by `--help`
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec

    from contract.config import GatewayConfig

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"

Role = Literal["gateway", "collector", "alerter", "api"]
# mosquitto_passwd's own iteration count. The passwords are 32 random bytes (256 bits), so the
# count adds nothing against guessing, and every CONNECT pays it: 5,000 gateways reconnecting
# after a broker restart hash 5,000 times.
PBKDF2_ITERATIONS = 101
R = topics.ROOT


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BrokerSite(_Model):
    names: list[str] = Field(min_length=1)  # DNS names clients connect to (the certificate's SANs)
    ips: list[str] = Field(default_factory=list)  # IP addresses clients connect to, if any
    listen: str = "0.0.0.0"  # the TLS listener's address on the broker
    port: int = Field(default=8883, ge=1, le=65535)
    conf_dir: str = "/etc/mosquitto/heatwatch"  # where broker/ is copied on the broker machine
    data_dir: str = "/var/lib/mosquitto"  # mosquitto's persistence folder


class Identity(_Model):
    role: Role
    stations: list[Ident] = Field(default_factory=list)  # gateways: the stations it publishes for
    serial: int  # its certificate's serial number (the CRL lists it when revoked)
    password_hash: str  # mosquitto 2.0's $7$ hash
    revoked: bool = False


class Site(_Model):
    kind: Literal["site"] = "site"
    broker: BrokerSite
    identities: dict[Ident, Identity] = Field(default_factory=dict)
    # certificates replaced by a re-issue: no identity of their own, still listed in the CRL
    replaced_serials: list[int] = Field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# passwords and certificates

def mosquitto_hash(password: str, salt: bytes | None = None, iterations: int = PBKDF2_ITERATIONS) -> str:
    """The password file entry mosquitto 2.0 checks: ``$7$iterations$salt$PBKDF2-SHA512``."""
    salt = salt if salt is not None else secrets.token_bytes(12)
    dk = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(dk).decode()}"


# ---------------------------------------------------------------------------------------------
# the ACL

def acl_lines(name: str, ident: Identity) -> list[str]:
    """What one identity may do (mosquitto ACL). A gateway: publish its own stations' telemetry,
    status and command results and its own gateway status; read only its own stations' commands
    and receipts.
    The collector reads telemetry, statuses, command results and alert transitions, and publishes
    receipts. An alerter reads telemetry, statuses and command results, and publishes the alert
    topic. The API publishes commands and reads gateway status."""
    out = [f"user {name}"]
    if ident.role == "gateway":
        for s in ident.stations:
            out += [f"topic write {R}/station/{s}/telemetry", f"topic write {R}/station/{s}/status",
                    f"topic write {R}/station/{s}/command-result/+",
                    f"topic read {R}/station/{s}/command/+",
                    f"topic read {R}/station/{s}/receipt"]  # the collector's receipts (#16)
        out.append(f"topic write {R}/gateway/{name}/status")  # its will too
    elif ident.role == "collector":
        out += [f"topic read {R}/station/+/telemetry", f"topic read {R}/station/+/status",
                f"topic read {R}/gateway/+/status", f"topic read {R}/station/+/command-result/+",
                f"topic read {R}/alert/+",
                f"topic write {R}/station/+/receipt"]  # receipts after its durable write (#16)
    elif ident.role == "alerter":
        out += [f"topic read {R}/station/+/telemetry", f"topic read {R}/station/+/status",
                f"topic read {R}/gateway/+/status", f"topic read {R}/station/+/command-result/+",
                f"topic write {R}/alert/+"]
    else:
        out += [f"topic write {R}/station/+/command/+", f"topic read {R}/gateway/+/status"]
    return out


# ---------------------------------------------------------------------------------------------
# the site folder

class SiteDir:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.file = self.root / "site.yaml"

    # -- records --------------------------------------------------------------------------------
    def load(self) -> Site:
        try:
            data = yaml.safe_load(self.file.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(str(self.file), [f"cannot read: {exc.strerror} (run `heatwatch site init`)"]
                              ) from None
        try:
            return Site.model_validate(data)
        except ValueError as exc:
            raise ConfigError(str(self.file), [str(exc)]) from None

    def save(self, site: Site) -> None:
        tmp = self.file.with_suffix(".tmp")
        tmp.write_text("# heatwatch site records: written by `heatwatch site`, edit broker: by hand if "
                       "you must, then run `heatwatch site broker`\n"
                       + yaml.safe_dump(site.model_dump(mode="json"), sort_keys=False))
        os.replace(tmp, self.file)

    def _write(self, path: Path, data: bytes, secret: bool = False) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if secret else 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)

    def ca(self) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        from heatwatch import pki

        ca = self.root / "ca"
        return pki.load_ca((ca / "ca.key").read_bytes(), (ca / "ca.crt").read_bytes())

    # -- commands -------------------------------------------------------------------------------
    def init(self, broker: BrokerSite, *, collector: str = "heatwatch-collector",
             alerter: str = "heatwatch-alerter", api: str = "heatwatch-api") -> None:
        if self.file.exists():
            raise ConfigError(str(self.file), ["a site is already here; issue, revoke or regenerate "
                                               "with the other `heatwatch site` commands"])
        from heatwatch import pki

        self.root.mkdir(parents=True, exist_ok=True)
        key, cert = pki.make_ca()
        self._write(self.root / "ca" / "ca.key", pki.pem_key(key), secret=True)
        self._write(self.root / "ca" / "ca.crt", pki.pem(cert))
        site = Site(broker=broker)
        self._server_cert(site)
        for name, role in ((collector, "collector"), (alerter, "alerter"), (api, "api")):
            self._issue(site, name, role, [])  # type: ignore[arg-type]
        self.save(site)
        self.render(site)

    def _server_cert(self, site: Site) -> None:
        from heatwatch import pki

        ca_key, ca = self.ca()
        key, cert = pki.issue_cert(ca_key, ca, site.broker.names[0], server=True, names=site.broker.names,
                                   ips=site.broker.ips)
        self._write(self.root / "broker" / "server.key", pki.pem_key(key), secret=True)
        self._write(self.root / "broker" / "server.crt", pki.pem(cert))

    def _issue(self, site: Site, name: str, role: Role, stations: list[str]) -> Path:
        from heatwatch import pki

        topics.check_ident(name, "identity")
        ca_key, ca = self.ca()
        key, cert = pki.issue_cert(ca_key, ca, name, server=False)
        password = secrets.token_urlsafe(32)
        old = site.identities.get(name)
        if old is not None:
            # a re-issue replaces the old credentials: the old certificate must stay refused
            site.replaced_serials.append(old.serial)
        site.identities[name] = Identity(role=role, stations=stations, serial=cert.serial_number,
                                         password_hash=mosquitto_hash(password))
        folder = self.root / "identities" / name
        self._write(folder / "ca.crt", pki.pem(ca))
        self._write(folder / "client.crt", pki.pem(cert))
        self._write(folder / "client.key", pki.pem_key(key), secret=True)
        self._write(folder / "password", (password + "\n").encode(), secret=True)
        b = site.broker
        snippet = {"mqtt": {"host": b.names[0], "port": b.port, "username": name,
                            "password_file": "password",
                            "tls": {"ca_file": "ca.crt", "cert_file": "client.crt",
                                    "key_file": "client.key"}}}
        self._write(folder / "mqtt.yaml", (
            f"# {role} {name}: paste into its config, with these files beside it (relative paths are\n"
            "# relative to the config file; give absolute ones if they live elsewhere)\n"
            + yaml.safe_dump(snippet, sort_keys=False)).encode())
        return folder

    def issue_gateway(self, config_path: str | Path) -> Path:
        site = self.load()
        from contract.config import load_gateway_config

        cfg = load_gateway_config(config_path)
        folder = self._issue(site, cfg.gateway, "gateway", [cfg.station])
        self.save(site)
        self.render(site)
        return folder

    def issue(self, name: str, role: Role) -> Path:
        site = self.load()
        folder = self._issue(site, name, role, [])
        self.save(site)
        self.render(site)
        return folder

    def revoke(self, name: str) -> None:
        site = self.load()
        ident = site.identities.get(name)
        if ident is None:
            raise ConfigError(str(self.file), [f"identities: no identity {name!r} "
                                               f"(have {', '.join(site.identities) or 'none'})"])
        site.identities[name] = ident.model_copy(update={"revoked": True})
        self.save(site)
        self.render(site)

    def update_gateways(self, configs: list[GatewayConfig], where: list[str]) -> Site:
        """The stations of already issued gateways, from their configs (the ACL follows them)."""
        site = self.load()
        problems = []
        for cfg, w in zip(configs, where, strict=True):
            ident = site.identities.get(cfg.gateway)
            if ident is None or ident.role != "gateway":
                problems.append(f"{w}: gateway {cfg.gateway} has no credentials: run "
                                f"`heatwatch site issue-gateway {self.root} {w}`")
            elif ident.revoked:
                problems.append(f"{w}: gateway {cfg.gateway} is revoked; issue it again to bring it back")
            else:
                site.identities[cfg.gateway] = ident.model_copy(update={"stations": [cfg.station]})
        if problems:
            raise ConfigError(str(self.file), problems)
        owners: dict[str, str] = {}
        for name, ident in site.identities.items():
            for s in ident.stations if not ident.revoked else []:
                if s in owners:
                    problems.append(f"identities.{name}.stations: {s} is also published by {owners[s]}")
                owners[s] = name
        if problems:
            raise ConfigError(str(self.file), problems)
        self.save(site)
        return site

    # -- the broker's files ---------------------------------------------------------------------
    def render(self, site: Site | None = None) -> Path:
        """broker/: mosquitto.conf, passwd, acl and crl.pem from the records."""
        from heatwatch import pki

        site = site or self.load()
        out = self.root / "broker"
        ca_key, ca = self.ca()
        live = {n: i for n, i in site.identities.items() if not i.revoked}
        revoked = [i.serial for i in site.identities.values() if i.revoked] + site.replaced_serials
        self._write(out / "ca.crt", pki.pem(ca))
        self._write(out / "crl.pem", pki.make_crl(ca_key, ca, revoked))
        self._write(out / "passwd", "".join(f"{n}:{i.password_hash}\n" for n, i in live.items()).encode(),
                    secret=True)
        acl = ["# generated by `heatwatch site broker` from the site's records and gateway configs;",
               "# regenerate, do not edit. Anything not granted here is refused.", ""]
        for n, i in live.items():
            acl += [*acl_lines(n, i), ""]
        self._write(out / "acl", "\n".join(acl).encode())
        b, d = site.broker, site.broker.conf_dir
        conf = f"""# heatwatch site broker (mosquitto 2.0), generated by `heatwatch site broker`: regenerate,
# do not edit. Copy this folder to {d} on the broker machine and run mosquitto with this file
# as its whole config: mosquitto -c {d}/mosquitto.conf (docs/operations.md).
# After `heatwatch site revoke` or `issue-gateway`: copy again, then
#   systemctl reload mosquitto    (SIGHUP: re-reads passwd, acl and crl.pem)
per_listener_settings false
allow_anonymous false
password_file {d}/passwd
acl_file {d}/acl
persistence_location {b.data_dir.rstrip('/')}/

# One listener, TLS only: no plaintext port exists to fall back to.
listener {b.port} {b.listen}
protocol mqtt
tls_version tlsv1.2
cafile {d}/ca.crt
certfile {d}/server.crt
keyfile {d}/server.key
# every client also presents a certificate signed by the site CA; the CRL refuses revoked ones
require_certificate true
use_identity_as_username false
crlfile {d}/crl.pem

"""
        try:  # the broker settings every heatwatch broker shares (persistence, queues)
            conf += (DEPLOY / "mosquitto" / "heatwatch.conf").read_text()
        except OSError:
            raise ConfigError(str(DEPLOY / "mosquitto" / "heatwatch.conf"), [
                "missing: run `heatwatch site` from a checkout of heatwatch (the edge wheel has no "
                "deploy/ folder)"]) from None
        self._write(out / "mosquitto.conf", conf.encode())
        return out


# ---------------------------------------------------------------------------------------------
# the command

def _run(args: argparse.Namespace) -> int:
    d = SiteDir(args.site)
    if args.action == "init":
        d.init(BrokerSite(names=args.broker_name, ips=args.broker_ip, listen=args.listen, port=args.port,
                          conf_dir=args.conf_dir, data_dir=args.data_dir))
        print(f"site CA, broker certificate and the collector's, alerter's and API's credentials in "
              f"{d.root}; broker files in {d.root / 'broker'}", file=sys.stderr)
    elif args.action == "issue-gateway":
        for c in args.configs:
            folder = d.issue_gateway(c)
            print(f"{folder}: credentials for the gateway of {c} (copy to its box, mode 0600)",
                  file=sys.stderr)
    elif args.action == "issue":
        folder = d.issue(args.name, args.role)
        print(f"{folder}: credentials for {args.role} {args.name}", file=sys.stderr)
    elif args.action == "broker":
        from contract.config import load_gateway_config

        cfgs = [load_gateway_config(c) for c in args.configs]
        site = d.update_gateways(cfgs, list(args.configs))
        out = d.render(site)
        print(f"{out}: mosquitto.conf, passwd, acl, crl.pem for {len(site.identities)} identities",
              file=sys.stderr)
    elif args.action == "revoke":
        d.revoke(args.name)
        print(f"{args.name} revoked: copy {d.root / 'broker'} to the broker, then `systemctl reload "
              "mosquitto` (it re-reads passwd, acl and crl.pem)", file=sys.stderr)
    else:
        site = d.load()
        for name, i in site.identities.items():
            state = "revoked" if i.revoked else "active"
            print(f"{name:<32} {i.role:<9} {state:<8} serial {i.serial:x} {' '.join(i.stations)}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``heatwatch site …`` to the command's subparsers."""
    p = sub.add_parser("site", help="a site's broker identities: CA, certificates, passwords, ACL")
    acts = p.add_subparsers(dest="action", required=True)
    a = acts.add_parser("init", help="a new site: CA, broker certificate, collector, alerter and API "
                                     "credentials")
    a.add_argument("site", metavar="SITE_DIR")
    a.add_argument("--broker-name", action="append", required=True,
                   help="a DNS name clients reach the broker by (repeat for several)")
    a.add_argument("--broker-ip", action="append", default=[], help="an IP address clients use (repeatable)")
    a.add_argument("--listen", default="0.0.0.0", help="the broker's listening address")
    a.add_argument("--port", type=int, default=8883)
    a.add_argument("--conf-dir", default="/etc/mosquitto/heatwatch",
                   help="where the broker files will live on the broker machine")
    a.add_argument("--data-dir", default="/var/lib/mosquitto", help="mosquitto's persistence folder")
    a = acts.add_parser("issue-gateway", help="credentials for the gateway of each config (new ones "
                                              "replace old)")
    a.add_argument("site", metavar="SITE_DIR")
    a.add_argument("configs", nargs="+", metavar="GATEWAY_CONFIG")
    a = acts.add_parser("issue", help="new credentials for a collector, alerter or API identity")
    a.add_argument("site", metavar="SITE_DIR")
    a.add_argument("name")
    a.add_argument("--role", choices=["collector", "alerter", "api"], required=True)
    a = acts.add_parser("broker", help="regenerate the broker's files (ACL from the gateway configs)")
    a.add_argument("site", metavar="SITE_DIR")
    a.add_argument("configs", nargs="*", metavar="GATEWAY_CONFIG")
    a = acts.add_parser("revoke", help="refuse an identity from now on")
    a.add_argument("site", metavar="SITE_DIR")
    a.add_argument("name")
    a = acts.add_parser("list", help="the site's identities")
    a.add_argument("site", metavar="SITE_DIR")
    p.set_defaults(fn=_run)
