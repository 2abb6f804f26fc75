from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from contract import topics
from contract.errors import TopicError
from contract.points import check_name


def test_round_trip_every_kind() -> None:
    for t in (topics.telemetry("st001"), topics.station_status("st-2.b"), topics.gateway_status("gw_1"),
              topics.Topic(topics.TopicKind.COMMAND, "st001", "c42"),
              topics.Topic(topics.TopicKind.COMMAND_RESULT, "st001", "c42"),
              topics.Topic(topics.TopicKind.ALERT, "st001")):
        assert topics.parse_topic(str(t)) == t


@pytest.mark.parametrize(("topic", "words"), [
    ("other/v1/station/st001/telemetry", "outside the tree"),
    ("heatwatch/v1/station/st001/telemetryx", "not a heatwatch topic"),
    ("heatwatch/v1/station/st 001/telemetry", "station 'st 001'"),
    ("heatwatch/v1/station/+/telemetry", r"station '\+'"),
    ("heatwatch/v1/station//telemetry", "station ''"),
    ("heatwatch/v1/station/st001/command", "not a heatwatch topic"),
])
def test_bad_topics_say_why(topic: str, words: str) -> None:
    with pytest.raises(TopicError, match=words):
        topics.parse_topic(topic)


def test_filters_match() -> None:
    assert topics.matches(topics.TELEMETRY_FILTER, str(topics.telemetry("st9")))
    assert not topics.matches(topics.TELEMETRY_FILTER, str(topics.station_status("st9")))
    assert topics.matches("heatwatch/#", "heatwatch/v1/alert/st1")


@given(st.text(max_size=80))
def test_any_string_parses_or_raises_topic_error(s: str) -> None:
    with contextlib.suppress(TopicError):
        topics.parse_topic(s)


def test_a_trailing_newline_is_not_an_identifier() -> None:
    # Python's "$" matches before a final "\n"; a newline in a tag or field breaks line protocol
    with pytest.raises(TopicError):
        topics.parse_topic("heatwatch/v1/station/st001\n/telemetry")
    with pytest.raises(ValueError, match="lower-case"):
        check_name("room_temp\n")


def test_the_topic_cache_parses_as_parse_topic_and_stays_bounded() -> None:
    from contract.topics import TopicCache, TopicError, parse_topic

    cache = TopicCache(size=3)
    for i in range(10):
        topic = f"heatwatch/v1/station/st{i:03d}/telemetry"
        assert cache.parse(topic) == parse_topic(topic)
        assert len(cache._seen) <= 3
    with pytest.raises(TopicError):
        cache.parse("heatwatch/v1/nowhere")
    assert "heatwatch/v1/nowhere" not in cache._seen
