"""One alert's life, as in Prometheus ``AlertingRule.Eval``: a pure function of (condition, time).

    inactive ──condition──▶ pending ──held for `hold`──▶ firing ──clear for `clear_hold`──▶ resolved
                              │                                   (a relapse inside clear_hold
                              └─condition gone─▶ resolved          keeps it firing: no flapping)
                                 (never fired)

Severity only rises within one episode (the dispatcher sees the worst it got), and an episode
still firing after ``escalate_after`` is raised one level once (Tianjin's 24 h refund rule).
Times are ms; nothing here reads a clock.
"""

from __future__ import annotations

from typing import Any, Final

from contract.alerts import Severity, State, Transition, escalate


def get_fields(obj: object, fields: tuple[str, ...]) -> tuple[Any, ...]:
    """The snapshot state of a rule-state object: its fields' values in ``fields`` order.

    Every class in the engine's snapshot pickles this way (``__getstate__``/``__setstate__``,
    ``__reduce__`` to a ``_blank_*`` function where the constructor takes arguments). It came in
    so the mypyc build of the rules and their source read each other's snapshots; #18 dropped the
    build and this stays because it is the format of the snapshots sites hold in their alert store
    (SNAPSHOT_VERSION 3; those pickles name ``_blank_life`` and ``_blank_sensor``). The state is by
    position, where pickle's own is by attribute name: adding, removing or reordering an entry of a
    ``_*_FIELDS`` tuple makes older snapshots fail ``set_fields``, so such a change bumps
    SNAPSHOT_VERSION (tests/unit/test_rules_snapshot.py reads a snapshot of that format).
    """
    return tuple(getattr(obj, k) for k in fields)


def set_fields(obj: object, fields: tuple[str, ...], state: tuple[Any, ...]) -> None:
    for k, v in zip(fields, state, strict=True):
        setattr(obj, k, v)


_LIFE_FIELDS = ("building", "clear_since", "context", "escalated", "fired", "gateway", "household",
                "key", "paged", "rule", "seen", "severity", "since", "state", "station", "subject",
                "value")


class Life:
    """The live part of one alert: present in the engine only while pending or firing."""

    __slots__ = _LIFE_FIELDS

    def __init__(self, key: str, rule: str, station: str | None, building: str | None,
                 household: str | None, gateway: str | None, subject: str | None, since: int,
                 severity: Severity) -> None:
        self.key, self.rule = key, rule
        self.station, self.building, self.household = station, building, household
        self.gateway, self.subject = gateway, subject
        self.state = State.PENDING
        self.since = since
        self.seen = since  # last seen: the latest verdict that found the condition true
        self.fired: int | None = None
        self.clear_since: int | None = None
        self.severity = severity
        self.value: float | None = None
        self.escalated = False
        self.paged = False
        self.context: dict[str, Any] = {}

    def __reduce__(self) -> tuple[Any, ...]:
        return _blank_life, (), get_fields(self, _LIFE_FIELDS)

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        set_fields(self, _LIFE_FIELDS, state)

    def transition(self, t: int, summary: str, quiet: str, page: bool) -> Transition:
        return Transition(key=self.key, rule=self.rule, state=self.state.value,
                          severity=self.severity.value, station=self.station, building=self.building,
                          household=self.household, gateway=self.gateway, subject=self.subject,
                          ts=t, since=self.since, value=self.value, summary=summary,
                          context=dict(self.context), quiet=quiet,  # type: ignore[arg-type]
                          page=page)


def _blank_life() -> Life:
    """What unpickling fills: the snapshot format names it (``get_fields``)."""
    return Life("", "", None, None, None, None, None, 0, Severity.INFO)


class Change:
    """What ``step`` decided; the engine turns it into a Transition (it knows about quiet)."""

    NONE: Final = 0
    PENDING: Final = 1
    FIRING: Final = 2
    RESOLVED: Final = 3
    SEVERITY: Final = 4
    REPAGE: Final = 5


def step(life: Life, active: bool, t: int, hold_ms: float, clear_ms: float,
         severity: Severity, value: float | None, quiet: str) -> int:
    """Advance an existing life by one verdict; returns a ``Change``. The caller creates lives."""
    if active:
        life.clear_since = None
        life.value = value
        if t > life.seen:
            life.seen = t
        if severity.rank > life.severity.rank:
            life.severity = severity
            if life.state is State.FIRING:
                return Change.SEVERITY
        if life.state is State.PENDING:
            if t - life.since >= hold_ms:
                life.state = State.FIRING
                life.fired = t
                return Change.FIRING
            return Change.NONE
        if not life.paged and not quiet:  # fired quietly (backfill, silence, inhibited): page now
            return Change.REPAGE
        return Change.NONE
    if life.state is State.PENDING:
        life.state = State.RESOLVED
        return Change.RESOLVED
    if life.clear_since is None:
        life.clear_since = t
    if t - life.clear_since >= clear_ms:
        life.state = State.RESOLVED
        return Change.RESOLVED
    return Change.NONE


def maybe_escalate(life: Life, t: int, after_ms: float) -> bool:
    """Raise a firing life one level once, ``after_ms`` after it fired — only while its condition
    still holds (its latest verdict found it true): a life held open by a clear hold, e.g. a room
    back at 18.3 °C inside the hysteresis band, is never escalated."""
    if (life.state is State.FIRING and not life.escalated and life.fired is not None
            and life.clear_since is None and t - life.fired >= after_ms):
        life.escalated = True
        life.severity = escalate(life.severity)
        life.context["escalated_after_h"] = round((t - life.fired) / 3.6e6, 1)
        return True
    return False
