"""silences can be cancelled (who, when: the row stays for the record); an alert keeps every
hotline ticket given with its acknowledgements and notes

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("silences") as b:
        b.add_column(sa.Column("cancelled_at", sa.BigInteger))
        b.add_column(sa.Column("cancelled_by", sa.String(64)))
    with op.batch_alter_table("alerts") as b:
        b.add_column(sa.Column("tickets", sa.JSON, nullable=False, server_default=sa.text("'[]'")))
    # the tickets acknowledgements and notes gave so far, oldest first
    ev = sa.table("alert_events", sa.column("alert_id", sa.Integer), sa.column("ticket", sa.String),
                  sa.column("ts", sa.BigInteger), sa.column("id", sa.Integer))
    conn = op.get_bind()
    by_alert: dict[int, list[str]] = {}
    for r in conn.execute(sa.select(ev.c.alert_id, ev.c.ticket).where(ev.c.ticket.is_not(None))
                          .order_by(ev.c.ts, ev.c.id)):
        seen = by_alert.setdefault(r.alert_id, [])
        if r.ticket not in seen:
            seen.append(r.ticket)
    alerts = sa.table("alerts", sa.column("id", sa.Integer), sa.column("tickets", sa.JSON),
                      sa.column("ack_ticket", sa.String))
    for alert_id, tickets in by_alert.items():
        conn.execute(alerts.update().where(alerts.c.id == alert_id).values(tickets=tickets))


def downgrade() -> None:
    with op.batch_alter_table("alerts") as b:
        b.drop_column("tickets")
    with op.batch_alter_table("silences") as b:
        b.drop_column("cancelled_by")
        b.drop_column("cancelled_at")
