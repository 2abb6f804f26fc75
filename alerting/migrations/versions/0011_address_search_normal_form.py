"""households.search in the hotline's normal form (alerting/address.py): an address typed without
spaces, with 栋 for 号楼, with 单元/室 or full-width digits finds its household

Every household's search text is rebuilt from its building's address, its unit, room and code;
SQLite's trigram index is rebuilt after it (PostgreSQL's GIN index follows its column). An asset
import writes the same form from then on. Downgrading leaves the new form (the old search reads
it, less well).

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from alerting.address import household_search

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

_households = sa.table("households", sa.column("code", sa.String), sa.column("station", sa.String),
                       sa.column("building", sa.String), sa.column("unit", sa.String),
                       sa.column("room", sa.String), sa.column("search", sa.String))
_buildings = sa.table("buildings", sa.column("station", sa.String), sa.column("building", sa.String),
                      sa.column("address", sa.String))


def upgrade() -> None:
    conn = op.get_bind()
    h, b = _households, _buildings
    rows = conn.execute(sa.select(h.c.code, h.c.unit, h.c.room, b.c.address).join(
        b, sa.and_(b.c.station == h.c.station, b.c.building == h.c.building))).all()
    update = h.update().where(h.c.code == sa.bindparam("c")).values(search=sa.bindparam("s"))
    for i in range(0, len(rows), 2000):
        conn.execute(update, [{"c": r.code,
                               "s": household_search(r.address, r.unit or "", r.room or "", r.code)}
                              for r in rows[i:i + 2000]])
    if conn.dialect.name == "sqlite":
        op.execute("INSERT INTO households_fts(households_fts) VALUES ('rebuild')")


def downgrade() -> None:
    pass
