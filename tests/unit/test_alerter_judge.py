"""The alerter's judging stage (alerter/judge.py) without the store: whatever arrives is judged or
kept and never raises; the owned partitions' engines judge, the rest waits in standby within its
bounds; a gateway's status concerns every partition of its stations; a fast gateway clock reaches
the rules re-stamped with its mark; a fault in a rule is logged once and the next message judged."""

from __future__ import annotations

import time

import orjson
import pytest
import structlog
from hypothesis import event, given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

import alerter.judge
from alerter.judge import Judge, rules_for
from alerter.standby import Standby
from alerting.engine import Engine
from alerting.partitions import PartState, partition_of
from contract.alerts import AlertRules, Transition
from contract.config import IngestSettings
from contract.payload import Frame
from contract.points import VOCABULARY, Kind, Level
from tests.unit.test_collector_handle import PAYLOADS, TOPICS
from tests.unit.test_payload import GOOD

WHOLE_YEAR = {"season": {"start": "01-01", "end": "12-31", "start_grace_days": 0}}


def judge(count: int = 8, owned: list[int] | None = None, rules: AlertRules | None = None,
          window_ms: int = 60_000, max_bytes: int = 1 << 20) -> Judge:
    j = Judge(rules or AlertRules.model_validate(WHOLE_YEAR), count, IngestSettings(),
              Standby(window_ms, max_bytes))
    for p in range(count) if owned is None else owned:
        j.gain(p, 1, PartState(p), [], 0)
    return j


@settings(max_examples=1000, deadline=None)
@given(TOPICS, PAYLOADS)
def test_any_topic_and_bytes_are_judged_kept_or_counted_never_raise(topic: str, payload: bytes) -> None:
    j = judge(owned=[0, 1, 2, 3])
    j.receive(topic, payload, int(time.time() * 1000))
    s = j.stats
    assert s.received == 1 and (s.judged + s.standby + sum(s.rejected.values())) >= 1
    event("judged" if s.judged else "standby" if s.standby else "rejected")


