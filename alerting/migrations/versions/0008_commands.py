"""commands and command_events: remote building control (docs/control.md)

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "commands",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("origin", sa.String(8), nullable=False, server_default="api"),
        sa.Column("station", sa.String(64), nullable=False),
        sa.Column("device", sa.String(64)),
        sa.Column("point", sa.String(64)),
        sa.Column("building", sa.String(64)),
        sa.Column("household", sa.String(64)),
        sa.Column("value", sa.String(32)),
        sa.Column("old_value", sa.String(32)),
        sa.Column("state", sa.String(24), nullable=False),
        sa.Column("needs_confirmation", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("issuer", sa.String(64)),
        sa.Column("confirmed_by", sa.String(64)),
        sa.Column("confirmed_at", sa.BigInteger),
        sa.Column("reason", sa.Text),
        sa.Column("ticket", sa.String(64)),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("deadline", sa.BigInteger, nullable=False),
        sa.Column("claimed_at", sa.BigInteger),
        sa.Column("payload", sa.LargeBinary),
        sa.Column("sent_at", sa.BigInteger),
        sa.Column("result_state", sa.String(24)),
        sa.Column("result_reason", sa.String(32)),
        sa.Column("result_detail", sa.Text),
        sa.Column("result_code", sa.Integer),
        sa.Column("gateway_old_value", sa.String(32)),
        sa.Column("read_back", sa.String(32)),
        sa.Column("result_at", sa.BigInteger),
    )
    op.create_index("commands_station", "commands", ["station", "created_at"])
    op.create_index("commands_building", "commands", ["station", "building", "created_at"])
    op.create_index("commands_state", "commands", ["state"])
    op.create_table(
        "command_events",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("command_id", sa.String(64), sa.ForeignKey("commands.id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("ts", sa.BigInteger, nullable=False),
        sa.Column("kind", sa.String(24), nullable=False),
        sa.Column("state", sa.String(24), nullable=False),
        sa.Column("actor", sa.String(64)),
        sa.Column("detail", sa.JSON, nullable=False),
    )
    op.create_index("command_events_command", "command_events", ["command_id", "ts"])


def downgrade() -> None:
    op.drop_table("command_events")
    op.drop_table("commands")
