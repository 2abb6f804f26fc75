"""heated area (m²) of buildings and stations, for the takeover report's make-up per area

Both nullable: a company that has not measured its buildings still imports its register, and
the report says which figures are missing for want of the area.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("buildings") as b:
        b.add_column(sa.Column("heated_area_m2", sa.Float))
    with op.batch_alter_table("stations") as s:
        s.add_column(sa.Column("heated_area_m2", sa.Float))


def downgrade() -> None:
    with op.batch_alter_table("stations") as s:
        s.drop_column("heated_area_m2")
    with op.batch_alter_table("buildings") as b:
        b.drop_column("heated_area_m2")
