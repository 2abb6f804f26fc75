"""assets: stations, buildings (address), households (code, unit, room sensor)

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-21
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None
_ID = sa.String(64)


def upgrade() -> None:
    op.create_table(
        "stations",
        sa.Column("station", _ID, primary_key=True),
        sa.Column("name", sa.String(200), nullable=False, server_default=""),
        sa.Column("gateway", _ID),
    )
    op.create_table(
        "buildings",
        sa.Column("station", _ID, primary_key=True),
        sa.Column("building", _ID, primary_key=True),
        sa.Column("address", sa.String(300), nullable=False),
    )
    op.create_table(
        "households",
        sa.Column("code", sa.String(64), primary_key=True),
        sa.Column("station", _ID, nullable=False),
        sa.Column("building", _ID, nullable=False),
        sa.Column("unit", sa.String(32), nullable=False, server_default=""),
        sa.Column("room", sa.String(32), nullable=False, server_default=""),
        sa.Column("sensor", _ID),
        sa.Column("search", sa.String(500), nullable=False),
    )
    op.create_index("households_place", "households", ["station", "building"])
    op.create_index("households_sensor", "households", ["station", "building", "sensor"])


def downgrade() -> None:
    for t in ("households", "buildings", "stations"):
        op.drop_table(t)
