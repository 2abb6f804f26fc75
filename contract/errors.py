"""The one exception tree of heatwatch, mapped once at each adapter.

    HeatwatchError
    ├── ConfigError          broken config: fail fast at start-up, never retried
    ├── CannotOpen           a store needed at start-up cannot be opened: one line, exit 1
    ├── InvalidInput         bad data from outside: rejected, counted, logged once, never retried
    │   ├── TopicError
    │   ├── PayloadError
    │   ├── DecodeError      register words that cannot be a value of the declared type
    │   ├── QueryRejected    a query the time-series store refused because of what it asked
    │   ├── NotFound         the request names a record that does not exist (HTTP 404)
    │   ├── Conflict         the record's state does not allow it, or the key is taken (409)
    │   ├── UnknownReference the request names a station, building … the site does not know (422)
    │   └── Forbidden        not this person (an issuer confirming their own command) (403)
    └── TransientError       the other side is away: keep the data, retry with capped backoff
        ├── BrokerUnavailable
        └── DatabaseUnavailable   ``store`` says which (the API answers 503 naming it)

Every InvalidInput carries a short machine-readable ``reason`` (a counter label) and a message
that names what is wrong. The HTTP statuses are the API's mapping (``api/deps.py``), noted here so
a raiser knows what the caller will see.
"""

from __future__ import annotations


class HeatwatchError(Exception):
    """Root of every error heatwatch raises on purpose."""


class ConfigError(HeatwatchError):
    """A config file that cannot be used. The message names the file, the path and the key."""

    def __init__(self, file: str, problems: list[str]) -> None:
        self.file = file
        self.problems = problems
        super().__init__("\n".join(f"{file}: {p}" for p in problems))


class CannotOpen(HeatwatchError):
    """A store a process needs (alert store, outbox, spool) cannot be opened at start-up.

    ``explain`` gives the one line a person reads: what, where, why, and the setting that moves
    it (``setting``: its dotted key in the process's config file)."""

    def __init__(self, what: str, where: str, reason: str, setting: str) -> None:
        super().__init__(f"{what} {where}: {reason}")
        self.what, self.where, self.reason, self.setting = what, where, reason, setting
        self.config: str | None = None  # the config file, when the raiser's caller knows it

    def explain(self, config: str | None = None, env: list[str] | None = None) -> str:
        hint = f"set `{self.setting}:` in {config}" if config else f"set `{self.setting}:` in the config"
        if env:
            hint += " or " + " or ".join(env)
        return f"{self}; {hint}"


class InvalidInput(HeatwatchError):
    """Input from outside that is wrong. ``reason`` is a stable label for counters."""

    reason = "invalid"

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason


class TopicError(InvalidInput):
    reason = "bad_topic"


class PayloadError(InvalidInput):
    reason = "bad_payload"


class DecodeError(InvalidInput):
    reason = "bad_registers"


class QueryRejected(InvalidInput):
    """InfluxDB refused a query for what it asked (mean() of a text field, a parse error): the
    request's fault, answered 4xx with the reason; not an outage."""

    reason = "query_rejected"


class NotFound(InvalidInput):
    reason = "not_found"


class Conflict(InvalidInput):
    reason = "conflict"


class UnknownReference(InvalidInput):
    reason = "unknown_reference"


class Forbidden(InvalidInput):
    reason = "forbidden"


class TransientError(HeatwatchError):
    """The peer is unavailable for now. ``retry_after`` (seconds) is a hint, if the peer gave one."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class BrokerUnavailable(TransientError):
    pass


class DatabaseUnavailable(TransientError):
    """A database did not answer. ``store`` names which one, for the person reading the
    answer: "time-series store" (InfluxDB), "alert store", "site registry", "command store"."""

    def __init__(self, message: str, retry_after: float | None = None, *, store: str = "database") -> None:
        super().__init__(message, retry_after)
        self.store = store
