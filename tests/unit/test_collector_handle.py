"""Whatever arrives, the collector's validation returns lines to store and never raises."""

from __future__ import annotations

import time
from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from collector.app import Collector
from contract.config import CollectorConfig
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
    lines = C.handle(topic, payload)
    assert lines and all(isinstance(x, str) and "\n" not in x for x in lines)
    assert C.stats.received == before + 1
    if lines[0].startswith("rejects,"):
        assert sum(C.stats.rejected.values()) >= 1


def test_unknown_station_is_rejected_when_a_station_list_is_configured(tmp_path: Path) -> None:
    c = _collector(tmp_path, known_stations=["st002"])
    now = int(time.time() * 1000)
    lines = c.handle("heatwatch/v1/station/st001/telemetry", orjson.dumps({**GOOD, "ts": now}))
    assert lines[0].startswith("rejects,reason=unknown_station,station=st001")
    assert c.stats.rejected == {"unknown_station": 1}


def test_sequence_gaps_and_restarts_are_counted_per_station(tmp_path: Path) -> None:
    c = _collector(tmp_path)
    now = int(time.time() * 1000)
    topic = "heatwatch/v1/station/st001/telemetry"
    for boot, seq in [("aaaaaaaa", 1), ("aaaaaaaa", 2), ("aaaaaaaa", 5), ("aaaaaaaa", 3),
                      ("bbbbbbbb", 0), ("bbbbbbbb", 1)]:
        c.handle(topic, orjson.dumps({**GOOD, "boot": boot, "seq": seq, "ts": now}))
    assert c.stats.seq_gaps == {"st001": 2}  # 3 and 4 missing at the time (3 arrives late: allowed)
    assert c.stats.restarts == {"st001": 1}
    assert c.stats.messages == {"st001": 6}
    assert any(x.startswith("ingest,station=st001 messages=6i,seq_gaps=2i,restarts=1i")
               for x in c.stats_lines(now))
