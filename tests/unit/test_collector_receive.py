"""The receive stage's own PUBLISH parse and batched PUBACKs (collector/receive.py ``_Client``)
say exactly what paho's would: same topic, packet id and payload for any PUBLISH the broker can
send us, same bytes on the wire for the acknowledgements."""

from __future__ import annotations

import struct
from collections import deque

from hypothesis import given, settings
from hypothesis import strategies as st
from paho.mqtt import _packet
from paho.mqtt.client import MQTTv5, mqtt_ms_publish
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from collector.receive import _Client
from collector.stages import Delivery
from contract.payload import MAX_PAYLOAD_BYTES

# MQTT strings: UTF-8 without NUL or surrogates (a broker refuses anything else)
MQTT_CHARS = st.characters(exclude_categories=["Cs"], exclude_characters="\x00")
PROPS = st.fixed_dictionaries({}, optional={
    "MessageExpiryInterval": st.integers(0, 2**32 - 1),
    "ContentType": st.text(MQTT_CHARS, max_size=40),
    "ResponseTopic": st.text(MQTT_CHARS, min_size=1, max_size=40),
    "CorrelationData": st.binary(max_size=40),
    "UserProperty": st.lists(st.tuples(st.text(MQTT_CHARS, max_size=20), st.text(MQTT_CHARS, max_size=200)),
                             max_size=30),
    "SubscriptionIdentifier": st.lists(st.integers(1, 2**28 - 1), min_size=1, max_size=3),
    "PayloadFormatIndicator": st.integers(0, 1),
    "TopicAlias": st.integers(1, 2**16 - 1),
})


def _client() -> tuple[_Client, list[Delivery]]:
    got: list[Delivery] = []
    c = _Client(CallbackAPIVersion.VERSION2, client_id="t", protocol=MQTTv5, manual_ack=True)
    c.on_delivery = got.append
    return c, got


@settings(max_examples=300, deadline=None)
@given(st.text(MQTT_CHARS, min_size=1, max_size=300), st.integers(0, 1), st.integers(1, 2**16 - 1), PROPS,
       st.binary(max_size=3000), st.booleans(), st.booleans())
def test_publish_parse_agrees_with_paho(topic: str, qos: int, mid: int, props: dict[str, object],
                                        payload: bytes, dup: bool, retain: bool) -> None:
    p = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    for k, v in props.items():
        setattr(p, k, v)
    t = topic.encode()
    body = struct.pack("!H", len(t)) + t + (struct.pack("!H", mid) if qos else b"") + p.pack() + payload  # type: ignore[no-untyped-call]
    header = 0x30 | (dup << 3) | (qos << 1) | retain
    want = _packet.decode_publish(header, body, MQTTv5)
    c, got = _client()
    c._in_packet = {"command": header, "have_remaining": 1, "remaining_count": [], "remaining_mult": 1,
                    "remaining_length": len(body), "packet": bytearray(body), "to_process": 0, "pos": 0}
    assert c._handle_publish() == 0
    assert got == [Delivery(want.mid, want.topic.decode(), bytes(want.payload), len(want.payload))]


def test_a_truncated_publish_is_a_protocol_error_not_an_exception() -> None:
    c, got = _client()
    body = struct.pack("!H", 5) + b"ab"  # topic says 5 bytes, 2 follow
    c._in_packet = {"command": 0x32, "have_remaining": 1, "remaining_count": [], "remaining_mult": 1,
                    "remaining_length": len(body), "packet": bytearray(body), "to_process": 0, "pos": 0}
    assert c._handle_publish() == 2  # MQTT_ERR_PROTOCOL: paho drops the connection
    assert got == []


def test_batched_pubacks_are_paho_own_pubacks_in_order_in_one_write() -> None:
    mids = [1, 2, 300, 65535, 7]
    ours, _ = _client()
    ours.ack_many(mids)
    paho, _ = _client()
    for m in mids:
        paho.ack(m, 1)
    assert len(ours._out_packet) == 1
    assert ours._out_packet[0]["packet"] == b"".join(bytes(p["packet"]) for p in paho._out_packet)


def test_a_payload_past_the_contracts_limit_is_not_kept() -> None:
    """Its size travels instead (the validate stage rejects it as too_large): 10 MB never waits in
    the inbox or a batch."""
    c, got = _client()
    t = b"heatwatch/v1/station/st001/telemetry"
    payload = b"x" * (MAX_PAYLOAD_BYTES + 1)
    body = struct.pack("!H", len(t)) + t + struct.pack("!H", 9) + b"\x00" + payload
    c._in_packet = {"command": 0x32, "have_remaining": 1, "remaining_count": [], "remaining_mult": 1,
                    "remaining_length": len(body), "packet": bytearray(body), "to_process": 0, "pos": 0}
    assert c._handle_publish() == 0
    assert got == [Delivery(9, t.decode(), b"", MAX_PAYLOAD_BYTES + 1)]


def test_publish_many_writes_paho_own_qos1_publishes_in_one_write_and_pubacks_release_them() -> None:
    ours, _ = _client()
    ours._sock = object()  # type: ignore[assignment]  # "connected": packets are queued, not written
    ours._call_socket_register_write = lambda: None  # type: ignore[method-assign]
    items = [("heatwatch/v1/station/st001/receipt", b'{"a":1}'),
             ("heatwatch/v1/station/st002/receipt", b"x" * 300)]
    assert ours.publish_many(items) == 2
    paho, _ = _client()
    paho._sock = object()  # type: ignore[assignment]
    paho._call_socket_register_write = lambda: None  # type: ignore[method-assign]
    for t, p in items:
        paho._send_publish(paho._mid_generate(), t.encode(), p, 1)
    assert len(ours._out_packet) == 1
    assert ours._out_packet[0]["packet"] == b"".join(bytes(p["packet"]) for p in paho._out_packet)
    assert sorted(ours._out_messages) == [1, 2]
    for mid, reason in ((1, b""), (2, b"\x87")):  # success; not authorized
        ours._in_packet = {"command": 0x40, "packet": bytearray(struct.pack("!H", mid) + reason)}
        assert ours._handle_pubackcomp("PUBACK") == 0
    assert ours._out_messages == {} and ours.refused == 1 and ours.refused_reason == "0x87"
    ours._sock = paho._sock = None  # not sockets: nothing for paho to close


def test_publish_many_while_disconnected_holds_them_for_the_reconnect() -> None:
    c, _ = _client()
    assert c.publish_many([("t/1", b"a")]) == 1
    assert c._out_packet == deque() and [m.state for m in c._out_messages.values()] == [mqtt_ms_publish]
