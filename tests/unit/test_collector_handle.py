"""Whatever arrives, the collector's validate → lines stages return lines to store and never raise
(the rules behind the same kind of door: tests/unit/test_alerter_judge.py)."""

from __future__ import annotations

import time
from pathlib import Path

import orjson
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from collector.app import Collector
from collector.lines import lines
from collector.metrics import Stats
from collector.stages import Batch, Rejected
from collector.validate import Validate
from contract.alerts import Transition
from contract.commands import CommandResult
from contract.config import CollectorConfig, IngestSettings
from contract.influx import split_lines
from contract.payload import Frame, decode_telemetry
from tests.unit.test_payload import GOOD

TOPICS = st.one_of(
    st.text(max_size=80),
    st.sampled_from(["heatwatch/v1/station/st001/telemetry", "heatwatch/v1/station/st001/status",
                     "heatwatch/v1/gateway/gw-st001/status", "heatwatch/v1/station/st001/alert",
                     "heatwatch/v1/alert/st001", "heatwatch/v1/station/st001/command-result/c1"]),
    st.builds(lambda s: f"heatwatch/v1/station/{s}/telemetry", st.text(max_size=20)),
)
def _containers(inner: st.SearchStrategy[object]) -> st.SearchStrategy[object]:
    return st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)


JSONISH = st.recursive(st.none() | st.booleans() | st.floats() | st.integers(-(2**63), 2**64 - 1)
                       | st.text(max_size=10), _containers, max_leaves=12)
PAYLOADS = st.one_of(
    st.binary(max_size=300),
    JSONISH.map(lambda v: orjson.dumps(v, option=orjson.OPT_NON_STR_KEYS)),
    st.dictionaries(st.sampled_from(sorted(GOOD)), JSONISH, max_size=8).map(
        lambda d: orjson.dumps({**GOOD, **d}, option=orjson.OPT_NON_STR_KEYS)),
)


def handle(c: Collector, topic: str, payload: bytes) -> list[str]:
    """One message through the batch stage's per-message chain (validate → taps → lines)."""
    b = Batch()
    c.batcher.handle(topic, payload, int(c.clock() * 1000), b)
    return b.lines


def _collector(folder: Path, **ingest: object) -> Collector:
    spool = str(folder / "spool.sqlite")
    return Collector(CollectorConfig.model_validate(
        {"kind": "collector", "spool": {"path": spool}, "ingest": ingest}))


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Collector:
    """One collector for every generated example: its state carries from one input to the next."""
    return _collector(tmp_path_factory.mktemp("handle"))


@settings(max_examples=2000, deadline=None)
@given(TOPICS, PAYLOADS)
def test_any_topic_and_bytes_give_lines_never_an_exception(shared: Collector, topic: str,
                                                          payload: bytes) -> None:
    C = shared
    before = C.stats.received
    lines = handle(C, topic, payload)
    assert lines and all(isinstance(x, str) for x in lines)
    assert split_lines("\n".join(lines)) == lines  # each one InfluxDB line (a text's newline is kept)
    assert C.stats.received == before + 1
    if lines[0].startswith("rejects,"):
        assert sum(C.stats.rejected.values()) >= 1


RESULT = {"schema": 1, "id": "c1", "station": "st001", "gateway": "gw-st001", "state": "confirmed",
          "device": "plc", "point": "building_valve_setpoint", "building": "b01", "value": 70.0,
          "read_back": 70.0, "ts": 1_763_700_000_000}


def test_command_results_are_stored_as_lines_on_their_own_topic_only() -> None:
    topic = "heatwatch/v1/station/st001/command-result/c1"
    payload = CommandResult.model_validate(RESULT).to_json()
    v = Validate(IngestSettings(), Stats())
    got = v(topic, payload, 1)
    assert isinstance(got, CommandResult) and (got.id, got.read_back) == ("c1", 70.0)
    assert lines(got)[0].startswith("commands,station=st001,state=confirmed,point=building_valve_setpoint")
    other = v("heatwatch/v1/station/st001/command-result/c2", payload, 2)  # c1's result on c2's topic
    assert isinstance(other, Rejected) and other.reason == "topic_mismatch"
    assert v.stats.received == 2 and v.stats.rejected == {"topic_mismatch": 1}


TRANSITION = {"key": "building_low:st001/b01", "rule": "building_low", "state": "firing", "severity": "major",
              "station": "st001", "building": "b01", "ts": 1_763_700_000_000, "since": 1_763_696_400_000,
              "value": 15.5, "summary": "building_low firing", "page": True}