def test_unowned_partitions_wait_in_standby_within_their_bounds() -> None:
    count = 8
    mine, theirs = partition_of("st001", count), partition_of("st002", count)
    assert mine != theirs
    j = judge(count, owned=[mine], window_ms=10_000, max_bytes=5_000)
    now = int(time.time() * 1000)
    for i, station in enumerate(["st001", "st002", "st002"]):
        j.receive(f"heatwatch/v1/station/{station}/telemetry",
                  orjson.dumps({**GOOD, "station": station, "seq": i, "ts": now}), now)
    assert (j.stats.judged, j.stats.standby) == (1, 2) and len(j.standby) == 2
    j.tick(now + 11_000)  # past the window: forgotten, not counted as dropped
    assert len(j.standby) == 0 and j.standby.dropped == 0 and j.standby.bytes == 0
    big = orjson.dumps({**GOOD, "station": "st002", "ts": now})
    for i in range(1 + 5_000 // len(big)):  # past max_bytes: the oldest go, counted
        j.receive("heatwatch/v1/station/st002/telemetry", big, now + 12_000 + i)
    assert j.standby.bytes <= 5_000 and j.standby.dropped >= 1 and j.standby.overflow_at >= now + 12_000


def test_a_gateway_status_concerns_every_partition_of_its_stations() -> None:
    count = 8
    stations = ["st001", "st002", "st003", "st004"]
    parts = {partition_of(s, count) for s in stations} | {partition_of("gw1", count)}
    owned = sorted(parts)[:1]
    j = judge(count, owned=owned)
    status = {"schema": 1, "gateway": "gw1", "state": "offline", "boot": "0badc0de", "stations": stations,
              "ts": 1_795_000_000_000}
    j.receive("heatwatch/v1/gateway/gw1/status", orjson.dumps(status), 1_795_000_000_000)
    assert j.stats.judged == 1 and j.stats.standby == 1
    [held] = j.standby.items
    assert set(held.parts) == parts - set(owned)
    # taking one of them over hands it the status; the message stays for the others
    other = held.parts[0]
    got = j.standby.take([other])
    assert [h.topic for h in got[other]] == ["heatwatch/v1/gateway/gw1/status"]
    left = parts - set(owned) - {other}
    assert [set(h.parts) for h in j.standby.items] == ([left] if left else [])


def test_the_inventory_s_stations_share_their_gateway_s_partition() -> None:
    """A gateway and its stations are judged together (one outage, one page; seen when any of its
    stations reports); a station the inventory does not list goes by its own id."""
    rules = AlertRules.model_validate({**WHOLE_YEAR, "inventory": {"gw1": ["st001", "st002", "st003"],
                                                                   "gw9": []}})
    count = 8
    assert len({partition_of(s, count) for s in ("st001", "st002", "st003")}) > 1  # by id: spread
    j = Judge(rules, count, IngestSettings(), Standby(60_000, 1 << 20))
    assert {j.part_of(s) for s in ("st001", "st002", "st003", "gw1")} == {partition_of("gw1", count)}
    assert j.part_of("st777") == partition_of("st777", count)
    cut = {p: rules_for(rules, p, count).inventory for p in range(count)}
    whole = [p for p, inv in cut.items() if inv.get("gw1") == ["st001", "st002", "st003"]]
    assert whole == [j.part_of("gw1")]
    assert [p for p, inv in cut.items() if "gw9" in inv] == [partition_of("gw9", count)]
    assert sum(len(inv) for inv in cut.values()) == 2


def test_a_fast_gateway_clock_reaches_the_rules_restamped_with_its_mark() -> None:
    """A message stamped 6 minutes ahead (past max_future_s) is judged at its receipt time with its
    skew: the clock rule raises clock_skew for the gateway (hold_min 0 here)."""
    j = judge(rules=AlertRules.model_validate({**WHOLE_YEAR, "clock": {"hold_min": 0}}))
    now = int(time.time() * 1000)
    for i in range(2):
        j.receive("heatwatch/v1/station/st001/telemetry",
                  orjson.dumps({**GOOD, "seq": i, "ts": now + 360_000 + i}), now)
    skew = [t for trs in j.take().transitions.values() for t in trs if t.rule == "clock_skew"]
    assert skew and skew[-1].gateway == "gw-st001" and skew[-1].value == 360.0
    assert j.stats.restamped == 2 and not j.stats.rejected


# -- the rule engine behind the same door --
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
def judging() -> Judge:
    return judge()


@settings(max_examples=1500, deadline=None)
@given(_TELEMETRY)
def test_any_valid_telemetry_through_the_rules_never_raises(judging: Judge, msg: dict[str, object]) -> None:
    j = judging
    now = int(time.time() * 1000)
    msg = {k: v for k, v in msg.items() if k != "ago_ms"} | {"ts": now - msg["ago_ms"]}  # type: ignore[operator]
    judged, rejected = j.samples_judged(), sum(j.stats.rejected.values())
    j.receive(f"heatwatch/v1/station/{msg['station']}/telemetry", orjson.dumps(msg), now)
    if sum(j.stats.rejected.values()) == rejected:  # in the heating season: every reading was judged
        assert j.samples_judged() == judged + len(msg["values"])  # type: ignore[arg-type]
    event("rejected" if sum(j.stats.rejected.values()) > rejected else "judged")
    j.tick(now)
    pending = j.take()
    event(f"alert transitions: {'some' if any(pending.transitions.values()) else 'none'}")
    assert j.stats.rule_errors == 0


class _FailingOn:
    """The real engine, raising on one station's telemetry: a stand-in for a bug in a rule."""

    def __init__(self, engine: Engine, station: str) -> None:
        self.engine, self.station = engine, station

    def observe(self, frame: Frame, now_ms: int) -> list[Transition]:
        if frame.station == self.station:
            raise ZeroDivisionError("a rule divided by an empty building")
        return self.engine.observe(frame, now_ms)


def test_a_fault_in_the_rules_logs_once_and_judges_the_next_message(monkeypatch: pytest.MonkeyPatch) -> None:
    # a fresh logger: the module's own may already be bound for good to the configuration of an
    # earlier test in this process (cache_logger_on_first_use), which capture_logs cannot reach
    monkeypatch.setattr(alerter.judge, "log", structlog.get_logger("heatwatch.alerter"))
    count = 1  # one partition: both stations in one engine
    j = judge(count)
    real = j.parts[0].engine
    j.parts[0].engine = _FailingOn(real, "st009")  # type: ignore[assignment]
    now = int(time.time() * 1000)
    rooms = [{"point": "room_temp", "unit": "°C", "building": "b1", "household": "h1", "value": 19.5}]
    with capture_logs() as logs:
        for station in ("st009", "st009", "st001"):
            msg = {**GOOD, "station": station, "ts": now, "values": rooms}
            j.receive(f"heatwatch/v1/station/{station}/telemetry", orjson.dumps(msg), now)
    assert j.stats.rule_errors == 2 and j.stats.judged == 3
    assert real.samples_judged == 1  # the next station's message was judged
    failed = [x for x in logs if x["event"].startswith("rule engine failed")]
    assert len(failed) == 1 and failed[0]["on"] == "Frame"
