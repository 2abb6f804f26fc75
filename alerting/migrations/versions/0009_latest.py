"""the latest value of every point per station and building, a building's households within
its row (the hotline's "now")

The collector upserts the entities that changed every ``alerts.latest_s``; the API reads a
household's chain from it in one query instead of asking InfluxDB for ``last(*)`` per call.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None
_ID = sa.String(64)


def upgrade() -> None:
    op.create_table(
        "latest",
        sa.Column("station", _ID, primary_key=True),
        sa.Column("building", _ID, primary_key=True),
        sa.Column("ts", sa.BigInteger),
        sa.Column("points", sa.JSON, nullable=False),
        sa.Column("households", sa.JSON),
        sa.Column("state", sa.String(16)),
        sa.Column("state_ts", sa.BigInteger),
        sa.Column("gateway_state", sa.String(16)),
        sa.Column("written_at", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("latest")
