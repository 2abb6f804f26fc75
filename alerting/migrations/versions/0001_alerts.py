"""alerts, their events, silences, audit

Revision ID: 0001
Revises:
Create Date: 2026-11-21
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None
_ID = sa.String(64)


def upgrade() -> None:
    op.create_table(
        "alerts",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("key", sa.String(300), nullable=False),
        sa.Column("rule", sa.String(32), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("severity", sa.String(16), nullable=False),
        sa.Column("station", _ID), sa.Column("building", _ID), sa.Column("household", _ID),
        sa.Column("gateway", _ID), sa.Column("subject", _ID),
        sa.Column("since", sa.BigInteger, nullable=False),
        sa.Column("last_ts", sa.BigInteger, nullable=False),
        sa.Column("fired_at", sa.BigInteger),
        sa.Column("resolved_at", sa.BigInteger),
        sa.Column("value", sa.Float),
        sa.Column("summary", sa.String(300), nullable=False, server_default=""),
        sa.Column("context", sa.JSON, nullable=False),
        sa.Column("quiet", sa.String(16), nullable=False, server_default=""),
        sa.Column("paged", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("ack_by", _ID), sa.Column("ack_at", sa.BigInteger), sa.Column("ack_note", sa.Text),
        sa.Column("ack_ticket", _ID),
        sa.Column("resolved_by", _ID),
    )
    op.create_index("alerts_open_key", "alerts", ["key"], unique=True,
                    sqlite_where=sa.text("resolved_at IS NULL"),
                    postgresql_where=sa.text("resolved_at IS NULL"))
    op.create_index("alerts_entity", "alerts", ["station", "building", "household"])
    op.create_index("alerts_state", "alerts", ["state", "severity"])
    op.create_index("alerts_since", "alerts", ["since"])
    op.create_table(
        "alert_events",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("alert_id", sa.Integer, sa.ForeignKey("alerts.id", ondelete="CASCADE"), nullable=False),
        sa.Column("ts", sa.BigInteger, nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("severity", sa.String(16), nullable=False),
        sa.Column("value", sa.Float),
        sa.Column("actor", _ID),
        sa.Column("note", sa.Text),
        sa.Column("ticket", _ID),
        sa.Column("quiet", sa.String(16), nullable=False, server_default=""),
    )
    op.create_index("alert_events_alert", "alert_events", ["alert_id", "ts"])
    op.create_table(
        "silences",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("station", _ID, nullable=False),
        sa.Column("building", _ID),
        sa.Column("start_ms", sa.BigInteger, nullable=False),
        sa.Column("end_ms", sa.BigInteger, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("created_by", _ID, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
    )
    op.create_index("silences_end", "silences", ["end_ms"])
    op.create_table(
        "audit",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("at", sa.BigInteger, nullable=False),
        sa.Column("actor", _ID, nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("target", sa.String(300), nullable=False),
        sa.Column("detail", sa.JSON, nullable=False),
    )
    op.create_index("audit_at", "audit", ["at"])


def downgrade() -> None:
    for t in ("audit", "silences", "alert_events", "alerts"):
        op.drop_table(t)
