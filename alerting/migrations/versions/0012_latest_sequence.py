"""latest.boot, .seq, .gap_at on a station's row: the newest message of the station the alerter's
latest-value stage saw, and the sample time of the first message after one it missed

A room's 24 h kept in the table (alerting/latest.py RoomDay) is only as complete as the stream the
alerter saw: a gap in a station's message sequence (the latest values switched off for a while,
a broker queue overflowed, a member killed between its flushes) means readings InfluxDB has and
the table does not, so the lookup asks InfluxDB for the 24 h until the gap is a day old. Rows
written before this revision have none: the next message of their station counts as after a gap.

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("latest", sa.Column("boot", sa.String(64)))
    op.add_column("latest", sa.Column("seq", sa.BigInteger))
    op.add_column("latest", sa.Column("gap_at", sa.BigInteger))


def downgrade() -> None:
    with op.batch_alter_table("latest") as t:
        t.drop_column("gap_at")
        t.drop_column("seq")
        t.drop_column("boot")
