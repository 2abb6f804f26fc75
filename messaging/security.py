"""Broker identity and encryption for any paho client: one function every MQTT client calls
before it connects, so gateway, collector and API speak to a site's broker the same way.

    apply_security(client, settings)   TLS (site CA, client certificate) and username/password

The settings come from ``contract.config.MqttSettings``: the password was read from its file or
the environment when the config was loaded, never from the command line.
"""

from __future__ import annotations

import ssl

import paho.mqtt.client as mqtt

from contract.config import MqttSettings


def apply_security(client: mqtt.Client, settings: MqttSettings) -> None:
    """Configure ``client`` for the broker ``settings`` describe; call before ``connect``.

    With ``tls`` set the connection is TLS 1.2 or newer, the broker's certificate must chain to
    the site CA and (unless ``tls.insecure``) name the host connected to; the client presents its
    own certificate when one is configured. Username and password, when given, are sent inside
    that encrypted connection (without TLS they cross the network in clear text: loopback only).
    """
    tls = settings.tls
    if tls is not None:
        client.tls_set_context(tls_context(settings))
        client.tls_insecure_set(tls.insecure)
    if settings.username:
        pw = settings.password.get_secret_value() if settings.password is not None else None
        client.username_pw_set(settings.username, pw)


def tls_context(settings: MqttSettings) -> ssl.SSLContext:
    """The client side of a site's TLS: TLS 1.2+, the site CA only (not the system's CAs: a
    certificate any public CA issued for the broker's name must not pass), this client's
    certificate when it has one."""
    tls = settings.tls
    if tls is None:
        raise ValueError("mqtt.tls is not set")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED and host name check on
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_verify_locations(cafile=tls.ca_file)
    if tls.cert_file is not None:
        ctx.load_cert_chain(tls.cert_file, tls.key_file)
    if tls.insecure:
        ctx.check_hostname = False
    return ctx
