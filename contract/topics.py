"""The MQTT topic tree, as validated values.

    heatwatch/v1/station/{station}/telemetry         gateway → collector   QoS 1, not retained
    heatwatch/v1/station/{station}/status            gateway → all         QoS 1, retained
    heatwatch/v1/gateway/{gateway}/status            gateway → all         QoS 1, retained;
                                                     birth "online", last will "offline"
    heatwatch/v1/station/{station}/command/{id}      API → gateway        QoS 1, MQTT 5 message
                                                     expiry; signed (contract.commands)
    heatwatch/v1/station/{station}/command-result/{id}  gateway → all     QoS 1, via the gateway's
                                                     outbox; the alerter records it, the collector stores it
    heatwatch/v1/alert/{station|gateway}             alerter → all         QoS 1, not retained:
                                                     every alert transition (contract.alerts);
                                                     the collector stores them

Identifiers (station, gateway, building, household, command id) are 1–64 characters of
letters, digits, ``_ . -``: never ``/ + #`` or spaces, so they are safe as topic levels and
as InfluxDB tag values without escaping.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated

from pydantic import StringConstraints

from contract.errors import TopicError

ROOT = "heatwatch/v1"
IDENT_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
_IDENT_RE = re.compile(IDENT_PATTERN)

Ident = Annotated[str, StringConstraints(pattern=IDENT_PATTERN)]


class TopicKind(StrEnum):
    TELEMETRY = "telemetry"
    STATION_STATUS = "station_status"
    GATEWAY_STATUS = "gateway_status"
    COMMAND = "command"
    COMMAND_RESULT = "command_result"
    ALERT = "alert"


def check_ident(value: str, what: str) -> str:
    if not _IDENT_RE.fullmatch(value):  # not match: "$" also matches before a final "\n"
        raise TopicError(
            f"{what} {value!r} must be 1-64 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit"
        )
    return value


@dataclass(frozen=True, slots=True)
class Topic:
    """One concrete topic. Built by the constructors below or by :func:`parse_topic`."""

    kind: TopicKind
    subject: str  # station id, or gateway id for GATEWAY_STATUS
    item: str | None = None  # command id

    def __post_init__(self) -> None:
        check_ident(self.subject, "gateway" if self.kind is TopicKind.GATEWAY_STATUS else "station")
        needs_item = self.kind in (TopicKind.COMMAND, TopicKind.COMMAND_RESULT)
        if needs_item != (self.item is not None):
            raise TopicError(f"{self.kind} topic {'needs' if needs_item else 'takes no'} id")
        if self.item is not None:
            check_ident(self.item, "command id")

    def __str__(self) -> str:
        k, s = self.kind, self.subject
        if k is TopicKind.TELEMETRY:
            return f"{ROOT}/station/{s}/telemetry"
        if k is TopicKind.STATION_STATUS:
            return f"{ROOT}/station/{s}/status"
        if k is TopicKind.GATEWAY_STATUS:
            return f"{ROOT}/gateway/{s}/status"
        if k is TopicKind.COMMAND:
            return f"{ROOT}/station/{s}/command/{self.item}"
        if k is TopicKind.COMMAND_RESULT:
            return f"{ROOT}/station/{s}/command-result/{self.item}"
        return f"{ROOT}/alert/{s}"


def telemetry(station: str) -> Topic:
    return Topic(TopicKind.TELEMETRY, station)


def station_status(station: str) -> Topic:
    return Topic(TopicKind.STATION_STATUS, station)


def gateway_status(gateway: str) -> Topic:
    return Topic(TopicKind.GATEWAY_STATUS, gateway)


# Subscriptions the collector and the alerter make (and the API: gateway status).
TELEMETRY_FILTER = f"{ROOT}/station/+/telemetry"
STATUS_FILTERS = (f"{ROOT}/station/+/status", f"{ROOT}/gateway/+/status")
COMMAND_RESULT_FILTER = f"{ROOT}/station/+/command-result/+"
ALERT_FILTER = f"{ROOT}/alert/+"


def parse_topic(topic: str) -> Topic:
    """Parse a topic string; raise TopicError saying why it is not in the tree."""
    if not topic.startswith(ROOT + "/"):
        raise TopicError(f"topic {topic[:120]!r} is outside the tree {ROOT}/")
    parts = topic[len(ROOT) + 1 :].split("/")
    match parts:
        case ["station", s, "telemetry"]:
            return Topic(TopicKind.TELEMETRY, s)
        case ["station", s, "status"]:
            return Topic(TopicKind.STATION_STATUS, s)
        case ["gateway", g, "status"]:
            return Topic(TopicKind.GATEWAY_STATUS, g)
        case ["station", s, "command", i]:
            return Topic(TopicKind.COMMAND, s, i)
        case ["station", s, "command-result", i]:
            return Topic(TopicKind.COMMAND_RESULT, s, i)
        case ["alert", s]:
            return Topic(TopicKind.ALERT, s)
    raise TopicError(f"topic {topic[:120]!r} is not a heatwatch topic")


class TopicCache:
    """Topics that parsed, by their text: a station's topic comes back every few seconds, and
    parsing builds and checks a Topic each time (~1 % of the collector's CPU). Bounded: cleared
    when it holds ``size`` (a flood of made-up station names costs a re-parse, not memory); a topic
    that does not parse is not kept (``parse_topic`` raises)."""

    __slots__ = ("_seen", "size")

    def __init__(self, size: int = 100_000) -> None:
        self._seen: dict[str, Topic] = {}
        self.size = size

    def parse(self, topic: str) -> Topic:
        t = self._seen.get(topic)
        if t is None:
            t = parse_topic(topic)
            if len(self._seen) >= self.size:
                self._seen.clear()
            self._seen[topic] = t
        return t


def matches(topic_filter: str, topic: str) -> bool:
    """MQTT filter matching (``+`` one level, ``#`` the rest)."""
    f_parts, t_parts = topic_filter.split("/"), topic.split("/")
    for i, f in enumerate(f_parts):
        if f == "#":
            return True
        if i >= len(t_parts) or (f != "+" and f != t_parts[i]):
            return False
    return len(f_parts) == len(t_parts)


def alert(subject: str) -> Topic:
    """The alert topic of a station (or, for gateway alerts, of the gateway)."""
    return Topic(TopicKind.ALERT, subject)
