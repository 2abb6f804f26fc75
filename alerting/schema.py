"""The alert store's tables (SQLAlchemy Core). Migrations in ``alerting/migrations`` create them;
a test holds the two together (``alembic`` compare finds no difference).

Times are ms since the Unix epoch (BIGINT), like every other time in heatwatch. An alert row is
one *episode* of a stable key: at most one open row per key (``resolved_at IS NULL``, enforced by
a partial unique index), and a new row when the condition comes back after resolving.
"""

from __future__ import annotations

from typing import Any

import orjson
import sqlalchemy as sa

metadata = sa.MetaData()
_ID = sa.String(64)

alerts = sa.Table(
    "alerts", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("key", sa.String(300), nullable=False),
    sa.Column("rule", sa.String(32), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("severity", sa.String(16), nullable=False),
    sa.Column("station", _ID), sa.Column("building", _ID), sa.Column("household", _ID),
    sa.Column("gateway", _ID), sa.Column("subject", _ID),
    sa.Column("since", sa.BigInteger, nullable=False),  # first seen: the condition started
    sa.Column("last_ts", sa.BigInteger, nullable=False),  # last seen: the latest transition
    sa.Column("fired_at", sa.BigInteger),
    sa.Column("resolved_at", sa.BigInteger),
    sa.Column("value", sa.Float),
    sa.Column("summary", sa.String(300), nullable=False, server_default=""),
    sa.Column("context", sa.JSON, nullable=False),
    sa.Column("quiet", sa.String(16), nullable=False, server_default=""),
    sa.Column("paged", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("ack_by", _ID), sa.Column("ack_at", sa.BigInteger), sa.Column("ack_note", sa.Text),
    sa.Column("ack_ticket", _ID),  # the latest ticket an acknowledgement gave (one without keeps it)
    # every hotline ticket given with an acknowledgement or a note, oldest first
    sa.Column("tickets", sa.JSON, nullable=False, server_default=sa.text("'[]'")),
    sa.Column("resolved_by", _ID),  # a person, when resolved by hand
    sa.Index("alerts_open_key", "key", unique=True, sqlite_where=sa.text("resolved_at IS NULL"),
             postgresql_where=sa.text("resolved_at IS NULL")),
    sa.Index("alerts_entity", "station", "building", "household"),
    sa.Index("alerts_state", "state", "severity", "since"),
    sa.Index("alerts_station_since", "station", "since"),
    sa.Index("alerts_since", "since"),
)

alert_events = sa.Table(
    "alert_events", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("alert_id", sa.Integer, sa.ForeignKey("alerts.id", ondelete="CASCADE"), nullable=False),
    sa.Column("ts", sa.BigInteger, nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),  # pending firing resolved severity ack note
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("severity", sa.String(16), nullable=False),
    sa.Column("value", sa.Float),
    sa.Column("actor", _ID),
    sa.Column("note", sa.Text),
    sa.Column("ticket", _ID),
    sa.Column("quiet", sa.String(16), nullable=False, server_default=""),
    sa.Index("alert_events_alert", "alert_id", "ts"),
)

silences = sa.Table(
    "silences", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("station", _ID, nullable=False),
    sa.Column("building", _ID),
    sa.Column("start_ms", sa.BigInteger, nullable=False),
    sa.Column("end_ms", sa.BigInteger, nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("created_by", _ID, nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("cancelled_at", sa.BigInteger),  # cancelled by hand: it no longer covers anything
    sa.Column("cancelled_by", _ID),
    sa.Index("silences_end", "end_ms"),
)

audit = sa.Table(
    "audit", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("at", sa.BigInteger, nullable=False),
    sa.Column("actor", _ID, nullable=False),
    sa.Column("action", sa.String(32), nullable=False),
    sa.Column("target", sa.String(300), nullable=False),
    sa.Column("detail", sa.JSON, nullable=False),
    sa.Index("audit_at", "at"),
)

api_tokens = sa.Table(
    "api_tokens", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", _ID, nullable=False),  # who: the actor in the audit log
    sa.Column("role", sa.String(16), nullable=False),  # dispatcher | engineer | admin
    sa.Column("token_sha256", sa.String(64), nullable=False),  # never the token itself
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("created_by", _ID, nullable=False),
    sa.Column("revoked_at", sa.BigInteger),
    sa.Index("api_tokens_hash", "token_sha256", unique=True),
)

# -- assets (imported from the company's CSV; see alerting/assets.py) ---------------------------
stations = sa.Table(
    "stations", metadata,
    sa.Column("station", _ID, primary_key=True),
    sa.Column("name", sa.String(200), nullable=False, server_default=""),
    sa.Column("gateway", _ID),
    sa.Column("heated_area_m2", sa.Float),  # when the company knows only the station's total
)

buildings = sa.Table(
    "buildings", metadata,
    sa.Column("station", _ID, primary_key=True),
    sa.Column("building", _ID, primary_key=True),
    sa.Column("address", sa.String(300), nullable=False),
    sa.Column("heated_area_m2", sa.Float),  # the takeover report's make-up per heated area
)

households = sa.Table(
    "households", metadata,
    sa.Column("code", sa.String(64), primary_key=True),  # the company's household code (户号)
    sa.Column("station", _ID, nullable=False),
    sa.Column("building", _ID, nullable=False),
    sa.Column("unit", sa.String(32), nullable=False, server_default=""),
    sa.Column("room", sa.String(32), nullable=False, server_default=""),
    sa.Column("sensor", _ID),  # the household id its room sensor reports under, if it has one
    sa.Column("search", sa.String(500), nullable=False),  # address, unit, room, code: alerting/address.py
    sa.Index("households_place", "station", "building"),
    sa.Index("households_sensor", "station", "building", "sensor"),
)

# -- remote commands (docs/control.md; alerting/commands.py) ------------------------------------
class Value(sa.types.TypeDecorator[Any]):
    """A command's number or true/false as JSON text. Not a JSON column: SQLite gives a column
    typed JSON numeric affinity and turns the text "65.0" into a REAL, which no JSON reader takes."""

    impl = sa.String(32)
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: sa.Dialect) -> str | None:
        return None if value is None else orjson.dumps(value).decode()

    def process_result_value(self, value: Any, dialect: sa.Dialect) -> Any:
        return None if value is None else orjson.loads(value)


# One row per command id: what was asked, by whom, its state, and the gateway's result. A result
# for an id the API never issued (published straight onto the broker) gets a row too, origin
# "broker", so it is seen.
commands = sa.Table(
    "commands", metadata,
    sa.Column("id", _ID, primary_key=True),
    sa.Column("origin", sa.String(8), nullable=False, server_default="api"),  # api | broker
    sa.Column("station", _ID, nullable=False),
    sa.Column("device", _ID),
    sa.Column("point", _ID),
    sa.Column("building", _ID), sa.Column("household", _ID),
    sa.Column("value", Value),  # number or bool
    sa.Column("old_value", Value),  # the latest reading when it was requested
    sa.Column("state", sa.String(24), nullable=False),
    sa.Column("needs_confirmation", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("issuer", _ID),
    sa.Column("confirmed_by", _ID), sa.Column("confirmed_at", sa.BigInteger),
    sa.Column("reason", sa.Text),  # why, in the engineer's words
    sa.Column("ticket", _ID),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("deadline", sa.BigInteger, nullable=False),
    sa.Column("claimed_at", sa.BigInteger),  # a sender took it (several API workers: one publishes)
    sa.Column("payload", sa.LargeBinary),  # the signed bytes, once signed: every publish sends the same
    sa.Column("sent_at", sa.BigInteger),
    sa.Column("result_state", sa.String(24)),
    sa.Column("result_reason", sa.String(32)),
    sa.Column("result_detail", sa.Text),
    sa.Column("result_code", sa.Integer),
    sa.Column("gateway_old_value", Value),  # read by the gateway just before the write
    sa.Column("read_back", Value),
    sa.Column("result_at", sa.BigInteger),  # the gateway's time of the result
    sa.Index("commands_station", "station", "created_at"),
    sa.Index("commands_building", "station", "building", "created_at"),
    sa.Index("commands_state", "state"),
)

command_events = sa.Table(
    "command_events", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("command_id", _ID, sa.ForeignKey("commands.id", ondelete="CASCADE"), nullable=False),
    sa.Column("ts", sa.BigInteger, nullable=False),
    sa.Column("kind", sa.String(24), nullable=False),  # requested confirmed sent result expired
    sa.Column("state", sa.String(24), nullable=False),  # the command's state after it
    sa.Column("actor", _ID),
    sa.Column("detail", sa.JSON, nullable=False),
    sa.Index("command_events_command", "command_id", "ts"),
)


# -- the latest value of every point, per station and building (written by the alerter;
# alerting/latest.py). building '' is the station itself; a building's row carries its
# households: {household: {"ts": ms, "points": {point: value}, "day": its room sensor's last 24 h}}.
latest = sa.Table(
    "latest", metadata,
    sa.Column("station", _ID, primary_key=True),
    sa.Column("building", _ID, primary_key=True),
    sa.Column("ts", sa.BigInteger),  # sample time of the newest reading with a value; NULL: status only
    sa.Column("points", sa.JSON, nullable=False),  # {point: latest value}; a bad reading keeps the last
    sa.Column("households", sa.JSON),  # buildings: their households' latest values
    sa.Column("state", sa.String(16)),  # stations: online / degraded / offline, from the station status
    sa.Column("state_ts", sa.BigInteger),
    sa.Column("gateway_state", sa.String(16)),  # stations: online / offline, from the gateway status
    # stations: the newest message the alerter's latest-value stage saw (its gateway's boot and
    # sequence number), and the sample time of the first message after a gap (migration 0012)
    sa.Column("boot", sa.String(64)),
    sa.Column("seq", sa.BigInteger),
    sa.Column("gap_at", sa.BigInteger),
    sa.Column("written_at", sa.BigInteger, nullable=False),  # when the alerter wrote the row
)


# -- alerter partitions (alerting/partitions.py; docs/scaling.md) --------------------------------
# Stations are split into a fixed number of partitions; an alerter member judges a partition while
# it holds its lease. One row per partition, created once (the count is fixed for a store).
partition_leases = sa.Table(
    "partition_leases", metadata,
    sa.Column("part", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("owner", sa.String(100)),  # "member#instance"; NULL: nobody
    # raised at every acquisition: the fencing token every write for the partition checks
    sa.Column("epoch", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("expires_at", sa.BigInteger, nullable=False, server_default="0"),  # database clock, ms
)

# the alerter members alive (a row renewed with the member's leases): the partitions are shared
# out among the members whose row has not expired
partition_members = sa.Table(
    "partition_members", metadata,
    sa.Column("member", _ID, primary_key=True),
    sa.Column("instance", sa.String(32), nullable=False),  # one process's run of the member
    sa.Column("started_at", sa.BigInteger, nullable=False),
    sa.Column("expires_at", sa.BigInteger, nullable=False),
)

# each partition's rule-engine snapshot, written by its owner, and the identities of the messages
# judged in the window before it (a taker skips those when it replays what it held in standby)
partition_state = sa.Table(
    "partition_state", metadata,
    sa.Column("part", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("epoch", sa.BigInteger, nullable=False),
    sa.Column("owner", sa.String(100), nullable=False),
    sa.Column("written_at", sa.BigInteger, nullable=False),  # database clock, ms
    sa.Column("snapshot", sa.LargeBinary, nullable=False),
    sa.Column("recent", sa.LargeBinary, nullable=False),  # 8-byte message identities
)

# the messages judged (and their transitions committed) since the partition's snapshot, one row
# per commit: a taker replays them without emitting what they caused again
partition_judged = sa.Table(
    "partition_judged", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("part", sa.Integer, nullable=False),
    sa.Column("epoch", sa.BigInteger, nullable=False),
    sa.Column("ids", sa.LargeBinary, nullable=False),  # 8-byte message identities
    sa.Index("partition_judged_part", "part", "id"),
)

# what the alerter still has to send for recorded transitions, written in the transaction that
# records them (a crash between the commit and the send loses nothing): the alert topic (sink
# "mqtt") and the pages for the webhooks (sink "webhook"). The partition's owner sends and deletes.
alert_outbox = sa.Table(
    "alert_outbox", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("part", sa.Integer, nullable=False),
    sa.Column("sink", sa.String(16), nullable=False),
    sa.Column("key", sa.String(300), nullable=False),
    sa.Column("payload", sa.LargeBinary, nullable=False),  # the Transition as JSON
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Index("alert_outbox_part", "part", "sink", "id"),
)