def test_alert_transitions_are_stored_as_the_alerts_measurement() -> None:
    """The alerter publishes every transition it recorded; the collector stores them (Grafana's
    annotations), and refuses one published on another subject's topic."""
    v = Validate(IngestSettings(), Stats())
    got = v("heatwatch/v1/alert/st001", orjson.dumps(TRANSITION), 1)
    assert isinstance(got, Transition) and got.key == "building_low:st001/b01"
    assert lines(got) == ['alerts,rule=building_low,state=firing,station=st001,building=b01 severity="major",'
                          'key="building_low:st001/b01",summary="building_low firing",page=true,'
                          'since=1763696400000i,value=15.5 1763700000000']
    other = v("heatwatch/v1/alert/st002", orjson.dumps(TRANSITION), 2)
    assert isinstance(other, Rejected) and other.reason == "topic_mismatch"
    bad = v("heatwatch/v1/alert/st001", b'{"key": 1}', 3)
    assert isinstance(bad, Rejected) and bad.reason == "bad_alert"


def test_an_alert_of_a_gateway_is_stored_where_the_stations_are_listed() -> None:
    """A gateway's own alerts (gateway_offline, clock_skew) come on its gateway's topic: with
    ingest.known_stations the gateway id is not taken for a station. A station's alert is checked
    against the list like its telemetry."""
    v = Validate(IngestSettings(known_stations=["st001"]), Stats())
    gw = {**TRANSITION, "key": "gateway_offline:gw-st001", "rule": "gateway_offline", "station": None,
          "building": None, "gateway": "gw-st001"}
    got = v("heatwatch/v1/alert/gw-st001", orjson.dumps(gw), 1)
    assert isinstance(got, Transition) and lines(got)[0].startswith("alerts,rule=gateway_offline,")
    assert isinstance(v("heatwatch/v1/alert/st001", orjson.dumps(TRANSITION), 2), Transition)
    other = {**TRANSITION, "key": "building_low:st009/b01", "station": "st009"}
    refused = v("heatwatch/v1/alert/st009", orjson.dumps(other), 3)
    assert isinstance(refused, Rejected) and refused.reason == "unknown_station"
    assert refused.station is None  # a station outside the inventory is no tag


@settings(max_examples=500, deadline=None)
@given(st.sampled_from(["c1", "c2"]), st.one_of(
    PAYLOADS, st.dictionaries(st.sampled_from(sorted(RESULT)), JSONISH, max_size=6).map(
        lambda d: orjson.dumps({**RESULT, **d}, option=orjson.OPT_NON_STR_KEYS))))
def test_any_command_result_bytes_give_a_result_or_a_reject_never_an_exception(
        cid: str, payload: bytes) -> None:
    item = Validate(IngestSettings(), Stats())(f"heatwatch/v1/station/st001/command-result/{cid}", payload, 1)
    event(type(item).__name__)
    assert isinstance(item, CommandResult | Rejected)
    assert lines(item) and split_lines("\n".join(lines(item))) == lines(item)


@settings(max_examples=500, deadline=None)
@given(st.one_of(PAYLOADS, st.dictionaries(st.sampled_from(sorted(TRANSITION)), JSONISH, max_size=6).map(
    lambda d: orjson.dumps({**TRANSITION, **d}, option=orjson.OPT_NON_STR_KEYS))))
def test_any_alert_topic_bytes_give_a_transition_or_a_reject_never_an_exception(payload: bytes) -> None:
    item = Validate(IngestSettings(), Stats())("heatwatch/v1/alert/st001", payload, 1)
    event(type(item).__name__)
    assert isinstance(item, Transition | Rejected)
    assert lines(item) and all("\n" not in x for x in lines(item))


