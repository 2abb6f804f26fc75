"""partition_leases, partition_members, partition_state, partition_judged, alert_outbox: alerter
members sharing the stations by partition leases (alerting/partitions.py, docs/scaling.md)

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None
_ID = sa.String(64)


def upgrade() -> None:
    op.create_table(
        "partition_leases",
        sa.Column("part", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("owner", sa.String(100)),
        sa.Column("epoch", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("expires_at", sa.BigInteger, nullable=False, server_default="0"),
    )
    op.create_table(
        "partition_members",
        sa.Column("member", _ID, primary_key=True),
        sa.Column("instance", sa.String(32), nullable=False),
        sa.Column("started_at", sa.BigInteger, nullable=False),
        sa.Column("expires_at", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "partition_state",
        sa.Column("part", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("epoch", sa.BigInteger, nullable=False),
        sa.Column("owner", sa.String(100), nullable=False),
        sa.Column("written_at", sa.BigInteger, nullable=False),
        sa.Column("snapshot", sa.LargeBinary, nullable=False),
        sa.Column("recent", sa.LargeBinary, nullable=False),
    )
    op.create_table(
        "partition_judged",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("part", sa.Integer, nullable=False),
        sa.Column("epoch", sa.BigInteger, nullable=False),
        sa.Column("ids", sa.LargeBinary, nullable=False),
    )
    op.create_index("partition_judged_part", "partition_judged", ["part", "id"])
    op.create_table(
        "alert_outbox",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("part", sa.Integer, nullable=False),
        sa.Column("sink", sa.String(16), nullable=False),
        sa.Column("key", sa.String(300), nullable=False),
        sa.Column("payload", sa.LargeBinary, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    )
    op.create_index("alert_outbox_part", "alert_outbox", ["part", "sink", "id"])


def downgrade() -> None:
    for t in ("alert_outbox", "partition_judged", "partition_state", "partition_members",
              "partition_leases"):
        op.drop_table(t)
