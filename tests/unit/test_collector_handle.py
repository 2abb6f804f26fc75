"""Whatever arrives, the collector's validate → taps → lines stages return lines to store and never
raise."""

from __future__ import annotations

import time
from pathlib import Path

import orjson
import pytest
import structlog
from hypothesis import event, given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

import collector.alerts
from alerting.engine import Engine
from collector.app import Collector
from collector.lines import lines
from collector.metrics import Stats
from collector.stages import Batch, Rejected
from collector.validate import Validate
from contract.alerts import AlertRules, Transition
from contract.commands import CommandResult
from contract.config import CollectorConfig, IngestSettings
from contract.influx import split_lines
from contract.payload import Frame, decode_telemetry
from contract.points import VOCABULARY, Kind, Level
from tests.unit.test_payload import GOOD

TOPICS = st.one_of(
    st.text(max_size=80),
    st.sampled_from(["heatwatch/v1/station/st001/telemetry", "heatwatch/v1/station/st001/status",
                     "heatwatch/v1/gateway/gw-st001/status", "heatwatch/v1/station/st001/alert"]),
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


def test_command_results_only_where_they_are_recorded_and_only_on_their_own_topic(tmp_path: Path) -> None:
    topic = "heatwatch/v1/station/st001/command-result/c1"
    payload = CommandResult.model_validate(RESULT).to_json()
    plain = Validate(IngestSettings(), Stats())  # a collector without the store does not take them
    assert isinstance(r := plain(topic, payload, 1), Rejected) and r.reason == "unexpected_topic"
    v = Validate(IngestSettings(), Stats(), results=True)
    got = v(topic, payload, 1)
    assert isinstance(got, CommandResult) and (got.id, got.read_back) == ("c1", 70.0)
    assert lines(got)[0].startswith("commands,station=st001,state=confirmed,point=building_valve_setpoint")
    other = v("heatwatch/v1/station/st001/command-result/c2", payload, 2)  # c1's result on c2's topic
    assert isinstance(other, Rejected) and other.reason == "topic_mismatch"
    assert v.stats.received == 3 - 1 and v.stats.rejected == {"topic_mismatch": 1}


@settings(max_examples=500, deadline=None)
@given(st.sampled_from(["c1", "c2"]), st.one_of(
    PAYLOADS, st.dictionaries(st.sampled_from(sorted(RESULT)), JSONISH, max_size=6).map(
        lambda d: orjson.dumps({**RESULT, **d}, option=orjson.OPT_NON_STR_KEYS))))
def test_any_command_result_bytes_give_a_result_or_a_reject_never_an_exception(
        cid: str, payload: bytes) -> None:
    item = Validate(IngestSettings(), Stats(), results=True)(
        f"heatwatch/v1/station/st001/command-result/{cid}", payload, 1)
    event(type(item).__name__)
    assert isinstance(item, CommandResult | Rejected)
    assert lines(item) and split_lines("\n".join(lines(item))) == lines(item)


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


def test_a_restamped_message_reaches_the_rules_with_its_mark(tmp_path: Path) -> None:
    """The rule-engine tap sees the frame the validate stage made: the re-stamped time and the
    skew, from which the clock rule raises clock_skew for the gateway (hold_min 0 here)."""
    rules = tmp_path / "rules.yaml"
    rules.write_text('kind: rules\nseason: {start: "01-01", end: "12-31", start_grace_days: 0}\n'
                     "clock: {hold_min: 0}\n")
    now = int(time.time() * 1000)
    c = Collector(CollectorConfig.model_validate(
        {"kind": "collector", "spool": {"path": str(tmp_path / "spool.sqlite")},
         "alerts": {"rules": str(rules), "store": f"sqlite:///{tmp_path / 'alerts.sqlite'}",
                    "state_path": str(tmp_path / "state")}}), clock=lambda: now / 1000)
    assert c.alerts is not None
    topic = "heatwatch/v1/station/st001/telemetry"
    for i in range(2):
        handle(c, topic, orjson.dumps({**GOOD, "seq": i, "ts": now + 360_000 + i}))
    skew = [t for t in c.alerts.pending if t.rule == "clock_skew"]
    assert skew and skew[-1].gateway == "gw-st001" and skew[-1].value == 360.0
    assert c.stats.restamped == {"st001": 2}
    assert any(x.startswith("ingest,station=st001 messages=2i,seq_gaps=0i,restarts=0i,restamped=2i")
               for x in c.stats_lines(now))


# -- the rule engine (compiled under make: mypyc checks types at run time) behind the same door --
def _reading(name: str) -> st.SearchStrategy[dict[str, object]]:
    """Valid readings of one vocabulary point: its level, unit and kind; any value of that kind."""
    d = VOCABULARY[name]
    where: dict[str, st.SearchStrategy[str]] = {}
    if d.level is not Level.STATION:
        where["building"] = st.sampled_from(["b1", "b2"])
    if d.level is Level.HOUSEHOLD:
        where["household"] = st.sampled_from(["h1", "h2", "h3"])
    value = (st.booleans() if d.kind is Kind.BOOL else
             st.floats(-1e9, 1e9) | st.integers(-(10**6), 10**6) | st.sampled_from([18.0, 15.5, 0.0]))
    good = st.fixed_dictionaries({"point": st.just(name), "unit": st.just(d.unit), "value": value,
                                  "quality": st.sampled_from(["good", "uncertain"]), **where})
    bad = st.fixed_dictionaries({"point": st.just(name), "unit": st.just(d.unit), "value": st.none(),
                                 "quality": st.just("bad"), **where})
    return good | bad


_RULE_POINTS = sorted((Engine(AlertRules()).wanted & VOCABULARY.keys()) | {"building_valve_position"})
_TELEMETRY = st.fixed_dictionaries({
    "schema": st.just(1), "station": st.sampled_from(["st001", "st002"]), "gateway": st.just("gw-st001"),
    "boot": st.sampled_from(["aaaaaaaa", "bbbbbbbb"]), "seq": st.integers(0, 50),
    "ago_ms": st.integers(-60_000, 3 * 86_400_000), "backfill": st.booleans(),
    "values": st.lists(st.one_of(*[_reading(p) for p in _RULE_POINTS]), min_size=1, max_size=30)})


@pytest.fixture(scope="module")
def judging(tmp_path_factory: pytest.TempPathFactory) -> Collector:
    folder = tmp_path_factory.mktemp("judging")
    rules = folder / "rules.yaml"  # every day in the season: judged whatever month the test runs in
    rules.write_text('kind: rules\nseason: {start: "01-01", end: "12-31", start_grace_days: 0}\n')
    return Collector(CollectorConfig.model_validate(
        {"kind": "collector", "spool": {"path": str(folder / "spool.sqlite")},
         "alerts": {"rules": str(rules), "store": f"sqlite:///{folder / 'alerts.sqlite'}",
                    "state_path": str(folder / "state")}}))


@settings(max_examples=1500, deadline=None)
@given(_TELEMETRY)
def test_any_valid_telemetry_through_the_rules_gives_lines_never_an_exception(
        judging: Collector, msg: dict[str, object]) -> None:
    C = judging
    assert C.alerts is not None
    now = int(time.time() * 1000)
    msg = {k: v for k, v in msg.items() if k != "ago_ms"} | {"ts": now - msg["ago_ms"]}  # type: ignore[operator]
    judged, waiting = C.alerts.engine.samples_judged, len(C.alerts.pending)
    lines = handle(C, f"heatwatch/v1/station/{msg['station']}/telemetry", orjson.dumps(msg))
    assert lines and all(isinstance(x, str) for x in lines)
    if not lines[0].startswith("rejects,"):  # in the heating season: every reading was judged
        assert C.alerts.engine.samples_judged == judged + len(msg["values"])  # type: ignore[arg-type]
    event("rejected" if lines[0].startswith("rejects,") else "judged")
    C.alerts.tick(now)
    event(f"alert transitions: {'some' if len(C.alerts.pending) > waiting else 'none'}")


class _FailingOn:
    """The real engine, raising on one station's telemetry: a stand-in for a bug in a rule."""

    def __init__(self, engine: Engine, station: str) -> None:
        self.engine, self.station = engine, station

    def observe(self, frame: Frame, now_ms: int) -> list[Transition]:
        if frame.station == self.station:
            raise ZeroDivisionError("a rule divided by an empty building")
        return self.engine.observe(frame, now_ms)


def test_a_fault_in_the_rules_stores_the_data_logs_once_and_judges_the_next_message(
        judging: Collector, monkeypatch: pytest.MonkeyPatch) -> None:
    C = judging
    # a fresh logger: the module's own may already be bound for good to the configuration of an
    # earlier test in this process (cache_logger_on_first_use), which capture_logs cannot reach
    monkeypatch.setattr(collector.alerts, "log", structlog.get_logger("heatwatch.collector.alerts"))
    assert C.alerts is not None
    real = C.alerts.engine
    C.alerts.engine = _FailingOn(real, "st009")  # type: ignore[assignment]
    try:
        now = int(time.time() * 1000)
        rooms = [{"point": "room_temp", "unit": "°C", "building": "b1", "household": "h1", "value": 19.5}]
        judged, errors = real.samples_judged, C.alerts.stats.rule_errors
        with capture_logs() as logs:
            for station in ("st009", "st009", "st001"):
                msg = {**GOOD, "station": station, "ts": now, "values": rooms}
                lines = handle(C, f"heatwatch/v1/station/{station}/telemetry", orjson.dumps(msg))
                assert lines[0].startswith("household,"), lines  # stored all the same
        assert C.alerts.stats.rule_errors == errors + 2
        assert real.samples_judged == judged + 1  # the next station's message was judged
        failed = [x for x in logs if x["event"].startswith("rule engine failed")]
        assert len(failed) == 1 and failed[0]["subject"] == "st009" and failed[0]["on"] == "telemetry"
    finally:
        C.alerts.engine = real
