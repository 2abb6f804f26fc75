"""The typed rows the site's stores return (pure: no I/O; the report's figures import them too).

Each is a frozen dataclass whose fields are the columns its store selects, in order, so a store
builds one from a result row positionally (``AlertRow(*row)``) and a column added to a table for
another reader changes no row here. The API's response models read them by attribute
(``from_attributes``).

    alert store     AlertRow, AlertEvent, AlertDetail, SilenceRow, TicketEvent
    site registry   Principal, TokenRow, AuditEntry, StationRow, BuildingRow, HouseholdRow,
                    FoundHousehold, Register, ImportCounts
    latest table    HouseholdNow
    command store   CommandRecord, CommandEvent, CommandDetail
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Generic, TypeVar

T = TypeVar("T")
ROLES = ("dispatcher", "engineer", "admin")  # each has the rights of the ones before it
_RANK = {r: i for i, r in enumerate(ROLES)}


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a list, and how many rows match in all."""

    rows: list[T]
    total: int


# -- the alert store -------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class AlertRow:
    """One episode of an alert key (``alerts``)."""

    id: int
    key: str
    rule: str
    state: str
    severity: str
    station: str | None
    building: str | None
    household: str | None
    gateway: str | None
    subject: str | None
    since: int  # ms: first seen
    last_ts: int  # ms: last seen
    fired_at: int | None
    resolved_at: int | None
    value: float | None
    summary: str
    context: dict[str, Any]
    quiet: str
    paged: bool
    ack_by: str | None
    ack_at: int | None
    ack_note: str | None
    ack_ticket: str | None
    tickets: list[str]
    resolved_by: str | None


@dataclass(frozen=True, slots=True)
class AlertEvent:
    """One step in an alert's history: a transition, or a person's ack or note."""

    id: int
    alert_id: int
    ts: int
    kind: str  # pending firing resolved severity ack note
    state: str
    severity: str
    value: float | None
    actor: str | None
    note: str | None
    ticket: str | None
    quiet: str


@dataclass(frozen=True, slots=True)
class AlertDetail(AlertRow):
    events: list[AlertEvent]


@dataclass(frozen=True, slots=True)
class TicketEvent:
    """An acknowledgement or note that gave a hotline ticket, with its alert's station and rule."""

    alert_id: int
    ts: int
    kind: str
    actor: str | None
    ticket: str
    note: str | None
    station: str | None
    rule: str


@dataclass(frozen=True, slots=True)
class SilenceRow:
    id: int
    station: str
    building: str | None
    start_ms: int
    end_ms: int
    reason: str
    created_by: str
    created_at: int
    cancelled_at: int | None
    cancelled_by: str | None
    state: str  # future / active / ended / cancelled, at the time it was read


# -- the site registry -----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Principal:
    """Who a valid token belongs to."""

    name: str
    role: str

    def may(self, role: str) -> bool:
        return _RANK[self.role] >= _RANK[role]


@dataclass(frozen=True, slots=True)
class TokenRow:
    """A credential, never its secret nor its hash."""

    id: int
    name: str
    role: str
    created_at: int
    created_by: str
    revoked_at: int | None


@dataclass(frozen=True, slots=True)
class AuditEntry:
    id: int
    at: int
    actor: str
    action: str
    target: str
    detail: dict[str, Any]


@dataclass(frozen=True, slots=True)
class StationRow:
    station: str
    name: str
    gateway: str | None
    heated_area_m2: float | None


@dataclass(frozen=True, slots=True)
class BuildingRow:
    station: str
    building: str
    address: str
    heated_area_m2: float | None


@dataclass(frozen=True, slots=True)
class HouseholdRow:
    code: str  # the company's household code (户号)
    station: str
    building: str
    unit: str
    room: str
    sensor: str | None  # the household id its room sensor reports under


@dataclass(frozen=True, slots=True)
class FoundHousehold(HouseholdRow):
    """A household with its building's address (the hotline's search)."""

    address: str


@dataclass(frozen=True, slots=True)
class Register:
    """The whole asset register (the takeover report reads it at once)."""

    stations: list[StationRow]
    buildings: list[BuildingRow]
    households: list[HouseholdRow]


@dataclass(frozen=True, slots=True)
class ImportCounts:
    stations: int
    buildings: int
    households: int
    households_new: int


# -- the latest table ------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class HouseholdNow(FoundHousehold):
    """A household, its station's name and gateway, and the latest values of its chain (None
    where nothing reported): the hotline lookup's one query."""

    station_name: str | None
    gateway: str | None
    station_ts: int | None
    station_points: dict[str, Any] | None
    station_state: str | None
    gateway_state: str | None
    station_gap_at: int | None  # its messages' last gap (alerting.latest.Place.gap_at)
    station_written_at: int | None  # when the alerter last wrote the station's row
    building_ts: int | None
    building_points: dict[str, Any] | None
    room_ts: int | None
    room_points: dict[str, Any] | None
    room_day: dict[str, Any] | None  # its sensor's last 24 h (alerting.latest.RoomDay.json)


# -- the command store -----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class CommandRecord:
    """One remote command: what was asked, by whom, its state and the gateway's result."""

    id: str
    origin: str  # api | broker
    station: str
    device: str | None
    point: str | None
    building: str | None
    household: str | None
    value: float | bool | None
    old_value: float | bool | None
    state: str
    needs_confirmation: bool
    issuer: str | None
    confirmed_by: str | None
    confirmed_at: int | None
    reason: str | None
    ticket: str | None
    created_at: int
    deadline: int
    claimed_at: int | None
    payload: bytes | None  # the signed bytes, once signed
    sent_at: int | None
    result_state: str | None
    result_reason: str | None
    result_detail: str | None
    result_code: int | None
    gateway_old_value: float | bool | None
    read_back: float | bool | None
    result_at: int | None


@dataclass(frozen=True, slots=True)
class CommandEvent:
    id: int
    command_id: str
    ts: int
    kind: str  # requested confirmed sent result expired
    state: str
    actor: str | None
    detail: dict[str, Any]


@dataclass(frozen=True, slots=True)
class CommandDetail(CommandRecord):
    events: list[CommandEvent]
