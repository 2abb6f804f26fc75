"""indexes that serve the dispatch room's alert lists newest first without a sort

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-21
"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("alerts_state", "alerts")
    op.create_index("alerts_state", "alerts", ["state", "severity", "since"])
    op.create_index("alerts_station_since", "alerts", ["station", "since"])


def downgrade() -> None:
    op.drop_index("alerts_station_since", "alerts")
    op.drop_index("alerts_state", "alerts")
    op.create_index("alerts_state", "alerts", ["state", "severity"])