def test_unknown_station_is_rejected_when_a_station_list_is_configured(tmp_path: Path) -> None:
    """Under one series: the station from the wire is no tag (issue #16: one series per made-up id);
    its status, and a gateway status naming only unknown stations, too."""
    c = _collector(tmp_path, known_stations=["st002"])
    now = int(time.time() * 1000)
    lines = handle(c, "heatwatch/v1/station/st001/telemetry", orjson.dumps({**GOOD, "ts": now}))
    assert lines[0].startswith("rejects,reason=unknown_station count=1i,detail=\"station 'st001'")
    status = {"schema": 1, "station": "st001", "gateway": "gw-st001", "state": "online", "devices": {},
              "ts": now}
    lines = handle(c, "heatwatch/v1/station/st001/status", orjson.dumps(status))
    assert lines[0].startswith("rejects,reason=unknown_station count=1i")
    gw = {"schema": 1, "gateway": "gw-st001", "state": "online", "boot": "aaaaaaaa", "stations": ["st001"],
          "ts": now}
    lines = handle(c, "heatwatch/v1/gateway/gw-st001/status", orjson.dumps(gw))
    assert lines[0].startswith("rejects,reason=unknown_station count=1i")
    lines = handle(c, "heatwatch/v1/gateway/gw-st001/status",
                   orjson.dumps({**gw, "stations": ["st001", "st002"]}))
    assert lines[0].startswith("gateway_status,gateway=gw-st001")
    assert c.stats.rejected == {"unknown_station": 3}


def test_sequence_gaps_and_restarts_are_counted_per_station(tmp_path: Path) -> None:
    c = _collector(tmp_path)
    now = int(time.time() * 1000)
    topic = "heatwatch/v1/station/st001/telemetry"
    for boot, seq in [("aaaaaaaa", 1), ("aaaaaaaa", 2), ("aaaaaaaa", 5), ("aaaaaaaa", 3),
                      ("bbbbbbbb", 0), ("bbbbbbbb", 1)]:
        handle(c, topic, orjson.dumps({**GOOD, "boot": boot, "seq": seq, "ts": now}))
    assert c.stats.seq_gaps == {"st001": 2}  # 3 and 4 missing at the time (3 arrives late: allowed)
    assert c.stats.restarts == {"st001": 1}
    assert c.stats.messages == {"st001": 6}
    assert any(x.startswith("ingest,station=st001 messages=6i,seq_gaps=2i,restarts=1i")
               for x in c.stats_lines(now))


def test_a_fast_gateway_clock_is_stored_at_receipt_time_marked_counted_and_logged_once_per_boot(
        tmp_path: Path) -> None:
    """Past ingest.max_future_s a message is re-stamped on receipt (before: refused as ts_future,
    and the station looked offline); within it, stored as stamped. A backlog handled in one chunk
    shares one receipt time: each message still gets its own time (one InfluxDB point per message)."""
    v = Validate(IngestSettings(max_future_s=300), stats := Stats())
    now, topic = 1_795_000_000_000, "heatwatch/v1/station/st001/telemetry"

    def msg(seq: int, ahead_ms: int, boot: str = "aaaaaaaa", station: str = "st001") -> bytes:
        return orjson.dumps({**GOOD, "station": station, "boot": boot, "seq": seq, "ts": now + ahead_ms})

    with capture_logs() as logs:
        within = v(topic, msg(1, 1_000), now)
        burst = [v(topic, msg(2 + i, 360_000 + i * 5_000), now) for i in range(3)]  # one chunk
        later = v(topic, msg(5, 361_000), now + 20)
        rebooted = v(topic, msg(0, 360_000, boot="bbbbbbbb"), now + 40)
        other = v("heatwatch/v1/station/st002/telemetry", msg(1, 360_000, station="st002"), now)
    assert isinstance(within, Frame) and (within.ts, within.skew_ms) == (now + 1_000, 0)
    frames = [*burst, later, rebooted, other]
    assert all(isinstance(f, Frame) for f in frames)
    assert [(f.ts, f.skew_ms) for f in frames if isinstance(f, Frame)] == [
        (now, 360_000), (now + 1, 365_000 - 1), (now + 2, 370_000 - 2),
        (now + 20, 361_000 - 20), (now + 40, 360_000 - 40), (now, 360_000)]
    assert isinstance(burst[0], Frame) and burst[0].samples == decode_telemetry(msg(2, 360_000)).samples
    assert stats.restamped == {"st001": 5, "st002": 1} and not stats.rejected
    assert stats.accepted == 7
    warned = [e for e in logs if e["event"].startswith("gateway clock ahead")]
    assert [(e["station"], e["boot"], e["ahead_s"]) for e in warned] == [
        ("st001", "aaaaaaaa", 360.0), ("st001", "bbbbbbbb", 360.0), ("st002", "aaaaaaaa", 360.0)]
    # the lines carry the receipt time; far in the past is still refused
    assert lines(burst[1])[0].endswith(f" {now + 1}")
    old = v(topic, msg(9, -40 * 86_400_000), now)
    assert isinstance(old, Rejected) and old.reason == "ts_too_old"
